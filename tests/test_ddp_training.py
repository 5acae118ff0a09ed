"""Two gloo processes under torchrun on loopback train to the parameters of one process on the
concatenated batches: the samplers split the global batch, the outputs are gathered with their
gradients so the loss is the global batch's, and DDP averages the gradients."""

import json
import os
import subprocess
import sys

import pytest
import torch

from reidfast.data import make_synthetic_reid
from reidfast.models import build_model
from reidfast.training import load_checkpoint, load_config, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def overrides(root, output_dir, anchors):
    # The adaptive-margin network without BatchNorm: no per-rank batch statistics, no dropout, so
    # the two runs compute the same thing up to the rounding of different batch shapes. Its loss
    # couples every pair of the global batch: a per-rank loss would differ.
    return [
        "data.dataset=synthetic", f"data.root={root}",
        "data.options={num_identities: 8, images_per_identity: 6, height: 48, width: 24}",
        "data.transforms={height: 48, width: 24}", f"data.identities_per_batch={anchors}",
        "data.positives_per_anchor=2", "data.negatives_per_anchor=2", "data.num_workers=0",
        "model.options={num_blocks: 1, batch_norm: false}", "optimizer.lr=0.05", "train.max_steps=3",
        "train.progress=false", "train.device=cpu", "evaluation.ranked_results=0", f"output_dir={output_dir}",
    ]


def test_two_gloo_processes_equal_one_process_on_the_concatenated_batches(tmp_path):
    root = tmp_path / "data"
    make_synthetic_reid(root, num_identities=8, images_per_identity=6, height=48, width=24, workers=1)
    single = train(load_config("adaptive_margin", overrides(root, tmp_path / "single", anchors=4)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "reidfast",
        "train", "adaptive_margin", *overrides(root, tmp_path / "ddp", anchors=2),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert finished.returncode == 0, finished.stderr[-4000:]
    a = load_checkpoint(single.last_checkpoint)
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / single.last_checkpoint.name)
    assert a["step"] == b["step"] == 3 and b["world_size"] == 2
    torch.manual_seed(0)  # the run's seed: the initial weights
    initial = build_model("adaptive_margin", 0, num_blocks=1, batch_norm=False, input_size=(48, 24)).state_dict()
    assert not torch.equal(initial["fusion.weight"], a["model"]["fusion.weight"])  # the steps moved the weights
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_pla_search_under_two_gloo_processes_asks_rank_0s_study(tmp_path):
    # Rank 0 holds the study and broadcasts each trial's options; both ranks train with them and
    # score the same model. Round 0's candidates (the configured options, then a seeded random
    # draw) do not depend on the scores: the single process's trials have the same options.
    pytest.importorskip("optuna")
    root = tmp_path / "data"
    make_synthetic_reid(root, num_identities=8, images_per_identity=6, height=48, width=24, workers=1)

    def search(output_dir, identities):
        return [
            f"data.root={root}", "data.options={num_identities: 8, images_per_identity: 6, height: 48, width: 24}",
            "data.transforms={height: 48, width: 24}", f"data.identities_per_batch={identities}",
            "data.images_per_identity=2", "data.batches_per_epoch=1", "data.num_workers=0", "train.progress=false",
            "train.device=cpu", "evaluation.ranked_results=0", f"output_dir={output_dir}", "schedule.epochs=5",
            "schedule.warmup_epochs=0", "progressive.enabled=true", "progressive.candidates=2",
            "progressive.explore_epochs=2", "progressive.exploit_epochs=1", "progressive.validation_images=1",
        ]

    train(load_config("pla-synthetic", search(tmp_path / "single", identities=4)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "reidfast",
               "train", "pla-synthetic", *search(tmp_path / "ddp", identities=2)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert finished.returncode == 0, finished.stderr[-4000:]
    single, ddp = (json.loads((tmp_path / run / "trials.json").read_text()) for run in ("single", "ddp"))
    assert [row["params"] for row in ddp["trials"]] == [row["params"] for row in single["trials"]]
    assert len(ddp["exploitations"]) == 1 and load_checkpoint(
        tmp_path / "ddp" / "checkpoints" / "step-000000005.pt")["world_size"] == 2
