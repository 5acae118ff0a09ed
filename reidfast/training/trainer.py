"""The training loop: `train(config) -> TrainResult`, read top to bottom.

    build the run (data, model, criterion, optimizer, schedule; everything checked first)
    resume from the run folder's latest checkpoint, if asked
    for each epoch:
        for each batch: forward, criterion, backward, step; log; checkpoint every N steps
        evaluate every `eval_every` epochs; checkpoint (the best by mAP kept)
    evaluate; write the curves and the ranked results

A run folder (`config.output_dir`) holds config.yaml (the resolved config), env.json (versions,
devices, threads), metrics.jsonl (one JSON record per log step and per evaluation), checkpoints/
(the last `keep_last` and best.pt), curves.png and ranked/ (a sheet per drawn query).

Exact resumption. A checkpoint holds everything the next step depends on: the model, the criterion
(dynamic weighting's state, centres), the optimizer, the GradScaler, the sampler's position in the
epoch, each rank's random generators (torch, CUDA, numpy, Python) and batch-transform generator,
the step. The learning rate is a function of the step (LRSchedule). Per-image augmentation is
seeded by (seed, epoch, batch, slot) (reidfast.data.SeededBatchSampler). So on the CPU a run
killed at any moment and resumed from its latest checkpoint ends with the weights, bit for bit, of
the run never stopped; metrics.jsonl is cut back to the checkpoint's step on resumption, so it too
reads as one run.

Distributed (torchrun). Each rank draws its share of every batch (the samplers split the global
plan); the model's outputs are gathered across ranks with their gradients, so the criterion sees
the global batch on every rank: the batch-hard selections and the adaptive margins are over the
whole batch, the dynamic weighting's state is the same on every rank, and the run computes what
one process would on the concatenated batches (BatchNorm apart: per rank, unless
`train.sync_batchnorm`). DDP averages the gradients. Rank 0 writes the logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import pathlib
import platform
import random
import sys
import time

import numpy as np
import torch
from torch import nn

import reidfast
from reidfast.data import (
    ReIDDataset,
    ReIDImageDataset,
    build_dataset,
    build_test_loader,
    build_train_loader,
    make_synthetic_reid,
    recipe_for,
    transforms_for,
)
from reidfast.data.transforms import BatchTransform, Transforms
from reidfast.evaluation import (
    evaluate,
    evaluate_rank,
    fit_pca,
    plot_ranked_results,
    pool_queries,
    rerank,
    ten_crop_features,
)
from reidfast.losses import build_criterion
from reidfast.losses.criteria import CRITERIA
from reidfast.models import build_model, model_class
from reidfast.ops import pairwise_distance
from reidfast.training.checkpoint import CheckpointFolder, load_checkpoint, random_state, restore_random_state
from reidfast.training.config import Config, ConfigError, config_to_dict, dump_config, load_config
from reidfast.training.distributed import (
    DistributedContext,
    all_gather_variable,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    destroy_distributed,
    init_distributed,
    reduce_mean,
)
from reidfast.training.plots import plot_training_curves
from reidfast.training.progressive import (
    PARAMETERS,
    OptunaStudy,
    ProgressiveSearch,
    RankZeroStudy,
    hold_out_images,
    validation_loss,
)
from reidfast.training.samplers import AnchorBatchSampler, IdentityBatchSampler, SwitchingBatchSampler
from reidfast.training.schedule import LRSchedule

# Config keys a resumed run may change: where things are and how fast they load, never what is
# computed (the workers do not change the batches: augmentation is seeded per item).
RESUME_MAY_CHANGE = frozenset({
    "output_dir", "data.root", "data.num_workers", "data.pin_memory", "train.progress", "evaluation.batch_size",
    "evaluation.ranked_results",
})


class NonFiniteLossError(FloatingPointError):
    """A loss that is NaN or infinite: the run stops at that step, naming the components."""


@dataclasses.dataclass
class TrainResult:
    """What `train` returns (rank 0's view; the same on every rank).

    run_dir: the run folder. steps, epochs: optimizer steps and epochs completed.
    metrics: the final evaluation {"mAP", "rank1", "rank5", "mINP"} (fractions).
    train_seconds: wall time of the training steps (evaluation and checkpoints excluded) of this
        process's part of the run. images_per_s: images per second over those steps, all ranks.
    last_checkpoint, best_checkpoint: paths in the run folder.
    """

    run_dir: pathlib.Path
    steps: int
    epochs: int
    metrics: dict
    train_seconds: float
    images_per_s: float
    last_checkpoint: pathlib.Path | None
    best_checkpoint: pathlib.Path | None


@dataclasses.dataclass
class _Data:
    """A run's data: the dataset's splits, the training loader (batches of the config's sampler),
    the training batch transform and the test transforms, the optimizer steps of an epoch."""

    dataset: ReIDDataset
    loader: torch.utils.data.DataLoader
    batch_transform: BatchTransform
    test_transform: Transforms
    steps_per_epoch: int


def train(config: Config | str | os.PathLike | dict, resume: bool = False) -> TrainResult:
    """Trains `config`'s method (a Config, a shipped config's name, a YAML path or a mapping).

    resume: continue the run in `config.output_dir` from its latest checkpoint (the config must
        be the run's: `output_dir/config.yaml`); without a checkpoint there, start it.

    Raises:
        ConfigError: a config that cannot run (checked before any training step).
        FileExistsError: `output_dir` already holds a run and `resume` is False.
        NonFiniteLossError: a non-finite loss, naming the step and the component.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    context = init_distributed(config.train.device)
    try:
        return _Run(config, context, resume).fit()
    finally:
        destroy_distributed(context)


class _Run:
    """One training run's objects, built and checked before any step."""

    def __init__(self, config: Config, context: DistributedContext, resume: bool):
        self.config, self.context = config, context
        self.device = context.device
        _check_runnable(config, context)
        self.run_dir = pathlib.Path(config.output_dir)
        checkpoint_dir = self.run_dir / "checkpoints"
        latest = CheckpointFolder(checkpoint_dir).latest() if checkpoint_dir.is_dir() else None
        if latest is not None and not resume:
            raise FileExistsError(
                f"output_dir {str(self.run_dir)!r} already holds a run (latest checkpoint {latest.name}); "
                "resume it (--resume) or choose another output_dir"
            )
        _seed_everything(config.seed)
        dataset = _read_dataset(config.data, context)
        self.model = _build_model(config, dataset.num_train_pids).to(self.device)
        self.criterion = _build_criterion(config, dataset.num_train_pids).to(self.device)
        if config.evaluation.pca_dim is not None:
            _check_pca_dim(config, self.model, len(dataset.train), self.device)
        train_records, validation_records = dataset.train, []
        if config.progressive.enabled:  # PLA's trials are scored on held-out images
            train_records, validation_records = hold_out_images(
                dataset.train, config.progressive.validation_images, config.seed)
        self.data = _build_data(config, context, dataset, self.criterion, train_records)
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = _build_optimizer(config, self.model, self.criterion)
        schedule = config.schedule
        if config.progressive.enabled:  # restarted in every phase of the search
            schedule = dataclasses.replace(schedule, epochs=config.progressive.exploit_epochs)
        opt = config.optimizer
        beta1_switch = None if opt.beta1_switch_epoch is None else (opt.beta1_switch_epoch, opt.beta1_after)
        try:
            self.schedule = LRSchedule(self.optimizer, schedule, self.data.steps_per_epoch, beta1_switch=beta1_switch)
        except ValueError as error:
            raise ConfigError(f"schedule / optimizer: {error}") from None
        self.validation = _validation_batches(config, context, validation_records, self.data.test_transform)
        self.scaler = torch.amp.GradScaler("cuda") if config.train.amp == "float16" else None
        self.network = _wrap(self.model, config, context)
        # Dropout and anything else drawing from the global generators differ between ranks.
        torch.manual_seed(config.seed * 1_000_003 + context.rank)
        self.step, self.epoch, self.position, self.best, self.last_metrics = 0, 0, 0, None, None
        self.sampling = getattr(self.criterion, "sampling", None)  # the decision the last step left
        self.search, self.restore_point = None, None
        # Everything is built and checked: the run folder may be written now.
        self.checkpoints = CheckpointFolder(checkpoint_dir, keep_last=config.train.keep_last)
        if latest is None and context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(config))
            (self.run_dir / "env.json").write_text(json.dumps(_environment(context), indent=2) + "\n")
            (self.run_dir / "metrics.jsonl").write_text("")
        barrier(context)
        if config.progressive.enabled:
            self.search = self._build_search()
        if latest is not None:
            self._restore(load_checkpoint(latest, map_location=self.device), latest)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tensorboard = _tensorboard_writer(self.run_dir, context, self.step)

    # ----------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        config = self.config
        total_steps = config.schedule.epochs * self.data.steps_per_epoch
        if config.train.max_steps is not None:
            total_steps = min(total_steps, config.train.max_steps)
        progress = _progress(config, self.context, total_steps, self.step)
        seconds, images = 0.0, 0
        final_metrics = None
        try:
            while self.step < total_steps:
                if self.search is not None:
                    self._begin_search_epoch()
                epoch_seconds, epoch_images, completed = self._train_one_epoch(total_steps, progress)
                seconds, images = seconds + epoch_seconds, images + epoch_images
                if completed:  # a whole epoch: evaluate, checkpoint
                    self.epoch, self.position = self.epoch + 1, 0
                    exploiting = self.search is None or self.search.phase == "exploit"  # trials are not evaluated
                    if self.search is not None:
                        self._end_search_epoch()
                    due = exploiting and config.train.eval_every and self.epoch % config.train.eval_every == 0
                    last = self.step >= total_steps
                    metrics = self._evaluate() if due or last else None
                    final_metrics = metrics if last else final_metrics
                    self._checkpoint(metrics)
                else:  # max_steps reached mid-epoch
                    final_metrics = self._evaluate()
                    self._checkpoint(final_metrics)
        finally:
            if progress is not None:
                progress.close()
        if final_metrics is None:  # resumed after the last step: its checkpoint holds the evaluation
            final_metrics = self.last_metrics if self.last_metrics is not None else self._evaluate()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.context.is_main:
            plot_training_curves(self.metrics_path, self.run_dir / "curves.png", title=f"{config.method}")
        world_images = reduce_mean({"images": float(images)}, self.context)["images"] * self.context.world_size
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            epochs=self.epoch,
            metrics=final_metrics,
            train_seconds=seconds,
            images_per_s=world_images / seconds if seconds > 0 else 0.0,
            last_checkpoint=self.checkpoints.latest(),
            best_checkpoint=self.checkpoints.best(),
        )

    def _train_one_epoch(self, total_steps: int, progress) -> tuple[float, int, bool]:
        """Trains from the sampler's position to the epoch's end or `total_steps`; returns the
        seconds spent, the images this rank trained on, and whether the epoch is complete."""
        config, context = self.config, self.context
        sampler = self.data.loader.batch_sampler
        sampler.set_epoch(self.search.data_epoch if self.search is not None else self.epoch)
        self.network.train()
        self.criterion.train()
        window: dict[str, float] = {}
        window_steps, window_images, window_skipped, window_start = 0, 0, 0, time.perf_counter()
        seconds, images = 0.0, 0
        autocast = _autocast(config, self.device)
        for batch in self.data.loader:
            started = time.perf_counter()
            batch = batch.to(self.device, non_blocking=config.data.pin_memory)
            inputs = self.data.batch_transform(batch.images)
            factor = self.schedule.apply(self._schedule_step())
            with autocast:
                output = gather_with_grad(self.network(inputs), context)
            labels = all_gather_variable(batch.pids, context) if context.is_distributed else batch.pids
            result = self.criterion(_to_float32(output), labels)
            self._check_finite(result)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(result.loss).backward()
                self.scaler.unscale_(self.optimizer)
                self._clip()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                result.loss.backward()
                self._clip()
                self.optimizer.step()
            self.step += 1
            self.position += 1
            self._log_switch()
            seconds += time.perf_counter() - started
            images += len(batch.pids)
            window_images += len(batch.pids)
            window_skipped += len(batch.skipped)
            window_steps += 1
            for name, value in {"loss": result.loss.detach(), **result.components}.items():
                window[name] = window.get(name, 0.0) + float(value)
            if progress is not None:
                progress.update(1)
            if self.step % config.train.log_every == 0 or self.step == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {name: total / window_steps for name, total in window.items()}
                record["lr"] = self.optimizer.param_groups[0]["base_lr"] * factor
                record["images_per_s"] = window_images * context.world_size / elapsed if elapsed > 0 else 0.0
                if config.data.on_error == "skip":
                    record["skipped_images"] = window_skipped
                self._log("train", record)
                if progress is not None:
                    progress.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k != "skipped_images"})
                window, window_steps, window_images, window_skipped = {}, 0, 0, 0
                window_start = time.perf_counter()
            if config.train.checkpoint_every and self.step % config.train.checkpoint_every == 0 \
                    and self.position < self.data.steps_per_epoch:
                self._checkpoint(None)
            if self.step >= total_steps:
                break
        return seconds, images, self.position == self.data.steps_per_epoch

    def _log_switch(self) -> None:
        """A "switch" record when the criterion's sampling decision for the next batch changed
        (Pyramid's dynamic training: random vs identity-balanced), with its decision state."""
        sampling = getattr(self.criterion, "sampling", None)
        if sampling is not None and sampling != self.sampling:
            self._log("switch", {"from": self.sampling, **self.criterion.decision_state()})
        self.sampling = sampling

    # ----------------------------------------------------------------------------------------
    # PLA's progressive search (reidfast.training.progressive)

    def _build_search(self) -> ProgressiveSearch:
        """The search's state machine over an optuna study in run_dir/study.journal (rank 0's)."""
        config = self.config
        settings, data = config.progressive, config.data
        defaults = {name: getattr(self.criterion, name) for name in PARAMETERS}
        study = None
        if self.context.is_main:
            study = OptunaStudy(  # p ranges over the identities of the global batch
                self.run_dir / "study.journal", config.seed, data.identities_per_batch * self.context.world_size,
                data.images_per_identity,
                settings.triplet_weight_range, settings.margin_range, defaults, startup_trials=settings.candidates)
        return ProgressiveSearch(settings, config.schedule.epochs, defaults, RankZeroStudy(study, self.context))

    def _schedule_step(self) -> int:
        """The step the learning-rate schedule reads: the run's, or the search phase's."""
        if self.search is None:
            return self.step
        return self.search.phase_epoch * self.data.steps_per_epoch + self.position

    def _begin_search_epoch(self) -> None:
        """Before an epoch: the restore point at a round's start, the phase's loss options."""
        if self.search.starts_round() and self.position == 0:
            self.restore_point = {
                "model": copy.deepcopy(self.model.state_dict()),
                "criterion": copy.deepcopy(self.criterion.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "random": random_state(),
                "batch_transform": self.data.batch_transform.state_dict(),
            }
        self.criterion.set_options(**self.search.params())

    def _end_search_epoch(self) -> None:
        """After an epoch: the trial's validation loss; at a trial's end its record and the
        restore point's weights, optimizer state and random streams back."""
        phase, round_ = self.search.phase, self.search.state.round
        loss = validation_loss(self.model, self.criterion, self.validation) if phase == "explore" else None
        restore = self.search.end_epoch(loss)
        if restore:
            trial = self.search.state.trials[-1]
            self._log("trial", {"round": trial["round"], "trial": trial["trial"], **trial["params"],
                                "first_half": trial["first_half"], "second_half": trial["second_half"],
                                "drop": trial["drop"], "objective": trial["objective"]})
            point = self.restore_point
            self.model.load_state_dict(point["model"])
            self.criterion.load_state_dict(point["criterion"])
            self.optimizer.load_state_dict(copy.deepcopy(point["optimizer"]))
            restore_random_state(point["random"])
            self.data.batch_transform.load_state_dict(point["batch_transform"])
        if self.context.is_main and (restore or self.search.state.round != round_):
            state = self.search.state
            tables = {"trials": state.trials, "exploitations": state.exploitations}
            (self.run_dir / "trials.json").write_text(json.dumps(tables, indent=2) + "\n")

    def _clip(self) -> None:
        if self.config.train.grad_clip is not None:
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, self.config.train.grad_clip)

    def _check_finite(self, result) -> None:
        loss = float(result.loss.detach())
        if math.isfinite(loss):
            return
        bad = [name for name, value in result.components.items() if not math.isfinite(float(value))]
        named = ", ".join(f"{name}={float(result.components[name])}" for name in bad) or "none of its components"
        raise NonFiniteLossError(f"non-finite loss {loss} at step {self.step + 1} (epoch {self.epoch}): {named}")

    # ----------------------------------------------------------------------------------------
    def _evaluate(self) -> dict:
        """Retrieval metrics on the query and gallery splits, logged; every rank gets them."""
        metrics = evaluate_model(
            self.model, self.data.dataset, self.data.test_transform, self.config, self.context,
            ranked_dir=self.run_dir / "ranked",
        )
        self._log("eval", dict(metrics))
        return metrics

    # ----------------------------------------------------------------------------------------
    def _checkpoint(self, metrics: dict | None) -> None:
        """Writes the checkpoint of this step (rank 0), with every rank's random state."""
        mine = {"random": random_state(), "batch_transform": self.data.batch_transform.state_dict()}
        if self.restore_point is not None:
            mine["restore_point"] = {key: self.restore_point[key] for key in ("random", "batch_transform")}
        ranks = _gather_objects(mine, self.context)
        if metrics is not None:
            self.best = metrics["mAP"] if self.best is None else max(self.best, metrics["mAP"])
            self.last_metrics = metrics
        if self.context.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "position": self.position,
                "model": self.model.state_dict(),
                "criterion": self.criterion.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "sampler": self.data.loader.batch_sampler.state_dict(batches_consumed=self.position)
                if self.position else None,
                "ranks": ranks,
                "best_mAP": self.best,
                "last_metrics": self.last_metrics,
                "config": config_to_dict(self.config),
                "world_size": self.context.world_size,
                "num_train_pids": self.data.dataset.num_train_pids,
                "search": self.search.state_dict() if self.search is not None else None,
                "restore_point": None if self.restore_point is None else {
                    key: self.restore_point[key] for key in ("model", "criterion", "optimizer")},
            }
            self.checkpoints.save(self.step, state, metric=None if metrics is None else metrics["mAP"])
        barrier(self.context)

    def _restore(self, state: dict, path: pathlib.Path) -> None:
        try:  # read through load_config: keys added to the config since the run started take their defaults
            saved = config_to_dict(load_config(state.get("config") or {}))
        except ConfigError as error:
            raise ConfigError(f"resuming {str(path)!r}: the run's config no longer reads: {error}") from None
        differences = [key for key in _differences(saved, config_to_dict(self.config)) if key not in RESUME_MAY_CHANGE]
        if differences:
            raise ConfigError(
                f"resuming {str(path)!r}: the config differs from the run's in {', '.join(sorted(differences))}; resume "
                f"with the run's config ({str(self.run_dir / 'config.yaml')!r})"
            )
        if state["world_size"] != self.context.world_size:
            raise ConfigError(
                f"resuming {str(path)!r}: the run used {state['world_size']} processes, this one "
                f"{self.context.world_size}"
            )
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position, self.best, self.last_metrics = (
            state["step"], state["epoch"], state["position"], state["best_mAP"], state["last_metrics"])
        if state["sampler"] is not None:
            self.data.loader.batch_sampler.load_state_dict(state["sampler"])
        self.sampling = getattr(self.criterion, "sampling", None)
        mine = state["ranks"][self.context.rank]
        restore_random_state(mine["random"])
        self.data.batch_transform.load_state_dict(mine["batch_transform"])
        if self.search is not None:
            self.search.load_state_dict(state["search"])
            self.criterion.set_options(**self.search.params())
            if state["restore_point"] is not None:
                self.restore_point = {**state["restore_point"], **mine["restore_point"]}
        if self.context.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)

    def _log(self, kind: str, values: dict) -> None:
        if not self.context.is_main:
            return
        record = {"kind": kind, "step": self.step, "epoch": self.epoch + self.position / self.data.steps_per_epoch,
                  **values}
        with open(self.metrics_path, "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{kind}/{name}", value, self.step)


# ------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_model(model: nn.Module, dataset, test_transform, config: Config, context: DistributedContext,
                   ranked_dir: pathlib.Path | None = None) -> dict:
    """{"mAP", "rank1", "rank5", "mINP"} of `model` on `dataset`'s query and gallery splits, as
    `config.evaluation` says (metric, flip or 10-crop averaging, PCA fitted on the training
    images' features, multi-query pooling, re-ranking); every rank gets them. The images are
    split across ranks and their features gathered; rank 0 ranks them and, with `ranked_dir` and
    `evaluation.ranked_results` > 0, draws that many queries' ranked results."""
    query = extract_features(model, dataset.query, test_transform, config, context)
    gallery = extract_features(model, dataset.gallery, test_transform, config, context)
    ev = config.evaluation
    extra = getattr(dataset, "multi_query", []) if ev.multi_query != "none" else []
    extra_features = extract_features(model, extra, test_transform, config, context) if extra else None
    if ev.pca_dim is not None:
        pca = fit_pca(extract_features(model, dataset.train, test_transform, config, context), ev.pca_dim)
        query, gallery = pca.project(query), pca.project(gallery)
        extra_features = None if extra_features is None else pca.project(extra_features)
    metrics = None
    if context.is_main:
        q_pids, g_pids, q_camids, g_camids = labels = [
            torch.tensor([getattr(record, field) for record in records])
            for field, records in (("pid", dataset.query), ("pid", dataset.gallery), ("camid", dataset.query),
                                   ("camid", dataset.gallery))
        ]
        if ev.multi_query != "none":
            pool_labels = [torch.tensor([getattr(record, field) for record in extra]) for field in ("pid", "camid")]
            query = pool_queries(query, q_pids, q_camids, extra_features, *(pool_labels if extra else (None, None)),
                                 pool=ev.multi_query)
        if ev.rerank:
            pairs = ((query, gallery), (query, query), (gallery, gallery))
            ranked = evaluate_rank(rerank(*(_distances(a, b, ev.metric) for a, b in pairs)), *labels,
                                   max_rank=ev.max_rank)
        else:
            ranked = evaluate(query, gallery, *labels, metric=ev.metric, max_rank=ev.max_rank)
        cmc = ranked.cmc
        metrics = {"mAP": float(ranked.mAP), "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
                   "mINP": float(ranked.mINP)}
        if ranked_dir is not None and ev.ranked_results:
            count = min(ev.ranked_results, len(dataset.query))
            chosen = np.unique(np.linspace(0, len(dataset.query) - 1, count).round().astype(int)).tolist()
            plot_ranked_results(
                _distances(query[chosen], gallery, ev.metric).cpu(), [dataset.query[i].path for i in chosen],
                [record.path for record in dataset.gallery], q_pids[chosen], g_pids, q_camids[chosen], g_camids,
                out_dir=ranked_dir, topk=10, width=64, height=128,
            )
    return broadcast_object(metrics, context)


@torch.no_grad()
def extract_features(model: nn.Module, records, test_transform, config: Config,
                     context: DistributedContext) -> torch.Tensor:
    """The eval-mode features of `records` (Tensor[len(records), D] float32 on the context's
    device; averaged with the mirror's or over 10 crops as `config.evaluation` says): each rank
    embeds a contiguous share, gathered in rank order. A rank whose share is empty (fewer
    records than ranks) embeds the first record for the feature size and contributes no row."""
    if not records:
        raise ValueError("records is empty: there are no images to embed")
    rank, world = context.rank, context.world_size
    share = records[len(records) * rank // world:len(records) * (rank + 1) // world]
    loader = build_test_loader(ReIDImageDataset(share or records[:1], test_transform.sample),
                               config.evaluation.batch_size,
                               num_workers=config.data.num_workers)
    was_training = model.training
    model.eval()
    chunks = []
    with _autocast(config, context.device):
        for batch in loader:
            images = test_transform.batch(batch.images.to(context.device))
            if config.evaluation.ten_crop:
                features = ten_crop_features(model, images)
            else:
                features = model(images)
                if config.evaluation.flip:
                    features = (features + model(images.flip(-1))) / 2
            chunks.append(features.float())
    model.train(was_training)
    features = torch.cat(chunks)
    return all_gather_variable(features if share else features[:0], context)


def evaluate_checkpoint(path: str | os.PathLike, overrides=(), ranked_dir: str | os.PathLike | None = None) -> dict:
    """Evaluates the model of a checkpoint on its run's dataset (or another, by `overrides` such
    as "data.root=..." or "evaluation.rerank=true") and returns {"mAP", "rank1", "rank5", "mINP"}.

    The checkpoint's config is the run's; `overrides` ("dotted.key=value") change it for this
    evaluation only. With `ranked_dir`, the ranked results of `evaluation.ranked_results` queries
    are drawn there.
    """
    state = load_checkpoint(path)
    config = load_config(state["config"], overrides)
    if ranked_dir is not None and config.evaluation.ranked_results == 0:
        raise ConfigError(f"ranked_dir={str(ranked_dir)!r} asks for ranked results, but evaluation.ranked_results is 0 "
                          "in the run's config: override it with the number of queries to draw")
    context = init_distributed(config.train.device)
    try:
        dataset = _read_dataset(config.data, context)
        model = _model_of(state, config).to(context.device)
        test = transforms_for(config.method, False, context.device, 0, **config.data.transforms)
        return evaluate_model(model, dataset, test, config, context,
                              ranked_dir=None if ranked_dir is None else pathlib.Path(ranked_dir))
    finally:
        destroy_distributed(context)


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, Config]:
    """The trained model of a checkpoint (on the CPU, in eval mode) and its run's config."""
    state = load_checkpoint(path)
    config = load_config(state["config"])
    return _model_of(state, config).eval(), config


def _model_of(state: dict, config: Config) -> nn.Module:
    model = _build_model(config, state["num_train_pids"])  # the classifiers it was trained with
    model.load_state_dict(state["model"])
    return model


# ------------------------------------------------------------------------------------------------
# Distributed pieces of the loop


class _GatherRows(torch.autograd.Function):
    """All ranks' `tensor` concatenated along dim 0 (rank order), with the gradient of the
    concatenation flowing back to each rank's rows: the all-reduced sum of every rank's gradient
    of the concatenation, this rank's slice (every rank's loss may depend on every row). The
    ranks' tensors must have one shape (the samplers draw equal batches)."""

    @staticmethod
    def forward(ctx, tensor):
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = tensor.shape[0], rank
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(output, context: DistributedContext):
    """The model's output (a tensor, or a NamedTuple/tuple of tensors, None allowed) with every
    tensor gathered across ranks by `_GatherRows`; in one process, the output itself.

    Each rank then computes the criterion on the global batch. Its gradient reaches this rank's
    rows summed over the ranks' identical losses, W times the gradient of one loss; DDP's average
    over the W ranks divides it back, so the update is that of one process on the global batch.
    """
    if not context.is_distributed:
        return output
    if isinstance(output, torch.Tensor):
        return _GatherRows.apply(output)
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(gather_with_grad(item, context) for item in output))
    if isinstance(output, (list, tuple)):
        return type(output)(gather_with_grad(item, context) for item in output)
    return output


def _gather_objects(obj, context: DistributedContext) -> list:
    """Every rank's `obj`, in rank order (picklable plain data)."""
    if not context.is_distributed:
        return [obj]
    objects = [None] * context.world_size
    torch.distributed.all_gather_object(objects, obj)
    return objects


# ------------------------------------------------------------------------------------------------
# Building a run


def _check_runnable(config: Config, context: DistributedContext) -> None:
    """The config's cross-field rules, checked before anything is built."""
    data = config.data
    if data.sampler == "switching":
        if config.method != "pyramid":
            raise ConfigError(f"data.sampler='switching' follows the Pyramid criterion's decision; method is "
                              f"{config.method!r}")
        if data.num_workers != 0:
            raise ConfigError(
                f"data.sampler='switching' needs data.num_workers=0 (the criterion decides each batch's sampling "
                f"after the previous step; workers would draw ahead of it), got {data.num_workers}"
            )
    if data.sampler == "anchor" and config.method != "adaptive_margin":
        raise ConfigError(f"data.sampler='anchor' draws the adaptive-margin paper's units; method is {config.method!r}")
    if config.train.amp == "float16" and context.device.type != "cuda":
        raise ConfigError(f"train.amp='float16' needs a GPU (GradScaler); the run's device is {context.device}: use "
                          "'bfloat16' on the CPU")
    if config.train.sync_batchnorm and context.is_distributed and context.device.type != "cuda":
        raise ConfigError("train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm); this run is on the CPU")
    if data.on_error == "skip" and context.is_distributed:
        raise ConfigError("data.on_error='skip' is not supported with several processes: a skipped image would make "
                          "the ranks' batches differ in size")
    if config.progressive.enabled:
        _check_progressive(config, context)
    if config.evaluation.ten_crop and config.evaluation.flip:
        raise ConfigError("evaluation.ten_crop averages over the mirrored crops already: set evaluation.flip to false")
    parameters = inspect.signature(CRITERIA[config.method]).parameters
    for option in config.loss.options:
        if option not in parameters or option == "num_classes":
            raise ConfigError(f"loss.options.{option}: not an option of the {config.method!r} criterion; its options: "
                              f"{', '.join(p for p in parameters if p != 'num_classes')}")


def _check_progressive(config: Config, context: DistributedContext) -> None:
    """PLA's search: its method, its batches and its ranges (before anything is built); p ranges
    over the P identities of each rank times the ranks (the criterion sees the global batch)."""
    settings = config.progressive
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("progressive.enabled needs optuna >= 4.0 (its GPSampler and journal storage): "
                          "pip install 'reidfast[search]'")
    if config.method != "pla":
        raise ConfigError(f"progressive.enabled searches PLA's loss options; method is {config.method!r}")
    if config.data.sampler != "identity":
        raise ConfigError(f"progressive.enabled needs data.sampler='identity' (k and p range over its P x K batches), "
                          f"got {config.data.sampler!r}")
    if settings.explore_epochs % 2:
        raise ConfigError(f"progressive.explore_epochs must be even (Eq. 9 compares its two halves), got "
                          f"{settings.explore_epochs}")
    for name in ("triplet_weight_range", "margin_range"):
        low, high = getattr(settings, name)
        if not low < high:
            raise ConfigError(f"progressive.{name} must be (low, high) with low < high, got {[low, high]}")
    low, high = settings.triplet_weight_range
    if low < 0 or high > 2:
        raise ConfigError(f"progressive.triplet_weight_range must lie in [0, 2] (PLA's lambda), got {[low, high]}")
    options = config.loss.options
    bounds = {"triplet_weight": settings.triplet_weight_range, "margin": settings.margin_range,
              "k": (1, config.data.images_per_identity), "p": (1, config.data.identities_per_batch * context.world_size)}
    for name, (low, high) in bounds.items():
        if name in options and not low <= options[name] <= high:
            raise ConfigError(f"loss.options.{name}={options[name]!r}, the search's first candidate, lies outside its "
                              f"search range [{low}, {high}]")


def _check_pca_dim(config: Config, model: nn.Module, train_images: int, device: torch.device) -> None:
    """evaluation.pca_dim against the model's embedding size (one forward of a blank image) and
    the training images the projection is fitted on."""
    recipe = recipe_for(config.method, **config.data.transforms)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = model(torch.zeros(1, 3, recipe.height, recipe.width, device=device)).shape[-1]
    model.train(was_training)
    limit = min(dim, train_images - 1)
    if config.evaluation.pca_dim > limit:
        raise ConfigError(f"evaluation.pca_dim={config.evaluation.pca_dim} exceeds what the {train_images} training "
                          f"images' {dim}-dimensional features span (at most {limit})")


def _validation_batches(config: Config, context: DistributedContext, records: list,
                        test_transform: Transforms) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out images of PLA's search as batches of (images, labels) on the run's device:
    the images of P identities (`data.identities_per_batch`; the last batch takes a lone
    remaining identity) per batch, in label order, through the test transform."""
    if not records:
        return []
    loader = build_test_loader(ReIDImageDataset(records, test_transform.sample), config.evaluation.batch_size,
                               num_workers=config.data.num_workers)
    images = torch.cat([batch.images for batch in loader])
    labels = torch.tensor([record.pid for record in records])
    order = torch.argsort(labels, stable=True)
    images, labels = images[order], labels[order]
    identities = torch.unique_consecutive(labels).tolist()
    size = config.data.identities_per_batch
    groups = [identities[start:start + size] for start in range(0, len(identities), size)]
    if len(groups) > 1 and len(groups[-1]) < 2:  # a lone identity has no negatives: it joins the batch before
        groups[-2] += groups.pop()
    batches = []
    for group in groups:
        chosen = torch.isin(labels, torch.tensor(group))
        batches.append((test_transform.batch(images[chosen].to(context.device)), labels[chosen].to(context.device)))
    return batches


def _seed_everything(seed: int) -> None:
    """The same seed on every rank: the model's initial weights are identical everywhere."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_data(config: Config, context: DistributedContext, dataset, criterion: nn.Module, records: list) -> _Data:
    """The training loader (the config's sampler over `records`, the training split or the part
    of it not held out) and the transforms."""
    data, device = config.data, context.device
    try:
        recipe_for(config.method, **data.transforms)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data.transforms: {error}") from None
    sample, batch = transforms_for(config.method, True, device, config.seed * 1_000_003 + context.rank,
                                   **data.transforms)
    test = transforms_for(config.method, False, device, 0, **data.transforms)
    labels = [record.pid for record in records]
    sampler = build_sampler(config, context, labels, [record.camid for record in records], criterion)
    train_set = ReIDImageDataset(records, sample, on_error=data.on_error)
    loader = build_train_loader(train_set, sampler, seed=config.seed, rank=context.rank, num_workers=data.num_workers,
                                pin_memory=data.pin_memory)
    return _Data(dataset, loader, batch, test, len(sampler))


def build_sampler(config: Config, context: DistributedContext, labels: list[int], cameras: list[int],
                  criterion: nn.Module):
    """The batch sampler `config.data` names, over training items with `labels` and `cameras`.

    Every epoch has the same number of batches, as the learning-rate schedule and the loop count
    them: the identity sampler's epoch-exhausting plan varies in length from epoch to epoch (how
    the identities' groups run out depends on the draw), so without `data.batches_per_epoch` its
    epochs are as long as the first epoch's pass (iteration mode, reidfast.training.samplers).
    """
    data = config.data
    common = dict(num_replicas=context.world_size, rank=context.rank)
    p, k = data.identities_per_batch, data.images_per_identity
    try:
        if data.sampler == "identity":
            batches = data.batches_per_epoch or len(
                IdentityBatchSampler(labels, p, k, config.seed, min_images=data.min_images, **common))
            sampler = IdentityBatchSampler(labels, p, k, config.seed, min_images=data.min_images,
                                           batches_per_epoch=batches, **common)
        elif data.sampler == "anchor":
            sampler = AnchorBatchSampler(labels, p, data.positives_per_anchor, data.negatives_per_anchor, config.seed,
                                         cameras=cameras, batches_per_epoch=data.batches_per_epoch, **common)
        else:
            decide = _always_random if data.sampler == "random" else lambda: criterion.sampling
            sampler = SwitchingBatchSampler(labels, p, k, decide, config.seed, batch_size=data.batch_size,
                                            min_images=data.min_images, batches_per_epoch=data.batches_per_epoch,
                                            **common)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data (sampler {data.sampler!r}): {error}") from None
    if len(sampler) == 0:
        raise ConfigError(f"data: the {data.sampler!r} sampler draws no batch from the {len(labels)} training images")
    return sampler


def _always_random() -> str:
    """The `sampling` decision of the "random" sampler: the switching sampler's random plan only."""
    return "random"


def _read_dataset(data, context: DistributedContext) -> ReIDDataset:
    """The config's dataset; a synthetic set is generated by rank 0 (the others wait, then read
    its cache)."""
    try:
        if data.dataset != "synthetic":
            return build_dataset(data.dataset, data.root, **data.options)
        if context.is_main:
            dataset = make_synthetic_reid(data.root, **data.options)
        barrier(context)
        return dataset if context.is_main else make_synthetic_reid(data.root, **data.options)
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None


def _build_model(config: Config, num_train_pids: int) -> nn.Module:
    """The method's model; a model that takes its `input_size` (the adaptive-margin network) and
    was not given one gets the transform recipe's."""
    num_classes = 0 if config.method == "adaptive_margin" else num_train_pids
    options = dict(config.model.options)
    if "input_size" in inspect.signature(model_class(config.method)).parameters and "input_size" not in options:
        recipe = recipe_for(config.method, **config.data.transforms)
        options["input_size"] = (recipe.height, recipe.width)
    try:
        return build_model(config.method, num_classes, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.options: {error}") from None


def _build_criterion(config: Config, num_train_pids: int) -> nn.Module:
    options = dict(config.loss.options)
    if "num_classes" in inspect.signature(CRITERIA[config.method]).parameters:
        options["num_classes"] = num_train_pids
    try:
        return build_criterion(config.method, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"loss.options: {error}") from None


def _build_optimizer(config: Config, model: nn.Module, criterion: nn.Module) -> torch.optim.Optimizer:
    """Parameter groups: the backbone (the model's `backbone_modules`, the pretrained layers) at
    `lr`, the new layers and the criterion's parameters at `lr * head_lr_factor`; weight decay on
    all, or (decay_norm_and_bias False) not on biases and normalisation parameters (1-D tensors)."""
    opt = config.optimizer
    backbone_prefixes = tuple(f"{name}." for name in getattr(model, "backbone_modules", ()))
    groups: dict[tuple[bool, bool], list] = {}
    named = [(name, p) for name, p in model.named_parameters()] + [
        (f"criterion.{name}", p) for name, p in criterion.named_parameters()]
    for name, parameter in named:
        if not parameter.requires_grad:
            continue
        is_backbone = name.startswith(backbone_prefixes)
        decays = opt.decay_norm_and_bias or parameter.dim() > 1
        groups.setdefault((is_backbone, decays), []).append(parameter)
    param_groups = []
    for (is_backbone, decays), parameters in sorted(groups.items(), reverse=True):
        lr = opt.lr if is_backbone else opt.lr * opt.head_lr_factor
        param_groups.append({"params": parameters, "lr": lr, "base_lr": lr,
                             "weight_decay": opt.weight_decay if decays else 0.0})
    if opt.name == "sgd":
        return torch.optim.SGD(param_groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    if opt.name == "adam":
        return torch.optim.Adam(param_groups, lr=opt.lr, betas=opt.betas)
    return torch.optim.AdamW(param_groups, lr=opt.lr, betas=opt.betas)


def _wrap(model: nn.Module, config: Config, context: DistributedContext) -> nn.Module:
    """The module the loop calls: compiled and wrapped in DDP as the config says."""
    network = model
    if config.train.sync_batchnorm:
        network = convert_sync_batchnorm(network, context)
    if config.train.compile:
        network = torch.compile(network)
    if context.is_distributed:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
    return network


def _autocast(config: Config, device: torch.device):
    if config.train.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.train.amp == "bfloat16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _to_float32(output):
    """The model's output with its floating tensors in float32: the losses run in float32 under
    autocast too (the fused ops' low-precision paths exist, but the criteria's reductions and
    the dynamic weighting's statistics want float32)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(_to_float32(item) for item in output))
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(item) for item in output)
    return output


def _distances(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "euclidean":
        return pairwise_distance(a, b)
    a, b = nn.functional.normalize(a, dim=1, eps=1e-12), nn.functional.normalize(b, dim=1, eps=1e-12)
    return 1 - a @ b.T


def _progress(config: Config, context: DistributedContext, total: int, done: int):
    if not (config.train.progress and context.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=config.method, unit="step", dynamic_ncols=True)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` says."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _tensorboard_writer(run_dir: pathlib.Path, context: DistributedContext, step: int):
    """A TensorBoard writer into run_dir/tensorboard on rank 0 when the tensorboard package is
    installed, else None. Resumed at `step`, it purges the events logged after it (as
    metrics.jsonl is cut back)."""
    if not context.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step if step else None)


def _environment(context: DistributedContext) -> dict:
    """Versions, devices and thread counts of the run, for env.json."""
    cuda = torch.cuda.is_available()
    return {
        "reidfast": reidfast.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(context.device),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "world_size": context.world_size,
        "backends": {name: status.reason if not status.available else "available"
                     for name, status in reidfast.available_backends().items()},
    }


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = set(saved) | set(current)
    found = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("options", "transforms"):
            found.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Keeps the records up to `step` (those logged after the checkpoint are logged again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in kept))
    os.replace(temporary, path)
