"""Loading backbone weights from local checkpoint files, shared by every backbone.

Nothing is downloaded: a `weights` argument is the path of a file on disk or None. A file holds a
state dict (a dict of Tensors, read with `torch.load(weights_only=True)`), or a training checkpoint
{"state_dict": ...} as torchreid and many training scripts write; keys saved under "module." by
nn.DataParallel / DistributedDataParallel are accepted. The layers a feature extractor does not
have (an ImageNet classifier, a Re-ID embedding layer) are dropped by name prefix, explicitly;
every other key must match the backbone exactly, and a mismatch is a ValueError naming the keys.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

_CHECKPOINT_KEY = "state_dict"
_DATA_PARALLEL_PREFIX = "module."


def check_weights_path(name: str, weights) -> None:
    """`weights` is None or the path of an existing file."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path or None, got {type(weights).__name__} {weights!r}")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{name}: no file at {os.fspath(weights)!r}")


def read_state_dict(weights: str | os.PathLike) -> OrderedDict:
    """The state dict in the file `weights`, unwrapped from {"state_dict": ...} and with the
    "module." prefix removed from its keys (and from torch.save's per-module version records)."""
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(_CHECKPOINT_KEY), dict):
        checkpoint = checkpoint[_CHECKPOINT_KEY]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise TypeError(f"weights: {os.fspath(weights)!r} does not hold a state dict (a dict of Tensors)")
    state = OrderedDict((key.removeprefix(_DATA_PARALLEL_PREFIX), value) for key, value in checkpoint.items())
    # The per-module versions tell BatchNorm whether the file predates num_batches_tracked (e.g.
    # torchvision's original ImageNet files), so that it fills the counter in for such files.
    metadata = getattr(checkpoint, "_metadata", None)
    if metadata is not None:
        state._metadata = OrderedDict((key.removeprefix(_DATA_PARALLEL_PREFIX), v) for key, v in metadata.items())
    return state


def load_backbone_weights(
    backbone: nn.Module, weights: str | os.PathLike, dropped_prefixes: Sequence[str], architecture: str
) -> None:
    """Loads the file `weights` into `backbone`, less the keys under `dropped_prefixes`.

    Raises:
        ValueError: a key of the file has another shape than the backbone's, or the file lacks a
            key of the backbone or has one the backbone does not; the message names them.
    """
    source = os.fspath(weights)
    full = read_state_dict(weights)
    state = OrderedDict((key, value) for key, value in full.items() if not key.startswith(tuple(dropped_prefixes)))
    state._metadata = getattr(full, "_metadata", None)
    expected = backbone.state_dict()
    for key, value in state.items():
        if key in expected and value.shape != expected[key].shape:
            raise ValueError(
                f"weights: {key!r} has shape {tuple(value.shape)} in {source!r}, "
                f"{architecture} expects {tuple(expected[key].shape)}"
            )
    # strict=False so that a mismatch is reported by name below; BatchNorm itself fills in
    # num_batches_tracked for files saved before it existed.
    result = backbone.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"weights: unexpected keys in {source!r}: {result.unexpected_keys}")
    if result.missing_keys:
        raise ValueError(f"weights: keys missing from {source!r}: {result.missing_keys}")
