"""The learning-rate schedule: a factor of each parameter group's base rate, a pure function of the
optimizer step, so a resumed run has its rate back from the step alone and nothing can reset it."""

from __future__ import annotations

import math

import torch

from reidfast._checks import check_int
from reidfast.training.config import ScheduleConfig


class LRSchedule:
    """Sets `lr = base_lr * factor(step)` in every parameter group of `optimizer` before each step.

    With e = step / steps_per_epoch (the fractional epoch) and E = schedule.epochs:

        warm-up (e < W):  start + (1 - start) * e / W               (linear, step by step)
        multistep:        gamma ** (number of milestones <= floor(e))
        cosine:           min + (1 - min) * (1 + cos(pi * (e - W) / (E - W))) / 2
        exponential:      min ** ((e - S) / (E - S)) from epoch S = decay_start on, 1 before
                          (PLA's Eq. 10: 0.001 from epoch 150 to 300)
        constant:         1

    The decays start after the warm-up; multistep changes at epoch boundaries, as the papers'
    recipes state it (PLR-OSNet: "x0.1 at 60 and 90"; MGN: "at 40 and 60"); cosine and
    exponential change step by step.

    With `beta1_switch` = (S1, b), Adam's beta1 is b from epoch S1 on and the groups' own before
    (PLA: 0.9, then 0.5 after epoch 150).

    Args:
        optimizer: its groups' "base_lr" entries (set by the trainer) are the rates at factor 1.
        schedule: the run's ScheduleConfig.
        steps_per_epoch: optimizer steps per epoch (>= 1).
        beta1_switch: (epoch, beta1) or None; the optimizer's groups must have "betas".
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, steps_per_epoch: int,
                 beta1_switch: tuple[int, float] | None = None):
        check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        if beta1_switch is not None:
            if "betas" not in optimizer.param_groups[0]:
                raise ValueError(f"beta1_switch={beta1_switch} needs an optimizer with betas (Adam), got "
                                 f"{type(optimizer).__name__}")
            if not 0.0 <= beta1_switch[1] < 1.0:
                raise ValueError(f"beta1_switch's beta1 must lie in [0, 1), got {beta1_switch[1]}")
        self.beta1_switch = beta1_switch
        self.base_beta1 = [group["betas"][0] for group in optimizer.param_groups] if beta1_switch else []
        for index, group in enumerate(optimizer.param_groups):
            if "base_lr" not in group:
                raise ValueError(f"optimizer.param_groups[{index}] has no 'base_lr' entry")
        if schedule.kind == "exponential" and not (0 < schedule.min_factor and schedule.decay_start < schedule.epochs):
            raise ValueError(
                f"the exponential schedule decays to schedule.min_factor > 0 (got {schedule.min_factor}) from "
                f"schedule.decay_start < schedule.epochs (got {schedule.decay_start} and {schedule.epochs})"
            )
        if schedule.warmup_epochs >= schedule.epochs and schedule.kind == "cosine":
            raise ValueError(
                f"schedule.warmup_epochs={schedule.warmup_epochs} leaves no epoch for the cosine decay of "
                f"schedule.epochs={schedule.epochs}"
            )
        self.optimizer, self.schedule, self.steps_per_epoch = optimizer, schedule, steps_per_epoch

    def factor(self, step: int) -> float:
        """The factor of the base rates at optimizer step `step` (0-based)."""
        s = self.schedule
        epoch = step / self.steps_per_epoch
        if epoch < s.warmup_epochs:
            return s.warmup_start_factor + (1.0 - s.warmup_start_factor) * epoch / s.warmup_epochs
        whole = math.floor(epoch)
        if s.kind == "multistep":
            return s.gamma ** sum(1 for milestone in s.milestones if milestone <= whole)
        if s.kind == "cosine":
            progress = min((epoch - s.warmup_epochs) / (s.epochs - s.warmup_epochs), 1.0)
            return s.min_factor + (1.0 - s.min_factor) * (1.0 + math.cos(math.pi * progress)) / 2.0
        if s.kind == "exponential":
            if epoch <= s.decay_start:
                return 1.0
            return s.min_factor ** ((min(epoch, s.epochs) - s.decay_start) / (s.epochs - s.decay_start))
        return 1.0

    def apply(self, step: int) -> float:
        """Sets every group's rate (and beta1, with a switch) for step `step`; returns the factor."""
        factor = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        if self.beta1_switch is not None:
            switched = step / self.steps_per_epoch >= self.beta1_switch[0]
            for group, base in zip(self.optimizer.param_groups, self.base_beta1):
                group["betas"] = (self.beta1_switch[1] if switched else base, group["betas"][1])
        return factor
