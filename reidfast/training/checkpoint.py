"""Training checkpoints: written atomically, read back safely, and the random state they carry.

A checkpoint is one file holding a dict of plain data (tensors, numbers, strings, lists, dicts:
state_dicts of the model, criterion, optimizer, scheduler and GradScaler, the sampler's position,
the random generators' states, the config, the step), tagged with `FORMAT` so that a file that
is not a reidfast checkpoint is recognised as such.

Writing is atomic: the file is written under a temporary name in the same folder, flushed and
fsync'ed, then renamed over the target (and the folder fsync'ed), so a process killed at any
moment leaves either the previous checkpoint or the new one, never a partial file under the
checkpoint's name. Reading uses `torch.load(weights_only=True)`, which unpickles no code: a
truncated, corrupt or foreign file is a `CheckpointError` naming the file.

`CheckpointFolder` keeps the last N checkpoints of a run by step, and the best by a metric.
"""

from __future__ import annotations

import os
import pathlib
import random
import re

import numpy as np
import torch

from reidfast._checks import check_int

FORMAT = "reidfast-checkpoint-1"
_STEP_FILE = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """A file that is not a readable reidfast checkpoint (truncated, corrupt or foreign)."""


def save_checkpoint(state: dict, path) -> pathlib.Path:
    """Writes `state` (a dict of plain data, see the module docstring) to `path` atomically.

    Returns the path written. The folder must exist. An existing file at `path` is replaced only
    once the new one is complete on disk.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if "format" in state:
        raise ValueError("state must not hold the key 'format': the checkpoint's format tag goes there")
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(path.parent)!r} does not exist")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save({"format": FORMAT, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """The state saved by `save_checkpoint` at `path` (without its format tag), its tensors on
    `map_location`.

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file is truncated, corrupt, or not a reidfast checkpoint; the message
            names the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # the unpickler's errors differ by damage: EOF, zip, pickle
        raise CheckpointError(f"cannot read checkpoint {str(path)!r} (truncated or corrupt?): {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{str(path)!r} is not a reidfast checkpoint of format {FORMAT!r} (found {found!r})")
    return {key: value for key, value in state.items() if key != "format"}


def random_state() -> dict:
    """The state of every random generator a training step draws from: torch's CPU generator,
    each CUDA device's (when CUDA is initialised), numpy's global one and Python's `random`, as
    plain data that `torch.load(weights_only=True)` reads."""
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    """Sets every generator from `random_state()`'s result, so the draws that follow repeat those
    that followed when it was taken."""
    missing = {"torch", "python", "numpy"} - set(state)
    if missing:
        raise ValueError(f"state is missing the random state of {sorted(missing)}")
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
        numpy_state["has_gauss"], numpy_state["cached_gaussian"],
    ))
    if "cuda" in state:
        if not torch.cuda.is_available() or torch.cuda.device_count() < len(state["cuda"]):
            raise ValueError(
                f"state holds the random state of {len(state['cuda'])} CUDA devices; this process has "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
            )
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointFolder:
    """A run's checkpoints in one folder: `step-<9 digits>.pt` files, the last `keep_last` kept,
    and `best.pt`, the checkpoint with the best metric so far (a copy, so pruning never removes it).

    Args:
        root: the folder (created if absent).
        keep_last: how many step checkpoints to keep (>= 1).
        mode: "max" (e.g. mAP) or "min": which metric is better.
    """

    def __init__(self, root, keep_last: int = 3, mode: str = "max"):
        check_int("keep_last", keep_last, minimum=1)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_last, self.mode = keep_last, mode

    def steps(self) -> list[int]:
        """The steps with a checkpoint in the folder, ascending."""
        return sorted(int(match.group(1)) for name in os.listdir(self.root) if (match := _STEP_FILE.match(name)))

    def path(self, step: int) -> pathlib.Path:
        check_int("step", step, minimum=0)
        if step >= 10**9:
            raise ValueError(f"step must be < 1e9, got {step}")
        return self.root / f"step-{step:09d}.pt"

    def latest(self) -> pathlib.Path | None:
        """The checkpoint of the highest step, or None when the folder has none."""
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def best(self) -> pathlib.Path | None:
        """best.pt, or None before any checkpoint was saved with a metric."""
        best = self.root / "best.pt"
        return best if best.is_file() else None

    def save(self, step: int, state: dict, metric: float | None = None) -> pathlib.Path:
        """Writes the checkpoint of `step`, then removes the step checkpoints beyond the last
        `keep_last`; with `metric`, also writes best.pt when the metric is better than the best's
        (the metric is stored in the checkpoint as "metric")."""
        path = self.path(step)
        if metric is not None:
            metric = float(metric)
            state = {**state, "metric": metric}
        save_checkpoint(state, path)
        if metric is not None and self._improves(metric):
            save_checkpoint(state, self.root / "best.pt")
        for old in self.steps()[: -self.keep_last]:
            self.path(old).unlink(missing_ok=True)
        return path

    def _improves(self, metric: float) -> bool:
        best = self.best()
        if best is None:
            return True
        previous = load_checkpoint(best).get("metric")
        if previous is None:
            return True
        return metric > previous if self.mode == "max" else metric < previous


def _fsync_folder(folder: pathlib.Path) -> None:
    """Makes a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
