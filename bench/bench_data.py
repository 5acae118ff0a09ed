"""The training input pipeline: images/s of each method's transforms against torchreid's pipeline,
in one run, on JPEGs written by the synthetic generator, at 256 x 128 and 384 x 128.

Implementations timed per input size (every one: a DataLoader with 2 workers over the same plan of
batches of 64, drawn from the synthetic set's files with replacement; a round is one pass over
the plan, the float batch made in this process, where training on the CPU would use it):
  torchreid               torchreid's composition, built from torchvision.transforms (torchreid
                          itself is not needed): PIL open + convert("RGB"), Resize, RandomHorizontal-
                          Flip, Pad(10) + RandomCrop, ToTensor, Normalize, RandomErasing (p 0.5,
                          area 0.02-0.4, aspect 0.3-3.33) per image; default collation of floats
  reidfast-<method>       reidfast.data: torchvision.io decoding to uint8, `transforms_for(method)`'s
                          per-sample stage on uint8 in the workers, uint8 batches, then its batched
                          stage (normalisation, random erasing) on the collated batch; each
                          method's own recipe with the input size set to the case's
  reidfast-torchreid-ops  reidfast.data doing exactly torchreid's operations (PLR-OSNet's recipe,
                          which flips and erases, with pad=10): the like-for-like comparison

The main process uses one thread (the workers hold both cores; see MAIN_THREADS). The synthetic
images are 256 x 128 (Market-1501's boxes are 128 x 64): at 256 x 128 no resize
happens, at 384 x 128 every image is resized. With --benchmark-disable (the CI smoke run) every
case runs once over 32 images.
"""

import pytest
import torch
import torchvision.transforms as T
from benchutil import device_name
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from reidfast.data import ReIDImageDataset, build_train_loader, transforms_for
from reidfast.data.synthetic import make_synthetic_reid
from reidfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SIZES = ((256, 128), (384, 128))
METHODS = ("pyramid", "pla", "mgn", "adaptive_margin", "plr_osnet")
IMPLS = ("torchreid", *(f"reidfast-{method}" for method in METHODS), "reidfast-torchreid-ops")
BATCH_SIZE, WORKERS = 64, 2
# The main process runs the batched stage on one thread: the two workers keep both cores busy, and
# an ATen op that starts a second thread then waits whole scheduler time slices for it.
MAIN_THREADS = 1
IMAGES = {"benchmark": 1024, "smoke": 32}


class TorchreidStyleDataset(Dataset):
    """(image, pid, camid) with the image read by PIL and transformed as torchreid does."""

    def __init__(self, records, transform):
        self.records, self.transform = records, transform

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        return self.transform(Image.open(record.path).convert("RGB")), record.pid, record.camid


def torchreid_transform(height, width):
    return T.Compose([
        T.Resize((height, width)),
        T.RandomHorizontalFlip(),
        T.Pad(10),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.33)),
    ])


@pytest.fixture(scope="module")
def synthetic(request, tmp_path_factory):
    """(records, plan): the synthetic set's files and a fixed plan of index batches over them."""
    smoke = request.config.getoption("benchmark_disable")
    root = tmp_path_factory.mktemp("synthetic")
    if smoke:
        dataset = make_synthetic_reid(root, num_identities=4, images_per_identity=4, workers=1)
    else:
        dataset = make_synthetic_reid(root, num_identities=24, images_per_identity=8, workers=WORKERS)
    records = dataset.train + dataset.query + dataset.gallery
    count = IMAGES["smoke" if smoke else "benchmark"]
    indices = torch.randint(len(records), (count,), generator=torch.Generator().manual_seed(0)).tolist()
    batch = min(BATCH_SIZE, count)
    return records, [indices[start : start + batch] for start in range(0, count, batch)]


def make_epoch(impl, records, plan, height, width):
    """A function running one pass over the plan (its loader's workers persist between passes)."""
    if impl == "torchreid":
        loader = DataLoader(TorchreidStyleDataset(records, torchreid_transform(height, width)), batch_sampler=plan,
                            num_workers=WORKERS, persistent_workers=True)

        def epoch():
            for images, _, _ in loader:
                pass
        return epoch
    if impl == "reidfast-torchreid-ops":
        method, overrides = "plr_osnet", {"pad": 10}
    else:
        method, overrides = impl[len("reidfast-"):], {}
    sample, batch_transform = transforms_for(method, height=height, width=width, **overrides)
    loader = build_train_loader(ReIDImageDataset(records, sample), plan, seed=0, num_workers=WORKERS)

    def epoch():
        for batch in loader:
            batch_transform(batch.images)
    return epoch


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_training_pipeline(benchmark, synthetic, impl, size):
    records, plan = synthetic
    height, width = size
    images = sum(len(batch) for batch in plan)
    benchmark.group = f"data_pipeline training cpu [{height}, {width}] {images} images {WORKERS} workers"
    benchmark.extra_info.update(op="data_pipeline", impl=impl, passname="training", shape=[height, width],
                                dtype="float32", images=images, workers=WORKERS, main_threads=MAIN_THREADS,
                                device="cpu", device_name=device_name("cpu"))
    epoch = make_epoch(impl, records, plan, height, width)
    threads = torch.get_num_threads()
    torch.set_num_threads(MAIN_THREADS)
    try:
        benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(threads)
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = images / benchmark.stats.stats.median
