"""MGN, the Multiple Granularity Network (docs/methods.md section 3; Wang et al., ACM MM 2018,
arXiv:1804.01438)."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from reidfast.models.resnet import check_backbone_args, resnet, set_stage_stride
from reidfast.nn import BranchClassifier, BranchEmbedding
from reidfast.nn.outputs import MGNOutput
from reidfast.ops import pyramid_pool
from reidfast._checks import check_int

POOLS = ("max", "avg")
REDUCED_DIM = 256
# Windows (start, length) over each part branch's stripes: the whole map first, then each stripe.
PART2_WINDOWS = [(0, 2), (0, 1), (1, 1)]
PART3_WINDOWS = [(0, 3), (0, 1), (1, 1), (2, 1)]


class MGN(nn.Module):
    """ResNet split after res_conv4_1 into a global, a Part-2 and a Part-3 branch (Fig. 3 of the paper).

    - Shared trunk: conv1 .. layer2 and layer3[0] (res_conv4_1).
    - Each branch: its own copy of layer3[1:] and layer4, all starting from the backbone's weights
      (the paper initialises every branch with the same pretrained layers). The global branch keeps
      stride 2 in res_conv5_1 (12x4 map at 384x128); the part branches use stride 1 (24x8).
    - Pooling (global max pooling in the paper; `pool="avg"` for the average of some
      reimplementations), through reidfast.ops.pyramid_pool, one call per branch: the global map
      whole; the Part-2 map whole and as 2 stripes; the Part-3 map whole and as 3 stripes. Stripes
      partition the rows as docs/methods.md section 0 says (equal at 24 rows).
    - The 8 pooled C-vectors, in the order [global, Part-2 global, Part-3 global, Part-2 stripes 1-2,
      Part-3 stripes 1-3], each reduced by its own 1x1 conv C->256 (no bias) + BatchNorm + ReLU, all
      in one batched call (reidfast.nn.BranchEmbedding).
    - Classifiers (softmax losses): 3 on the global features before reduction (C-d), 5 on the
      reduced part features (256-d); weight ~ N(0, 0.001), bias 0 (the paper does not say; the
      initialisation of the other methods' classifiers here), no dropout.
    - Test embedding: the 8 reduced features concatenated (2048-d).

    Parameters at the defaults (ResNet-50): 2,957,376 (trunk) + 3 * 20,550,656 (branches) + 8 *
    524,800 (reductions 2048*256, BatchNorm 2*256) = 68,807,744, plus (3 * 2049 + 5 * 257) *
    num_classes = 7432 * num_classes for the classifiers.

    Args:
        num_classes: identities of the training set (0: no classifiers, logits None).
        depth: ResNet depth (18, 34, 50, 101, 152).
        pool: "max" (the paper) or "avg".
        backbone_weights: path of a torchvision ResNet state dict, or None.

    forward(x (Tensor[B, 3, H, W])):
        train mode: MGNOutput(global_features [B, 3, 256] (reduced, for the triplet losses), logits
        (8 Tensor[B, num_classes]: the 3 global ones, then the 5 parts) or None, embedding
        [B, 2048]);
        eval mode: the embedding, Tensor[B, 2048].
    """

    backbone_modules = ("trunk", "global_branch", "part2_branch", "part3_branch")

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 50,
        pool: str = "max",
        backbone_weights: str | os.PathLike | None = None,
    ):
        super().__init__()
        check_int("num_classes", num_classes, minimum=0)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        check_backbone_args(depth, 2, backbone_weights)
        backbone = resnet(depth, last_stride=2, weights=backbone_weights)
        channels = backbone.out_channels
        self.num_classes, self.pool = num_classes, pool
        self.trunk = nn.Sequential(
            backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool,
            backbone.layer1, backbone.layer2, backbone.layer3[0],
        )
        self.global_branch = _branch(backbone, stride=2)
        self.part2_branch = _branch(backbone, stride=1)
        self.part3_branch = _branch(backbone, stride=1)
        self.reduction = BranchEmbedding(8, channels, REDUCED_DIM, bias=False)
        self.global_classifier = self.part_classifier = None
        if num_classes > 0:
            self.global_classifier = BranchClassifier(3, channels, num_classes)
            self.part_classifier = BranchClassifier(5, REDUCED_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> MGNOutput | torch.Tensor:
        shared = self.trunk(x)
        global_pooled = pyramid_pool(self.global_branch(shared), 1, [(0, 1)], self.pool)  # [B, 1, C]
        part2_pooled = pyramid_pool(self.part2_branch(shared), 2, PART2_WINDOWS, self.pool)  # [B, 3, C]
        part3_pooled = pyramid_pool(self.part3_branch(shared), 3, PART3_WINDOWS, self.pool)  # [B, 4, C]
        pooled = torch.cat(
            [global_pooled, part2_pooled[:, :1], part3_pooled[:, :1], part2_pooled[:, 1:], part3_pooled[:, 1:]], dim=1
        )  # [B, 8, C]: the 3 global features, then the 5 stripes
        reduced = self.reduction(pooled)  # [B, 8, 256]
        embedding = reduced.flatten(1)  # [B, 2048]
        if not self.training:
            return embedding
        logits = None
        if self.global_classifier is not None:
            global_logits = self.global_classifier(pooled[:, :3])  # [B, 3, num_classes]
            part_logits = self.part_classifier(reduced[:, 3:])  # [B, 5, num_classes]
            logits = torch.cat([global_logits, part_logits], dim=1).unbind(1)
        return MGNOutput(reduced[:, :3], logits, embedding)


def _branch(backbone: nn.Module, stride: int) -> nn.Sequential:
    """A copy of the backbone's layer3[1:] (res_conv4_2 ..) and layer4, layer4 at `stride`."""
    branch = nn.Sequential(copy.deepcopy(backbone.layer3[1:]), copy.deepcopy(backbone.layer4))
    set_stage_stride(branch[1], stride)
    return branch
