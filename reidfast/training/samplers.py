"""Batch samplers for the metric losses, resumable mid-epoch and split across distributed ranks.

- `IdentityBatchSampler`: P identities x K images per batch (MGN: P=16, K=4; PLA: 16 x 8;
  Pyramid's identity-balanced mode: 8 x 8).
- `SwitchingBatchSampler`: each batch identity-balanced or random, as a callable decides when the
  batch is drawn (Pyramid's dynamic training reads `PyramidCriterion.sampling`).
- `AnchorBatchSampler`: the adaptive-margin paper's anchor-based units (A anchors, each with M
  positives and N negatives).

What they share (the contract a trainer relies on):

- **Plans fixed by (seed, epoch, step).** An epoch's batches are a plan computed from the seed and
  the epoch alone, so `len()` is exact and a rerun repeats them; each plan draws from its own
  torch.Generator, never from the global generators, so drawing batches leaves the training's
  random streams (dropout, augmentation) as they are. Call `set_epoch` at the start of
  each epoch, as with DistributedSampler; calling it with the current epoch changes nothing, so a
  loop that calls it every epoch keeps a position that `load_state_dict` restored.
- **Epoch-exhausting or iteration-based.** Without `batches_per_epoch`, an epoch ends when the
  plan runs out (every image used about once). With it, an epoch is exactly that many batches,
  taken from as many successive rounds of the epoch-exhausting plan as it takes (the first round
  is the epoch-exhausting plan itself), for methods trained by iterations.
- **Distributed.** With `num_replicas` R and `rank` r, every rank computes the same global plan
  from the one shared seed, whose steps hold R times the blocks (identity groups, anchor units or
  images) of a batch, and keeps blocks [r * n, (r + 1) * n). So every rank has the same number of
  batches, and the ranks' batches at one step, concatenated in rank order, are the batch of a
  single-process sampler with R times the blocks per batch (e.g. `IdentityBatchSampler` with
  P * R identities): a DDP run sees exactly the data of that single-process run.
- **Resumable.** `state_dict()` gives `{"epoch", "position", "fingerprint"}`, plain ints that a
  checkpoint loaded with `torch.load(weights_only=True)` reads back; `load_state_dict(state)`
  makes the next iteration yield exactly the rest of that epoch's plan. `position` counts the
  batches drawn from the sampler; a DataLoader with workers draws `prefetch_factor * num_workers`
  batches ahead of the loop, so a trainer passes the number of batches it has consumed:
  `state_dict(batches_consumed=...)`. The state is the same on every rank, so rank 0's checkpoint
  resumes all of them. `fingerprint` (a CRC-32 of the labels and the sampler's arguments, rank
  excluded) makes resuming with other labels, batch layout, seed or world size an error instead of
  a different plan.

Use any of them as a DataLoader's `batch_sampler`.
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler

from reidfast._checks import check_int

# Independent random streams for the plans of one (seed, epoch); the identity stream keeps the
# formula of the first IdentityBatchSampler, so its plans did not change.
_IDENTITY_STREAM, _RANDOM_STREAM, _ANCHOR_STREAM = 0, 1, 2
_STATE_KEYS = ("epoch", "position", "fingerprint")
SAMPLING_MODES = ("identity", "random")


class _ResumableBatchSampler(Sampler[list[int]], abc.ABC):
    """An epoch's batches drawn in order from a plan fixed by (seed, epoch); the position in it is
    saved and restored. Subclasses make the plan (`_make_plan`) and may say how a step is drawn
    from it (`_draw`)."""

    def __init__(self, seed: int, batches_per_epoch: int | None, num_replicas: int, rank: int, fingerprint: int):
        self.seed, self.batches_per_epoch, self.num_replicas, self.rank = seed, batches_per_epoch, num_replicas, rank
        self._fingerprint = fingerprint
        self._epoch = 0
        self._start = 0  # the step the next iteration starts from
        self._drawn = 0  # the steps of this epoch drawn so far
        self._cached_epoch: int | None = None
        self._cached_plan = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose batches the next iteration yields, from its first batch; the
        current epoch is left as it is (so a position restored by `load_state_dict` is kept)."""
        check_int("epoch", epoch, minimum=0)
        if epoch != self._epoch:
            self._epoch, self._start, self._drawn = epoch, 0, 0

    def __len__(self) -> int:
        """The number of batches the next iteration yields: the epoch's, or its rest after
        `load_state_dict`."""
        return self._num_batches(self._epoch) - self._start

    def __iter__(self) -> Iterator[list[int]]:
        self._drawn = self._start
        return self._steps(self._epoch, self._start)

    def _steps(self, epoch: int, start: int) -> Iterator[list[int]]:
        plan = self._plan(epoch)
        for step in range(start, self._num_batches(epoch)):
            batch = self._draw(plan, epoch, step)
            self._drawn = step + 1
            yield batch

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, int]:
        """The position in the plan, as plain ints: {"epoch", "position", "fingerprint"}.

        Args:
            batches_consumed: the batches of this epoch the loop has consumed (the position to
                resume from), when the sampler has drawn more (a DataLoader's workers prefetch);
                between the position this epoch's iteration started from and the batches drawn.
                None: the batches drawn.
        """
        if batches_consumed is None:
            position = self._drawn
        else:
            check_int("batches_consumed", batches_consumed, minimum=0)
            if not self._start <= batches_consumed <= self._drawn:
                raise ValueError(
                    f"batches_consumed must be between {self._start} (where this epoch's iteration started) "
                    f"and {self._drawn} (the batches drawn so far), got {batches_consumed}"
                )
            position = batches_consumed
        return {"epoch": self._epoch, "position": position, "fingerprint": self._fingerprint}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Makes the next iteration yield the rest of `state["epoch"]`'s plan from `state["position"]`."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping with keys {_STATE_KEYS}, got {type(state).__name__}")
        if set(state) != set(_STATE_KEYS):
            raise ValueError(f"state must have exactly the keys {_STATE_KEYS}, got {tuple(state)}")
        for key in _STATE_KEYS:
            check_int(f"state[{key!r}]", state[key], minimum=0)
        if state["fingerprint"] != self._fingerprint:
            raise ValueError(
                f"state['fingerprint']={state['fingerprint']} is not this sampler's {self._fingerprint}: the state "
                "comes from a sampler with other labels, batch layout, seed or num_replicas"
            )
        total = self._num_batches(state["epoch"])
        if state["position"] > total:
            raise ValueError(
                f"state['position']={state['position']} is past the {total} batches of epoch {state['epoch']}"
            )
        self._epoch, self._start, self._drawn = state["epoch"], state["position"], state["position"]

    def _plan(self, epoch: int):
        if self._cached_epoch != epoch:
            self._cached_plan, self._cached_epoch = self._make_plan(epoch), epoch
        return self._cached_plan

    @abc.abstractmethod
    def _make_plan(self, epoch: int):
        """This rank's plan of `epoch`."""

    def _num_batches(self, epoch: int) -> int:
        return len(self._plan(epoch))

    def _draw(self, plan, epoch: int, step: int) -> list[int]:
        return plan[step]

    def _replica_repr(self) -> str:
        return (
            f"batches_per_epoch={self.batches_per_epoch}, num_replicas={self.num_replicas}, rank={self.rank}, "
            f"seed={self.seed}"
        )


class IdentityBatchSampler(_ResumableBatchSampler):
    """Batches of `identities_per_batch` (P) identities x `images_per_identity` (K) images.

    An epoch, as torchreid's RandomIdentitySampler makes one: each identity's images are shuffled
    and cut into groups of K (the last, incomplete group is dropped; an identity with fewer than K
    images gives one group drawn with replacement); then, while P * R identities (R =
    `num_replicas`) still have groups, P * R of them are drawn uniformly at random and each gives
    its next group; rank r takes identities [r * P, (r + 1) * P) of them. So an epoch uses about
    every image once, every batch holds exactly P distinct identities x K images, identity by
    identity, and at each step the ranks hold different identities, each one whole (its K images on
    one rank). See the module docstring for the epoch, iteration, distributed and resumption rules.

    `min_images` drops the identities with fewer images, as the Pyramid paper's identity-balanced
    sampling does ("those whose number of images is less than 8 will never be used", "Pyramidal
    Person Re-IDentification via Multi-Loss Dynamic Training", arXiv:1810.12193, Sec. 3.2.2): with
    `min_images=K` no group is drawn with replacement. `repr` says how many were dropped.

    Args:
        labels (Sequence[int] or Tensor[N]): the identity of each dataset item, any integer values.
        identities_per_batch: P (>= 2: a batch needs negatives).
        images_per_identity: K (>= 1).
        seed: the random seed of every epoch's plan, the same on every rank.
        min_images: identities with fewer images are never sampled (>= 1; 1 keeps all); at least
            P * R identities must remain.
        batches_per_epoch: batches per epoch and rank (None: until the groups run out).
        num_replicas, rank: R ranks (>= 1), this one's rank (0 <= rank < R).

    Yields:
        list[int]: the dataset indices of one batch (P * K of them).
    """

    def __init__(
        self,
        labels,
        identities_per_batch: int,
        images_per_identity: int,
        seed: int = 0,
        *,
        min_images: int = 1,
        batches_per_epoch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        check_int("identities_per_batch", identities_per_batch, minimum=2)
        check_int("images_per_identity", images_per_identity, minimum=1)
        check_int("min_images", min_images, minimum=1)
        _check_common(seed, batches_per_epoch, num_replicas, rank)
        labels = _as_int_list("labels", labels)
        by_identity: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_identity.setdefault(label, []).append(index)
        kept = [by_identity[identity] for identity in sorted(by_identity) if len(by_identity[identity]) >= min_images]
        self.num_dropped_identities = len(by_identity) - len(kept)
        if len(kept) < identities_per_batch * num_replicas:
            replicas = f" x num_replicas={num_replicas}" if num_replicas > 1 else ""
            dropped = (
                f" with at least min_images={min_images} images ({self.num_dropped_identities} of "
                f"{len(by_identity)} dropped)"
                if self.num_dropped_identities
                else ""
            )
            raise ValueError(
                f"identities_per_batch={identities_per_batch}{replicas} is more than the {len(kept)} identities "
                f"in labels{dropped}"
            )
        self.identities_per_batch, self.images_per_identity, self.min_images = (
            identities_per_batch, images_per_identity, min_images,
        )
        self._by_identity = kept
        arguments = (identities_per_batch, images_per_identity, min_images, seed, batches_per_epoch, num_replicas)
        super().__init__(seed, batches_per_epoch, num_replicas, rank, _fingerprint(type(self), arguments, labels))

    def _make_plan(self, epoch: int) -> list[list[int]]:
        generator = _epoch_generator(self.seed, epoch, _IDENTITY_STREAM)
        return _epoch_plan(
            lambda: self._round(generator), self.batches_per_epoch, self.identities_per_batch, self.rank
        )

    def _round(self, generator: torch.Generator) -> Iterator[list[list[int]]]:
        """One epoch-exhausting round of global steps, each P * R groups of K indices."""
        k = self.images_per_identity
        groups: list[list[list[int]]] = []  # per identity, its groups of K indices
        for indices in self._by_identity:
            pool = torch.tensor(indices)
            if len(indices) < k:
                groups.append([pool[torch.randint(len(indices), (k,), generator=generator)].tolist()])
            else:
                shuffled = pool[torch.randperm(len(indices), generator=generator)]
                groups.append([shuffled[start:start + k].tolist() for start in range(0, len(indices) - k + 1, k)])
        per_step = self.identities_per_batch * self.num_replicas
        while True:
            remaining = [identity for identity, left in enumerate(groups) if left]
            if len(remaining) < per_step:
                return
            chosen = torch.randperm(len(remaining), generator=generator)[:per_step]
            yield [groups[remaining[j]].pop() for j in chosen.tolist()]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(identities={len(self._by_identity)}, dropped_identities="
            f"{self.num_dropped_identities} (fewer than min_images={self.min_images} images), identities_per_batch="
            f"{self.identities_per_batch}, images_per_identity={self.images_per_identity}, {self._replica_repr()})"
        )


class SwitchingBatchSampler(_ResumableBatchSampler):
    """Each batch identity-balanced (P x K) or random (`batch_size` images), as `sampling()` says
    when the batch is drawn: Pyramid's dynamic training ("Pyramidal Person Re-IDentification via
    Multi-Loss Dynamic Training", arXiv:1810.12193, Algorithm 1: random sampling while the ID loss
    alone is optimised, ID-balanced sampling with the weighted sum of both losses).

    Use it with `sampling=lambda: criterion.sampling` (a PyramidCriterion). Every epoch has two
    plans of `batches_per_epoch` batches, both fixed by (seed, epoch): an `IdentityBatchSampler`'s
    in iteration mode (with `min_images`), and a random one (successive random permutations of all
    the dataset's items, cut into batches; rank r takes images [r * B, (r + 1) * B) of each step's
    R * B). Batch `step` is step `step` of the plan `sampling()` names, so it depends on (seed,
    epoch, step) and that one decision, never on the earlier ones; resuming needs the sampler's
    position and the decision's state (the criterion's state_dict).

    The decision is read when the DataLoader draws the batch. A DataLoader with workers draws
    `prefetch_factor * num_workers` batches ahead of the loop, so the decision would come from an
    older criterion state than Algorithm 1's (the state after the previous batch); iterate with
    `num_workers=0` to keep its order. Under DDP, `sampling()` must return the same on every rank
    (a criterion whose losses are averaged across ranks before it updates). Random batches hold any
    identities; a criterion that needs two identities per batch needs `batch_size` well above the
    largest identity's image count.

    Args:
        labels (Sequence[int] or Tensor[N]): the identity of each dataset item.
        identities_per_batch, images_per_identity: P (>= 2) and K (>= 1) of the identity batches.
        sampling (Callable[[], str]): returns "identity" or "random" for the next batch.
        seed: the random seed of both plans, the same on every rank.
        batch_size: images per random batch (>= 2; None: P * K).
        min_images: as for IdentityBatchSampler (identity batches only; random batches draw from
            every item).
        batches_per_epoch: batches per epoch and rank (None: N // (R * batch_size), one pass of the
            random plan over the data).
        num_replicas, rank: R ranks (>= 1), this one's rank (0 <= rank < R).

    Yields:
        list[int]: the dataset indices of one batch (P * K or batch_size of them).
    """

    def __init__(
        self,
        labels,
        identities_per_batch: int,
        images_per_identity: int,
        sampling: Callable[[], str],
        seed: int = 0,
        *,
        batch_size: int | None = None,
        min_images: int = 1,
        batches_per_epoch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        check_int("identities_per_batch", identities_per_batch, minimum=2)
        check_int("images_per_identity", images_per_identity, minimum=1)
        check_int("min_images", min_images, minimum=1)
        if not callable(sampling):
            raise TypeError(
                f"sampling must be a callable returning 'identity' or 'random', got {type(sampling).__name__}"
            )
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=2)
        _check_common(seed, batches_per_epoch, num_replicas, rank)
        labels = _as_int_list("labels", labels)
        batch_size = identities_per_batch * images_per_identity if batch_size is None else batch_size
        if len(labels) < batch_size * num_replicas:
            replicas = f" x num_replicas={num_replicas}" if num_replicas > 1 else ""
            raise ValueError(f"batch_size={batch_size}{replicas} is more than the {len(labels)} items in labels")
        if batches_per_epoch is None:
            batches_per_epoch = len(labels) // (batch_size * num_replicas)
        self._identity = IdentityBatchSampler(
            labels, identities_per_batch, images_per_identity, seed,
            min_images=min_images, batches_per_epoch=batches_per_epoch, num_replicas=num_replicas, rank=rank,
        )
        self.sampling, self.batch_size, self._num_items = sampling, batch_size, len(labels)
        fingerprint = _fingerprint(type(self), (self._identity._fingerprint, batch_size), [])
        super().__init__(seed, batches_per_epoch, num_replicas, rank, fingerprint)

    def _make_plan(self, epoch: int) -> tuple[list[list[int]], list[list[int]]]:
        generator = _epoch_generator(self.seed, epoch, _RANDOM_STREAM)
        random_plan = _epoch_plan(
            lambda: self._random_round(generator), self.batches_per_epoch, self.batch_size, self.rank
        )
        return self._identity._plan(epoch), random_plan

    def _random_round(self, generator: torch.Generator) -> Iterator[list[list[int]]]:
        """One random permutation of the items, cut into global steps of R * batch_size one-item blocks."""
        order = torch.randperm(self._num_items, generator=generator).tolist()
        per_step = self.batch_size * self.num_replicas
        for start in range(0, len(order) - per_step + 1, per_step):
            yield [[index] for index in order[start:start + per_step]]

    def _num_batches(self, epoch: int) -> int:
        return self.batches_per_epoch

    def _draw(self, plan, epoch: int, step: int) -> list[int]:
        choice = self.sampling()
        if choice not in SAMPLING_MODES:
            raise ValueError(
                f"sampling() must return one of {SAMPLING_MODES}, got {choice!r} for batch {step} of epoch {epoch}"
            )
        identity_plan, random_plan = plan
        return identity_plan[step] if choice == "identity" else random_plan[step]

    def __repr__(self) -> str:
        identity = self._identity
        return (
            f"{type(self).__name__}(identities={len(identity._by_identity)}, dropped_identities="
            f"{identity.num_dropped_identities} (fewer than min_images={identity.min_images} images), "
            f"identities_per_batch={identity.identities_per_batch}, images_per_identity="
            f"{identity.images_per_identity}, batch_size={self.batch_size}, {self._replica_repr()})"
        )


class AnchorBatchSampler(_ResumableBatchSampler):
    """Anchor-based mini-batches: A anchors, each with M positives and N negatives ("Deep Ranking
    Model by Large Adaptive Margin Learning for Person Re-identification", arXiv:1707.00409, Sec. 5,
    Algorithm 2 and Fig. 6).

    A batch is A anchor-based units, one after the other; a unit is
    `[anchor, positive_1 .. positive_M, negative_1 .. negative_N]`: M distinct images of the
    anchor's identity other than the anchor, and N distinct images of other identities, each set
    drawn uniformly at random. With `cameras`, positives and negatives come from cameras other than
    the anchor's, the paper's pairs of a probe-view anchor with gallery-view images; without, from
    any camera. An image can be an anchor when it has M positives and N negatives to draw from.
    An epoch takes every such image once as an anchor, in random order, R * A per step (rank r
    keeps units [r * A, (r + 1) * A)), and leaves the last incomplete step out. Units are drawn
    independently, as Algorithm 2 draws them, so two units of a batch can share images.

    The adaptive-margin loss (reidfast.losses.AdaptiveMarginLoss) takes every pair of the batch by
    label, so each batch has positive pairs (anchor-positive, positive-positive) and negative pairs.

    Args:
        labels (Sequence[int] or Tensor[N]): the identity of each dataset item.
        anchors_per_batch: A (>= 1).
        positives_per_anchor: M (>= 1).
        negatives_per_anchor: N (>= 1).
        seed: the random seed of every epoch's plan, the same on every rank.
        cameras (Sequence[int] or Tensor[N] or None): each item's camera, to draw cross-view units.
        batches_per_epoch: batches per epoch and rank (None: until the anchors run out).
        num_replicas, rank: R ranks (>= 1), this one's rank (0 <= rank < R).

    Yields:
        list[int]: the dataset indices of one batch (A * (1 + M + N) of them).
    """

    def __init__(
        self,
        labels,
        anchors_per_batch: int,
        positives_per_anchor: int,
        negatives_per_anchor: int,
        seed: int = 0,
        *,
        cameras=None,
        batches_per_epoch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        check_int("anchors_per_batch", anchors_per_batch, minimum=1)
        check_int("positives_per_anchor", positives_per_anchor, minimum=1)
        check_int("negatives_per_anchor", negatives_per_anchor, minimum=1)
        _check_common(seed, batches_per_epoch, num_replicas, rank)
        labels = _as_int_list("labels", labels)
        if cameras is not None:
            cameras = _as_int_list("cameras", cameras)
            if len(cameras) != len(labels):
                raise ValueError(f"cameras must hold one camera per label ({len(labels)}), got {len(cameras)}")
        self.anchors_per_batch, self.positives_per_anchor, self.negatives_per_anchor = (
            anchors_per_batch, positives_per_anchor, negatives_per_anchor,
        )
        self._labels, self._cameras = labels, cameras
        self._by_identity: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self._by_identity.setdefault(label, []).append(index)
        # Per view: the images it offers, sorted by identity, and each identity's [start, end)
        # there, so that "other identities" is that list with one contiguous run left out.
        by_label = sorted(range(len(labels)), key=lambda index: (labels[index], index))
        self._pools: dict[int | None, list[int]] = {}
        self._runs: dict[int | None, dict[int, tuple[int, int]]] = {}
        for key in sorted({self._view(index) for index in range(len(labels))}):
            pool = by_label if key is None else [index for index in by_label if cameras[index] != key]
            runs: dict[int, tuple[int, int]] = {}
            for position, index in enumerate(pool):
                start, _ = runs.get(labels[index], (position, position))
                runs[labels[index]] = (start, position + 1)
            self._pools[key], self._runs[key] = pool, runs
        self._anchors = [
            index for index in range(len(labels))
            if len(self._positives(index)) >= positives_per_anchor
            and self._num_negatives(index) >= negatives_per_anchor
        ]
        if len(self._anchors) < anchors_per_batch * num_replicas:
            replicas = f" x num_replicas={num_replicas}" if num_replicas > 1 else ""
            views = " from other cameras" if cameras is not None else ""
            raise ValueError(
                f"anchors_per_batch={anchors_per_batch}{replicas} is more than the {len(self._anchors)} images that "
                f"can be anchors (an anchor needs positives_per_anchor={positives_per_anchor} other images of its "
                f"identity and negatives_per_anchor={negatives_per_anchor} images of other identities{views})"
            )
        arguments = (
            anchors_per_batch, positives_per_anchor, negatives_per_anchor, seed, batches_per_epoch, num_replicas,
        )
        fingerprint = _fingerprint(type(self), arguments, labels + ([] if cameras is None else [None] + cameras))
        super().__init__(seed, batches_per_epoch, num_replicas, rank, fingerprint)

    def _view(self, anchor: int) -> int | None:
        """The images a unit may draw from: None (every camera) or the anchor's camera, whose
        images are left out."""
        return None if self._cameras is None else self._cameras[anchor]

    def _positives(self, anchor: int) -> list[int]:
        key = self._view(anchor)
        return [
            index for index in self._by_identity[self._labels[anchor]]
            if index != anchor and (key is None or self._cameras[index] != key)
        ]

    def _num_negatives(self, anchor: int) -> int:
        key = self._view(anchor)
        start, end = self._runs[key].get(self._labels[anchor], (0, 0))
        return len(self._pools[key]) - (end - start)

    def _unit(self, anchor: int, generator: torch.Generator) -> list[int]:
        positives = self._positives(anchor)
        key = self._view(anchor)
        pool = self._pools[key]
        start, end = self._runs[key].get(self._labels[anchor], (0, 0))
        # Position t of "the pool without the anchor's identity" is pool[t] before the run, pool[t + run] after.
        negatives = [
            pool[t if t < start else t + end - start]
            for t in _distinct(len(pool) - (end - start), self.negatives_per_anchor, generator)
        ]
        chosen = [positives[t] for t in _distinct(len(positives), self.positives_per_anchor, generator)]
        return [anchor] + chosen + negatives

    def _make_plan(self, epoch: int) -> list[list[int]]:
        generator = _epoch_generator(self.seed, epoch, _ANCHOR_STREAM)
        return _epoch_plan(lambda: self._round(generator), self.batches_per_epoch, self.anchors_per_batch, self.rank)

    def _round(self, generator: torch.Generator) -> Iterator[list[list[int]]]:
        """Every possible anchor once, in random order: global steps of R * A units."""
        order = torch.randperm(len(self._anchors), generator=generator).tolist()
        per_step = self.anchors_per_batch * self.num_replicas
        for start in range(0, len(order) - per_step + 1, per_step):
            yield [self._unit(self._anchors[j], generator) for j in order[start:start + per_step]]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(anchors={len(self._anchors)} of {len(self._labels)} images, anchors_per_batch="
            f"{self.anchors_per_batch}, positives_per_anchor={self.positives_per_anchor}, negatives_per_anchor="
            f"{self.negatives_per_anchor}, cross_view={self._cameras is not None}, {self._replica_repr()})"
        )


def _epoch_plan(
    next_round: Callable[[], Iterator[list[list[int]]]], batches_per_epoch: int | None, blocks_per_rank: int, rank: int
) -> list[list[int]]:
    """This rank's batches of an epoch: the global steps of one round (epoch-exhausting), or of as
    many rounds as `batches_per_epoch` takes, each step's blocks [rank * n, (rank + 1) * n) joined.
    Every round yields at least one step (the samplers check their sizes), so this ends."""
    batches: list[list[int]] = []
    part = slice(rank * blocks_per_rank, (rank + 1) * blocks_per_rank)
    while True:
        for blocks in next_round():
            batches.append([index for block in blocks[part] for index in block])
            if len(batches) == batches_per_epoch:
                return batches
        if batches_per_epoch is None:
            return batches


def _distinct(size: int, count: int, generator: torch.Generator) -> list[int]:
    """`count` distinct positions of range(size), a uniformly random subset (Floyd's algorithm: one
    draw per element, whatever `size`, so a large pool costs nothing to draw from)."""
    draws = torch.rand(count, generator=generator, dtype=torch.float64).tolist()
    chosen: list[int] = []
    taken: set[int] = set()
    for draw, top in zip(draws, range(size - count, size)):
        position = min(int(draw * (top + 1)), top)  # uniform on 0..top; min() guards rounding up to top + 1
        if position in taken:
            position = top
        taken.add(position)
        chosen.append(position)
    return chosen


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + 1_000_003 * epoch + (stream << 62)) % (1 << 64))


def _fingerprint(kind: type, arguments: tuple, labels: list) -> int:
    return zlib.crc32(repr((kind.__name__, arguments, labels)).encode())


def _check_common(seed, batches_per_epoch, num_replicas, rank) -> None:
    check_int("seed", seed, minimum=0)
    if batches_per_epoch is not None:
        check_int("batches_per_epoch", batches_per_epoch, minimum=1)
    check_int("num_replicas", num_replicas, minimum=1)
    check_int("rank", rank, minimum=0)
    if rank >= num_replicas:
        raise ValueError(f"rank must be < num_replicas={num_replicas}, got {rank}")


def _as_int_list(name: str, values) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor, got {values.dtype} of shape {tuple(values.shape)}")
        result = values.tolist()
    elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        result = list(values)
        for value in result:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must hold integers, got {type(value).__name__} {value!r}")
    else:
        raise TypeError(f"{name} must be a sequence of integers or a 1-D integer tensor, got {type(values).__name__}")
    if not result:
        raise ValueError(f"{name} must not be empty")
    return result
