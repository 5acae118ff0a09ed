"""The whole training loss of each method, from a model's train-mode output and the labels.

`build_criterion(name, **options)` returns an nn.Module called as `criterion(output, labels)` with
the train-mode output of `reidfast.models.build_model(name, ...)` (see reidfast.nn.outputs) and the
identity labels Tensor[B] (class indices in [0, num_classes) wherever a cross-entropy or a center
loss is computed). It returns a CriterionResult: the total loss to backpropagate and its components
by name, detached (so that logging them keeps no graph alive and they cannot be backpropagated by
mistake). Every triplet term runs on the fused `reidfast.ops.triplet_loss`, the adaptive margin on
the fused `reidfast.ops.adaptive_margin_loss`; `backend` options are passed to them.

Methods (docs/methods.md sections 1-6):

    pyramid           Eq. 2 / Eq. 7 of the Pyramid paper with dynamic weighting (Algorithm 1)
    pcb               sum over the stripes of the mean cross-entropy
    mgn               mean of 8 cross-entropies + mean of 3 batch-hard triplet losses (margin 1.2)
    pla               cross-entropy + lambda * generalised batch-hard soft-margin loss (Eq. 5)
    plr_osnet         CE (label smoothing) + soft-margin triplet + learnable center loss, 2 branches
    adaptive_margin   the adaptive-margin loss (Eq. 5-9)
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reidfast.losses.adaptive_margin import AdaptiveMarginLoss
from reidfast.losses.center import CenterLoss, _check_class_labels
from reidfast.losses.dynamic import MODES, DynamicLossWeighting
from reidfast.nn.outputs import EmbeddingOutput, MGNOutput, PartOutput, PLAOutput, PLROSNetOutput
from reidfast._checks import check_float, check_int, check_labels, check_tensor
from reidfast.ops.triplet_select import triplet_loss


class CriterionResult(NamedTuple):
    """What a criterion returns.

    loss (Tensor): the total training loss, a 0-d tensor to backpropagate.
    components (dict[str, Tensor]): the terms it is made of (unweighted) and quantities worth
        logging (weights, margins), by name; 0-d, detached; `.item()` gives a float.
    """

    loss: torch.Tensor
    components: dict[str, torch.Tensor]


class Criterion(nn.Module):
    """A method's training loss: checks the output's type and the labels, then computes the
    method's loss terms (`_losses`, defined by each method's subclass)."""

    name: str
    output_type: type

    def forward(self, output, labels: torch.Tensor) -> CriterionResult:
        if not isinstance(output, self.output_type):
            raise TypeError(
                f"the {self.name!r} criterion needs output of type {self.output_type.__name__} (the "
                f"train-mode output of build_model({self.name!r})), got {type(output).__name__}"
            )
        check_tensor("output.embedding", output.embedding, 2, "[B, E]")
        check_labels("labels", labels, output.embedding.shape[0], "B", output.embedding.device)
        loss, components = self._losses(output, labels)
        return CriterionResult(loss, {name: value.detach() for name, value in components.items()})

    def _losses(self, output, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _logits(self, output, field: str):
        """output.<field>, which must not be None: a cross-entropy needs a classifier."""
        logits = getattr(output, field)
        if logits is None:
            raise ValueError(
                f"output.{field} is None (a model built with num_classes=0); the {self.name!r} "
                f"criterion needs logits: build the model with the number of training identities"
            )
        return logits


def _batch_of(name: str, tensor: torch.Tensor, dims: int, shape_doc: str, batch: int) -> torch.Tensor:
    """`tensor` has `dims` dimensions and `batch` rows."""
    check_tensor(name, tensor, dims, shape_doc)
    if tensor.shape[0] != batch:
        raise ValueError(f"{name} must have the labels' batch size B={batch}, got shape {tuple(tensor.shape)}")
    return tensor


def _cross_entropy(name: str, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
    """Mean cross-entropy of logits [B, num_classes] against class-index labels [B], whose range
    the caller has checked (once per batch: the check reads the labels on the host)."""
    _batch_of(name, logits, 2, "[B, num_classes]", labels.shape[0])
    return F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)


def _summed_branch_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over branches of the mean cross-entropy (Pyramid Eq. 2, PCB), in one call.

    logits (Tensor[B, branches, num_classes]), labels (Tensor[B]) -> scalar.
    """
    _batch_of("output.logits", logits, 3, "[B, branches, num_classes]", labels.shape[0])
    _check_class_labels(labels, logits.shape[2])
    batch, branches = logits.shape[:2]
    targets = labels.long()[:, None].expand(batch, branches)
    # The sum over all B * branches terms divided by B is the sum over branches of the batch means.
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum") / batch


def _summed_branch_triplet(name: str, features, labels, margin: float, backend) -> torch.Tensor:
    """Sum over branches g of the batch-hard triplet loss on features[:, g] (MGN, Pyramid per branch).

    features (Tensor[B, branches, D]), labels (Tensor[B]) -> scalar; one fused call per branch.
    """
    _batch_of(name, features, 3, "[B, branches, D]", labels.shape[0])
    branches = features.shape[1]
    return sum(triplet_loss(features[:, g], labels, margin=margin, backend=backend) for g in range(branches))


def _check_float_in(name: str, value, low: float, high: float) -> float:
    """`value` as a float in [low, high], else a TypeError / ValueError naming it."""
    check_float(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


class PyramidCriterion(Criterion):
    """The Pyramid loss with multi-loss dynamic training (arXiv:1810.12193, Eq. 2, 3 and 7, Algorithm 1;
    docs/methods.md section 1).

        L_id = sum over branches b of mean_i CE(logits[i, b], y_i)                            (Eq. 2)
        L_tp = mean over anchors of max(0, margin + d_ap - d_an), batch-hard, non-squared
               Euclidean, no normalisation, on the concatenated embedding                    (Eq. 3)
        L    = L_id  or  FL(p_id) * L_id + FL(p_tp) * L_tp, as DynamicLossWeighting decides   (Eq. 7)

    L_tp is computed on every batch (the dynamic weighting's average of it must keep moving, also
    while only L_id is optimised), so every batch needs two identities at least, also a randomly
    sampled one.

    Before drawing each batch, a training loop reads `criterion.sampling` ("random" or "identity")
    and draws the batch with that sampler (identity: reidfast.training.IdentityBatchSampler, 8
    identities x 8 images in the paper; random: torch's BatchSampler over a RandomSampler). The
    weighting's state is in this module's buffers: save and load the criterion's state_dict with the
    model's to resume training exactly.

    Options:
        margin: the triplet margin (1.4, the paper).
        triplet_on: "concatenated" (the paper: one triplet loss on output.embedding) or
            "per_branch" (the authors' code: the sum over branches of a triplet loss on each
            output.features[:, b]).
        weighting: "code" (the authors' release: L = L_id + L_tp on every batch,
            identity-balanced sampling throughout; the default, chosen by measurement: it trained
            the best models of the four modes on the synthetic set, see docs/methods.md section
            1), "dynamic" (the paper's Algorithm 1), "fixed" (L = w_id L_id + w_tp L_tp with
            `fixed_weights`, identity-balanced) or "normalized" (Algorithm 1 with Eq. 7's weights
            rescaled to sum to 2; see DynamicLossWeighting).
        alpha, gamma, delta: the dynamic weighting's parameters (None: 0.25, 2, 0.16); "dynamic"
            and "normalized" only.
        fixed_weights: (w_id, w_tp) of "fixed" (None: (1, 1)).
        backend: the triplet op's backend (see reidfast.backend).

    Input: PartOutput(features Tensor[B, branches, D], logits Tensor[B, branches, num_classes],
    embedding Tensor[B, branches * D]). Components: "id", "triplet" (unweighted L_id and L_tp),
    "id_weight", "triplet_weight" (the weights this batch used; triplet_weight 0 under Eq. 2).
    """

    name = "pyramid"
    output_type = PartOutput
    TRIPLET_ON = ("concatenated", "per_branch")

    def __init__(
        self,
        margin: float = 1.4,
        triplet_on: str = "concatenated",
        weighting: str = "code",
        alpha: float | None = None,
        gamma: float | None = None,
        delta: float | None = None,
        fixed_weights: tuple[float, float] | None = None,
        backend: str | None = None,
    ):
        super().__init__()
        check_float("margin", margin)
        if triplet_on not in self.TRIPLET_ON:
            raise ValueError(f"triplet_on must be one of {self.TRIPLET_ON}, got {triplet_on!r}")
        if weighting not in MODES:
            raise ValueError(f"weighting must be one of {MODES}, got {weighting!r}")
        self.margin, self.triplet_on, self.backend = float(margin), triplet_on, backend
        self.weighting = DynamicLossWeighting(alpha, gamma, delta, mode=weighting, fixed_weights=fixed_weights)

    @property
    def sampling(self) -> str:
        """The sampler the next batch must be drawn with: "random" or "identity"."""
        return self.weighting.sampling

    def decision_state(self) -> dict[str, float | str]:
        """The dynamic weighting's state (DynamicLossWeighting.state_summary), which a training
        loop logs when the sampling changes."""
        return self.weighting.state_summary()

    def _losses(self, output: PartOutput, labels):
        id_loss = _summed_branch_cross_entropy(self._logits(output, "logits"), labels)
        if self.triplet_on == "concatenated":
            tp_loss = triplet_loss(output.embedding, labels, margin=self.margin, backend=self.backend)
        else:
            tp_loss = _summed_branch_triplet("output.features", output.features, labels, self.margin, self.backend)
        weighted = self.weighting(id_loss, tp_loss)
        return weighted.loss, {
            "id": id_loss,
            "triplet": tp_loss,
            "id_weight": id_loss.new_tensor(weighted.id_weight),
            "triplet_weight": id_loss.new_tensor(weighted.triplet_weight),
        }

    def extra_repr(self) -> str:
        return f"margin={self.margin}, triplet_on={self.triplet_on!r}"


class PCBCriterion(Criterion):
    """PCB's loss: the sum over the stripes of the mean cross-entropy of each stripe's classifier.

        L = sum over stripes b of mean_i CE(logits[i, b], y_i)

    Input: PartOutput (logits Tensor[B, stripes, num_classes]). Components: "id" (= L).
    """

    name = "pcb"
    output_type = PartOutput

    def _losses(self, output: PartOutput, labels):
        id_loss = _summed_branch_cross_entropy(self._logits(output, "logits"), labels)
        return id_loss, {"id": id_loss}


class MGNCriterion(Criterion):
    """MGN's loss (arXiv:1804.01438, Eq. 1-2; docs/methods.md section 3).

        L = (1/8) sum_j mean_i CE(logits_j[i], y_i) + (1/3) sum_g L_tp(global_features[:, g])

    with L_tp the batch-hard triplet loss (hinge, non-squared Euclidean distances) with margin 1.2,
    on the three reduced global features.

    Options: margin (1.2), backend (the triplet op's backend).

    Input: MGNOutput (global_features Tensor[B, 3, 256], logits: 8 Tensor[B, num_classes]).
    Components: "id" (the mean of the 8 cross-entropies), "triplet" (the mean of the 3 triplets).
    """

    name = "mgn"
    output_type = MGNOutput
    NUM_LOGITS = 8

    def __init__(self, margin: float = 1.2, backend: str | None = None):
        super().__init__()
        check_float("margin", margin)
        self.margin, self.backend = float(margin), backend

    def _losses(self, output: MGNOutput, labels):
        logits = self._logits(output, "logits")
        if len(logits) != self.NUM_LOGITS:
            raise ValueError(f"output.logits must hold {self.NUM_LOGITS} tensors, got {len(logits)}")
        num_classes = logits[0].shape[-1]
        for j, z in enumerate(logits):
            if z.shape[-1] != num_classes:
                raise ValueError(
                    f"output.logits[{j}] must have output.logits[0]'s {num_classes} classes, "
                    f"got shape {tuple(z.shape)}"
                )
        _check_class_labels(labels, num_classes)
        id_loss = sum(_cross_entropy(f"output.logits[{j}]", z, labels) for j, z in enumerate(logits)) / len(logits)
        features = output.global_features
        tp_loss = _summed_branch_triplet("output.global_features", features, labels, self.margin, self.backend)
        tp_loss = tp_loss / features.shape[1]
        return id_loss + tp_loss, {"id": id_loss, "triplet": tp_loss}

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class PLACriterion(Criterion):
    """PLA's composite loss (Eq. 3-5 of "Progressive Learning Algorithm for Efficient Person
    Re-Identification"; docs/methods.md section 2).

        L = CE(logits, y) + lambda * mean over anchors a of softplus(m + d_ap^(k)(a) - d_an^(p)(a))

    d_ap^(k): the k-th largest distance from a to its positives (a itself included, at 0);
    d_an^(p): the p-th smallest to its negatives; non-squared Euclidean distances.

    The paper sets (lambda, m, k, p) by Bayesian optimisation in lambda in [0, 2], m in [-0.1, 0.3],
    k in [1, K], p in [1, P] and prints no fixed values. Defaults: lambda = 1 and m = 0.1, the
    centres of the search ranges, and k = p = 1, the batch-hard selection the generalisation
    starts from (Eq. 2).

    Options: triplet_weight (lambda, in [0, 2]), margin (m), k, p (>= 1), backend.

    Input: PLAOutput (triplet_features Tensor[B, 1024], logits Tensor[B, num_classes]).
    Components: "id" (the cross-entropy), "triplet" (the unweighted generalised batch-hard loss).
    """

    name = "pla"
    output_type = PLAOutput

    def __init__(
        self, triplet_weight: float = 1.0, margin: float = 0.1, k: int = 1, p: int = 1, backend: str | None = None
    ):
        super().__init__()
        self.backend = backend
        self.set_options(triplet_weight, margin, k, p)

    def set_options(self, triplet_weight: float, margin: float, k: int, p: int) -> None:
        """Sets (lambda, m, k, p), checked as in the constructor: what PLA's progressive search
        changes between its phases (reidfast.training.progressive)."""
        triplet_weight = _check_float_in("triplet_weight", triplet_weight, 0.0, 2.0)
        check_float("margin", margin)
        check_int("k", k, minimum=1)
        check_int("p", p, minimum=1)
        self.triplet_weight, self.margin, self.k, self.p = triplet_weight, float(margin), k, p

    def _losses(self, output: PLAOutput, labels):
        logits = self._logits(output, "logits")
        _check_class_labels(labels, logits.shape[-1])
        id_loss = _cross_entropy("output.logits", logits, labels)
        features = _batch_of("output.triplet_features", output.triplet_features, 2, "[B, D]", labels.shape[0])
        tp_loss = triplet_loss(
            features, labels, margin=self.margin, soft=True, k=self.k, p=self.p, backend=self.backend
        )
        return id_loss + self.triplet_weight * tp_loss, {"id": id_loss, "triplet": tp_loss}

    def extra_repr(self) -> str:
        return f"triplet_weight={self.triplet_weight}, margin={self.margin}, k={self.k}, p={self.p}"


class PLROSNetCriterion(Criterion):
    """PLR-OSNet's loss over its two branches (arXiv:2001.07442, Eq. 6; docs/methods.md section 5).

        L = 0.5 * (CE_ls(global_logits) + CE_ls(local_logits))
          + 0.5 * (L_soft(global_features) + L_soft(local_features))
          + 0.0005 * 0.5 * (L_C(global_features) + L_C(local_features))

    CE_ls: cross-entropy with label smoothing; L_soft: soft-margin batch-hard triplet loss, mean
    over anchors of softplus(d_ap - d_an) (non-squared Euclidean); L_C: CenterLoss, one per branch,
    on the features before the BNNeck.

    The class centres are parameters of this criterion (`global_center.centers`,
    `local_center.centers`), learnt by gradient descent: pass the criterion's parameters to the
    optimizer together with the model's (the authors' code leaves them out, so its centres stay
    at their random initialisation), and save its state_dict with the model's.

    Options: num_classes (required: the number of training identities), label_smoothing (0.1),
    global_dim (512), local_dim (2048): the branches' feature sizes; backend (the triplet op's).

    Input: PLROSNetOutput (global_features Tensor[B, global_dim], local_features
    Tensor[B, local_dim], global_logits and local_logits Tensor[B, num_classes]).
    Components: "id_global", "id_local", "triplet_global", "triplet_local", "center_global",
    "center_local" (each unweighted).
    """

    name = "plr_osnet"
    output_type = PLROSNetOutput
    ID_WEIGHT, TRIPLET_WEIGHT, CENTER_WEIGHT = 0.5, 0.5, 0.0005 * 0.5

    def __init__(
        self,
        *,
        num_classes: int,
        label_smoothing: float = 0.1,
        global_dim: int = 512,
        local_dim: int = 2048,
        backend: str | None = None,
    ):
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        check_int("global_dim", global_dim, minimum=1)
        check_int("local_dim", local_dim, minimum=1)
        self.label_smoothing = _check_float_in("label_smoothing", label_smoothing, 0.0, 1.0)
        self.num_classes, self.backend = num_classes, backend
        self.global_center = CenterLoss(num_classes, global_dim)
        self.local_center = CenterLoss(num_classes, local_dim)

    def _losses(self, output: PLROSNetOutput, labels):
        _check_class_labels(labels, self.num_classes)
        components = {}
        for branch, center in (("global", self.global_center), ("local", self.local_center)):
            logits = self._logits(output, f"{branch}_logits")
            if logits.shape[-1] != self.num_classes:
                raise ValueError(
                    f"output.{branch}_logits must have num_classes={self.num_classes} columns, "
                    f"got shape {tuple(logits.shape)}"
                )
            field = f"output.{branch}_features"
            features = _batch_of(field, getattr(output, f"{branch}_features"), 2, "[B, D]", labels.shape[0])
            if features.shape[1] != center.feat_dim:
                raise ValueError(
                    f"{field} must have {branch}_dim={center.feat_dim} columns, got shape {tuple(features.shape)}"
                )
            components[f"id_{branch}"] = _cross_entropy(
                f"output.{branch}_logits", logits, labels, self.label_smoothing
            )
            components[f"triplet_{branch}"] = triplet_loss(
                features, labels, margin=0.0, soft=True, backend=self.backend
            )
            components[f"center_{branch}"] = center(features, labels)
        loss = (
            self.ID_WEIGHT * (components["id_global"] + components["id_local"])
            + self.TRIPLET_WEIGHT * (components["triplet_global"] + components["triplet_local"])
            + self.CENTER_WEIGHT * (components["center_global"] + components["center_local"])
        )
        return loss, components

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, label_smoothing={self.label_smoothing}"


class AdaptiveMarginCriterion(Criterion):
    """The adaptive-margin loss on the embedding (arXiv:1707.00409, Eq. 5-9; docs/methods.md section 4),
    by reidfast.losses.AdaptiveMarginLoss.

    Options: mu (8), gamma (2.1), reduction ("mean", "sum" or "balanced"), backend.

    Input: EmbeddingOutput (embedding Tensor[B, E]). Components: "adaptive_margin" (the loss),
    "margin_positive" (Mp), "margin_negative" (Mn), "mean_distance_positive" (s),
    "mean_distance_negative" (d).
    """

    name = "adaptive_margin"
    output_type = EmbeddingOutput

    def __init__(self, mu: float = 8.0, gamma: float = 2.1, reduction: str = "mean", backend: str | None = None):
        super().__init__()
        self.adaptive_margin = AdaptiveMarginLoss(mu, gamma, reduction, backend)

    def _losses(self, output: EmbeddingOutput, labels):
        loss = self.adaptive_margin(output.embedding, labels)
        margins = self.adaptive_margin.last_margins
        return loss, {
            "adaptive_margin": loss,
            "margin_positive": margins.mp,
            "margin_negative": margins.mn,
            "mean_distance_positive": margins.s,
            "mean_distance_negative": margins.d,
        }


CRITERIA: dict[str, type[Criterion]] = {
    criterion.name: criterion
    for criterion in (
        PyramidCriterion, PCBCriterion, MGNCriterion, PLACriterion, PLROSNetCriterion, AdaptiveMarginCriterion
    )
}


def build_criterion(name: str, **options) -> Criterion:
    """The training criterion of a method: "pyramid", "pcb", "mgn", "pla", "plr_osnet" or
    "adaptive_margin" (see each criterion's class for its equation and options).

    Raises:
        ValueError: an unknown name.
        TypeError: an unknown option, or a required one missing (plr_osnet's num_classes).
    """
    if name not in CRITERIA:
        raise ValueError(f"name must be one of {tuple(CRITERIA)}, got {name!r}")
    criterion = CRITERIA[name]
    parameters = {
        key: param
        for key, param in inspect.signature(criterion).parameters.items()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    }
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise TypeError(f"the {name!r} criterion takes the options {tuple(parameters)}, got unknown {unknown}")
    missing = [key for key, param in parameters.items() if param.default is param.empty and key not in options]
    if missing:
        raise TypeError(f"the {name!r} criterion needs the option(s) {missing}")
    return criterion(**options)
