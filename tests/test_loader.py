"""reidfast.data.loader: decoding, unreadable files (raised or skipped and counted), the dataset
with an in-memory loader, per-sample seeds that make augmentation independent of the workers, and
the DataLoader builders. A few small JPEG and PNG files written by the tests."""

import pytest
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import BatchSampler, SequentialSampler
from torchvision.io import encode_jpeg, encode_png

from reidfast.data import (
    Batch,
    ImageReadError,
    ReIDImageDataset,
    ReIDRecord,
    SeededBatchSampler,
    build_test_loader,
    build_train_loader,
    read_image,
    transforms_for,
)
from reidfast.data.loader import SampleKey, Skipped, collate_batch
from reidfast.data.synthetic import SyntheticReID
from reidfast.training import IdentityBatchSampler

from conftest import seed_for


def _smooth_image(seed, height=32, width=16):
    """A smooth uint8 image (JPEG keeps it within a few levels)."""
    coarse = torch.rand(1, 3, 4, 2, generator=torch.Generator().manual_seed(seed)) * 255
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0].round().to(torch.uint8)


def _write(path, data: torch.Tensor):
    path.write_bytes(bytes(data.tolist()))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """Four readable JPEGs (pids 0, 0, 1, 1), their pixels, a truncated JPEG and an empty file."""
    images = [_smooth_image(seed_for("file", i)) for i in range(4)]
    records = [ReIDRecord(_write(tmp_path / f"{i}.jpg", encode_jpeg(image, quality=95)), i // 2, i % 2)
               for i, image in enumerate(images)]
    jpeg = encode_jpeg(images[0], quality=95)
    truncated = _write(tmp_path / "truncated.jpg", jpeg[: len(jpeg) // 2])
    empty = _write(tmp_path / "empty.jpg", torch.empty(0, dtype=torch.uint8))
    return records, images, truncated, empty


def test_read_image_decodes_jpeg_png_and_grey(tmp_path, files):
    records, images, _, _ = files
    decoded = read_image(records[1].path)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 32, 16)
    assert (decoded.int() - images[1].int()).abs().float().mean() < 3  # JPEG at quality 95
    assert torch.equal(read_image(_write(tmp_path / "a.png", encode_png(images[2]))), images[2])
    grey = read_image(_write(tmp_path / "grey.png", encode_png(images[3][:1])))
    assert grey.shape == (3, 32, 16) and torch.equal(grey[0], grey[2])


def test_unreadable_files_are_errors_naming_them(tmp_path, files):
    _, _, truncated, empty = files
    with pytest.raises(ImageReadError, match="truncated.jpg.*truncated"):
        read_image(truncated)
    with pytest.raises(ImageReadError, match="empty.jpg.*empty"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="notes.jpg"):
        read_image(_write(tmp_path / "notes.jpg", torch.tensor(list(b"not an image"), dtype=torch.uint8)))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"))


def test_dataset_items_and_raise(files):
    records, _, truncated, _ = files
    sample = transforms_for("mgn", height=16, width=8, flip_p=0.0, train=False).sample
    dataset = ReIDImageDataset(records + [ReIDRecord(truncated, 2, 0)], sample)
    image, pid, camid, index = dataset[3]
    assert image.shape == (3, 16, 8) and (pid, camid, index) == (1, 1, 3)
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        dataset[4]
    # A DataLoader worker's error reaches the main process as ExceptionWrapper re-raises it (the
    # class called with one message): it keeps its type and names the file. (Through a real worker
    # this costs torch's 5-second shutdown of a worker that raised.)
    try:
        dataset[4]
    except ImageReadError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        wrapped.reraise()


def test_skip_counts_and_keeps_indices(files):
    records, _, truncated, empty = files
    sample = transforms_for("mgn", height=16, width=8, train=False).sample
    dataset = ReIDImageDataset([records[0], ReIDRecord(truncated, 0, 0), records[2], ReIDRecord(empty, 1, 1)],
                               sample, on_error="skip")
    assert isinstance(dataset[1], Skipped) and dataset[1].index == 1 and "truncated" in dataset[1].reason
    batches = list(build_test_loader(dataset, batch_size=2, num_workers=0))
    assert [batch.indices.tolist() for batch in batches] == [[0], [2]]
    assert [batch.skipped.tolist() for batch in batches] == [[1], [3]]
    assert sum(len(batch.skipped) for batch in batches) == 2
    assert batches[1].pids.tolist() == [1] and batches[1].images.shape == (1, 3, 16, 8)
    with pytest.raises(ImageReadError, match="every image of a batch of 2 is unreadable.*truncated.jpg.*empty.jpg"):
        collate_batch([dataset[1], dataset[3]])


def test_collate_stacks_channels_last():
    decoded = torch.randint(0, 256, (2, 5, 4, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # as decoded
    images = [decoded[0], decoded[1].contiguous()]  # either layout
    batch = collate_batch([(images[0], 3, 1, 7), (images[1], 4, 0, 2)])
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.images, torch.stack(images))
    assert (batch.pids.tolist(), batch.camids.tolist(), batch.indices.tolist()) == ([3, 4], [1, 0], [7, 2])
    with pytest.raises(ValueError, match="item 2 is an image of shape \\(3, 5, 5\\), item 7 of \\(3, 5, 4\\)"):
        collate_batch([(images[0], 3, 1, 7), (torch.zeros(3, 5, 5, dtype=torch.uint8), 4, 0, 2)])


def test_in_memory_loader_and_seeded_keys():
    pixels = {f"mem/{i}": _smooth_image(i, 20, 10) for i in range(3)}
    records = [ReIDRecord(f"mem/{i}", i, 5 - i) for i in range(3)]
    sample = transforms_for("plr_osnet", height=20, width=10, pad=2).sample
    dataset = ReIDImageDataset(records, sample, loader=lambda record: pixels[record.path])
    image, pid, camid, index = dataset[SampleKey(2, 77)]
    assert (pid, camid, index) == (2, 3, 2)
    assert torch.equal(image, sample(pixels["mem/2"], torch.Generator().manual_seed(77)))
    bad = ReIDImageDataset(records, sample, loader=lambda record: pixels[record.path].float())
    with pytest.raises(TypeError, match="loader must return a uint8 Tensor\\[3, H, W\\] for 'mem/0'"):
        bad[0]


def test_synthetic_set_through_its_in_memory_loader():
    synthetic = SyntheticReID(num_identities=2, images_per_identity=4, height=64, width=32)
    dataset = ReIDImageDataset(synthetic.train, transforms_for("mgn", height=64, width=32, train=False).sample,
                               loader=synthetic.load)
    batch = collate_batch([dataset[i] for i in range(len(dataset))])
    assert batch.images.shape == (len(synthetic.train), 3, 64, 32)
    assert batch.pids.tolist() == [record.pid for record in synthetic.train]
    assert torch.equal(batch.images[1], synthetic.load(synthetic.train[1]))


def _synthetic_dataset(count=12):
    pixels = [_smooth_image(seed_for("mem", i), 24, 12) for i in range(count)]
    records = [ReIDRecord(str(i), i % 4, 0) for i in range(count)]
    sample = transforms_for("plr_osnet", height=24, width=12, pad=3).sample
    return ReIDImageDataset(records, sample, loader=lambda record: pixels[int(record.path)])


def test_augmentation_independent_of_workers_and_resumable():
    dataset = _synthetic_dataset()
    plan = [[0, 5, 5, 9], [1, 2, 3, 4], [11, 10, 0, 7]]  # any fixed plan; a repeated index is fine

    def images(num_workers, epoch=0, seed=3, rank=0):
        loader = build_train_loader(dataset, plan, seed=seed, rank=rank, num_workers=num_workers)
        loader.batch_sampler.set_epoch(epoch)
        return [batch.images for batch in loader]

    reference = images(0)
    for got, want in zip(images(2), reference, strict=True):
        assert torch.equal(got, want)
    # Slots 1 and 2 of batch 0 are the same image: they get different augmentations.
    assert not torch.equal(reference[0][1], reference[0][2])
    for other in (images(0, epoch=1), images(0, seed=4), images(0, rank=1)):
        assert not torch.equal(other[0], reference[0])


def _identity_loader(dataset, identities_per_batch=2, num_replicas=1, rank=0):
    labels = [record.pid for record in dataset.records]
    sampler = IdentityBatchSampler(labels, identities_per_batch, 2, seed=5, num_replicas=num_replicas, rank=rank)
    return build_train_loader(dataset, sampler, seed=3, rank=rank, num_workers=0)


def test_resumed_loader_repeats_the_rest_of_the_epoch():
    dataset = _synthetic_dataset()
    loader = _identity_loader(dataset)
    loader.batch_sampler.set_epoch(1)
    reference = [batch.images for batch in loader]
    state = loader.batch_sampler.state_dict()
    assert state["epoch"] == 1 and state["position"] == len(reference) == 2  # 4 identities, 2 per batch
    resumed = _identity_loader(dataset)
    resumed.batch_sampler.load_state_dict({**state, "position": 1})
    resumed.batch_sampler.set_epoch(1)  # a loop calling set_epoch keeps the restored position
    for got, want in zip([batch.images for batch in resumed], reference[1:], strict=True):
        assert torch.equal(got, want)


def test_distributed_ranks_draw_the_single_process_augmentations():
    dataset = _synthetic_dataset()  # 4 identities of 3 images: one batch of 4 x 2 per epoch
    (single,) = [batch.images for batch in _identity_loader(dataset, identities_per_batch=4)]
    ranks = [[batch.images for batch in _identity_loader(dataset, 2, num_replicas=2, rank=r)] for r in (0, 1)]
    assert [len(batches) for batches in ranks] == [1, 1]
    assert torch.equal(torch.cat([ranks[0][0], ranks[1][0]]), single)


def test_seeded_batch_sampler_forwards_epochs_and_refuses_state_without_a_resumable_sampler():
    class Inner:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter([[0, 1], [2, 3], [4, 5]])

        def __len__(self):
            return 3

    inner = Inner()
    sampler = SeededBatchSampler(inner, seed=1)
    sampler.set_epoch(2)
    keys = list(sampler)
    assert inner.epochs == [2] and len(sampler) == 3
    assert [[key.index for key in batch] for batch in keys] == [[0, 1], [2, 3], [4, 5]]
    assert len({key.seed for batch in keys for key in batch}) == 6
    with pytest.raises(TypeError, match="Inner has no state_dict"):
        sampler.state_dict()


def test_test_loader_keeps_order_and_batch_to():
    dataset = _synthetic_dataset(7)
    dataset.transform = transforms_for("mgn", height=24, width=12, train=False).sample
    batches = list(build_test_loader(dataset, batch_size=3, num_workers=0))
    assert [batch.indices.tolist() for batch in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    moved = batches[0].to("cpu")
    assert isinstance(moved, Batch) and moved.images.dtype == torch.uint8 and moved.skipped.numel() == 0
    # A BatchSampler over a SequentialSampler is a valid plan for the training builder too.
    loader = build_train_loader(dataset, BatchSampler(SequentialSampler(dataset), 4, drop_last=True), num_workers=0)
    assert [batch.indices.tolist() for batch in loader] == [[0, 1, 2, 3]]


@pytest.mark.parametrize("call, error, message", [
    (lambda d: ReIDImageDataset([("a.jpg", 0, 0)], d.transform), TypeError, "records\\[0\\] must be a ReIDRecord"),
    (lambda d: ReIDImageDataset(d.records, d.transform, on_error="ignore"), ValueError, "on_error must be one of"),
    (lambda d: ReIDImageDataset(d.records, None), TypeError, "transform must be callable"),
    (lambda d: build_test_loader(d, 0), ValueError, "batch_size must be >= 1, got 0"),
    (lambda d: build_test_loader(d, 2, num_workers=0, persistent_workers=True), ValueError, "needs num_workers > 0"),
    (lambda d: build_train_loader(d, [[0]], pin_memory=1), TypeError, "pin_memory must be a bool"),
    (lambda d: build_train_loader(d.records, [[0]]), TypeError, "dataset must be a ReIDImageDataset"),
    (lambda d: SeededBatchSampler([[0]], seed=-1), ValueError, "seed must be >= 0"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(_synthetic_dataset(2))
