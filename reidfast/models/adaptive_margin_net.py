"""The part-based network of the adaptive-margin paper (Sec. 3.4 and Fig. 5 of arXiv:1707.00409;
docs/methods.md section 4).

    global   conv 7x7, 64 filters; max-pool 3x3, stride 3; ReLU          230x80 -> 64 x 76 x 26
    local    4 horizontal parts (19 rows each at 230x80), unshared; per part num_blocks residual
             blocks of two 3x3 convs with 32 filters; max-pool 3x3, stride 1; ReLU  -> 32 x 17 x 24
    fusion   per part FC 100, ReLU, FC 100; the four first-FC outputs concatenated -> FC 400;
             embedding = [FC 400 output, the four second-FC outputs] (800-d)

Weights ~ N(0, 0.01), biases 0 (Sec. 6.1). The network has no classifier: the adaptive-margin loss
on the 800-d embedding is its only training signal. 1 residual block suits small data sets
(PRID2011, CUHK01, 3DPeS), 4 Market-1501 (Sec. 6.2).

Choices where the paper is silent, each the reading that keeps its sizes consistent:

- Padding: the 7x7 conv is padded by 3 (output the input's size), so that 230x80 gives a 76x26 map
  whose 76 rows split into the four equal parts the paper describes (without padding: 74 rows);
  the 3x3 convs are padded by 1, so that the two convs' outputs can be summed; the pools are not
  padded.
- Residual block ("the outputs of the first local convolutional layer are summarized with the
  outputs of the second"): r = ReLU(conv_a(x)), out = r + conv_b(r). The residual is taken from the
  first conv's output, not from the block input, which is how the 64 -> 32 channel change of the
  first block needs no projection. The ReLU between the two convs is read as the paper's ReLU
  between its two FC layers is: it rectifies the first layer's output for every layer that reads
  it, so the fusion FC also reads the four rectified first-FC outputs. Blocks follow one another
  directly; no ReLU follows the FC 400.
- `batch_norm=True` (the default) adds a BatchNorm after each conv of the residual blocks (before
  the ReLU and the sum; the convs then have no bias): the "Res + BN" rows of Table 6, the network
  of the paper's Market-1501 result, whose 4 blocks are also the default here. `batch_norm=False`
  is the network as Sec. 3.4 describes it; beware that with the N(0, 0.01) initialisation its
  embedding starts near 1e-5 and its weights' gradients near 1e-8 to 1e-12, which SGD, and Adam
  with its default eps of 1e-8, barely move (measured on a random batch at 230x80); the BatchNorms
  restore the activations' scale.
- Parts: rows [floor(i*h/4), floor((i+1)*h/4)) of the h-row map (docs/methods.md section 0), equal parts
  when 4 divides h.
- Input size: the FC layers' sizes depend on the map size, so the network is built for one
  `input_size` (default (230, 80), the paper's) and any other input size is a ValueError.

Parameter count (computed from the architecture in tests/test_models_osnet.py): 5,543,920 at
230x80 with 1 residual block, 5,765,872 with 4 (+ 256 per block with batch_norm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reidfast.nn.outputs import EmbeddingOutput
from reidfast._checks import check_bool, check_int, check_tensor

NUM_PARTS = 4
STEM_CHANNELS = 64
PART_CHANNELS = 32
PART_DIM = 100
FUSION_DIM = 400
EMBEDDING_DIM = FUSION_DIM + NUM_PARTS * PART_DIM
INIT_STD = 0.01
# The 3x3 stride-1 pool of each part needs 3 rows and 3 columns: a 12 x 3 map, a 36 x 9 input.
_MIN_INPUT = (36, 9)


class ResidualBlock(nn.Module):
    """r = ReLU(conv_a(x)), out = r + conv_b(r); 3x3 convs with 32 filters (module docstring).

    x (Tensor[B, in_channels, h, w]) -> Tensor[B, 32, h, w].
    """

    def __init__(self, in_channels: int, batch_norm: bool):
        super().__init__()
        self.conv_a = _conv3x3_bn(in_channels, batch_norm)
        self.conv_b = _conv3x3_bn(PART_CHANNELS, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rectified = torch.relu(self.conv_a(x))
        return rectified + self.conv_b(rectified)


class PartPath(nn.Module):
    """One body part's unshared layers: residual blocks, 3x3 max-pool (stride 1), ReLU, FC 100,
    ReLU, FC 100.

    x (Tensor[B, 64, rows, width]) -> (Tensor[B, 100], Tensor[B, 100]): the rectified first-FC
    output (read by the fusion FC) and the second-FC output (part of the embedding).
    """

    def __init__(self, num_blocks: int, rows: int, width: int, batch_norm: bool):
        super().__init__()
        self.blocks = nn.Sequential(
            ResidualBlock(STEM_CHANNELS, batch_norm),
            *(ResidualBlock(PART_CHANNELS, batch_norm) for _ in range(num_blocks - 1)),
        )
        self.pool = nn.MaxPool2d(3, stride=1)
        self.fc1 = nn.Linear(PART_CHANNELS * (rows - 2) * (width - 2), PART_DIM)
        self.fc2 = nn.Linear(PART_DIM, PART_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.relu(self.pool(self.blocks(x))).flatten(1)
        first = torch.relu(self.fc1(pooled))
        return first, self.fc2(first)


class AdaptiveMarginNet(nn.Module):
    """The adaptive-margin paper's part-based network, 800-d embedding (module docstring).

    Args:
        num_classes: must be 0: the network has no classifier (it is trained by the adaptive-margin
            loss alone); the argument exists so that every model is built as
            `build_model(name, num_classes, ...)`.
        num_blocks: residual blocks per part (>= 1): 1 for small data sets, 4 for Market-1501.
        input_size: (H, W) of the input images, at least 36x9; default the paper's (230, 80).
        batch_norm: BatchNorm after each conv of the residual blocks (Table 6, "Res + BN"; see
            the module docstring for why it is the default).

    Train mode: x (Tensor[B, 3, H, W]) -> EmbeddingOutput(embedding (Tensor[B, 800])). Eval mode:
    Tensor[B, 800]. The embedding is [FC 400 output, part 1 .. part 4 second-FC outputs].
    """

    backbone_modules = ()

    def __init__(
        self,
        num_classes: int = 0,
        num_blocks: int = 4,
        input_size: Sequence[int] = (230, 80),
        batch_norm: bool = True,
    ):
        super().__init__()
        check_int("num_classes", num_classes, minimum=0)
        if num_classes != 0:
            raise ValueError(
                "num_classes must be 0: the adaptive-margin network has no classifier (it is trained by "
                f"the adaptive-margin loss on its embedding alone), got {num_classes}"
            )
        check_int("num_blocks", num_blocks, minimum=1)
        check_bool("batch_norm", batch_norm)
        self.input_size = _check_input_size(input_size)
        map_height, map_width = _stem_map_size(*self.input_size)
        self.part_bounds = [part * map_height // NUM_PARTS for part in range(NUM_PARTS + 1)]
        self.stem = nn.Conv2d(3, STEM_CHANNELS, 7, padding=3)
        self.stem_pool = nn.MaxPool2d(3, stride=3)
        self.parts = nn.ModuleList(
            PartPath(num_blocks, self.part_bounds[part + 1] - self.part_bounds[part], map_width, batch_norm)
            for part in range(NUM_PARTS)
        )
        self.fusion = nn.Linear(NUM_PARTS * PART_DIM, FUSION_DIM)
        self._init_params()

    def _init_params(self) -> None:
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(layer.weight, std=INIT_STD)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.BatchNorm2d):
                nn.init.ones_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> EmbeddingOutput | torch.Tensor:
        check_tensor("x", x, 4, "[B, 3, H, W]")
        if x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            height, width = self.input_size
            raise ValueError(
                f"x must be [B, 3, {height}, {width}]: the network was built for input_size={self.input_size} "
                f"(its FC layers' sizes depend on it; build it with the input_size you feed), got shape "
                f"{tuple(x.shape)}"
            )
        stem = torch.relu(self.stem_pool(self.stem(x)))  # [B, 64, h, w]
        firsts, seconds = [], []
        for part, path in enumerate(self.parts):
            first, second = path(stem[:, :, self.part_bounds[part] : self.part_bounds[part + 1]])
            firsts.append(first)
            seconds.append(second)
        embedding = torch.cat([self.fusion(torch.cat(firsts, dim=1)), *seconds], dim=1)  # [B, 800]
        return EmbeddingOutput(embedding) if self.training else embedding


def _conv3x3_bn(in_channels: int, batch_norm: bool) -> nn.Module:
    conv = nn.Conv2d(in_channels, PART_CHANNELS, 3, padding=1, bias=not batch_norm)
    return nn.Sequential(conv, nn.BatchNorm2d(PART_CHANNELS)) if batch_norm else conv


def _stem_map_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) after the size-preserving 7x7 conv and the unpadded 3x3 stride-3 max-pool."""
    return (height - 3) // 3 + 1, (width - 3) // 3 + 1


def _check_input_size(input_size) -> tuple[int, int]:
    if (
        isinstance(input_size, (str, bytes))
        or not isinstance(input_size, Sequence)
        or len(input_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in input_size)
    ):
        raise TypeError(f"input_size must be a pair of ints (H, W), got {input_size!r}")
    height, width = input_size
    if height < _MIN_INPUT[0] or width < _MIN_INPUT[1]:
        raise ValueError(
            f"input_size must be at least {_MIN_INPUT[0]}x{_MIN_INPUT[1]} (each of the {NUM_PARTS} parts of "
            f"the map needs 3 rows and 3 columns for its 3x3 max-pool), got {tuple(input_size)}"
        )
    return height, width
