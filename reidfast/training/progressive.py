"""PLA's progressive learning: Bayesian optimisation of the loss's w = (lambda, m, k, p) between
phases of training (Algorithm 1 and Eq. 6-9 of "Progressive Learning Algorithm for Efficient
Person Re-Identification"; docs/methods.md section 2).

Rounds, until the budget B (`schedule.epochs`; every epoch trained counts, trials included):

    save the restore point: weights, criterion and optimizer state, random streams
    for each of the N candidates w_i of the round (round 0: the loss's configured options first,
    then random draws; later rounds: expected-improvement maximisers of a Gaussian process fitted
    to every trial so far, optuna's GPSampler):
        explore: train E epochs from the restore point with w_i; after each epoch, the composite
                 loss L(w_i) on the validation split (held-out images of the training identities)
        score:   f(w_i) = | (Lbar_1 - Lbar_2) / Lbar_1 - ED |                         (Eq. 9)
                 Lbar_1, Lbar_2 the mean validation loss over the first and the second E/2 epochs
        restore: back to the restore point
    exploit: train X epochs with the best w so far (the lowest f), from the restore point

Every phase of a round starts from the same data epoch, so the trials see the same batches and
augmentations; the next round's data continues where the exploitation ended. A round whose N
explorations and one epoch of exploitation do not fit in what is left of the budget exploits for
the rest of it, and an exploitation after which no whole round would fit takes the rest of the
budget, so a run always ends on exploitation weights. `ProgressiveSearch` is the state
machine (plain data, checkpointed with the run); the trainer does the training, the restoring and
the validation loss; a study (`OptunaStudy`, or anything with `ask` / `tell`) proposes the
candidates.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import random
from typing import Protocol

import torch

from reidfast._checks import check_int
from reidfast.training.config import ConfigError, ProgressiveConfig
from reidfast.training.distributed import DistributedContext, broadcast_object

PARAMETERS = ("triplet_weight", "margin", "k", "p")  # lambda, m, k, p


class Study(Protocol):
    """What proposes the candidates: `ask` returns (trial number, {name: value} over
    PARAMETERS); `tell` records the objective of a trial."""

    def ask(self) -> tuple[int, dict]: ...

    def tell(self, number: int, value: float) -> None: ...


def eq9_objective(losses: list[float], expected_drop: float) -> tuple[float, float, float, float]:
    """Eq. 9 of the PLA paper on a trial's per-epoch validation losses (an even count >= 2):
    returns (f, Lbar_1, Lbar_2, drop) with Lbar_1 and Lbar_2 the means over the first and the
    second half, drop = (Lbar_1 - Lbar_2) / Lbar_1 and f = |drop - expected_drop|."""
    if len(losses) < 2 or len(losses) % 2:
        raise ValueError(f"losses must hold an even number (>= 2) of epoch losses, got {len(losses)}")
    half = len(losses) // 2
    first, second = sum(losses[:half]) / half, sum(losses[half:]) / half
    if not (math.isfinite(first) and math.isfinite(second)) or first <= 0:
        raise ValueError(f"Eq. 9 needs finite losses and a positive first-half mean, got losses {losses}")
    drop = (first - second) / first
    return abs(drop - expected_drop), first, second, drop


@dataclasses.dataclass
class SearchState:
    """Where the search stands (plain data; a checkpoint holds it).

    round: the round (0-based). phase: "explore" or "exploit". candidate: the trial's index in
    its round. trial: the study's number of the trial being explored. params: the loss options
    of the phase (None: not yet asked). epoch, epochs: epochs done in the phase and its length.
    epochs_used: epochs trained in the run before the phase. data_epoch: the data epoch at which
    the round's phases start. losses: the trial's validation losses so far. trials,
    exploitations: the tables of the scored trials and of the exploitation phases.
    """

    round: int = 0
    phase: str = "explore"
    candidate: int = 0
    trial: int | None = None
    params: dict | None = None
    epoch: int = 0
    epochs: int = 0
    epochs_used: int = 0
    data_epoch: int = 0
    losses: list = dataclasses.field(default_factory=list)
    trials: list = dataclasses.field(default_factory=list)
    exploitations: list = dataclasses.field(default_factory=list)


class ProgressiveSearch:
    """The rounds of PLA's Algorithm 1 as a state machine driven by the epochs (module docstring).

    Per epoch the trainer calls `params()` (the loss options to train with; asks the study for a
    new trial when a trial starts), `starts_round()` before training (True: save the restore
    point), and after the epoch `end_epoch(validation_loss)` (the loss is needed in exploration
    only; True: restore the restore point now).

    Args:
        settings: the run's ProgressiveConfig (candidates N, explore_epochs E, exploit_epochs X,
            expected_drop ED).
        budget: the run's epochs, every epoch trained counted.
        defaults: the loss's configured options, exploited when no trial has been scored.
        study: proposes the candidates (Study).
    """

    def __init__(self, settings: ProgressiveConfig, budget: int, defaults: dict, study: Study):
        check_int("budget", budget, minimum=1)
        if settings.explore_epochs % 2:
            raise ConfigError(f"progressive.explore_epochs must be even (Eq. 9 compares its two halves), got "
                              f"{settings.explore_epochs}")
        missing = [name for name in PARAMETERS if name not in defaults]
        if missing:
            raise ValueError(f"defaults must give {', '.join(PARAMETERS)}; missing {', '.join(missing)}")
        self.settings, self.budget, self.defaults, self.study = settings, budget, dict(defaults), study
        self.state = SearchState()
        self._plan_round()

    # -- the trainer's calls ----------------------------------------------------------------
    @property
    def phase(self) -> str:
        return self.state.phase

    @property
    def phase_epoch(self) -> int:
        """Epochs done in the current phase (its learning-rate schedule restarts at 0)."""
        return self.state.epoch

    @property
    def data_epoch(self) -> int:
        """The data epoch of the current epoch: the round's start plus the phase's epochs done."""
        return self.state.data_epoch + self.state.epoch

    @property
    def finished(self) -> bool:
        return self.state.epochs_used + self.state.epoch >= self.budget

    def starts_round(self) -> bool:
        """True before a round's first exploration epoch: the weights are the restore point."""
        s = self.state
        return s.phase == "explore" and s.candidate == 0 and s.epoch == 0

    def params(self) -> dict:
        """The loss options of the current epoch (a new trial is asked of the study at its start)."""
        s = self.state
        if s.params is None:
            s.trial, params = self.study.ask()
            s.params = {name: params[name] for name in PARAMETERS}
        return dict(s.params)

    def end_epoch(self, validation_loss: float | None) -> bool:
        """Advances by one epoch; returns True when the trainer must restore the restore point
        (a trial has ended and was scored)."""
        s = self.state
        if self.finished:
            raise RuntimeError(f"the search's budget of {self.budget} epochs is spent")
        if s.params is None:
            raise RuntimeError("end_epoch() before params(): the epoch's loss options were never asked")
        s.epoch += 1
        if s.phase == "exploit":
            if s.epoch == s.epochs:
                s.exploitations.append({"round": s.round, "params": s.params, "epochs": s.epochs})
                s.epochs_used += s.epochs
                s.data_epoch += s.epochs
                s.round += 1
                self._plan_round()
            return False
        if validation_loss is None:
            raise ValueError("validation_loss is needed after an exploration epoch, got None")
        s.losses.append(float(validation_loss))
        if s.epoch < s.epochs:
            return False
        objective, first, second, drop = eq9_objective(s.losses, self.settings.expected_drop)
        self.study.tell(s.trial, objective)
        s.trials.append({"round": s.round, "trial": s.trial, "params": s.params, "losses": list(s.losses),
                         "first_half": first, "second_half": second, "drop": drop, "objective": objective})
        s.epochs_used += s.epochs
        s.candidate += 1
        s.losses, s.trial, s.params, s.epoch = [], None, None, 0
        if s.candidate == self.settings.candidates:
            self._start_exploitation()
        return True

    def best_params(self) -> dict:
        """The scored trial with the lowest objective's options (the first on ties); the loss's
        configured options before any trial."""
        trials = self.state.trials
        if not trials:
            return dict(self.defaults)
        return dict(min(trials, key=lambda row: row["objective"])["params"])

    def state_dict(self) -> dict:
        return dataclasses.asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = SearchState(**state)

    # -- planning ---------------------------------------------------------------------------
    def _budget_left(self) -> int:
        return self.budget - self.state.epochs_used

    def _plan_round(self) -> None:
        """At a round's start: explorations when N * E epochs and one exploitation epoch fit,
        otherwise the rest of the budget as exploitation."""
        s, left = self.state, self._budget_left()
        if left <= 0:
            return
        exploring = self.settings.candidates * self.settings.explore_epochs
        s.candidate, s.losses, s.trial, s.params, s.epoch = 0, [], None, None, 0
        if left >= exploring + 1:
            s.phase, s.epochs = "explore", self.settings.explore_epochs
        else:
            self._start_exploitation()

    def _start_exploitation(self) -> None:
        """X epochs with the best options, or the rest of the budget when what would be left
        after X epochs cannot hold another round (N * E + 1 epochs)."""
        s, left = self.state, self._budget_left()
        epochs = min(self.settings.exploit_epochs, left)
        if left - epochs < self.settings.candidates * self.settings.explore_epochs + 1:
            epochs = left
        s.phase, s.epoch, s.params, s.epochs = "exploit", 0, self.best_params(), epochs


class OptunaStudy:
    """The candidates of a PLA search from an optuna study in journal storage (resumable).

    The search space: triplet_weight (lambda) and margin (m) uniform in their configured ranges,
    k in [1, K] and p in [1, P] integers. The first trial is `defaults` (enqueued); the first
    `startup_trials` are random draws; after them, optuna's GPSampler (a Gaussian process with
    expected improvement). The sampler is built for every `ask` with a seed of (seed, number of
    trials), so a study killed and resumed proposes what the uninterrupted one would. A trial
    asked but not told before an interruption (RUNNING in the journal) is the one the next `ask`
    returns; telling a trial told already does nothing.

    Args:
        path: the journal file (created; an existing one is continued).
        seed: the run's seed. images_per_identity, identities_per_batch: K and P of the batches.
        triplet_weight_range, margin_range: (low, high) of lambda and m.
        defaults: the first trial's options (PARAMETERS). startup_trials: random trials first.
    """

    STUDY_NAME = "pla-progressive"

    def __init__(self, path: str | pathlib.Path, seed: int, identities_per_batch: int, images_per_identity: int,
                 triplet_weight_range: tuple[float, float], margin_range: tuple[float, float], defaults: dict,
                 startup_trials: int):
        try:
            import optuna
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend
        except ImportError:
            raise ConfigError("progressive.enabled needs optuna >= 4.0 (its GPSampler and journal storage): "
                              "pip install 'reidfast[search]'") from None

        for name, (low, high) in (("triplet_weight_range", triplet_weight_range), ("margin_range", margin_range)):
            if not low < high:
                raise ConfigError(f"progressive.{name} must be (low, high) with low < high, got "
                                  f"{(low, high)}")
        lo, hi = triplet_weight_range
        if lo < 0 or hi > 2:
            raise ConfigError(f"progressive.triplet_weight_range must lie in [0, 2] (the loss's lambda), got {(lo, hi)}")
        self.space = {
            "triplet_weight": optuna.distributions.FloatDistribution(*triplet_weight_range),
            "margin": optuna.distributions.FloatDistribution(*margin_range),
            "k": optuna.distributions.IntDistribution(1, images_per_identity),
            "p": optuna.distributions.IntDistribution(1, identities_per_batch),
        }
        for name, distribution in self.space.items():
            if not distribution._contains(distribution.to_internal_repr(defaults[name])):
                raise ConfigError(f"loss.options.{name}={defaults[name]!r}, the search's first candidate, lies outside "
                                  f"its search range [{distribution.low}, {distribution.high}]")
        self.seed, self.startup_trials = seed, startup_trials
        self._optuna = optuna
        storage = JournalStorage(JournalFileBackend(str(path)))
        self.study = optuna.create_study(study_name=self.STUDY_NAME, storage=storage, direction="minimize",
                                         load_if_exists=True)
        if not self.study.get_trials(deepcopy=False):
            self.study.enqueue_trial({name: defaults[name] for name in PARAMETERS})

    def ask(self) -> tuple[int, dict]:
        TrialState = self._optuna.trial.TrialState
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running:
            return running[0].number, dict(running[0].params)
        seed = self.seed * 100_003 + len(self.study.get_trials(deepcopy=False))
        self.study.sampler = self._optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=self.startup_trials, warn_independent_sampling=False,
            independent_sampler=self._optuna.samplers.RandomSampler(seed=seed))
        trial = self.study.ask(self.space)
        return trial.number, dict(trial.params)

    def tell(self, number: int, value: float) -> None:
        trial = self.study.get_trials(deepcopy=False)[number]
        if trial.state == self._optuna.trial.TrialState.COMPLETE:
            return
        self.study.tell(number, value)


class RankZeroStudy:
    """A study that lives on rank 0: its proposals are broadcast to every rank, only rank 0 tells."""

    def __init__(self, study: Study | None, context: DistributedContext):
        if context.is_main and study is None:
            raise ValueError("rank 0 needs the study, got None")
        self.study, self.context = study, context

    def ask(self) -> tuple[int, dict]:
        return broadcast_object(self.study.ask() if self.context.is_main else None, self.context)

    def tell(self, number: int, value: float) -> None:
        if self.context.is_main:
            self.study.tell(number, value)


def hold_out_images(records: list, per_identity: int, seed: int) -> tuple[list, list]:
    """Splits training records (objects with .pid) into (train, validation): `per_identity`
    images of every identity that keeps at least two for training, drawn with `seed`; the
    records keep their order in both lists."""
    check_int("per_identity", per_identity, minimum=1)
    by_pid: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        by_pid.setdefault(record.pid, []).append(index)
    generator = random.Random(seed)
    held = set()
    for pid in sorted(by_pid):
        indices = by_pid[pid]
        if len(indices) >= per_identity + 2:
            held.update(generator.sample(indices, per_identity))
    if not held:
        raise ConfigError(f"progressive.validation_images={per_identity} leaves no identity with 2 training images "
                          "besides its held-out ones: the trials could not be scored")
    train = [record for index, record in enumerate(records) if index not in held]
    validation = [record for index, record in enumerate(records) if index in held]
    return train, validation


@torch.no_grad()
def validation_loss(model: torch.nn.Module, criterion, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The criterion's mean loss over `batches` of (images, labels), with the model computing its
    training outputs but with BatchNorm on its running statistics (nothing is updated) and
    dropout off; the modes are restored after."""
    modes = {module: module.training for module in model.modules()}
    model.train()
    for module in model.modules():
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
            module.eval()
    try:
        total, count = 0.0, 0
        for images, labels in batches:
            total += float(criterion(model(images), labels).loss) * len(labels)
            count += len(labels)
    finally:
        for module, training in modes.items():
            module.train(training)
    return total / count
