"""PCB, the part-based convolutional baseline (Sun et al., "Beyond Part Models", ECCV 2018,
arXiv:1711.09349; docs/methods.md section 6)."""

from __future__ import annotations

import os

from reidfast.models.pyramid import ResNetPartModel


class PCB(ResNetPartModel):
    """The 6-stripe baseline of Sun et al. 2018 (PCB, without refined part pooling).

    ResNet (last stride 1) -> 6 horizontal stripes, average pooled -> per stripe 1x1 conv C->256
    + BatchNorm + ReLU -> per stripe Dropout(0.5) + Linear(256, num_classes). This is a PyramidHead
    with levels=(1,), pool="avg", embed_dim=256 and dropout 0.5 (as the public PCB implementations use);
    the stripes partition the map's rows as docs/methods.md section 0 says, which at 24 rows is the
    paper's uniform partition. The test embedding is the concatenation of the 6 reduced stripe
    features h (1536-d): the paper tests with either h or the 2048-d pooled vectors g; h is the one
    the model is trained to make discriminative and is 8 times smaller.

    Parameters at the defaults (ResNet-50, 6 stripes of 256): 23,508,032 (backbone) + 6 * 525,056
    (conv 2048*256 + 256, BatchNorm 2*256) = 26,658,368, plus 6 * 257 * num_classes for the
    classifiers.

    Args:
        num_classes: identities of the training set (0: no classifiers, logits None).
        depth: ResNet depth (18, 34, 50, 101, 152).
        num_parts: stripes p (6).
        embed_dim: features per stripe (256).
        backbone_weights: path of a torchvision ResNet state dict, or None.

    forward(x (Tensor[B, 3, H, W])): train mode PartOutput (features [B, 6, 256], logits
    [B, 6, num_classes] or None, embedding [B, 1536]); eval mode Tensor[B, 1536] (at the defaults).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 50,
        num_parts: int = 6,
        embed_dim: int = 256,
        backbone_weights: str | os.PathLike | None = None,
    ):
        super().__init__(
            num_classes, depth, num_parts, levels=(1,), embed_dim=embed_dim, dropout=0.5, pool="avg",
            backbone_weights=backbone_weights,
        )
