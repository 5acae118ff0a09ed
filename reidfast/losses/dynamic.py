"""Multi-loss dynamic training of the Pyramid paper (arXiv:1810.12193, Sec. 3.2.2 and Algorithm 1;
docs/methods.md section 1): which loss to optimise, with which weights, and which sampler draws the
next mini-batch, decided from how fast each loss has been falling."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from reidfast._checks import check_float, check_tensor

MODES = ("dynamic", "code", "fixed", "normalized")
_STATEFUL = ("dynamic", "normalized")
# The paper's hyper-parameters (Sec. 4.1).
DEFAULT_ALPHA, DEFAULT_GAMMA, DEFAULT_DELTA = 0.25, 2.0, 0.16


class WeightedLoss(NamedTuple):
    """The objective of one batch.

    loss (Tensor): the total, id_weight * L_id + triplet_weight * L_tp.
    id_weight, triplet_weight (float): the weights it was formed with; triplet_weight is 0 when
        the batch optimises the ID loss alone (Eq. 2).
    """

    loss: torch.Tensor
    id_weight: float
    triplet_weight: float


class DynamicLossWeighting(nn.Module):
    """Dynamic weighting of the ID loss L_id and the triplet loss L_tp (Algorithm 1).

    For each task t in {id, tp}, after each batch tau with (detached) loss L_t(tau):

        k_t(tau) = alpha * L_t(tau) + (1 - alpha) * k_t(tau - 1),          k_t(-1) = L_t(0)  (Eq. 4)
        p_t(tau) = min(k_t(tau), k_t(tau - 1)) / k_t(tau - 1)                                 (Eq. 5)
        FL(p)    = -(1 - p)^gamma * log(p)                                                    (Eq. 6)

    p_t close to 1 means the loss has stopped falling, and FL weights a task by how much it is
    still falling. Before each batch (Algorithm 1 computes FL first, then samples):

        FL(p_tp) / FL(p_id) < delta:  random mini-batch sampling, L = L_id                     (Eq. 2)
        otherwise:                    ID-balanced sampling (P identities x K images),
                                      L = FL(p_id) * L_id + FL(p_tp) * L_tp                   (Eq. 7)

    The FL values are constants for the gradient. Both losses are given on every batch: in the
    Eq. 2 case L_tp only moves its average (it is left out of the total, so no gradient flows
    from it).

    Choices where the paper leaves one (docs/methods.md section 1):

    - Initial state p_id = 0, p_tp = 1 (Algorithm 1): FL(p_id) = +inf, FL(p_tp) = 0, the ratio
      counts as 0, and training starts on the ID loss alone with random sampling.
    - The first batch's losses only seed the averages (k_t(-1) = L_t(0)); Eq. 4-5 apply from the
      second batch on. Applied to L_t(0) itself they would give k_t(0) = L_t(0) and p_t(0) = 1 for
      both tasks whatever happened, which reads as "no loss is falling" and would leave the initial
      state after one batch. So the first two batches always optimise Eq. 2.
    - FL(p_id) == 0 (the ID loss has stopped falling): the ratio counts as +inf and Eq. 7 is used
      with the weights as they are (the ID loss then weighs 0). Both FL values 0: Eq. 7 with both
      weights 1.
    - k_t(tau - 1) == 0 (a triplet loss at exactly 0 so far): p_t = 1, as for a loss that does not
      fall. With alpha < 1, every p_t after the first update is at least 1 - alpha > 0, so FL stays
      finite and Eq. 7 never multiplies by +inf; alpha = 1 is therefore excluded.

    Mode "code" is the authors' release instead: L = L_id + L_tp on every batch, always with
    ID-balanced sampling; it keeps no state and takes no alpha, gamma or delta. Mode "fixed" is
    the same with the weights `fixed_weights` = (w_id, w_tp).

    Mode "normalized" (reidfast's remedy, docs/methods.md section 1) keeps Algorithm 1's
    decisions (the same state, the same switch between Eq. 2 and Eq. 7, the same sampler) and
    rescales Eq. 7's focal weights to sum to 2, the total weight of the code mode:

        w_t = 2 FL(p_t) / (FL(p_id) + FL(p_tp))

    The literal FL values are 1e-11 .. 1e-5 whenever a loss falls (p_t close to 1), so a literal
    Eq. 7 batch hardly trains; normalised, an Eq. 7 batch trains at the code mode's scale and the
    relative emphasis stays the paper's.

    The state (both averages, both p_t, whether the averages are seeded) is kept in buffers, so
    state_dict() / load_state_dict() resume training exactly. In eval mode (module.eval()) forward
    forms the objective without updating the state, so validation batches leave it alone.

    Args:
        alpha: the averages' discount factor, in [0, 1); None: 0.25.
        gamma: the focusing exponent of FL, >= 0; None: 2.
        delta: the switching threshold, > 0 (at 0 the initial ratio 0 would select Eq. 7 with an
            infinite ID weight); None: 0.16.
        mode: "dynamic" (Algorithm 1), "code" (the authors' release), "fixed" (constant
            `fixed_weights`, identity-balanced sampling) or "normalized" (Algorithm 1 with Eq. 7's
            weights rescaled to sum to 2).
        fixed_weights: (w_id, w_tp), both >= 0, for mode "fixed" only (None: (1, 1)).

    Attributes:
        sampling (str): the sampler the NEXT batch must be drawn with: "random" or "identity"
            (identity-balanced: P identities x K images; the paper uses 8 x 8).
        task_weights (tuple[float, float]): (id_weight, triplet_weight) the next batch's objective
            will use.

    Shape:
        id_loss, triplet_loss (0-d Tensor, finite and >= 0) -> WeightedLoss.
    """

    def __init__(
        self,
        alpha: float | None = None,
        gamma: float | None = None,
        delta: float | None = None,
        mode: str = "dynamic",
        fixed_weights: tuple[float, float] | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if fixed_weights is not None and mode != "fixed":
            raise ValueError(f"fixed_weights is an option of mode='fixed', got mode={mode!r}")
        if mode not in _STATEFUL:
            options = {"alpha": alpha, "gamma": gamma, "delta": delta}
            given = {name: value for name, value in options.items() if value is not None}
            if given:
                raise ValueError(
                    f"mode={mode!r} weights the losses with constants and takes no alpha, gamma or delta, got {given}"
                )
            self.fixed_weights = _checked_weights(fixed_weights)
            return
        self.alpha = _checked("alpha", alpha, DEFAULT_ALPHA, lambda v: 0 <= v < 1, "in [0, 1)")
        self.gamma = _checked("gamma", gamma, DEFAULT_GAMMA, lambda v: v >= 0, ">= 0")
        self.delta = _checked("delta", delta, DEFAULT_DELTA, lambda v: v > 0, "> 0")
        # Per task, in the order (id, tp); float64 so that a resumed run repeats the same decisions.
        self.register_buffer("loss_average", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("reduction_likelihood", torch.tensor([0.0, 1.0], dtype=torch.float64))
        self.register_buffer("seeded", torch.tensor(False))

    @property
    def task_weights(self) -> tuple[float, float]:
        if self.mode not in _STATEFUL:
            return self.fixed_weights
        p_id, p_tp = self.reduction_likelihood.tolist()
        fl_id, fl_tp = focal_weight(p_id, self.gamma), focal_weight(p_tp, self.gamma)
        if fl_id == 0.0 and fl_tp == 0.0:
            return 1.0, 1.0  # ratio 0/0: Eq. 7, and with nothing falling both losses count fully
        # fl_id == +inf (the initial state) makes the ratio 0; fl_id == 0 makes it +inf: Eq. 7.
        if fl_id > 0.0 and fl_tp / fl_id < self.delta:
            return 1.0, 0.0
        if self.mode == "normalized":
            return 2.0 * fl_id / (fl_id + fl_tp), 2.0 * fl_tp / (fl_id + fl_tp)
        return fl_id, fl_tp

    @property
    def sampling(self) -> str:
        if self.mode not in _STATEFUL:
            return "identity"
        return "random" if self.task_weights[1] == 0.0 else "identity"

    def state_summary(self) -> dict[str, float | str]:
        """The decision state as plain numbers, for a log: the next batch's sampler and weights
        and, in "dynamic" mode, both loss averages k_t and reduction likelihoods p_t (Eq. 4-5)."""
        id_weight, triplet_weight = self.task_weights
        summary = {"sampling": self.sampling, "id_weight": id_weight, "triplet_weight": triplet_weight}
        if self.mode in _STATEFUL:
            (k_id, k_tp), (p_id, p_tp) = self.loss_average.tolist(), self.reduction_likelihood.tolist()
            summary.update(id_average=k_id, triplet_average=k_tp, id_likelihood=p_id, triplet_likelihood=p_tp)
        return summary

    def forward(self, id_loss: torch.Tensor, triplet_loss: torch.Tensor) -> WeightedLoss:
        check_tensor("id_loss", id_loss, 0, "[] (a scalar)")
        check_tensor("triplet_loss", triplet_loss, 0, "[] (a scalar)")
        id_weight, triplet_weight = self.task_weights
        if self.mode in _STATEFUL and self.training:
            self._observe(_loss_value("id_loss", id_loss), _loss_value("triplet_loss", triplet_loss))
        loss = id_loss if triplet_weight == 0.0 else id_weight * id_loss + triplet_weight * triplet_loss
        return WeightedLoss(loss, id_weight, triplet_weight)

    def _observe(self, id_value: float, triplet_value: float) -> None:
        """Eq. 4-5 with one batch's losses."""
        losses = (id_value, triplet_value)
        if not bool(self.seeded):
            self.loss_average.copy_(torch.tensor(losses, dtype=torch.float64))
            self.seeded.fill_(True)
            return
        previous = self.loss_average.tolist()
        current = [self.alpha * loss + (1.0 - self.alpha) * k for loss, k in zip(losses, previous)]
        likelihood = [min(k, k_prev) / k_prev if k_prev > 0 else 1.0 for k, k_prev in zip(current, previous)]
        self.loss_average.copy_(torch.tensor(current, dtype=torch.float64))
        self.reduction_likelihood.copy_(torch.tensor(likelihood, dtype=torch.float64))

    def extra_repr(self) -> str:
        if self.mode not in _STATEFUL:
            return f"mode={self.mode!r}, fixed_weights={self.fixed_weights}"
        return f"alpha={self.alpha}, gamma={self.gamma}, delta={self.delta}, mode={self.mode!r}"


def focal_weight(p: float, gamma: float) -> float:
    """FL(p) = -(1 - p)^gamma * log(p) (Eq. 6) for p in [0, 1], with FL(0) = +inf and FL(1) = 0."""
    if p == 0.0:
        return math.inf
    return -((1.0 - p) ** gamma) * math.log(p) + 0.0  # + 0.0 turns -0.0 into 0.0


def _checked(name: str, value, default: float, valid, condition: str) -> float:
    """`value` (None: `default`) as a float satisfying `valid`, else a ValueError naming it."""
    if value is None:
        return default
    check_float(name, value)
    if not valid(value):
        raise ValueError(f"{name} must be {condition}, got {value}")
    return float(value)


def _checked_weights(weights) -> tuple[float, float]:
    """fixed_weights as two floats >= 0 (None: (1, 1), the code mode's)."""
    if weights is None:
        return 1.0, 1.0
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") or len(weights) != 2:
        raise TypeError(f"fixed_weights must be a pair (w_id, w_tp), got {weights!r}")
    for name, value in zip(("fixed_weights[0]", "fixed_weights[1]"), weights):
        check_float(name, value)
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return float(weights[0]), float(weights[1])


def _loss_value(name: str, loss: torch.Tensor) -> float:
    """The loss as a float for the averages; it must be finite and >= 0 (Eq. 5 divides by it)."""
    value = loss.item()
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0 to update the loss averages, got {value}")
    return value
