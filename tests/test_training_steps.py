"""Each method end to end: build_model + build_criterion on a fixed random batch — every parameter
(the criterion's learnable centres included) receives a finite, non-zero gradient, and a few
optimisation steps lower the method's loss."""

import copy
import re

import pytest
import torch

from reidfast.losses import build_criterion
from reidfast.models import MODEL_NAMES, build_model

NUM_IDENTITIES, IMAGES_PER_IDENTITY = 4, 2
# Small images keep the ResNet-50 models quick; every model's stripes still fit the feature map.
IMAGE_SIZE = {name: (128, 64) for name in MODEL_NAMES} | {"adaptive_margin": (230, 80)}
CRITERION_OPTIONS = {"plr_osnet": {"num_classes": NUM_IDENTITIES}}
# Parameters whose gradient is exactly zero at initialisation by design: PLR-OSNet's spatial
# attention adds `scale * attention(x)` with `scale` initialised to 0, so its query, key and value
# convolutions receive a gradient only once the scale has moved.
ZERO_AT_INIT = {"plr_osnet": r"model\.attention\d\.spatial\.(query|key|value)\."}


def build(name):
    torch.manual_seed(0)
    num_classes = 0 if name == "adaptive_margin" else NUM_IDENTITIES
    model = build_model(name, num_classes).train()
    criterion = build_criterion(name, **CRITERION_OPTIONS.get(name, {}))
    return model, criterion


def fixed_batch(name):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(NUM_IDENTITIES * IMAGES_PER_IDENTITY, 3, *IMAGE_SIZE[name], generator=generator)
    labels = torch.arange(NUM_IDENTITIES).repeat_interleave(IMAGES_PER_IDENTITY)
    return images, labels


def objective(name, criterion, model, images, labels) -> float:
    """The method's loss on the batch, without changing the criterion's state. For Pyramid, the
    unweighted ID + triplet losses: its dynamic weights change from step to step by design."""
    torch.manual_seed(2)  # the same dropout masks at every evaluation
    with torch.no_grad():
        result = copy.deepcopy(criterion).eval()(model(images), labels)
    if name == "pyramid":
        return (result.components["id"] + result.components["triplet"]).item()
    return result.loss.item()


def backward(model, criterion, images, labels, trainable):
    """One forward and backward pass; the names of the parameters whose gradient is all zeros."""
    for _, parameter in trainable:
        parameter.grad = None
    result = criterion(model(images), labels)
    result.loss.backward()
    assert torch.isfinite(result.loss)
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    not_finite = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"parameters with a non-finite gradient: {not_finite}"
    return [n for n, p in trainable if not p.grad.any()]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_receives_a_gradient(name):
    model, criterion = build(name)
    images, labels = fixed_batch(name)
    trainable = [(f"model.{n}", p) for n, p in model.named_parameters() if p.requires_grad]
    trainable += [(f"criterion.{n}", p) for n, p in criterion.named_parameters() if p.requires_grad]
    zero = backward(model, criterion, images, labels, trainable)
    pattern = ZERO_AT_INIT.get(name)
    expected_zero = [n for n, _ in trainable if pattern is not None and re.match(pattern, n)]
    assert zero == expected_zero, f"parameters with an all-zero gradient: {zero}"
    if expected_zero:
        # One step moves what held their gradient at zero; from then on they learn too.
        torch.optim.SGD([p for _, p in trainable], lr=0.1).step()
        zero = backward(model, criterion, images, labels, trainable)
        assert not zero, f"parameters with an all-zero gradient after one step: {zero}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_optimisation_steps_lower_the_loss(name):
    model, criterion = build(name)
    images, labels = fixed_batch(name)
    before = objective(name, criterion, model, images, labels)
    optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=1e-4)
    for _ in range(4):
        optimizer.zero_grad()
        criterion(model(images), labels).loss.backward()
        optimizer.step()
    after = objective(name, criterion, model, images, labels)
    assert after < before, f"{name}: loss {before:.5f} -> {after:.5f} after 4 steps"
