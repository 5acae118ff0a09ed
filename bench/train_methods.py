"""Trains the methods on the synthetic set and records the figures of the README's "Training the
methods" section in bench/results/training/<study>.json (bench/report.py writes the section).

    python bench/train_methods.py methods        # every method at one budget: the synthetic configs
    python bench/train_methods.py pyramid-modes  # Pyramid's weighting modes at one budget
    python bench/train_methods.py pla-search     # PLA: the Bayesian search vs its fixed defaults

Each study trains its runs in `--output`/<study>/<run>-seed<seed> (resumable: a study started
again continues unfinished runs from their checkpoints and re-evaluates finished ones) on the
synthetic set in `--data` (the demo's; generated on first use). These are measurements, not tests:
they take minutes to an hour on a CPU.

Pyramid's modes (docs/methods.md section 1), all with the same network, input, optimizer and steps:
    code        the authors' release: L_id + L_tp on identity-balanced batches (the default)
    paper       Algorithm 1 as written: Eq. 7's focal weights, random vs identity batches
                switched batch by batch (random batches of P * K images)
    normalized  Algorithm 1's decisions with Eq. 7's weights rescaled to sum to 2 (the remedy)
    fixed       constant weights (0.5, 1.5) on identity batches: a constant emphasis on the
                triplet loss, the direction in which Eq. 7 leans
The modes that vary their weights log every step (train.log_every=1), so the record holds each
run's switch count and the kinds of steps by the weights applied (switching_summary).
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

from reidfast.demo import DemoModel, machine  # DemoModel: a shipped config and the overrides of a variant

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "training"


PYRAMID_PER_STEP = ("train.log_every=1",)
PLA_BUDGET = ("schedule.epochs=20", "data.batches_per_epoch=25")
STUDIES = {
    "methods": (
        DemoModel("Pyramid", "pyramid", "pyramid-synthetic"),
        DemoModel("PCB", "pcb", "pcb-synthetic"),
        DemoModel("MGN", "mgn", "mgn-synthetic"),
        DemoModel("PLA", "pla", "pla-synthetic"),
        DemoModel("Adaptive margin", "adaptive_margin", "adaptive_margin-synthetic"),
        DemoModel("PLR-OSNet", "plr_osnet", "plr_osnet-synthetic"),
    ),
    "pyramid-modes": (
        DemoModel("code", "code", "pyramid-synthetic"),
        DemoModel("paper", "paper", "pyramid-synthetic", (
            *PYRAMID_PER_STEP, "loss.options.weighting=dynamic", "data.sampler=switching")),
        DemoModel("normalized", "normalized", "pyramid-synthetic", (
            *PYRAMID_PER_STEP, "loss.options.weighting=normalized", "data.sampler=switching")),
        DemoModel("fixed", "fixed", "pyramid-synthetic", (
            *PYRAMID_PER_STEP, "loss.options.weighting=fixed", "loss.options.fixed_weights=[0.5, 1.5]")),
    ),
    # 20 epochs of 25 batches each: the search's two rounds of 3 trials of 2 epochs and 4 epochs
    # of exploitation (the second round's exploitation takes the 4 epochs left).
    "pla-search": (
        DemoModel("fixed defaults", "fixed", "pla-synthetic", PLA_BUDGET),
        DemoModel("Bayesian search", "search", "pla-synthetic", (
            *PLA_BUDGET, "progressive.enabled=true", "progressive.candidates=3", "progressive.explore_epochs=2",
            "progressive.exploit_epochs=4")),
    ),
}


def switching_summary(run_dir: pathlib.Path) -> dict:
    """From a run's metrics.jsonl: the number of sampler switches, and the kinds of its train
    records (one per step where logged every step) by the weights the criterion applied: the
    share of Eq. 2 steps (ID loss alone: weights (1, 0)), of (1, 1) steps (Algorithm 1's "both
    rising" rule, or the code mode) and of the other steps (Eq. 7's focal weights, or fixed
    weights), with the quartiles of the other steps' weights."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if record["kind"] == "train"]
    weights = [(record["id_weight"], record["triplet_weight"]) for record in steps]
    other = [pair for pair in weights if pair not in ((1.0, 0.0), (1.0, 1.0))]
    summary = {"switches": sum(record["kind"] == "switch" for record in records),
               "eq2_steps": weights.count((1.0, 0.0)) / len(steps), "unit_steps": weights.count((1.0, 1.0)) / len(steps),
               "other_steps": len(other) / len(steps)}
    for index, name in enumerate(("id_weight", "triplet_weight")):
        values = [pair[index] for pair in other]
        if values:
            quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
            summary[name] = dict(zip(("q25", "median", "q75"), quartiles), min=min(values), max=max(values))
    return summary


def search_summary(run_dir: pathlib.Path) -> dict:
    """A PLA search run's trials table (trials.json in its run folder)."""
    return json.loads((run_dir / "trials.json").read_text())


def run_study(study: str, output: pathlib.Path, data: pathlib.Path, seeds: list[int]) -> dict:
    from reidfast.data import make_synthetic_reid
    from reidfast.training import NonFiniteLossError, load_config, train

    entries = STUDIES[study]
    first = load_config(entries[0].config, [f"data.root={data}"])
    dataset = make_synthetic_reid(data, **first.data.options)
    runs = []
    for seed in seeds:
        for entry in entries:
            run_dir = output / study / f"{entry.key}-seed{seed}"
            config = load_config(entry.config, [
                f"data.root={data}", f"output_dir={run_dir}", f"seed={seed}", *entry.overrides])
            print(f"\n{study}: {entry.name}, seed {seed}: {run_dir}", flush=True)
            started = time.perf_counter()
            row = {"name": entry.name, "key": entry.key, "config": entry.config, "overrides": list(entry.overrides),
                   "seed": seed}
            try:
                result = train(config, resume=True)
            except NonFiniteLossError as error:  # a result too: the method diverged at this budget
                runs.append({**row, "diverged": str(error)})
                continue
            row.update(**result.metrics, steps=result.steps, train_seconds=result.train_seconds,
                       images_per_s=result.images_per_s, wall_seconds=time.perf_counter() - started)
            if study == "pyramid-modes":
                row["switching"] = switching_summary(run_dir)
            if "progressive.enabled=true" in entry.overrides:
                row["search"] = search_summary(run_dir)
            runs.append(row)
    return {
        "study": study,
        "machine": machine(),
        "dataset": {"root": "data/synthetic-demo", "train": len(dataset.train), "query": len(dataset.query),
                    "gallery": len(dataset.gallery), "identities": dataset.num_train_pids},
        "seeds": seeds,
        "runs": runs,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("runs/compare"))
    parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path("data/synthetic-demo"))
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS,
                        help="folder of the <study>.json record (default: bench/results/training)")
    args = parser.parse_args(argv)
    results = run_study(args.study, args.output, args.data, args.seeds)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{args.study}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
