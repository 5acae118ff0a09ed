"""Identity-balanced ("P x K") batches for the metric losses.

The triplet and adaptive-margin losses need positives and negatives in every batch, so the methods
draw batches of P identities with K images each (MGN: P=16, K=4; PLA: 16 x 8; Pyramid's
identity-balanced mode: 8 x 8). A random batch is `torch.utils.data.BatchSampler(RandomSampler(
dataset), batch_size, drop_last=True)`; the Pyramid criterion's `sampling` attribute says which of
the two the next batch needs (see reidfast.losses.PyramidCriterion).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from reidfast._checks import check_int


class IdentityBatchSampler(Sampler[list[int]]):
    """Batches of `identities_per_batch` (P) identities x `images_per_identity` (K) images.

    An epoch, as torchreid's RandomIdentitySampler makes one: each identity's images are shuffled
    and cut into groups of K (the last, incomplete group is dropped; an identity with fewer than K
    images gives one group drawn with replacement); then, while P identities still have groups,
    P of them are drawn uniformly at random and each gives its next group. So an epoch uses about
    every image once, and every batch holds exactly P distinct identities x K images, identity by
    identity. The epoch's batches are fixed by (seed, epoch), so `len()` is exact and a resumed
    run repeats them; call `set_epoch` at the start of each epoch, as with DistributedSampler.

    Use it as a DataLoader's `batch_sampler`:
    `DataLoader(dataset, batch_sampler=IdentityBatchSampler(labels, 16, 4))`.

    Args:
        labels (Sequence[int] or Tensor[N]): the identity of each dataset item, any integer values.
        identities_per_batch: P (>= 2: a batch needs negatives); at most the number of identities.
        images_per_identity: K (>= 1).
        seed: the random seed of every epoch's plan.

    Yields:
        list[int]: the dataset indices of one batch (P * K of them).
    """

    def __init__(self, labels, identities_per_batch: int, images_per_identity: int, seed: int = 0):
        check_int("identities_per_batch", identities_per_batch, minimum=2)
        check_int("images_per_identity", images_per_identity, minimum=1)
        check_int("seed", seed, minimum=0)
        labels = _as_label_list(labels)
        by_identity: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_identity.setdefault(label, []).append(index)
        if len(by_identity) < identities_per_batch:
            raise ValueError(
                f"identities_per_batch={identities_per_batch} is more than the {len(by_identity)} "
                "identities in labels"
            )
        self.identities_per_batch, self.images_per_identity, self.seed = identities_per_batch, images_per_identity, seed
        self._by_identity = [by_identity[identity] for identity in sorted(by_identity)]
        self._epoch = 0
        self._plan: list[list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose batches the next iteration yields."""
        check_int("epoch", epoch, minimum=0)
        if epoch != self._epoch:
            self._epoch, self._plan = epoch, None

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())

    def _batches(self) -> list[list[int]]:
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan

    def _make_plan(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self._epoch)
        k = self.images_per_identity
        groups: list[list[list[int]]] = []  # per identity, its groups of K indices
        for indices in self._by_identity:
            pool = torch.tensor(indices)
            if len(indices) < k:
                groups.append([pool[torch.randint(len(indices), (k,), generator=generator)].tolist()])
            else:
                shuffled = pool[torch.randperm(len(indices), generator=generator)]
                groups.append([shuffled[start:start + k].tolist() for start in range(0, len(indices) - k + 1, k)])
        batches = []
        while True:
            remaining = [identity for identity, left in enumerate(groups) if left]
            if len(remaining) < self.identities_per_batch:
                return batches
            chosen = torch.randperm(len(remaining), generator=generator)[: self.identities_per_batch]
            batches.append([index for j in chosen.tolist() for index in groups[remaining[j]].pop()])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(identities={len(self._by_identity)}, identities_per_batch="
            f"{self.identities_per_batch}, images_per_identity={self.images_per_identity}, seed={self.seed})"
        )


def _as_label_list(labels) -> list[int]:
    if isinstance(labels, torch.Tensor):
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
        values = labels.tolist()
    elif isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        values = list(labels)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"labels must hold integers, got {type(value).__name__} {value!r}")
    else:
        raise TypeError(f"labels must be a sequence of integers or a 1-D integer tensor, got {type(labels).__name__}")
    if not values:
        raise ValueError("labels must not be empty")
    return values
