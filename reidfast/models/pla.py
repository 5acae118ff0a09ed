"""The PLA network (docs/methods.md section 2; Li et al., "Progressive Learning Algorithm for Efficient
Person Re-Identification")."""

from __future__ import annotations

import os

import torch
from torch import nn

from reidfast.models.resnet import backbone_channels, check_backbone_args, resnet
from reidfast.nn.outputs import PLAOutput
from reidfast.nn.pyramid_head import CLASSIFIER_INIT_STD
from reidfast._checks import check_int

HEAD_DIM = 1024


class PLA(nn.Module):
    """ResNet, global max pooling, and two 1x1-conv heads: one for cross-entropy, one for the triplet loss.

    Section 3.1 and Fig. 2 of the paper: "the feature vectors after global pooling are fed to 1x1
    convolution, producing 1024-dim features", one head per loss, "concatenated to form the final
    2048-dim feature embeddings". Choices where the paper is silent:

    - The heads are plain affine maps (1x1 convolutions with bias), with no BatchNorm and no ReLU:
      the paper names nothing else, and the test embedding is these outputs themselves. A 1x1
      convolution of a 1x1 map is a Linear layer, so each head is an nn.Linear(C, 1024) with
      PyTorch's default initialisation (the paper: "randomly initialized").
    - The classifier is one Linear(1024, num_classes) on the cross-entropy head's output, weight
      ~ N(0, 0.001) and bias 0, the initialisation of the other methods' classifiers here.
    - The backbone keeps ResNet's last stride 2 by default ("the backbone is not altered"; 8x4 map
      at 256x128); `last_stride=1` is the common Re-ID alternative.

    Parameters at the defaults (ResNet-50): 23,508,032 (backbone) + 2 * 2,098,176 (heads
    2048*1024 + 1024) = 27,704,384, plus 1025 * num_classes for the classifier.

    Args:
        num_classes: identities of the training set (0: no classifier, logits None).
        depth: ResNet depth (18, 34, 50, 101, 152).
        last_stride: 1 or 2, the stride of the backbone's last stage.
        backbone_weights: path of a torchvision ResNet state dict, or None.

    forward(x (Tensor[B, 3, H, W])):
        train mode: PLAOutput(triplet_features [B, 1024], logits [B, num_classes] or None,
        embedding [B, 2048] = cross-entropy head then triplet head);
        eval mode: the embedding, Tensor[B, 2048].
    """

    backbone_modules = ("backbone",)

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int = 50,
        last_stride: int = 2,
        backbone_weights: str | os.PathLike | None = None,
    ):
        super().__init__()
        check_int("num_classes", num_classes, minimum=0)
        check_backbone_args(depth, last_stride, backbone_weights)
        channels = backbone_channels(depth)
        self.num_classes = num_classes
        self.backbone = resnet(depth, last_stride=last_stride, weights=backbone_weights)
        self.ce_head = nn.Linear(channels, HEAD_DIM)
        self.triplet_head = nn.Linear(channels, HEAD_DIM)
        self.classifier = None
        if num_classes > 0:
            self.classifier = nn.Linear(HEAD_DIM, num_classes)
            nn.init.normal_(self.classifier.weight, std=CLASSIFIER_INIT_STD)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> PLAOutput | torch.Tensor:
        pooled = self.backbone(x).amax(dim=(2, 3))  # [B, C]
        ce_features = self.ce_head(pooled)  # [B, 1024]
        triplet_features = self.triplet_head(pooled)  # [B, 1024]
        embedding = torch.cat([ce_features, triplet_features], dim=1)  # [B, 2048]
        if not self.training:
            return embedding
        logits = None if self.classifier is None else self.classifier(ce_features)
        return PLAOutput(triplet_features, logits, embedding)
