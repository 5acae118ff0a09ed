"""What the heads and models of reidfast return in train mode: one typed structure per method.

In train mode a model returns everything its criterion (reidfast.losses.build_criterion) needs; in
eval mode it returns only its test embedding, a Tensor[B, E]. Every structure has an `embedding`
field holding the train-mode embedding, so generic code (feature extraction, logging) can read it.
Logits are None when the model was built with num_classes == 0.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class PartOutput(NamedTuple):
    """Output of a part-based head with one embedding per branch (Pyramid, PCB).

    features (Tensor[B, branches, D]): per-branch features (after conv, BatchNorm and ReLU).
    logits (Tensor[B, branches, num_classes] | None): per-branch classifier outputs.
    embedding (Tensor[B, branches * D]): the branch features concatenated in branch order.
    """

    features: Tensor
    logits: Tensor | None
    embedding: Tensor


class MGNOutput(NamedTuple):
    """Output of MGN in train mode.

    global_features (Tensor[B, 3, 256]): the reduced global features of the three branches, the
        inputs of the triplet losses.
    logits (tuple of 8 Tensor[B, num_classes] | None): classifiers on the 3 global features before
        reduction (2048-d) and on the 5 reduced part features, in that order.
    embedding (Tensor[B, 2048]): the 8 reduced features concatenated.
    """

    global_features: Tensor
    logits: tuple[Tensor, ...] | None
    embedding: Tensor


class PLAOutput(NamedTuple):
    """Output of the PLA network in train mode.

    triplet_features (Tensor[B, 1024]): output of the triplet head.
    logits (Tensor[B, num_classes] | None): classifier on the cross-entropy head's 1024-d output.
    embedding (Tensor[B, 2048]): both heads' outputs concatenated (cross-entropy head first).
    """

    triplet_features: Tensor
    logits: Tensor | None
    embedding: Tensor


class PLROSNetOutput(NamedTuple):
    """Output of PLR-OSNet in train mode (BNNeck on both branches).

    global_features (Tensor[B, 512]): global branch before its BatchNorm (triplet and center loss).
    local_features (Tensor[B, 2048]): local branch (4 stripes concatenated) before its BatchNorm.
    global_logits, local_logits (Tensor[B, num_classes] | None): classifiers on the features after
        BatchNorm.
    embedding (Tensor[B, 2560]): both post-BatchNorm features, each L2-normalised, concatenated.
    """

    global_features: Tensor
    local_features: Tensor
    global_logits: Tensor | None
    local_logits: Tensor | None
    embedding: Tensor


class EmbeddingOutput(NamedTuple):
    """Output of a model trained by a pure metric loss (the adaptive-margin network).

    embedding (Tensor[B, E]): the embedding the loss is computed on.
    """

    embedding: Tensor
