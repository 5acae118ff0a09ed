"""The head of the Pyramid model (arXiv:1810.12193, Fig. 3; docs/methods.md section 1), batched, and
the per-branch head that is its specification.

Each branch of the pyramid is one window of horizontal stripes of the backbone's feature map. Its
branch op pools the window (GMP + GAP, summed), reduces the C-vector with a 1x1 convolution +
BatchNorm + ReLU to a D-dimensional feature, and classifies the feature (Dropout + Linear).

`PyramidHead` pools all windows in one `reidfast.ops.pyramid_pool` call and runs every branch's
layers at once (`reidfast.nn.BranchEmbedding`, `reidfast.nn.BranchClassifier`). `PyramidHeadReference`
is the same head written as the authors' code writes it: each window sliced, pooled and passed
through its own modules, one branch at a time. The two compute the same function;
`reference_to_batched_state_dict` and `PyramidHead.load_reference` move weights from the per-branch
layout to the batched one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from reidfast.backend import BACKENDS
from reidfast.nn.branches import BranchClassifier, BranchEmbedding, check_dropout, kaiming_fan_out_std
from reidfast.nn.outputs import PartOutput
from reidfast._checks import check_int, check_tensor
from reidfast.ops.enums import POOL_MODES
from reidfast.ops.pyramid_pool import _stripe_begin, pyramid_pool, pyramid_windows

# Hyper-parameters that must agree for two heads to compute the same function from the same weights.
_CONFIGURATION = ("in_channels", "num_classes", "num_parts", "windows", "embed_dim", "dropout", "pool")

CLASSIFIER_INIT_STD = 0.001


class _PyramidHeadConfiguration(nn.Module):
    """Checks and stores the configuration shared by PyramidHead and PyramidHeadReference."""

    def __init__(self, in_channels, num_classes, num_parts, levels, embed_dim, dropout, pool):
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_classes", num_classes, minimum=0)
        check_int("num_parts", num_parts, minimum=1)
        if levels is not None and (isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence)):
            raise TypeError(f"levels must be None or a sequence of pyramid levels (ints), got {levels!r}")
        check_int("embed_dim", embed_dim, minimum=1)
        check_dropout(dropout)
        if pool not in POOL_MODES:
            raise ValueError(f"pool must be one of {POOL_MODES}, got {pool!r}")
        self.in_channels, self.num_classes, self.num_parts = in_channels, num_classes, num_parts
        self.windows = pyramid_windows(num_parts, levels)
        self.levels = tuple(dict.fromkeys(length for _, length in self.windows))
        self.num_branches = len(self.windows)
        self.embed_dim, self.dropout, self.pool = embed_dim, float(dropout), pool

    def _check_input(self, x) -> None:
        check_tensor("x", x, 4, "[B, C, H, W]")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have C=in_channels={self.in_channels} channels, got shape {tuple(x.shape)}")
        if x.shape[2] < self.num_parts:
            raise ValueError(
                f"x must have H >= num_parts={self.num_parts} rows (one row per stripe), got shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, num_parts={self.num_parts}, "
            f"levels={self.levels}, embed_dim={self.embed_dim}, dropout={self.dropout}, pool={self.pool!r}"
        )


class PyramidHead(_PyramidHeadConfiguration):
    """The Pyramid head on a backbone feature map, every branch computed at once.

    For each window w of the stripe pyramid (`reidfast.ops.pyramid_windows(num_parts, levels)`,
    fine to coarse, left to right):

        p_w = GMP(window w of x) + GAP(window w of x)            (C values; `pool` picks the terms)
        features[:, w] = ReLU(BN(W_w^T p_w + b_w))              (1x1 conv C -> D, BatchNorm, ReLU)
        logits[:, w] = V_w^T Dropout(features[:, w]) + c_w     (Linear D -> num_classes)
        embedding = concat_w features[:, w]

    (arXiv:1810.12193, Fig. 3; docs/methods.md section 1). The
    pooling is one `pyramid_pool` call for all windows; the convolutions, the BatchNorm and the
    classifiers are one `BranchEmbedding` and one `BranchClassifier` (batched matrix products over
    [branches, C, D] and [branches, D, num_classes] weights, one BatchNorm over branches * D
    channels), numerically equivalent to per-branch Conv2d / BatchNorm2d / Linear modules
    (`PyramidHeadReference`).

    Initialisation: classifier weight ~ N(0, 0.001), bias 0 (docs/methods.md section 1, the authors'
    code). The authors' code leaves the 1x1 convolution and BatchNorm at PyTorch's defaults; here
    the convolution is He normal, fan_out (std sqrt(2 / embed_dim)) with bias 0, and BatchNorm has
    weight 1 and bias 0, the common Re-ID practice.

    Parameters: branches * (C * D + D) for the convolutions, 2 * branches * D for BatchNorm and
    branches * (D + 1) * num_classes for the classifiers. The default configuration (21 branches,
    C = 2048, D = 128) has 5,513,088 + 2,709 * num_classes: 5,513,088 without classifiers,
    7,547,547 with Market-1501's 751 training identities.

    Args:
        in_channels: C, channels of the feature map (2048 for ResNet-50).
        num_classes: identities of the training set; 0 builds no classifiers (logits are None, and
            `dropout`, which acts only before the classifiers, has nothing to act on).
        num_parts: basic stripes n (1 <= n <= H of the input).
        levels: pyramid levels to keep, in this order (e.g. (1, 2, 5, 6), the paper's
            "Pyramid-110011", 6 + 5 + 2 + 1 = 14 branches); None keeps all n levels, n(n+1)/2 branches.
        embed_dim: D, the length of each branch's feature.
        dropout: drop probability before each branch's classifier, in [0, 1).
        pool: "max+avg" (GMP + GAP, the paper), "max" or "avg".
        backend: the pooling's backend (see reidfast.backend); None picks per call.

    Attributes:
        windows (list of (start, length)): the branches' windows, in stripe units.
        num_branches (int): len(windows).
        levels (tuple of int): the levels kept, in branch order.
        embedding (BranchEmbedding): conv + BatchNorm + ReLU of every branch.
        classifier (BranchClassifier or None): Dropout + Linear of every branch.

    Shape:
        x (Tensor[B, C, H, W]) -> PartOutput(features (Tensor[B, branches, D]),
        logits (Tensor[B, branches, num_classes] or None), embedding (Tensor[B, branches * D])).
        The same computation in train and eval mode (BatchNorm and Dropout behave as their mode
        says); models decide what to return in eval mode.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        num_classes: int = 0,
        num_parts: int = 6,
        levels: Sequence[int] | None = None,
        embed_dim: int = 128,
        dropout: float = 0.2,
        pool: str = "max+avg",
        backend: str | None = None,
    ):
        super().__init__(in_channels, num_classes, num_parts, levels, embed_dim, dropout, pool)
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.embedding = BranchEmbedding(self.num_branches, in_channels, embed_dim, bias=True)
        self.classifier = (
            BranchClassifier(self.num_branches, embed_dim, num_classes, dropout, std=CLASSIFIER_INIT_STD)
            if num_classes > 0
            else None
        )

    def forward(self, x: torch.Tensor) -> PartOutput:
        self._check_input(x)
        pooled = pyramid_pool(x, self.num_parts, self.windows, self.pool, backend=self.backend)  # [B, K, C]
        features = self.embedding(pooled)  # [B, K, D]
        logits = None if self.classifier is None else self.classifier(features)  # [B, K, N]
        return PartOutput(features, logits, features.flatten(1))

    def load_reference(self, reference: PyramidHeadReference) -> None:
        """Copies the weights and BatchNorm statistics of a per-branch head into this head.

        Both heads must have the same configuration (channels, classes, windows, embed_dim,
        dropout, pool); after the copy they compute the same function. To load a per-branch
        checkpoint without building the per-branch head, pass its state dict through
        `reference_to_batched_state_dict`.
        """
        if not isinstance(reference, PyramidHeadReference):
            raise TypeError(f"reference must be a PyramidHeadReference, got {type(reference).__name__}")
        mismatched = [name for name in _CONFIGURATION if getattr(self, name) != getattr(reference, name)]
        if mismatched:
            differences = ", ".join(
                f"{name}={getattr(reference, name)!r} (this head: {getattr(self, name)!r})" for name in mismatched
            )
            raise ValueError(f"reference is configured differently: {differences}")
        self.load_state_dict(reference_to_batched_state_dict(reference.state_dict()))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"


class PyramidHeadReference(_PyramidHeadConfiguration):
    """The Pyramid head one branch at a time, as the authors' code computes it.

    For each window: the window's rows are sliced out of x and pooled (`torch.amax` and/or
    `torch.mean` over rows and columns, summed), then passed through the branch's own
    `Conv2d(C, D, 1)` + `BatchNorm2d(D)` + `ReLU`, and the result, through the shared
    `Dropout(dropout)` (a fresh mask per branch call) and the branch's own `Linear(D, num_classes)`.
    Same arguments (except `backend`), initialisation, parameters and output as `PyramidHead`,
    which computes the same function faster; this head is the specification `PyramidHead` is tested
    and benchmarked against.

    State layout (keys of `state_dict()`):
        branch_embeddings.{k}.0.weight [D, C, 1, 1], .0.bias [D]   the 1x1 convolution of branch k
        branch_embeddings.{k}.1.*                                  its BatchNorm2d(D)
        branch_classifiers.{k}.weight [N, D], .bias [N]            its Linear (when num_classes > 0)
    The authors' released code (PersonReID-Pyramid) keeps the same modules as
    `pyramid_conv_list0.{k}.{0,1}.*` and `pyramid_fc_list0.{k}.*`: renaming those prefixes to
    `branch_embeddings.{k}.` and `branch_classifiers.{k}.` loads its head weights here (its
    backbone weights are the `resnet.` keys).

    Shape:
        x (Tensor[B, C, H, W]) -> PartOutput, as PyramidHead.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        num_classes: int = 0,
        num_parts: int = 6,
        levels: Sequence[int] | None = None,
        embed_dim: int = 128,
        dropout: float = 0.2,
        pool: str = "max+avg",
    ):
        super().__init__(in_channels, num_classes, num_parts, levels, embed_dim, dropout, pool)
        self.branch_embeddings = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, embed_dim, 1), nn.BatchNorm2d(embed_dim), nn.ReLU())
            for _ in self.windows
        )
        self.dropout_layer = nn.Dropout(dropout)
        self.branch_classifiers = (
            nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in self.windows) if num_classes > 0 else None
        )
        for conv, _, _ in self.branch_embeddings:
            nn.init.normal_(conv.weight, std=kaiming_fan_out_std(embed_dim))
            nn.init.zeros_(conv.bias)
        for linear in self.branch_classifiers or ():
            nn.init.normal_(linear.weight, std=CLASSIFIER_INIT_STD)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> PartOutput:
        self._check_input(x)
        height = x.shape[2]
        features, logits = [], []
        for branch, (start, length) in enumerate(self.windows):
            row_begin = _stripe_begin(start, height, self.num_parts)
            row_end = _stripe_begin(start + length, height, self.num_parts)
            rows = x[:, :, row_begin:row_end]  # [B, C, rows, W]
            terms = []
            if "max" in self.pool:
                terms.append(rows.amax(dim=(2, 3), keepdim=True))
            if "avg" in self.pool:
                terms.append(rows.mean(dim=(2, 3), keepdim=True))
            pooled = sum(terms[1:], terms[0])  # [B, C, 1, 1]
            feature = self.branch_embeddings[branch](pooled).flatten(1)  # [B, D]
            features.append(feature)
            if self.branch_classifiers is not None:
                logits.append(self.branch_classifiers[branch](self.dropout_layer(feature)))  # [B, N]
        stacked = torch.stack(features, dim=1)
        return PartOutput(stacked, torch.stack(logits, dim=1) if logits else None, stacked.flatten(1))


def reference_to_batched_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A per-branch head's state dict (`PyramidHeadReference` layout) in `PyramidHead`'s layout.

    Branch k's Conv2d weight [D, C, 1, 1] becomes embedding.weight[k] [C, D] (transposed), its
    bias embedding.bias[k]; the branches' BatchNorm2d weights, biases and running statistics are
    concatenated in branch order into embedding.norm's K * D channels; Linear weight [N, D] becomes
    classifier.weight[k] [D, N], its bias classifier.bias[k]. Every key must be consumed: a key the
    layout does not have, a missing one, or branches whose BatchNorm counted different numbers of
    batches raise ValueError. Works on any mapping with these keys (e.g. gradients by parameter
    name).
    """
    remaining = dict(state_dict)

    def take(key: str) -> torch.Tensor:
        if key not in remaining:
            raise ValueError(f"state_dict has no {key!r}: not a complete per-branch Pyramid head")
        return remaining.pop(key)

    def per_branch(module: str, suffix: str) -> list[torch.Tensor]:
        return [take(f"{module}.{k}.{suffix}") for k in range(branches)]

    branches = 0
    while f"branch_embeddings.{branches}.0.weight" in remaining:
        branches += 1
    if branches == 0:
        raise ValueError("state_dict has no 'branch_embeddings.0.0.weight': not a per-branch Pyramid head")
    conv_weights = per_branch("branch_embeddings", "0.weight")  # K x [D, C, 1, 1]
    batched = {
        "embedding.weight": torch.stack([weight[:, :, 0, 0].t() for weight in conv_weights]),
        "embedding.bias": torch.stack(per_branch("branch_embeddings", "0.bias")),
    }
    for name in ("weight", "bias", "running_mean", "running_var"):
        batched[f"embedding.norm.{name}"] = torch.cat(per_branch("branch_embeddings", f"1.{name}"))
    counts = per_branch("branch_embeddings", "1.num_batches_tracked")
    if any(not torch.equal(count, counts[0]) for count in counts):
        raise ValueError(
            "state_dict: the branches' BatchNorm layers counted different numbers of batches: "
            f"{[int(count) for count in counts]}"
        )
    batched["embedding.norm.num_batches_tracked"] = counts[0]
    if "branch_classifiers.0.weight" in remaining:
        batched["classifier.weight"] = torch.stack([weight.t() for weight in per_branch("branch_classifiers", "weight")])
        batched["classifier.bias"] = torch.stack(per_branch("branch_classifiers", "bias"))
    if remaining:
        raise ValueError(f"state_dict has keys outside a {branches}-branch Pyramid head: {sorted(remaining)}")
    return batched
