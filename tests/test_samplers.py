"""The batch samplers: P x K batches, the epoch plan, reproducibility, min_images, iteration mode,
distributed parts, resumption, the switching sampler's two plans, anchor-based units, errors."""

import io
import itertools
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from reidfast.training import AnchorBatchSampler, IdentityBatchSampler, SwitchingBatchSampler
from reidfast.training.samplers import _distinct

# 7 identities with uneven image counts (one with fewer than K = 4 images), labels not 0..n-1.
COUNTS = {10: 9, 11: 4, 12: 2, 13: 13, 14: 5, 15: 8, 16: 4}
LABELS = [label for label, count in COUNTS.items() for _ in range(count)]


def test_batches_hold_p_identities_of_k_images():
    sampler = IdentityBatchSampler(LABELS, identities_per_batch=3, images_per_identity=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 12
        per_identity = Counter(LABELS[i] for i in batch)
        assert len(per_identity) == 3 and set(per_identity.values()) == {4}


def test_an_epoch_uses_every_group_until_fewer_than_p_identities_are_left():
    sampler = IdentityBatchSampler(LABELS, identities_per_batch=3, images_per_identity=4, seed=2)
    used = Counter(i for batch in sampler for i in batch)
    groups = {label: max(1, count // 4) for label, count in COUNTS.items()}  # 2, 1, 1, 3, 1, 2, 1
    groups_used = Counter()
    for i, times in used.items():
        groups_used[LABELS[i]] += times
    left = {label: groups[label] - groups_used[label] // 4 for label in groups}
    assert all(n >= 0 for n in left.values())
    assert sum(1 for n in left.values() if n > 0) < 3, f"groups left for 3 or more identities: {left}"
    # Identities with at least K images give distinct images; the one with 2 is drawn with replacement.
    for i, times in used.items():
        assert times == 1 or COUNTS[LABELS[i]] < 4


def test_epochs_are_reproducible_and_differ():
    first = IdentityBatchSampler(LABELS, 2, 4, seed=3)
    again = IdentityBatchSampler(LABELS, 2, 4, seed=3)
    assert list(first) == list(again)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0
    assert list(IdentityBatchSampler(LABELS, 2, 4, seed=4)) != epoch0


def test_as_a_dataloader_batch_sampler():
    labels = torch.tensor(LABELS)
    dataset = TensorDataset(torch.arange(len(LABELS)), labels)
    loader = DataLoader(dataset, batch_sampler=IdentityBatchSampler(labels, 2, 2, seed=0))
    count = 0
    for indices, batch_labels in loader:
        assert batch_labels.tolist() == [LABELS[i] for i in indices.tolist()]
        assert len(set(batch_labels.tolist())) == 2
        count += 1
    assert count == len(loader.batch_sampler)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((LABELS, 1, 4), ValueError, r"identities_per_batch must be >= 2, got 1"),
        ((LABELS, 8, 4), ValueError, r"identities_per_batch=8 is more than the 7 identities in labels"),
        ((LABELS, 2, 0), ValueError, r"images_per_identity must be >= 1, got 0"),
        (([], 2, 4), ValueError, r"labels must not be empty"),
        (([1, 2.5], 2, 4), TypeError, r"labels must hold integers, got float 2.5"),
        ((torch.zeros(4), 2, 4), TypeError, r"labels must be a 1-D integer tensor, got torch.float32"),
        (("abc", 2, 4), TypeError, r"labels must be a sequence of integers or a 1-D integer tensor, got str"),
    ],
)
def test_errors(args, error, message):
    with pytest.raises(error, match=message):
        IdentityBatchSampler(*args)


def test_set_epoch_error():
    with pytest.raises(ValueError, match=r"epoch must be >= 0, got -1"):
        IdentityBatchSampler(LABELS, 2, 4).set_epoch(-1)


# 24 identities with 2 to 10 images each, for the distributed, resumption and switching tests.
MANY_COUNTS = {100 + i: 2 + (7 * i) % 9 for i in range(24)}
MANY = [label for label, count in MANY_COUNTS.items() for _ in range(count)]


def _pattern(seed: int, length: int) -> list[str]:
    """A replayable sequence of "identity" / "random" decisions."""
    draws = torch.rand(length, generator=torch.Generator().manual_seed(seed)).tolist()
    return ["identity" if draw < 0.5 else "random" for draw in draws]


def _replay(decisions):
    """A sampling() callable that returns `decisions` in order."""
    return iter(decisions).__next__


# ---------------------------------------------------------------- min_images


def test_min_images_drops_exactly_the_identities_with_fewer_images():
    # COUNTS: 10: 9, 11: 4, 12: 2, 13: 13, 14: 5, 15: 8, 16: 4; min_images = 5 keeps 10, 13, 14, 15.
    sampler = IdentityBatchSampler(LABELS, 2, 4, seed=6, min_images=5)
    assert sampler.num_dropped_identities == 3
    assert "identities=4, dropped_identities=3 (fewer than min_images=5 images)" in repr(sampler)
    seen = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for batch in sampler:
            seen |= {LABELS[i] for i in batch}
    assert seen == {10, 13, 14, 15}
    # min_images = K drops only identity 12 (2 images), so no image repeats within an epoch.
    used = Counter(i for batch in IdentityBatchSampler(LABELS, 2, 4, seed=7, min_images=4) for i in batch)
    assert set(used.values()) == {1} and 12 not in {LABELS[i] for i in used}


def test_min_images_error_when_fewer_than_p_identities_remain():
    with pytest.raises(ValueError, match=r"identities_per_batch=3 is more than the 2 identities in labels with at "
                                         r"least min_images=9 images \(5 of 7 dropped\)"):
        IdentityBatchSampler(LABELS, 3, 4, min_images=9)
    assert len(IdentityBatchSampler(LABELS, 2, 4, min_images=9)) > 0  # 10 and 13 are left: P = 2 works


# ---------------------------------------------------------------- iteration mode


@pytest.mark.parametrize("num_replicas", [1, 3])
def test_iteration_mode_has_exactly_batches_per_epoch_and_starts_with_the_exhausting_plan(num_replicas):
    for rank in range(num_replicas):
        exhausting = IdentityBatchSampler(MANY, 2, 3, seed=8, num_replicas=num_replicas, rank=rank)
        fixed = IdentityBatchSampler(MANY, 2, 3, seed=8, batches_per_epoch=50, num_replicas=num_replicas, rank=rank)
        for epoch in (0, 1):
            exhausting.set_epoch(epoch)
            fixed.set_epoch(epoch)
            batches = list(fixed)
            assert len(fixed) == len(batches) == 50 > 2 * len(exhausting)
            assert batches[: len(exhausting)] == list(exhausting)
            for batch in batches:
                per_identity = Counter(MANY[i] for i in batch)
                assert len(per_identity) == 2 and set(per_identity.values()) == {3}
    short = IdentityBatchSampler(MANY, 2, 3, seed=8, batches_per_epoch=2)
    assert list(short) == list(IdentityBatchSampler(MANY, 2, 3, seed=8))[:2]


def test_anchor_sampler_iteration_mode_length():
    sampler = AnchorBatchSampler(MANY, 4, 1, 2, seed=9, batches_per_epoch=100)
    assert len(sampler) == len(list(sampler)) == 100
    assert len(AnchorBatchSampler(MANY, 4, 1, 2, seed=9)) == len(MANY) // 4  # every image can be an anchor


# ---------------------------------------------------------------- distributed


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
def test_distributed_identity_batches(num_replicas):
    p, k, seed = 2, 3, seed_for_replicas(num_replicas)
    # The global plan: one process drawing P * R identities per step.
    whole = IdentityBatchSampler(MANY, p * num_replicas, k, seed=seed)
    ranks = [
        IdentityBatchSampler(MANY, p, k, seed=seed, num_replicas=num_replicas, rank=r) for r in range(num_replicas)
    ]
    for epoch in (0, 1):
        whole.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        plans = [list(sampler) for sampler in ranks]
        assert len({len(plan) for plan in plans} | {len(sampler) for sampler in ranks}) == 1
        assert len(plans[0]) == len(whole) > 0
        for step, global_batch in enumerate(whole):
            parts = [plan[step] for plan in plans]
            identities = [{MANY[i] for i in part} for part in parts]
            assert all(len(ids) == p for ids in identities)
            assert len(set().union(*identities)) == p * num_replicas  # disjoint across ranks
            assert [i for part in parts for i in part] == global_batch


def seed_for_replicas(num_replicas: int) -> int:
    return 11 * num_replicas


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
def test_distributed_switching_and_anchor_batches_are_the_parts_of_the_global_plan(num_replicas):
    decisions = _pattern(num_replicas, 64)
    whole = SwitchingBatchSampler(MANY, 2 * num_replicas, 2, _replay(decisions), seed=3, batch_size=4 * num_replicas)
    ranks = [
        list(SwitchingBatchSampler(
            MANY, 2, 2, _replay(decisions), seed=3, batch_size=4, num_replicas=num_replicas, rank=r
        ))
        for r in range(num_replicas)
    ]
    global_plan = list(whole)
    assert len(global_plan) == len(MANY) // (4 * num_replicas)
    assert all(len(plan) == len(global_plan) for plan in ranks)
    for step, batch in enumerate(global_plan):
        assert [i for plan in ranks for i in plan[step]] == batch
        if decisions[step] == "identity":
            assert len(set().union(*({MANY[i] for i in plan[step]} for plan in ranks))) == 2 * num_replicas

    whole = list(AnchorBatchSampler(MANY, 3 * num_replicas, 2, 3, seed=4))
    ranks = [
        list(AnchorBatchSampler(MANY, 3, 2, 3, seed=4, num_replicas=num_replicas, rank=r)) for r in range(num_replicas)
    ]
    assert all(len(plan) == len(whole) for plan in ranks)
    for step, batch in enumerate(whole):
        assert [i for plan in ranks for i in plan[step]] == batch
        anchors = [plan[step][unit * 6] for plan in ranks for unit in range(3)]
        assert len(set(anchors)) == 3 * num_replicas  # each anchor on one rank only


# ---------------------------------------------------------------- resumption


SAMPLERS = {
    "identity": lambda: IdentityBatchSampler(MANY, 3, 2, seed=12),
    "identity_iterations_distributed": lambda: IdentityBatchSampler(
        MANY, 2, 2, seed=12, min_images=3, batches_per_epoch=30, num_replicas=2, rank=1
    ),
    "anchor_cross_view": lambda: AnchorBatchSampler(MANY, 3, 1, 2, seed=12, cameras=[i % 3 for i in range(len(MANY))]),
    "switching_always_identity": lambda: SwitchingBatchSampler(MANY, 2, 3, lambda: "identity", seed=12),
    "switching_always_random": lambda: SwitchingBatchSampler(
        MANY, 2, 3, lambda: "random", seed=12, num_replicas=2, rank=0
    ),
}


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_resuming_from_a_position_yields_exactly_the_rest_of_the_plan(kind):
    make = SAMPLERS[kind]
    uninterrupted = make()
    uninterrupted.set_epoch(1)
    epoch1 = list(uninterrupted)
    uninterrupted.set_epoch(2)
    epoch2 = list(uninterrupted)
    assert len(epoch1) > 4 and epoch1 != epoch2
    for position in (0, 1, len(epoch1) // 2, len(epoch1)):
        interrupted = make()
        interrupted.set_epoch(1)
        batches = iter(interrupted)
        drawn = [next(batches) for _ in range(position)]
        assert drawn == epoch1[:position]
        buffer = io.BytesIO()
        torch.save({"sampler": interrupted.state_dict()}, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)["sampler"]
        assert state["epoch"] == 1 and state["position"] == position

        resumed = make()
        resumed.load_state_dict(state)
        resumed.set_epoch(1)  # a loop's set_epoch at the top of the resumed epoch keeps the position
        assert len(resumed) == len(epoch1) - position
        assert list(resumed) == epoch1[position:]
        assert resumed.state_dict()["position"] == len(epoch1)
        resumed.set_epoch(2)
        assert list(resumed) == epoch2


def test_state_dict_counts_the_batches_consumed_when_the_loader_draws_ahead():
    sampler = IdentityBatchSampler(MANY, 3, 2, seed=13)
    plan = list(sampler)
    batches = iter(sampler)
    for _ in range(5):  # a DataLoader prefetching 2 batches while the loop has consumed 3
        next(batches)
    state = sampler.state_dict(batches_consumed=3)
    assert state["position"] == 3
    resumed = IdentityBatchSampler(MANY, 3, 2, seed=13)
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match=r"batches_consumed must be between 3 \(where this epoch's iteration "
                                         r"started\) and 3 \(the batches drawn so far\), got 2"):
        resumed.state_dict(batches_consumed=2)
    assert list(resumed) == plan[3:]
    with pytest.raises(ValueError, match=r"batches_consumed must be between 0 .* and 5 .*, got 6"):
        sampler.state_dict(batches_consumed=6)


def test_switching_resumes_with_the_decisions_continuing():
    decisions = _pattern(14, 200)
    uninterrupted = list(SwitchingBatchSampler(MANY, 2, 3, _replay(decisions), seed=14))
    interrupted = SwitchingBatchSampler(MANY, 2, 3, _replay(decisions), seed=14)
    batches = iter(interrupted)
    head = [next(batches) for _ in range(7)]
    resumed = SwitchingBatchSampler(MANY, 2, 3, _replay(decisions[7:]), seed=14)
    resumed.load_state_dict(interrupted.state_dict())
    assert head + list(resumed) == uninterrupted


@pytest.mark.parametrize(
    "state, error, message",
    [
        ([1, 2], TypeError, r"state must be a mapping with keys \('epoch', 'position', 'fingerprint'\), got list"),
        ({"epoch": 0, "position": 0}, ValueError, r"state must have exactly the keys .*, got \('epoch', 'position'\)"),
        ({"epoch": True, "position": 0, "fingerprint": 0}, TypeError,
         r"state\['epoch'\] must be an int, got bool True"),
        ({"epoch": 0, "position": -1, "fingerprint": 0}, ValueError, r"state\['position'\] must be >= 0, got -1"),
        ({"epoch": 0, "position": 0, "fingerprint": 5}, ValueError, r"state\['fingerprint'\]=5 is not this sampler's"),
    ],
)
def test_load_state_dict_errors(state, error, message):
    with pytest.raises(error, match=message):
        IdentityBatchSampler(LABELS, 2, 4).load_state_dict(state)


def test_load_state_dict_refuses_other_samplers_and_positions_past_the_end():
    sampler = IdentityBatchSampler(LABELS, 2, 4, seed=1)
    state = sampler.state_dict()
    for other in (
        IdentityBatchSampler(LABELS, 2, 4, seed=2),
        IdentityBatchSampler(LABELS, 2, 4, seed=1, num_replicas=2, rank=1),
        IdentityBatchSampler(LABELS[:-1], 2, 4, seed=1),
        IdentityBatchSampler(LABELS, 2, 4, seed=1, min_images=2),
    ):
        with pytest.raises(ValueError, match=r"comes from a sampler with other labels"):
            other.load_state_dict(state)
    # The state does not depend on the rank: rank 0's checkpoint resumes every rank.
    rank0 = IdentityBatchSampler(LABELS, 2, 2, seed=1, num_replicas=2, rank=0)
    IdentityBatchSampler(LABELS, 2, 2, seed=1, num_replicas=2, rank=1).load_state_dict(rank0.state_dict())
    past = {**state, "position": len(sampler) + 1}
    expected = rf"state\['position'\]={len(sampler) + 1} is past the {len(sampler)} batches of epoch 0"
    with pytest.raises(ValueError, match=expected):
        sampler.load_state_dict(past)


# ---------------------------------------------------------------- switching sampler


def _switching_epoch(sampling, epoch: int) -> list[list[int]]:
    sampler = SwitchingBatchSampler(MANY, 2, 3, sampling, seed=15, batch_size=8, min_images=3)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_switching_batches_depend_on_seed_epoch_position_and_the_decision_only():
    length = len(MANY) // 8
    for epoch in (0, 1):
        plans = {mode: _switching_epoch(lambda mode=mode: mode, epoch) for mode in ("identity", "random")}
        assert len(plans["identity"]) == len(plans["random"]) == length
        for batch in plans["identity"]:
            per_identity = Counter(MANY[i] for i in batch)
            assert len(per_identity) == 2 and set(per_identity.values()) == {3}
            assert all(MANY_COUNTS[label] >= 3 for label in per_identity)  # min_images drops 100, 109, 118
        random_indices = [i for batch in plans["random"] for i in batch]
        assert all(len(batch) == 8 for batch in plans["random"])
        assert len(set(random_indices)) == len(random_indices) == 8 * length  # one permutation, cut
        for history in range(3):
            decisions = _pattern(100 * epoch + history, length)
            expected = [plans[decision][step] for step, decision in enumerate(decisions)]
            assert _switching_epoch(_replay(decisions), epoch) == expected
    assert _switching_epoch(lambda: "random", 0) != _switching_epoch(lambda: "random", 1)


def test_switching_in_a_dataloader_reads_the_decision_per_batch():
    decisions = ["random", "identity", "identity", "random", "identity"]
    calls = []

    def sampling():
        calls.append(len(calls))
        return decisions[len(calls) - 1]

    labels = torch.tensor(MANY)
    dataset = TensorDataset(torch.arange(len(MANY)), labels)
    sampler = SwitchingBatchSampler(labels, 3, 2, sampling, seed=16, batches_per_epoch=5)
    sizes = [len(indices) for indices, _ in DataLoader(dataset, batch_sampler=sampler)]
    assert sizes == [6] * 5 and calls == [0, 1, 2, 3, 4]
    bad = SwitchingBatchSampler(MANY, 2, 2, lambda: "balanced", seed=0)
    with pytest.raises(ValueError, match=r"sampling\(\) must return one of \('identity', 'random'\), got "
                                         r"'balanced' for batch 0 of epoch 0"):
        next(iter(bad))


# ---------------------------------------------------------------- anchor-based units (Algorithm 2)


def test_anchor_units_worked_out_by_hand():
    # Identity 0 = images 0-2, identity 1 = 3-4, identity 2 = 5-7. M = 2 positives: identity 1's
    # images have one other image, so they are never anchors; N = 5 negatives: all of the other
    # identities' images. Every unit is then fixed up to order.
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    positives = {0: {1, 2}, 1: {0, 2}, 2: {0, 1}, 5: {6, 7}, 6: {5, 7}, 7: {5, 6}}
    negatives = {0: {3, 4, 5, 6, 7}, 5: {0, 1, 2, 3, 4}}
    negatives.update({1: negatives[0], 2: negatives[0], 6: negatives[5], 7: negatives[5]})
    sampler = AnchorBatchSampler(labels, 2, 2, 5, seed=17)
    assert "anchors=6 of 8 images" in repr(sampler)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 3 and all(len(batch) == 2 * 8 for batch in batches)
        units = [batch[start:start + 8] for batch in batches for start in (0, 8)]
        assert sorted(unit[0] for unit in units) == [0, 1, 2, 5, 6, 7]  # each possible anchor once
        for unit in units:
            assert set(unit[1:3]) == positives[unit[0]] and set(unit[3:]) == negatives[unit[0]]


def test_anchor_units_cross_view_worked_out_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    cameras = [0, 0, 1, 1, 0, 1, 1, 0, 1]
    # Other-camera images of the same identity, and of other identities, per image.
    positives = {0: {2, 3}, 1: {2, 3}, 2: {0, 1}, 3: {0, 1}, 4: {5, 6}, 5: {4}, 6: {4}, 7: {8}, 8: {7}}
    negatives = {0: {5, 6, 8}, 1: {5, 6, 8}, 2: {4, 7}, 3: {4, 7}, 4: {2, 3, 8}, 5: {0, 1, 7}, 6: {0, 1, 7},
                 7: {2, 3, 5, 6}, 8: {0, 1, 4}}
    # M = 2, N = 3: only images 0, 1 (2 positives, 3 negatives) and 4 (2 and 3) can be anchors.
    strict = AnchorBatchSampler(labels, 1, 2, 3, seed=18, cameras=cameras)
    batches = list(strict)
    assert sorted(batch[0] for batch in batches) == [0, 1, 4]
    for batch in batches:
        assert set(batch[1:3]) == positives[batch[0]] and set(batch[3:]) == negatives[batch[0]]
    with pytest.raises(ValueError, match=r"anchors_per_batch=4 is more than the 3 images that can be anchors .* "
                                         r"images of other identities from other cameras\)"):
        AnchorBatchSampler(labels, 4, 2, 3, cameras=cameras)
    # M = 1, N = 2: every image can be an anchor; positives and negatives are drawn from those sets.
    loose = AnchorBatchSampler(labels, 3, 1, 2, seed=18, cameras=torch.tensor(cameras))
    for epoch in range(4):
        loose.set_epoch(epoch)
        batches = list(loose)
        assert len(batches) == 3 and sorted(batch[u * 4] for batch in batches for u in range(3)) == list(range(9))
        for unit in (batch[u * 4:(u + 1) * 4] for batch in batches for u in range(3)):
            assert unit[1] in positives[unit[0]]
            assert len(set(unit[2:])) == 2 and set(unit[2:]) <= negatives[unit[0]]


def test_distinct_draws_every_subset_equally_often():
    generator = torch.Generator().manual_seed(19)
    counts = Counter(frozenset(_distinct(5, 2, generator)) for _ in range(4000))
    assert set(counts) == {frozenset(pair) for pair in itertools.combinations(range(5), 2)}
    assert all(abs(count / 4000 - 0.1) < 0.025 for count in counts.values()), counts


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: IdentityBatchSampler(LABELS, 2, 4, min_images=0), ValueError, r"min_images must be >= 1, got 0"),
        (lambda: IdentityBatchSampler(LABELS, 2, 4, batches_per_epoch=0), ValueError,
         r"batches_per_epoch must be >= 1, got 0"),
        (lambda: IdentityBatchSampler(LABELS, 2, 4, num_replicas=0), ValueError, r"num_replicas must be >= 1, got 0"),
        (lambda: IdentityBatchSampler(LABELS, 2, 4, num_replicas=2, rank=2), ValueError,
         r"rank must be < num_replicas=2, got 2"),
        (lambda: IdentityBatchSampler(LABELS, 2, 4, rank=-1), ValueError, r"rank must be >= 0, got -1"),
        (lambda: IdentityBatchSampler(LABELS, 3, 4, num_replicas=3), ValueError,
         r"identities_per_batch=3 x num_replicas=3 is more than the 7 identities in labels"),
        (lambda: SwitchingBatchSampler(LABELS, 2, 4, "random"), TypeError,
         r"sampling must be a callable returning 'identity' or 'random', got str"),
        (lambda: SwitchingBatchSampler(LABELS, 2, "4", lambda: "random"), TypeError,
         r"images_per_identity must be an int, got str '4'"),
        (lambda: SwitchingBatchSampler(LABELS, 2, 4, lambda: "random", batch_size=1), ValueError,
         r"batch_size must be >= 2, got 1"),
        (lambda: SwitchingBatchSampler(LABELS, 2, 4, lambda: "random", batch_size=16, num_replicas=3), ValueError,
         r"batch_size=16 x num_replicas=3 is more than the 45 items in labels"),
        (lambda: AnchorBatchSampler(LABELS, 2, 0, 1), ValueError, r"positives_per_anchor must be >= 1, got 0"),
        (lambda: AnchorBatchSampler(LABELS, 2, 1, 0), ValueError, r"negatives_per_anchor must be >= 1, got 0"),
        (lambda: AnchorBatchSampler(LABELS, 2, 1, 1, cameras=[0, 1]), ValueError,
         r"cameras must hold one camera per label \(45\), got 2"),
        (lambda: AnchorBatchSampler(LABELS, 2, 1, 1, cameras=[0.5] * 45), TypeError,
         r"cameras must hold integers, got float 0.5"),
        (lambda: AnchorBatchSampler(LABELS, 14, 12, 1), ValueError,  # only identity 13's 13 images have 12 others
         r"anchors_per_batch=14 is more than the 13 images that can be anchors"),
    ],
)
def test_new_argument_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()
