"""Decoding records into batches: the dataset, per-sample seeding, and the DataLoader builders.

Records -> `ReIDImageDataset` (decode with torchvision.io to uint8, per-sample `SampleTransform`)
-> DataLoader workers -> `collate_batch` -> `Batch` of uint8 images -> on the device,
`BatchTransform` (float, normalisation, random erasing); docs/methods.md section 9.

Reproducible augmentation. A training loader's batch sampler is wrapped in `SeededBatchSampler`,
which gives every item of every batch a seed drawn from (seed, epoch, batch position, slot in the
global batch); the dataset draws that item's augmentation from a generator with that seed. So an
image's augmentation does not depend on the number of workers or on which worker decoded it; a
run resumed at batch b of an epoch (the samplers' `load_state_dict`) sees exactly the
augmentations the uninterrupted run saw; and a distributed run, whose ranks' batches concatenated
are one single-process batch, sees the augmentations of that single-process run.

Unreadable images. A missing file is a FileNotFoundError, a file that does not decode (truncated,
empty, not an image) an `ImageReadError`, both naming the file; never a black image. With
`on_error="skip"` the dataset returns a `Skipped` marker instead, `collate_batch` leaves the item
out of the batch and lists its dataset index in `Batch.skipped`: the count of skipped files is the
sum of `len(batch.skipped)` over the batches (read in the main process, whatever the number of
workers). Indices are never renumbered, so a batch sampler's indices stay valid; a batch merely
holds fewer images than its sampler asked for. A batch whose every image fails is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image

from reidfast._checks import check_bool, check_int
from reidfast.data.records import ReIDRecord

ON_ERROR = ("raise", "skip")


class ImageReadError(OSError):
    """An image file that exists but does not decode (truncated, empty, not an image)."""


def read_image(path: str) -> torch.Tensor:
    """The image at `path` as Tensor[3, H, W] uint8 RGB (grey and palette images converted),
    decoded by torchvision.io (libjpeg-turbo for JPEG; PNG, WebP and GIF too). As the decoder
    returns it: a view of [H, W, 3] memory (channels last).

    Raises:
        FileNotFoundError: no file at `path`.
        ImageReadError: the file does not decode; the message names the file and the decoder's reason.
    """
    with open(path, "rb") as file:
        data = bytearray(file.read())  # writable, so that frombuffer shares it without a warning
    if not data:
        raise ImageReadError(f"cannot decode image {path!r}: the file is empty")
    try:
        return decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as error:
        raise ImageReadError(f"cannot decode image {path!r}: {error}") from error


class SampleKey(NamedTuple):
    """A dataset index with the seed of its augmentation (what `SeededBatchSampler` yields)."""

    index: int
    seed: int


class Skipped(NamedTuple):
    """What `ReIDImageDataset` returns for an unreadable item when `on_error="skip"`."""

    index: int
    path: str
    reason: str


class ReIDImageDataset(Dataset):
    """Records decoded and transformed: item `key` is (image Tensor[3, h, w] uint8, pid, camid, index).

    Args:
        records (Sequence[ReIDRecord]): the images, e.g. a dataset's `train` or `gallery`.
        transform: the per-sample stage, e.g. `transforms_for(method).sample`. An item fetched by
            a `SampleKey` calls `transform(image, generator)` with a generator seeded by the key
            (reproducible augmentation); one fetched by an int index calls `transform(image)`,
            drawing from torch's default generator (any callable of a uint8 image works then).
        loader: record -> Tensor[3, H, W] uint8; by default `read_image(record.path)`. An
            in-memory dataset passes its own (e.g. `loader=SyntheticReID(...).load`). With
            DataLoader workers started by "spawn" it must be picklable.
        on_error: "raise" (an unreadable file is an error naming it) or "skip" (the item becomes a
            `Skipped` marker that `collate_batch` drops and counts; see the module docstring).
            Only FileNotFoundError and ImageReadError are skipped; any other error is raised.
    """

    def __init__(self, records: Sequence[ReIDRecord], transform: Callable, loader: Callable | None = None,
                 on_error: str = "raise"):
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
            raise TypeError(f"records must be a sequence of ReIDRecord, got {type(records).__name__}")
        for position, record in enumerate(records):
            if not isinstance(record, ReIDRecord):
                raise TypeError(f"records[{position}] must be a ReIDRecord, got {type(record).__name__} {record!r}")
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        if loader is not None and not callable(loader):
            raise TypeError(f"loader must be callable or None, got {type(loader).__name__}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.records = list(records)
        self.transform, self.loader, self.on_error = transform, loader, on_error

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> torch.Tensor:
        """The decoded, untransformed image of item `index`: Tensor[3, H, W] uint8."""
        record = self.records[index]
        image = read_image(record.path) if self.loader is None else self.loader(record)
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(f"the loader must return a uint8 Tensor[3, H, W] for {record.path!r}, got {got}")
        return image

    def __getitem__(self, key: int | SampleKey):
        index, seed = (key.index, key.seed) if isinstance(key, SampleKey) else (key, None)
        record = self.records[index]
        try:
            image = self.load(index)
        except (FileNotFoundError, ImageReadError) as error:
            if self.on_error == "raise":
                raise
            return Skipped(index, record.path, str(error))
        if seed is None:
            image = self.transform(image)
        else:
            image = self.transform(image, torch.Generator().manual_seed(seed))
        return image, record.pid, record.camid, index

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.records)} records, transform={self.transform!r}, "
                f"on_error={self.on_error!r})")


class Batch(NamedTuple):
    """One collated batch.

    Attributes:
        images: Tensor[B, 3, h, w] uint8 in channels_last memory format (see `collate_batch`);
            the batched stage makes it float on the device, keeping the format.
        pids, camids: LongTensor[B].
        indices: LongTensor[B], the dataset index of each image (features stay aligned with
            records even where items were skipped).
        skipped: LongTensor[S], the dataset indices of the items left out as unreadable.
    """

    images: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    indices: torch.Tensor
    skipped: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with every tensor on `device` (non_blocking from pinned memory)."""
        return Batch(*(tensor.to(device, non_blocking=non_blocking) for tensor in self))


def collate_batch(items: list) -> Batch:
    """Stacks dataset items into a `Batch`, leaving out `Skipped` markers (listed in `skipped`).

    The images are stacked in channels_last memory format (pixel by pixel, RGB interleaved): the
    layout torchvision's decoder returns (a [3, H, W] view of [H, W, 3] memory), so stacking
    decoded images is a plain copy (torch.stack into channels-first memory transposes every image,
    several times slower), and the layout channels_last models take.

    Raises:
        ImageReadError: every item of the batch was skipped; the message names the files.
        ValueError: the images differ in size (the transform must give one size).
    """
    good = [item for item in items if not isinstance(item, Skipped)]
    bad = [item for item in items if isinstance(item, Skipped)]
    if not good:
        names = "; ".join(f"{item.path!r} ({item.reason})" for item in bad)
        raise ImageReadError(f"every image of a batch of {len(items)} is unreadable: {names}")
    images, pids, camids, indices = zip(*good)
    shape = images[0].shape
    for image, index in zip(images, indices):
        if image.shape != shape:
            raise ValueError(f"item {index} is an image of shape {tuple(image.shape)}, item {indices[0]} of "
                             f"{tuple(shape)}: a batch needs one size")
    pixels = torch.empty(len(images), shape[1], shape[2], shape[0], dtype=images[0].dtype)  # [B, H, W, 3]
    for slot, image in enumerate(images):
        pixels[slot].copy_(image.permute(1, 2, 0))
    return Batch(pixels.permute(0, 3, 1, 2), torch.tensor(pids, dtype=torch.long),
                 torch.tensor(camids, dtype=torch.long), torch.tensor(indices, dtype=torch.long),
                 torch.tensor([item.index for item in bad], dtype=torch.long))


_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 chained over them): nearby inputs give unrelated seeds."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        state = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 31
    return state >> 1


class SeededBatchSampler(Sampler[list[SampleKey]]):
    """A batch sampler whose items carry their augmentation seed.

    Yields the batches of `batch_sampler` with the index i at slot j of the epoch's batch b made
    `SampleKey(i, seed')`, seed' a hash of (seed, epoch, b, rank * len(batch) + j): the slot in the
    global batch of a distributed run whose ranks draw equal-sized batches (the package's samplers
    do), so ranks draw different augmentations and a run on R ranks draws those of one process
    given the R ranks' batches concatenated. The inner sampler's plan must be fixed by its epoch
    (the package's samplers' are; a BatchSampler over a RandomSampler is not, unless the
    RandomSampler has a seeded generator).

    Resuming: `state_dict(batches_consumed)` and `load_state_dict(state)` are the inner sampler's
    (reidfast.training's samplers: the position in the epoch's plan), and the batches that follow
    a restored position keep their numbers b, hence their seeds.

    Args:
        batch_sampler: yields lists of dataset indices; its `set_epoch`, if any, is called by ours.
        seed: the run's augmentation seed.
        rank: the process's rank in distributed training.
    """

    def __init__(self, batch_sampler, seed: int = 0, rank: int = 0):
        check_int("seed", seed, minimum=0)
        check_int("rank", rank, minimum=0)
        if not hasattr(batch_sampler, "__iter__"):
            raise TypeError(f"batch_sampler must be iterable, got {type(batch_sampler).__name__}")
        self.batch_sampler, self.seed, self.rank = batch_sampler, seed, rank
        self.epoch = 0
        self._start = 0  # the number of the first batch the next iteration yields

    def set_epoch(self, epoch: int) -> None:
        """The next iteration yields epoch `epoch`; as the package's samplers do, the current epoch
        keeps a position restored by `load_state_dict`."""
        check_int("epoch", epoch, minimum=0)
        if epoch != self.epoch:
            self.epoch, self._start = epoch, 0
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """The inner sampler's position (see reidfast.training.samplers)."""
        return self._resumable().state_dict(batches_consumed)

    def load_state_dict(self, state) -> None:
        """Restores the inner sampler's position: the next iteration yields the rest of the epoch."""
        self._resumable().load_state_dict(state)
        self.epoch, self._start = state["epoch"], state["position"]

    def _resumable(self):
        if not (hasattr(self.batch_sampler, "state_dict") and hasattr(self.batch_sampler, "load_state_dict")):
            raise TypeError(
                f"batch_sampler {type(self.batch_sampler).__name__} has no state_dict/load_state_dict: use a "
                "sampler of reidfast.training to resume mid-epoch"
            )
        return self.batch_sampler

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for position, indices in enumerate(self.batch_sampler, start=self._start):
            base = _mix(self.seed, self.epoch, position)
            first = self.rank * len(indices)
            yield [SampleKey(int(index), _mix(base, first + slot)) for slot, index in enumerate(indices)]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.batch_sampler!r}, seed={self.seed}, rank={self.rank})"


def _loader_options(num_workers, pin_memory, persistent_workers, prefetch_factor):
    check_int("num_workers", num_workers, minimum=0)
    check_bool("pin_memory", pin_memory)
    persistent = num_workers > 0 if persistent_workers is None else persistent_workers
    check_bool("persistent_workers", persistent)
    if persistent and num_workers == 0:
        raise ValueError("persistent_workers=True needs num_workers > 0, got num_workers=0")
    options = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent,
                   collate_fn=collate_batch)
    if prefetch_factor is not None:
        check_int("prefetch_factor", prefetch_factor, minimum=1)
        if num_workers == 0:
            raise ValueError(f"prefetch_factor={prefetch_factor} needs num_workers > 0, got num_workers=0")
        options["prefetch_factor"] = prefetch_factor
    return options


def build_train_loader(dataset: ReIDImageDataset, batch_sampler, seed: int = 0, rank: int = 0, num_workers: int = 2,
                       pin_memory: bool = False, persistent_workers: bool | None = None,
                       prefetch_factor: int | None = None) -> DataLoader:
    """A training DataLoader of `Batch`es: `batch_sampler` (e.g. an IdentityBatchSampler, or a
    BatchSampler over a seeded RandomSampler) wrapped in `SeededBatchSampler(batch_sampler, seed,
    rank)`, so that every item's augmentation is fixed by (seed, rank, epoch, position).

    Call `loader.batch_sampler.set_epoch(epoch)` before each epoch (and its `load_state_dict` to
    resume mid-epoch). The DataLoader's own generator is seeded with `seed` too: anything a custom
    transform draws from torch's default generator is then reproducible for a fixed number of
    workers (torch seeds `random`, numpy and torch in each worker from it).

    Args:
        pin_memory: page-locked batches, for `Batch.to("cuda", non_blocking=True)`.
        persistent_workers: keep workers between epochs (default: when num_workers > 0).
        prefetch_factor: batches each worker loads ahead (torch's default 2 when None).
    """
    if not isinstance(dataset, ReIDImageDataset):
        raise TypeError(f"dataset must be a ReIDImageDataset, got {type(dataset).__name__}")
    options = _loader_options(num_workers, pin_memory, persistent_workers, prefetch_factor)
    if not isinstance(batch_sampler, SeededBatchSampler):
        batch_sampler = SeededBatchSampler(batch_sampler, seed, rank)
    return DataLoader(dataset, batch_sampler=batch_sampler, generator=torch.Generator().manual_seed(seed), **options)


def build_test_loader(dataset: ReIDImageDataset, batch_size: int, num_workers: int = 2, pin_memory: bool = False,
                      persistent_workers: bool | None = None, prefetch_factor: int | None = None) -> DataLoader:
    """An evaluation DataLoader of `Batch`es: every record once, in order, `batch_size` at a time
    (the last batch may be smaller). Use the test transform (`transforms_for(method, train=False)`)."""
    if not isinstance(dataset, ReIDImageDataset):
        raise TypeError(f"dataset must be a ReIDImageDataset, got {type(dataset).__name__}")
    check_int("batch_size", batch_size, minimum=1)
    options = _loader_options(num_workers, pin_memory, persistent_workers, prefetch_factor)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, **options)

