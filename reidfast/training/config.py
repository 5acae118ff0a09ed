"""The typed configuration of a training run: dataclasses read from YAML, with typed overrides.

A config file is YAML whose top-level keys are the fields of `Config` and whose sections are the
fields of its dataclasses (`data`, `model`, `loss`, `optimizer`, `schedule`, `train`,
`evaluation`). Reading checks every key and value before any work starts:

- an unknown key is a `ConfigError` naming its dotted path and the closest valid key
  ("optimizer.weight_deacy: unknown key; did you mean 'weight_decay'?");
- a value of the wrong type is a `ConfigError` naming the key, the expected type and the value
  (YAML's own types: `1e-4` is read as the float 0.0001, `5e-4` too; an int is accepted where a
  float is expected, a float never where an int is);
- a section whose fields are free-form options of another component (`model.options`,
  `loss.options`, `data.options`, `data.transforms`) is a mapping, checked by that component when
  the run builds it (`build_model`, `build_criterion`, `build_dataset`, `recipe_for`), still before
  training starts.

Overrides (`reidfast train CONFIG key=value ...`) are dotted keys whose values are read as YAML
scalars or flow collections (`optimizer.lr=3e-4`, `schedule.milestones=[40,60]`,
`model.options.levels=[6]`, `train.amp=bfloat16`), applied to the file's mapping before it is
checked, so they get the same checks and errors.

The shipped configs (`reidfast/configs/*.yaml`) are found by name: `load_config("mgn")` reads
`configs/mgn.yaml`; any other argument is a path.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Optional

import yaml

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


class _Loader(yaml.SafeLoader):
    """YAML's safe loader reading numbers as YAML 1.2 does: PyYAML follows YAML 1.1, where `1e-4`
    (no dot) is a string, so a learning rate written as people write it would be rejected."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class ConfigError(ValueError):
    """A config that cannot be read: an unknown key, a value of the wrong type or range, a bad
    override. The message names the key by its dotted path."""


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how batches are drawn.

    dataset: a `reidfast.data.build_dataset` name ("market1501", "dukemtmcreid", "cuhk03",
        "msmt17", "imagefolder", ...) or "synthetic" (`make_synthetic_reid`, generated once into
        `root` and cached there).
    root: the dataset's folder. A relative path is relative to the working directory.
    options: keyword arguments of the dataset (e.g. `images: detected` for cuhk03; the
        generator's arguments for "synthetic": num_identities, images_per_identity, height, ...).
    transforms: overrides of the method's transform recipe (`reidfast.data.recipe_for` fields:
        height, width, flip_p, scale, pad, erase_p, ...).
    sampler: "identity" (P x K identity-balanced batches), "random" (`batch_size` images drawn
        at random), "switching" (each batch identity or random as the criterion's `sampling`
        says: Pyramid's dynamic training) or "anchor" (the adaptive-margin paper's units of one
        anchor, `positives_per_anchor` positives and `negatives_per_anchor` negatives).
    identities_per_batch, images_per_identity: P and K of identity batches ("anchor": the
        anchors per batch is `identities_per_batch`).
    batch_size: images per random batch (None: P * K).
    min_images: identities with fewer training images are never drawn by identity batches.
    positives_per_anchor, negatives_per_anchor: M and N of the "anchor" sampler's units.
    batches_per_epoch: batches per epoch (None: one pass over the data; for the identity sampler,
        whose passes differ in length, the first epoch's pass: every epoch is equally long).
    num_workers: DataLoader worker processes decoding images. "switching" needs 0: the sampler
        reads the criterion's decision when it draws a batch, which workers would do ahead of it.
    pin_memory: page-locked batches for asynchronous copies to the GPU.
    on_error: "raise" or "skip" unreadable image files (the count of skipped files is logged).
    """

    dataset: str = "market1501"
    root: str = "data/market1501"
    options: dict = dataclasses.field(default_factory=dict)
    transforms: dict = dataclasses.field(default_factory=dict)
    sampler: str = "identity"
    identities_per_batch: int = 16
    images_per_identity: int = 4
    batch_size: Optional[int] = None
    min_images: int = 1
    positives_per_anchor: int = 2
    negatives_per_anchor: int = 4
    batches_per_epoch: Optional[int] = None
    num_workers: int = 4
    pin_memory: bool = False
    on_error: str = "raise"


@dataclasses.dataclass
class ModelConfig:
    """options: keyword arguments of the method's model (`reidfast.models.build_model`), e.g.
    depth, levels, embed_dim, backbone_weights (a path to a torchvision ResNet state dict)."""

    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LossConfig:
    """options: keyword arguments of the method's criterion (`reidfast.losses.build_criterion`),
    e.g. margin, weighting, triplet_on. The criterion's `num_classes`, where it takes one, is the
    training set's identity count, set by the trainer."""

    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerConfig:
    """The optimizer and its parameter groups.

    name: "sgd", "adam" or "adamw".
    lr: the base learning rate of the backbone (the pretrained layers).
    head_lr_factor: the new layers' (heads, classifiers, the criterion's parameters) learning
        rate as a multiple of `lr` (Pyramid's code: 10; 1 gives every parameter `lr`).
    weight_decay: L2 penalty of weights; `decay_norm_and_bias` says whether BatchNorm
        parameters and biases get it too (the papers' code gives them the same decay: True).
    momentum, nesterov: SGD's. betas: Adam's (beta1, beta2).
    beta1_switch_epoch, beta1_after: from this epoch on, Adam's beta1 is `beta1_after` (PLA:
        0.5 after epoch 150; None: no switch). The epoch is the run's, or under PLA's
        progressive search the current trial's or exploitation's.
    """

    name: str = "sgd"
    lr: float = 0.01
    head_lr_factor: float = 1.0
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    beta1_switch_epoch: Optional[int] = None
    beta1_after: float = 0.5


@dataclasses.dataclass
class ScheduleConfig:
    """The learning-rate schedule, as a factor of each group's base rate, updated every step.

    epochs: training length.
    kind: "multistep" (x gamma at each epoch of `milestones`), "cosine" (half a cosine from 1
        to `min_factor` over the epochs after warm-up), "exponential" (from 1 at epoch
        `decay_start` to `min_factor` at the last epoch, geometrically: PLA's Eq. 10) or
        "constant". See reidfast.training.schedule.LRSchedule.
    warmup_epochs: linear warm-up from `warmup_start_factor` to 1 over this many epochs,
        step by step (PLR-OSNet: 20 epochs from 0.1).
    """

    epochs: int = 60
    kind: str = "multistep"
    milestones: list[int] = dataclasses.field(default_factory=list)
    gamma: float = 0.1
    min_factor: float = 0.0
    decay_start: int = 0
    warmup_epochs: int = 0
    warmup_start_factor: float = 0.1


@dataclasses.dataclass
class TrainConfig:
    """How the loop runs.

    device: "auto" (the GPU if there is one), "cpu", "cuda" or "cuda:N"; under torchrun, each
        rank's local GPU.
    amp: "none", "bfloat16" (autocast, CPU or GPU) or "float16" (autocast with a GradScaler,
        GPU only).
    channels_last: the model and batches in channels_last memory format.
    compile: `torch.compile` the model.
    max_steps: stop after this many optimizer steps (None: the schedule's epochs).
    log_every: steps between metric records (and progress updates).
    eval_every: epochs between evaluations (0: only at the end).
    checkpoint_every: steps between mid-epoch checkpoints (0: at the end of each epoch only).
    keep_last: checkpoints kept besides the best.
    sync_batchnorm: BatchNorm statistics over all ranks under DDP (GPU only).
    grad_clip: clip the gradients' global norm to this (None: no clipping).
    progress: a progress bar on the terminal (rank 0).
    """

    device: str = "auto"
    amp: str = "none"
    channels_last: bool = True
    compile: bool = False
    max_steps: Optional[int] = None
    log_every: int = 20
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    sync_batchnorm: bool = False
    grad_clip: Optional[float] = None
    progress: bool = True


@dataclasses.dataclass
class ProgressiveConfig:
    """PLA's progressive learning (its Algorithm 1, Eq. 6-9; reidfast.training.progressive), for
    method "pla". The run's `schedule.epochs` is the total budget, every epoch trained counted.

    enabled: run the search (False: train with `loss.options` throughout).
    candidates: trials per round (N); the first round's are `loss.options` and random draws,
        the later rounds' the Gaussian process's expected-improvement choices.
    explore_epochs: epochs each trial trains from the round's restore point (even: Eq. 9
        compares the mean validation loss of its first half with its second half's).
    exploit_epochs: epochs of each round's exploitation with the best parameters found so far.
        The learning-rate schedule (`schedule`, its length replaced by this) and the beta1
        switch restart in every trial and every exploitation.
    expected_drop: ED of Eq. 9, the healthy relative drop of the loss.
    triplet_weight_range, margin_range: the search ranges of lambda and m (k and p range over
        [1, K] and [1, P] of the batches).
    validation_images: images of each training identity held out to score the trials.
    """

    enabled: bool = False
    candidates: int = 5
    explore_epochs: int = 20
    exploit_epochs: int = 300
    expected_drop: float = 0.15
    triplet_weight_range: tuple[float, float] = (0.0, 2.0)
    margin_range: tuple[float, float] = (-0.1, 0.3)
    validation_images: int = 2


@dataclasses.dataclass
class EvaluationConfig:
    """Retrieval evaluation on the query and gallery splits.

    metric: "euclidean" or "cosine". flip: average each image's features with its mirror's.
    multi_query: "none" (single query), "mean" or "max": each query's feature pooled with the
        images of its identity and camera (the dataset's `multi_query` images, e.g. Market-1501's
        gt_bbox/ with `data.options.multi_query: true`, and the other queries;
        reidfast.evaluation.pool_queries).
    ten_crop: average each image's features over 10 crops (PLA's test-time augmentation: the
        image enlarged 1.125 times, its four corners and centre at the input size, and their
        mirrors).
    pca_dim: project the features on this many principal components of the training images'
        features (PLA: 512; None: no projection).
    rerank: k-reciprocal re-ranking (reidfast.evaluation.rerank). batch_size: images per forward.
    max_rank: CMC length. ranked_results: queries drawn in the ranked-results PNG (0: none).
    """

    metric: str = "euclidean"
    flip: bool = False
    multi_query: str = "none"
    ten_crop: bool = False
    pca_dim: Optional[int] = None
    rerank: bool = False
    batch_size: int = 128
    max_rank: int = 50
    ranked_results: int = 8


@dataclasses.dataclass
class Config:
    """A training run.

    method: "pyramid", "pcb", "mgn", "pla", "plr_osnet" or "adaptive_margin" (the model, the
        criterion and the transform recipe of that method).
    seed: every random stream of the run (weights, batches, augmentation, dropout) derives from it.
    output_dir: the run's folder (config, metrics, checkpoints, plots, environment).
    """

    method: str = "pyramid"
    seed: int = 0
    output_dir: str = "runs/pyramid"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    progressive: ProgressiveConfig = dataclasses.field(default_factory=ProgressiveConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)


# The values each string field may take; validated with the types, before a run starts.
CHOICES = {
    "method": ("pyramid", "pcb", "mgn", "pla", "plr_osnet", "adaptive_margin"),
    "data.sampler": ("identity", "random", "switching", "anchor"),
    "data.on_error": ("raise", "skip"),
    "optimizer.name": ("sgd", "adam", "adamw"),
    "schedule.kind": ("multistep", "cosine", "exponential", "constant"),
    "train.amp": ("none", "bfloat16", "float16"),
    "evaluation.metric": ("euclidean", "cosine"),
    "evaluation.multi_query": ("none", "mean", "max"),
}
# Lower bounds of numeric fields (inclusive).
MINIMA = {
    "seed": 0, "data.identities_per_batch": 1, "data.images_per_identity": 1, "data.batch_size": 2,
    "data.min_images": 1, "data.positives_per_anchor": 1, "data.negatives_per_anchor": 1,
    "data.batches_per_epoch": 1, "data.num_workers": 0, "optimizer.lr": 0.0, "optimizer.head_lr_factor": 0.0,
    "optimizer.weight_decay": 0.0, "optimizer.momentum": 0.0, "schedule.epochs": 1, "schedule.gamma": 0.0,
    "schedule.min_factor": 0.0, "schedule.decay_start": 0, "schedule.warmup_epochs": 0,
    "schedule.warmup_start_factor": 0.0, "train.max_steps": 1, "train.log_every": 1, "train.eval_every": 0,
    "train.checkpoint_every": 0, "train.keep_last": 1, "train.grad_clip": 0.0, "evaluation.batch_size": 1,
    "evaluation.max_rank": 1, "evaluation.ranked_results": 0, "evaluation.pca_dim": 1,
    "optimizer.beta1_switch_epoch": 0, "optimizer.beta1_after": 0.0, "progressive.candidates": 1,
    "progressive.explore_epochs": 2, "progressive.exploit_epochs": 1, "progressive.expected_drop": 0.0,
    "progressive.validation_images": 1,
}


def shipped_configs() -> list[str]:
    """The names of the configs shipped with the package (reidfast/configs/*.yaml)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def load_config(source: str | pathlib.Path | Mapping, overrides: Sequence[str] = ()) -> Config:
    """The checked `Config` of a shipped config's name, a YAML file's path or a mapping, with
    `overrides` ("dotted.key=value" strings) applied first.

    Raises:
        FileNotFoundError: `source` is neither a shipped name nor an existing file.
        ConfigError: an unknown key (with the closest valid one), a value of the wrong type or
            outside its choices or range, a malformed override; the message names the key.
    """
    if isinstance(source, Mapping):
        raw, origin = _copy_mapping(source), "the config mapping"
    else:
        path = _resolve(source)
        origin = str(path)
        try:
            raw = yaml.load(path.read_text(), Loader=_Loader)
        except yaml.YAMLError as error:
            raise ConfigError(f"{origin} is not valid YAML: {error}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin} must hold a mapping of config sections, got {type(raw).__name__}")
    if isinstance(overrides, str) or not isinstance(overrides, Sequence):
        raise TypeError(f"overrides must be a sequence of 'key=value' strings, got {overrides!r}")
    for override in overrides:
        _apply_override(raw, override)
    try:
        return _build(Config, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from None


def config_to_dict(config: Config) -> dict:
    """The config as plain data (tuples as lists): what a run folder's config.yaml and a
    checkpoint hold, and what `load_config` reads back to an equal Config."""
    return _plain(dataclasses.asdict(config))


def dump_config(config: Config) -> str:
    """The config as YAML text (sections in field order)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _copy_mapping(mapping: Mapping) -> dict:
    return {key: _copy_mapping(value) if isinstance(value, Mapping) else value for key, value in mapping.items()}


def _resolve(source) -> pathlib.Path:
    if not isinstance(source, (str, pathlib.Path)):
        raise TypeError(f"config must be a shipped config's name, a path or a mapping, got {type(source).__name__}")
    path = pathlib.Path(source)
    if path.is_file():
        return path
    if isinstance(source, str) and (CONFIG_DIR / f"{source}.yaml").is_file():
        return CONFIG_DIR / f"{source}.yaml"
    raise FileNotFoundError(
        f"config {str(source)!r} is neither a file nor a shipped config; shipped: {', '.join(shipped_configs())}"
    )


def _apply_override(raw: dict, override) -> None:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"override {override!r} must be 'dotted.key=value'")
    key, text = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: {key!r} is not a dotted key")
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: the value is not a YAML scalar or list: {error}") from None
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, raw, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {type(raw).__name__} {raw!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            values[name] = _check_value(f"{prefix}{name}", value, kind)
    return cls(**values)


def _check_value(key: str, value, kind):
    """`value` as the type `kind` (int, float, bool, str, dict, list[int], tuple[float, float],
    Optional of those), checked against CHOICES and MINIMA."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (kind,) = [argument for argument in arguments if argument is not type(None)]
        return _check_value(key, value, kind)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        if origin is tuple and len(value) != len(arguments):
            raise ConfigError(f"{key} must hold {len(arguments)} values, got {value!r}")
        item_kinds = arguments if origin is tuple else arguments * len(value)
        items = [_check_value(f"{key}[{i}]", item, k) for i, (item, k) in enumerate(zip(value, item_kinds))]
        return tuple(items) if origin is tuple else items
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an int, got {type(value).__name__} {value!r}")
    elif kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of options, got {type(value).__name__} {value!r}")
        return _copy_mapping(value)
    elif not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key} must be a {kind.__name__}, got {type(value).__name__} {value!r}")
    base_key = key.split("[")[0]
    if base_key in CHOICES and value not in CHOICES[base_key]:
        close = difflib.get_close_matches(str(value), CHOICES[base_key], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key} must be one of {CHOICES[base_key]}, got {value!r}{hint}")
    if base_key in MINIMA and value < MINIMA[base_key]:
        raise ConfigError(f"{key} must be >= {MINIMA[base_key]}, got {value!r}")
    return value
