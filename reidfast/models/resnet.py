"""ResNet feature extractors for Re-ID: torchvision's ResNet without its pooling and classifier.

Re-ID models (Pyramid, PLA, MGN, PCB) read the last stage's feature map, not ImageNet logits, and
most of them set the stride of the last stage to 1 so that a 384x128 image gives a 24x8 map instead
of 12x4 (Sun et al., "Beyond Part Models", 2018; docs/methods.md sections 1 and 3).

Weights are never downloaded: `weights` is the path of a state dict on local disk. A file saved by
torchvision (e.g. `torch.save(torchvision.models.resnet50(weights=...).state_dict(), path)`, or
one of torchvision's ImageNet `.pth` files) loads as it is: its classifier keys `fc.weight` and
`fc.bias` are dropped, because the feature extractor has no classifier, and every other key must
match the architecture exactly.
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from reidfast.models.checkpoints import check_weights_path, load_backbone_weights
from reidfast._checks import check_int

# depth -> (torchvision builder, channels of the last stage's map)
_ARCHITECTURES = {
    18: (torchvision.models.resnet18, 512),
    34: (torchvision.models.resnet34, 512),
    50: (torchvision.models.resnet50, 2048),
    101: (torchvision.models.resnet101, 2048),
    152: (torchvision.models.resnet152, 2048),
}
DEPTHS = tuple(_ARCHITECTURES)
# torchvision's ImageNet classifier: weights for 1000 classes that a feature extractor has no use for.
CLASSIFIER_PREFIXES = ("fc.",)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet up to its last stage, returning the feature map.

    The submodules keep torchvision's names (conv1, bn1, relu, maxpool, layer1 .. layer4), so a
    torchvision state dict maps onto this module key for key, less the classifier.

    Args:
        depth: 18, 34, 50, 101 or 152.
        last_stride: stride of the first block of layer4 (res_conv5_1): 1 (the Re-ID choice) or 2
            (torchvision's).

    Attributes:
        out_channels: channels C of the output map (512 for depths 18 and 34, else 2048).

    forward(x (Tensor[B, 3, H, W])) -> Tensor[B, C, H / 16, W / 16] with last_stride 1
    (H / 32, W / 32 with 2), each rounded up: 2048 x 24 x 8 at 384x128 for depth 50.
    """

    def __init__(self, depth: int = 50, last_stride: int = 1):
        super().__init__()
        check_backbone_args(depth, last_stride, None)
        builder, self.out_channels = _ARCHITECTURES[depth]
        net = builder(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        set_stage_stride(self.layer4, last_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet(depth: int = 50, last_stride: int = 1, weights: str | os.PathLike | None = None) -> ResNetBackbone:
    """A ResNet feature extractor (see ResNetBackbone), randomly initialised or loaded from disk.

    Args:
        depth: 18, 34, 50, 101 or 152.
        last_stride: 1 or 2, the stride of layer4's first block.
        weights: path of a state dict saved from torchvision's ResNet of the same depth (its `fc.*`
            keys are dropped; any other missing, unexpected or differently shaped key is an error
            naming it), or None for torchvision's random initialisation. Nothing is downloaded.

    Returns:
        ResNetBackbone, in train mode.
    """
    check_backbone_args(depth, last_stride, weights)
    backbone = ResNetBackbone(depth, last_stride)
    if weights is not None:
        load_backbone_weights(backbone, weights, CLASSIFIER_PREFIXES, f"ResNet-{depth}")
    return backbone


def check_backbone_args(depth, last_stride, weights) -> None:
    """Validates the arguments of `resnet` (models call it before building anything)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in _ARCHITECTURES:
        raise ValueError(f"depth must be one of {DEPTHS}, got {depth!r}")
    check_int("last_stride", last_stride, minimum=1)
    if last_stride > 2:
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    check_weights_path("weights", weights)


def backbone_channels(depth: int) -> int:
    """Channels of the map a ResNet of this depth returns (512 or 2048)."""
    check_backbone_args(depth, 1, None)
    return _ARCHITECTURES[depth][1]


def set_stage_stride(stage: nn.Sequential, stride: int) -> None:
    """Sets the stride of a ResNet stage (layer1 .. layer4) to `stride`, in place.

    The stage's first block is the only strided one: torchvision puts its stride on conv2 in a
    Bottleneck (ResNet v1.5) and on conv1 in a BasicBlock, and on the 1x1 conv of its downsample
    shortcut. Parameters are unchanged, so pretrained weights stay valid at either stride.
    """
    block = stage[0]
    strided_conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    strided_conv.stride = (stride, stride)
    block.downsample[0].stride = (stride, stride)
    block.stride = stride
