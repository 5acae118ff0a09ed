"""IdentityBatchSampler: P x K batches, the epoch plan, reproducibility, DataLoader use, errors."""

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from reidfast.training import IdentityBatchSampler

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
