"""Training checkpoints: atomic writes (a kill mid-write leaves the previous one valid), safe reads
with errors naming the file, the random state round trip, and the folder's last-N and best."""

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from reidfast.training.checkpoint import (
    CheckpointError,
    CheckpointFolder,
    load_checkpoint,
    random_state,
    restore_random_state,
    save_checkpoint,
)


def model_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": seed, "config": {"lr": 0.1}}


def test_round_trip_of_model_and_optimizer_states(tmp_path):
    state = model_state(3)
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "a.pt"))
    assert loaded.keys() == state.keys() and loaded["step"] == 3 and loaded["config"] == {"lr": 0.1}
    for key, value in state["model"].items():
        torch.testing.assert_close(loaded["model"][key], value, rtol=0, atol=0)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert [name for name in os.listdir(tmp_path)] == ["a.pt"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(model_state(1), tmp_path / "last.pt")

    def crash(obj, file):  # half a file, then the process "dies"
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model_state(2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


WRITER = """
import sys, torch
from reidfast.training.checkpoint import save_checkpoint
version = 0
while True:
    version += 1
    save_checkpoint({"version": version, "weights": torch.full((2_000_000,), float(version))}, sys.argv[1])
    print(version, flush=True)
"""


def test_sigkill_during_writes_leaves_a_valid_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"version": 0, "weights": torch.zeros(2_000_000)}, path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    for _ in range(3):  # three 8 MB checkpoints written; the kill lands in (or just before) the fourth
        writer.stdout.readline()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    state = load_checkpoint(path)
    assert state["version"] >= 3
    assert torch.equal(state["weights"], torch.full((2_000_000,), float(state["version"])))


def test_truncated_foreign_and_missing_files_are_errors_naming_them(tmp_path):
    path = save_checkpoint(model_state(1), tmp_path / "a.pt")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign.pt.*not a reidfast checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        save_checkpoint({}, tmp_path / "no-such-folder" / "a.pt")
    with pytest.raises(ValueError, match="format"):
        save_checkpoint({"format": 1}, tmp_path / "b.pt")


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_random_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    draws()
    save_checkpoint({"rng": random_state()}, tmp_path / "rng.pt")
    expected = draws()
    draws()  # the generators move on
    restore_random_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draws() == expected
    with pytest.raises(ValueError, match="numpy"):
        restore_random_state({"torch": torch.get_rng_state(), "python": {}})


def test_folder_keeps_the_last_n_and_the_best(tmp_path):
    folder = CheckpointFolder(tmp_path / "run", keep_last=2, mode="max")
    assert folder.latest() is None and folder.best() is None
    for step, metric in [(10, 0.2), (20, 0.5), (30, 0.4), (40, None)]:
        folder.save(step, {"step": step}, metric=metric)
    assert folder.steps() == [30, 40]
    assert folder.latest() == tmp_path / "run" / "step-000000040.pt"
    assert load_checkpoint(folder.best())["step"] == 20 and load_checkpoint(folder.best())["metric"] == 0.5
    lower = CheckpointFolder(tmp_path / "loss", keep_last=1, mode="min")
    lower.save(1, {"step": 1}, metric=3.0)
    lower.save(2, {"step": 2}, metric=1.0)
    assert load_checkpoint(lower.best())["step"] == 2 and lower.steps() == [2]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointFolder(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="mode"):
        CheckpointFolder(tmp_path, mode="maximum")
