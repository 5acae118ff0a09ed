"""OSNet x1.0 as a feature extractor (Zhou et al., "Omni-Scale Feature Learning for Person
Re-Identification", ICCV 2019, arXiv:1905.00953; docs/methods.md section 5).

Architecture (Table 1 of the paper, width x1.0, channels 64 / 256 / 384 / 512):

    conv1  7x7 conv 64, stride 2, BN, ReLU; 3x3 max-pool, stride 2           -> H/4  x W/4
    conv2  OSBlock 64 -> 256, OSBlock 256 -> 256; transition                  -> H/8  x W/8
    conv3  OSBlock 256 -> 384, OSBlock 384 -> 384; transition                 -> H/16 x W/16
    conv4  OSBlock 384 -> 512, OSBlock 512 -> 512
    conv5  1x1 conv 512, BN, ReLU

A transition is a 1x1 conv + BN + ReLU followed by a 2x2 average pool of stride 2. An OSBlock
(Fig. 4 of the paper) reduces its input to C/4 channels (1x1 conv, BN, ReLU), runs four streams of
1, 2, 3 and 4 lite 3x3 convolutions (each a linear 1x1 conv, a depthwise 3x3 conv, BN, ReLU), sums
the streams after a unified aggregation gate (one channel gate, global average pool -> 1x1 conv to
C/64 -> ReLU -> 1x1 conv -> sigmoid, shared by the four streams), expands back to C channels with a
1x1 conv + BN (no ReLU), adds the input (projected by a 1x1 conv + BN when the channel counts
differ) and applies a ReLU. A 256x128 image gives a 512 x 16 x 8 map; the feature extractor has
1,905,828 parameters (computed from the architecture in tests/test_models_osnet.py; the paper's
2.2M also counts torchreid's 512 -> 512 embedding layer, 263,680 parameters).

Initialisation (as torchreid's): convolutions He normal (fan_out, ReLU gain), conv biases 0,
BatchNorm weight 1 and bias 0.

Mapping of torchreid's checkpoints. The submodules carry torchreid's names (`conv1.conv`,
`conv1.bn`, `maxpool`, `conv2.0.conv1.conv`, `conv2.0.conv2a.conv1`, `conv2.0.conv2b.1.conv2`,
`conv2.0.gate.fc1`, `conv2.0.conv3.bn`, `conv2.0.downsample.conv`, `conv2.2.0.conv` (the
transition), ..., `conv5.bn`), so the state dict of torchreid's `osnet_x1_0` (ImageNet or Re-ID
training) maps onto this module key for key, with the same shapes. torchreid's model also has an
embedding layer (`fc.0` Linear 512 -> 512, `fc.1` BatchNorm1d, after global average pooling) and a
classifier (`classifier`); a feature extractor has neither, so `osnet_x1_0(weights=...)` drops the
keys under `fc.` and `classifier.` and requires every other key to match. The instance-norm
variants (osnet_ibn, osnet_ain) are not provided.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from reidfast.models.checkpoints import check_weights_path, load_backbone_weights
from reidfast._checks import check_tensor

CHANNELS = (64, 256, 384, 512)
# torchreid's OSNet layers after the feature map: the embedding layer and the identity classifier.
TORCHREID_HEAD_PREFIXES = ("fc.", "classifier.")


class ConvBN(nn.Module):
    """Convolution (no bias) + BatchNorm, optionally followed by a ReLU.

    torchreid's ConvLayer and Conv1x1 (with ReLU) and Conv1x1Linear (without), with its attribute
    names `conv` and `bn`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
        relu: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.relu else x


class LiteConv3x3(nn.Module):
    """Lite 3x3 convolution (Fig. 3 of the paper): linear 1x1 conv, depthwise 3x3 conv, BN, ReLU.

    x (Tensor[B, C, H, W]) -> Tensor[B, C, H, W].
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Squeeze-and-excitation channel gate: x * sigmoid(fc2(ReLU(fc1(GAP(x))))).

    fc1 and fc2 are 1x1 convolutions with bias, C -> C / reduction -> C. OSNet's unified aggregation
    gate (reduction 16) and PLR-OSNet's channel attention module are this gate.

    x (Tensor[B, C, H, W]) -> Tensor[B, C, H, W].
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))


class OSBlock(nn.Module):
    """Omni-scale residual block (Fig. 4 of the paper), bottleneck reduction 4.

    x (Tensor[B, in_channels, H, W]) -> Tensor[B, out_channels, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid_channels = out_channels // 4
        self.conv1 = ConvBN(in_channels, mid_channels)
        # Streams of 1..4 lite convolutions (receptive fields 3, 5, 7, 9); the one-layer stream is a
        # bare module in torchreid's layout, the others Sequentials.
        self.conv2a = LiteConv3x3(mid_channels)
        self.conv2b = nn.Sequential(*(LiteConv3x3(mid_channels) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LiteConv3x3(mid_channels) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LiteConv3x3(mid_channels) for _ in range(4)))
        self.gate = ChannelGate(mid_channels)
        self.conv3 = ConvBN(mid_channels, out_channels, relu=False)
        self.downsample = ConvBN(in_channels, out_channels, relu=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        streams = (self.conv2a(reduced), self.conv2b(reduced), self.conv2c(reduced), self.conv2d(reduced))
        aggregated = sum(self.gate(stream) for stream in streams)
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv3(aggregated) + identity)


class OSNet(nn.Module):
    """OSNet x1.0 feature extractor: conv1 .. conv5 of the paper's Table 1 (module docstring).

    Attributes:
        out_channels: 512, the channels of the output map.

    Shape:
        x (Tensor[B, 3, H, W]) -> Tensor[B, 512, h, w] with (h, w) = `osnet_map_size(H, W)`
        (H/16 x W/16 when 16 divides them: 16 x 8 at 256x128, 24 x 8 at 384x128).
    """

    out_channels = CHANNELS[3]

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBN(3, CHANNELS[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(CHANNELS[0], CHANNELS[1], transition=True)
        self.conv3 = _stage(CHANNELS[1], CHANNELS[2], transition=True)
        self.conv4 = _stage(CHANNELS[2], CHANNELS[3], transition=False)
        self.conv5 = ConvBN(CHANNELS[3], CHANNELS[3])
        init_osnet_params(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, "OSNet")
        x = self.conv3(self.conv2(self.maxpool(self.conv1(x))))
        return self.conv5(self.conv4(x))


def osnet_x1_0(weights: str | os.PathLike | None = None) -> OSNet:
    """OSNet x1.0 feature extractor, randomly initialised or loaded from a local torchreid file.

    Args:
        weights: path of a checkpoint of torchreid's `osnet_x1_0` (a state dict, or torchreid's
            {"state_dict": ...} training checkpoint; keys saved under "module." by nn.DataParallel
            are accepted), or None for random initialisation. The keys under `fc.` and
            `classifier.` are dropped (see the module docstring); any other missing, unexpected or
            differently shaped key is a ValueError naming it. Nothing is downloaded.

    Returns:
        OSNet, in train mode.
    """
    check_weights_path("weights", weights)
    backbone = OSNet()
    if weights is not None:
        load_backbone_weights(backbone, weights, TORCHREID_HEAD_PREFIXES, "OSNet x1.0")
    return backbone


def osnet_map_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) of the map OSNet makes from an H x W image.

    conv1 (stride 2, padding 3) and the max-pool (stride 2, padding 1) round up, the two 2x2
    average pools round down.
    """
    h, w = -(-height // 4), -(-width // 4)
    return h // 4, w // 4


def check_image(x, model_name: str) -> None:
    """`x` is a Tensor[B, 3, H, W] large enough for OSNet to make a non-empty map."""
    check_tensor("x", x, 4, "[B, 3, H, W]")
    if x.shape[1] != 3:
        raise ValueError(f"x must have 3 channels (RGB), got shape {tuple(x.shape)}")
    if min(osnet_map_size(x.shape[2], x.shape[3])) < 1:
        raise ValueError(
            f"x: {model_name} downsamples by 16; a {x.shape[2]}x{x.shape[3]} image leaves an empty feature "
            f"map (at least 13x13 is needed), got shape {tuple(x.shape)}"
        )


def init_osnet_params(module: nn.Module) -> None:
    """torchreid's OSNet initialisation of every Conv2d and BatchNorm2d under `module`."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def _stage(in_channels: int, out_channels: int, transition: bool) -> nn.Sequential:
    """Two OSBlocks, then (if `transition`) 1x1 conv + BN + ReLU and a 2x2 average pool."""
    layers = [OSBlock(in_channels, out_channels), OSBlock(out_channels, out_channels)]
    if transition:
        layers.append(nn.Sequential(ConvBN(out_channels, out_channels), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)
