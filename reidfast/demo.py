"""`reidfast demo`: the package's main job on a machine with nothing but reidfast installed.

It generates the synthetic pedestrian set (once; it is cached in `data`), then trains and
evaluates three models on the same backbone (ResNet-18 from scratch), input, batches, optimizer
and budget, the comparison of the Pyramid paper's tables ("Pyramidal Person Re-IDentification via
Multi-Loss Dynamic Training", arXiv:1810.12193):

    Pyramid           the 21 windows of 6 stripes, ID + triplet loss   (configs/pyramid-synthetic)
    PCB               6 stripes, average pooled, ID loss               (configs/pcb-synthetic)
    Global baseline   Pyramid's level 6 alone ("Pyramid-000001"): one global window, GMP + GAP,
                      with Pyramid's loss                              (pyramid-synthetic, levels [6])

and prints a table (mAP, rank-1, rank-5, mINP, training time, images/s; mean and range over the
seeds) with the ranked results of Pyramid's first seed and its training curves. On a GPU the same
command runs at a larger scale (GPU_SCALE: 750 training identities, 256 x 128, ResNet-50, 20
epochs; its own cached set in `data`-gpu). Everything lands
in `output`: one run folder per model and seed, results.json (every figure), report.md (the
table), pyramid-curves.png and pyramid-ranked/.

Runs are resumable: a demo interrupted and started again continues each unfinished run from its
last checkpoint and re-evaluates the finished ones. `quick` trains each model for 2 steps on a
tiny set, a smoke test of the whole pipeline, not a result.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import shutil
import statistics
import time

import torch

from reidfast._checks import check_int
from reidfast.data import make_synthetic_reid
from reidfast.training import load_config, train
from reidfast.training.trainer import cpu_name

METRICS = ("mAP", "rank1", "rank5", "mINP")


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """One row of the demo's table: a shipped config and the overrides that make the model."""

    name: str
    key: str
    config: str
    overrides: tuple[str, ...] = ()


MODELS = (
    DemoModel("Pyramid", "pyramid", "pyramid-synthetic"),
    DemoModel("PCB", "pcb", "pcb-synthetic"),
    DemoModel("Global baseline", "baseline", "pyramid-synthetic", ("model.options.levels=[6]",)),
)
# On a GPU: Market-1501's size (750 identities), 256 x 128, ResNet-50, 20 epochs.
GPU_SCALE = (
    "data.options={num_identities: 1500, images_per_identity: 16, height: 256, width: 128}",
    "data.transforms={height: 256, width: 128}", "data.identities_per_batch=16", "data.num_workers=4",
    "data.pin_memory=true", "model.options={depth: 50}", "schedule.epochs=20", "evaluation.batch_size=256",
)
QUICK = (
    "data.options={num_identities: 8, images_per_identity: 6, height: 128, width: 64}",
    "data.identities_per_batch=2", "train.max_steps=2", "evaluation.ranked_results=2",
)


def run_demo(output="runs/demo", data="data/synthetic-demo", seeds=(0,), quick: bool = False) -> dict:
    """Runs the demo (module docstring); returns what results.json holds.

    Args:
        output: folder of the runs and the report.
        data: folder of the synthetic set (generated on the first run, then read).
        seeds: the seeds to train each model with (the table gives each figure's mean and range).
        quick: 2 steps per model on a tiny set in `data`-quick (a smoke test).
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got []")
    for seed in seeds:
        check_int("seeds[]", seed, minimum=0)
    output, data = pathlib.Path(output), pathlib.Path(data)
    gpu = torch.cuda.is_available()  # the configs' device is "auto"
    if quick:
        data, extra = data.with_name(data.name + "-quick"), QUICK
    elif gpu:
        data, extra = data.with_name(data.name + "-gpu"), GPU_SCALE
    else:
        extra = ()
    first = load_config(MODELS[0].config, [f"data.root={data}", *extra])

    started = time.perf_counter()
    dataset = make_synthetic_reid(data, **first.data.options)
    setup_seconds = time.perf_counter() - started
    print(dataset)

    runs = []
    for seed in seeds:
        for model in MODELS:
            run_dir = output / f"{model.key}-seed{seed}"
            config = load_config(model.config, [
                f"data.root={data}", f"output_dir={run_dir}", f"seed={seed}", *model.overrides, *extra])
            print(f"\n{model.name}, seed {seed}: {run_dir}")
            run_started = time.perf_counter()
            result = train(config, resume=True)
            runs.append({
                "model": model.name, "seed": seed, "run_dir": run_dir.name, **result.metrics,
                "train_seconds": result.train_seconds, "images_per_s": result.images_per_s, "steps": result.steps,
                "wall_seconds": time.perf_counter() - run_started,
            })
    results = {
        "machine": machine(),
        "dataset": {"root": str(data), "train": len(dataset.train), "query": len(dataset.query),
                    "gallery": len(dataset.gallery), "identities": dataset.num_train_pids},
        "setup_seconds": setup_seconds,
        "seeds": seeds,
        "quick": quick,
        "runs": runs,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown_report(results)
    (output / "report.md").write_text(report)
    pyramid = output / runs[0]["run_dir"]
    shutil.copyfile(pyramid / "curves.png", output / "pyramid-curves.png")
    shutil.rmtree(output / "pyramid-ranked", ignore_errors=True)
    shutil.copytree(pyramid / "ranked", output / "pyramid-ranked")
    print("\n" + report)
    return results


def machine() -> dict:
    """The device runs train on (the GPU's name when one is present, else the CPU's), the threads
    torch uses, torch's version and today's date: the header of every recorded training result."""
    gpu = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if gpu else cpu_name(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": datetime.date.today().isoformat()}


def markdown_report(results: dict) -> str:
    """The demo's table as Markdown: per model, each metric's mean over the seeds with its range
    (min-max) when there are several, the training time and the images per second."""
    rows = {}
    for run in results["runs"]:
        rows.setdefault(run["model"], []).append(run)
    several = len(results["seeds"]) > 1
    header = "| model | mAP | rank-1 | rank-5 | mINP | training time | images/s |"
    lines = [header, "|" + "---|" * 7]
    for model, runs in rows.items():
        cells = [model]
        for metric in METRICS:
            values = [100 * run[metric] for run in runs]
            cell = f"{statistics.fmean(values):.1f}"
            if several:
                cell += f" ({min(values):.1f}-{max(values):.1f})"
            cells.append(cell)
        cells.append(f"{statistics.fmean(run['train_seconds'] for run in runs):.0f} s")
        cells.append(f"{statistics.fmean(run['images_per_s'] for run in runs):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    data = results["dataset"]
    seeds = ", ".join(str(seed) for seed in results["seeds"])
    per_seed = {}
    for run in results["runs"]:
        per_seed[run["seed"]] = per_seed.get(run["seed"], 0.0) + run["wall_seconds"]
    minutes = ", ".join(f"{seconds / 60:.1f}" for seconds in per_seed.values())
    lines += [
        "",
        f"Synthetic set: {data['identities']} training identities ({data['train']} images), {data['query']} queries, "
        f"{data['gallery']} gallery images. Seeds {seeds}" + (" (mean, and range in brackets)" if several else "")
        + f". Metrics in %. Training time: the training steps alone; the three models of one seed, from start to "
        f"evaluation, took {minutes} min (excluded: generating the set, or reading it from its cache, "
        f"{results['setup_seconds']:.0f} s).",
    ]
    return "\n".join(lines) + "\n"
