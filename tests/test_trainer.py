"""The trainer end to end on a tiny synthetic set: the run folder, exact resumption after SIGKILL,
the checks before training, a non-finite loss, evaluation of a checkpoint, and the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from reidfast.cli import main as cli
from reidfast.data import make_synthetic_reid
from reidfast.losses.criteria import PCBCriterion
from reidfast.training.trainer import build_sampler
from reidfast.training import (
    ConfigError,
    NonFiniteLossError,
    evaluate_checkpoint,
    init_distributed,
    load_checkpoint,
    load_config,
    shipped_configs,
    train,
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """8 identities (4 train, 4 test) x 6 images of 96 x 32 pixels."""
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_reid(root, num_identities=8, images_per_identity=6, height=96, width=32, workers=1)
    return root


def tiny(tiny_data, output_dir, *overrides):
    """Overrides making a shipped synthetic config a run of a few seconds on tiny_data."""
    return [
        f"data.root={tiny_data}", "data.options={num_identities: 8, images_per_identity: 6, height: 96, width: 32}",
        "data.transforms={height: 96, width: 32}", "data.identities_per_batch=2", "data.images_per_identity=4",
        "data.num_workers=0", "train.progress=false", "train.log_every=1", "evaluation.batch_size=16",
        "evaluation.ranked_results=2", f"output_dir={output_dir}", *overrides,
    ]


class FakeSummaryWriter:
    """Stands for torch.utils.tensorboard.SummaryWriter (the tensorboard package is optional)."""

    instances = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_tiny_run_writes_its_folder(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", type(sys)("fake_tensorboard"))
    sys.modules["torch.utils.tensorboard"].SummaryWriter = FakeSummaryWriter
    run = tmp_path / "run"
    result = train(load_config("pyramid-synthetic", tiny(tiny_data, run, "schedule.epochs=2", "train.eval_every=1")))
    assert result.steps == 4 and result.epochs == 2  # 4 identities of 6 images: 2 batches of 2 x 4 per epoch
    assert set(result.metrics) == {"mAP", "rank1", "rank5", "mINP"}
    assert all(0.0 <= value <= 1.0 for value in result.metrics.values())
    assert result.images_per_s > 0 and result.train_seconds > 0
    for name in ("config.yaml", "env.json", "metrics.jsonl", "curves.png", "ranked/query_0.png"):
        assert (run / name).is_file(), name
    assert load_config(run / "config.yaml") == load_config("pyramid-synthetic", tiny(tiny_data, run, "schedule.epochs=2",
                                                                                       "train.eval_every=1"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4), ("eval", 4)]
    assert {"loss", "id", "triplet", "lr", "images_per_s"} <= set(records[0])
    assert records[-1]["mAP"] == result.metrics["mAP"]
    (writer,) = FakeSummaryWriter.instances
    assert writer.log_dir == str(run / "tensorboard") and writer.purge_step is None and writer.closed
    assert ("train/loss", records[0]["loss"], 1) in writer.scalars
    assert ("eval/mAP", result.metrics["mAP"], 4) in writer.scalars
    environment = json.loads((run / "env.json").read_text())
    assert environment["torch"] == torch.__version__ and environment["world_size"] == 1
    state = load_checkpoint(result.last_checkpoint)
    assert state["step"] == 4 and state["epoch"] == 2 and state["position"] == 0
    assert evaluate_checkpoint(result.last_checkpoint) == pytest.approx(result.metrics)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(load_config(run / "config.yaml"))


@pytest.mark.parametrize("name", [name for name in shipped_configs() if name.endswith("-synthetic")])
def test_every_synthetic_config_trains_a_step(tiny_data, tmp_path, name):
    overrides = [
        f"data.root={tiny_data}", "data.options={num_identities: 8, images_per_identity: 6, height: 96, width: 32}",
        "data.identities_per_batch=2", "data.negatives_per_anchor=2", "train.max_steps=1", "train.progress=false",
        "evaluation.ranked_results=0", f"output_dir={tmp_path / 'run'}",
    ]
    result = train(load_config(name, overrides))
    assert result.steps == 1 and 0.0 <= result.metrics["mAP"] <= 1.0


def test_identity_epochs_are_equally_long():
    # 4 identities of 4, 8, 12 and 16 images in groups of 4: with seed 0 the epoch-exhausting
    # plans hold 4, 5, 5, 5, 5, 4 batches; the trainer's epochs all hold the first epoch's 4.
    labels = [identity for identity, count in enumerate((4, 8, 12, 16)) for _ in range(count)]
    config = load_config({}, ["data.identities_per_batch=2", "data.images_per_identity=4"])
    sampler = build_sampler(config, init_distributed("cpu"), labels, [0] * len(labels), criterion=None)
    lengths = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        lengths.append(len(list(sampler)))
    assert lengths == [4] * 6


def _checkpoints(run):
    folder = run / "checkpoints"
    return sorted(folder.glob("step-*.pt")) if folder.is_dir() else []


def test_run_killed_mid_epoch_resumes_to_the_same_weights_bit_for_bit(tiny_data, tmp_path):
    # Pyramid's dynamic training (switching sampler, weighting state), dropout and random erasing:
    # every random stream and every piece of state a step depends on.
    overrides = ["schedule.epochs=3", "train.checkpoint_every=1", "data.sampler=switching", "data.batch_size=8",
                 "data.min_images=4", "loss.options={weighting: dynamic}", "data.transforms={height: 96, width: 32, "
                 "erase_p: 0.5}", "evaluation.ranked_results=0"]
    whole = train(load_config("pyramid-synthetic", tiny(tiny_data, tmp_path / "whole", *overrides)))
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "reidfast", "train", "pyramid-synthetic", *tiny(tiny_data, killed, *overrides)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _checkpoints(killed) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    reached = load_checkpoint(_checkpoints(killed)[-1])["step"]
    assert reached < whole.steps  # killed before the end: the rest is the resumed run's
    resumed = train(load_config("pyramid-synthetic", tiny(tiny_data, killed, *overrides)), resume=True)
    assert resumed.steps == whole.steps
    a, b = load_checkpoint(whole.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for part in ("model", "criterion"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])
    assert resumed.metrics == whole.metrics
    lines = lambda run: [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
                         for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = lines(tmp_path / "whole")
    assert [(r["kind"], r["step"]) for r in lines(killed)] == [(r["kind"], r["step"]) for r in records]
    switches = [r for r in records if r["kind"] == "switch"]
    assert switches and switches == [r for r in lines(killed) if r["kind"] == "switch"]
    assert switches[0]["from"] == "random" and switches[0]["sampling"] == "identity"


def test_resuming_with_another_config_names_the_keys(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(load_config("pcb-synthetic", tiny(tiny_data, run, "train.max_steps=1", "evaluation.ranked_results=0")))
    with pytest.raises(ConfigError, match="differs from the run's in optimizer.lr, train.max_steps"):
        train(load_config("pcb-synthetic", tiny(tiny_data, run, "train.max_steps=2", "optimizer.lr=0.5")), resume=True)


@pytest.mark.parametrize("overrides, message", [
    (["data.sampler=switching", "data.num_workers=2"], "data.sampler='switching' needs data.num_workers=0"),
    (["train.amp=float16"], "train.amp='float16' needs a GPU"),
    (["loss.options={margn: 1}"], r"loss.options.margn: not an option of the 'pyramid' criterion"),
    (["model.options={dept: 18}"], "model.options: build_model\\('pyramid'\\): unknown option 'dept'"),
    (["data.transforms={hieght: 1}"], "data.transforms: unknown transform option 'hieght'"),
    (["data.identities_per_batch=9"], r"data \(sampler 'identity'\): identities_per_batch=9 is more than the 4"),
])
def test_config_errors_come_before_training(tiny_data, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(load_config("pyramid-synthetic", tiny(tiny_data, tmp_path / "run", *overrides)))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_non_finite_loss_names_the_step_and_component(tiny_data, tmp_path, monkeypatch):
    calls = []
    losses = PCBCriterion._losses

    def nan_on_second_call(self, output, labels):
        loss, components = losses(self, output, labels)
        calls.append(1)
        if len(calls) == 2:
            components = {"id": components["id"] * float("nan")}
            loss = components["id"]
        return loss, components

    monkeypatch.setattr(PCBCriterion, "_losses", nan_on_second_call)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 2 \(epoch 0\): id=nan"):
        train(load_config("pcb-synthetic", tiny(tiny_data, tmp_path / "run")))


def test_cli(tiny_data, tmp_path, capsys):
    assert cli(["configs"]) == 0
    assert "pyramid-synthetic" in capsys.readouterr().out.split()
    assert cli(["train", "pcb-synthetic", "optimizer.lrr=1"]) == 2
    assert "optimizer.lrr: unknown key; did you mean 'lr'?" in capsys.readouterr().err
    run = tmp_path / "run"
    assert cli(["train", "pcb-synthetic", *tiny(tiny_data, run, "train.max_steps=1", "evaluation.ranked_results=0",
                                                "train.amp=bfloat16")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 1 and 0 <= printed["mAP"] <= 1
    assert cli(["eval", str(run / "checkpoints" / "best.pt"), "--ranked", str(tmp_path / "ranked")]) == 2
    assert "evaluation.ranked_results is 0" in capsys.readouterr().err
    assert cli(["eval", str(run / "checkpoints" / "best.pt"), "evaluation.metric=cosine", "evaluation.ranked_results=2",
                "evaluation.multi_query=max",
                "--ranked", str(tmp_path / "ranked")]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"mAP", "rank1", "rank5", "mINP"}
    assert len(list((tmp_path / "ranked").glob("*.png"))) == 2
