"""Training utilities: the batch samplers of the metric losses (identity-balanced, Pyramid's
switching between identity-balanced and random batches, the adaptive-margin paper's anchor-based
units), resumable mid-epoch and split across distributed ranks; and checkpoints written
atomically, read safely, with the random state a resumed run needs."""

from reidfast.training.checkpoint import (
    CheckpointError,
    CheckpointFolder,
    load_checkpoint,
    random_state,
    restore_random_state,
    save_checkpoint,
)
from reidfast.training.samplers import AnchorBatchSampler, IdentityBatchSampler, SwitchingBatchSampler

__all__ = [
    "AnchorBatchSampler",
    "CheckpointError",
    "CheckpointFolder",
    "IdentityBatchSampler",
    "SwitchingBatchSampler",
    "load_checkpoint",
    "random_state",
    "restore_random_state",
    "save_checkpoint",
]
