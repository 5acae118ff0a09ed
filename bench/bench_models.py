"""One training step of each method's model: build_model + build_criterion + SGD, in one run.

Implementations timed per case:
  reidfast    the ops on the fastest backend for the device (what a user gets by default)
  reference   every reidfast op on its plain-PyTorch reference (REIDFAST_BACKEND=reference); the
              model's other layers (backbone, batched branch layers) are the same
A step is: zero_grad, forward in train mode, the method's criterion, backward, SGD step (momentum
0.9). Images are each method's training size (docs/methods.md); batches are identities x 4 images.
On the GPU the step runs under bfloat16 autocast. The CPU cases use a small batch to keep the
suite's run time reasonable on a laptop-class CPU.
"""

import pytest
import torch
from benchutil import devices

from reidfast.losses import build_criterion
from reidfast.models import MODEL_NAMES, build_model

IMAGE_SIZE = {"pyramid": (384, 128), "mgn": (384, 128), "pcb": (384, 128), "pla": (256, 128),
              "plr_osnet": (256, 128), "adaptive_margin": (230, 80)}
IMAGES_PER_IDENTITY = 4
BATCH = {"cpu": 8, "cuda": 64}
NUM_CLASSES = 751  # Market-1501's training identities


def training_step(name, device):
    torch.manual_seed(0)
    num_classes = 0 if name == "adaptive_margin" else NUM_CLASSES
    model = build_model(name, num_classes).to(device).train()
    options = {"num_classes": NUM_CLASSES} if name == "plr_osnet" else {}
    criterion = build_criterion(name, **options).to(device)
    optimizer = torch.optim.SGD([*model.parameters(), *criterion.parameters()], lr=1e-3, momentum=0.9)
    batch = BATCH[device]
    images = torch.randn(batch, 3, *IMAGE_SIZE[name], device=device)
    labels = (torch.arange(batch, device=device) // IMAGES_PER_IDENTITY) % NUM_CLASSES

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            result = criterion(model(images), labels)
        result.loss.backward()
        optimizer.step()

    return step, images.shape


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["reidfast", "reference"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_step(benchmark, timed, monkeypatch, name, impl, device):
    benchmark.group = f"training step {name} {device} batch={BATCH[device]}"
    if impl == "reference":
        monkeypatch.setenv("REIDFAST_BACKEND", "reference")
    step, shape = training_step(name, device)
    dtype = "bfloat16-autocast" if device == "cuda" else "float32"
    timed(step, device, op=f"training step {name}", impl=impl, passname="train step", shape=list(shape), dtype=dtype)
