"""Training: the loop (`train(config)`), its typed config, the learning-rate schedule, the batch
samplers of the metric losses (identity-balanced, Pyramid's switching between identity-balanced and
random batches, the adaptive-margin paper's anchor-based units; resumable mid-epoch and split
across distributed ranks), checkpoints written atomically and read safely with the random state a
resumed run needs, PLA's progressive search, the distributed helpers and the training-curves
plot."""

from reidfast.training.checkpoint import (
    CheckpointError,
    CheckpointFolder,
    load_checkpoint,
    random_state,
    restore_random_state,
    save_checkpoint,
)
from reidfast.training.config import Config, ConfigError, dump_config, load_config, shipped_configs
from reidfast.training.distributed import DistributedContext, init_distributed
from reidfast.training.plots import plot_training_curves
from reidfast.training.samplers import AnchorBatchSampler, IdentityBatchSampler, SwitchingBatchSampler
from reidfast.training.schedule import LRSchedule
from reidfast.training.progressive import ProgressiveSearch
from reidfast.training.trainer import NonFiniteLossError, TrainResult, evaluate_checkpoint, model_from_checkpoint, train

__all__ = [
    "AnchorBatchSampler",
    "CheckpointError",
    "CheckpointFolder",
    "Config",
    "ConfigError",
    "DistributedContext",
    "IdentityBatchSampler",
    "LRSchedule",
    "NonFiniteLossError",
    "ProgressiveSearch",
    "SwitchingBatchSampler",
    "TrainResult",
    "dump_config",
    "evaluate_checkpoint",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "model_from_checkpoint",
    "plot_training_curves",
    "random_state",
    "restore_random_state",
    "save_checkpoint",
    "shipped_configs",
    "train",
]
