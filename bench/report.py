"""Writes BENCHMARKS.md and the benchmark section of README.md from bench/results/*.json.

BENCHMARKS.md: per device and per benchmark group (op, pass, shape, dtype), each implementation's
median time with its p20-p80 range, the speed-up of every implementation over each of BASELINES
the group has (the eager reference, the reference under torch.compile, the best plain-PyTorch
formulation "stripes", pytorch-metric-learning, fast-reid's Cython evaluator), the bandwidth of
the forward pass (the bytes it must move: input read once, output written; for copy-x, read and
write) and peak memory where measured.

README.md, between BEGIN and END: per device, the headline comparisons (HEADLINES): for each op,
pass and shape the fused implementation's median and its speed-up over each named baseline, a row
only where the results hold the case. Between DEMO_BEGIN and DEMO_END: the table of the demo run
recorded in bench/results/demo/results.json (reidfast.demo.markdown_report) and its pictures in
docs/demo/. Between TRAINING_BEGIN and TRAINING_END: the studies of bench/train_methods.py recorded
in bench/results/training/ (every method at one budget, Pyramid's weighting modes, PLA's search
against its fixed defaults with the trials table). So no figure in the README is typed by hand.

Every ratio compares the medians of one group, measured on one device. `--check` writes nothing
and exits with status 1 when a file differs from what the results give.
"""

import argparse
import dataclasses
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"
README = ROOT / "README.md"
BEGIN = "<!-- benchmarks:begin (written by bench/report.py from bench/results; do not edit) -->"
END = "<!-- benchmarks:end -->"
DEMO_RESULTS = RESULTS / "demo" / "results.json"
DEMO_PICTURES = ROOT / "docs" / "demo"
DEMO_BEGIN = "<!-- demo:begin (written by bench/report.py from bench/results/demo/results.json; do not edit) -->"
DEMO_END = "<!-- demo:end -->"
TRAINING_RESULTS = RESULTS / "training"
TRAINING_BEGIN = ("<!-- training:begin (written by bench/report.py from bench/results/training; do not edit) -->")
TRAINING_END = "<!-- training:end -->"
# bench/bench_deploy.py's runtimes, in the order of its table.
DEPLOY_RUNTIMES = ("eager", "compile", "cuda-graphs", "aoti", "onnxruntime", "tensorrt", "tensorrt-fp16")
BASELINES = ("reference", "reference-compiled", "stripes", "pml", "fastreid-cython", "torchreid", "eager")


@dataclasses.dataclass(frozen=True)
class Headline:
    """One README table: the cases of `op` at `passes` (None: every pass the results hold, in
    their order) and `shapes` (a case's `shape` field; those of every device are listed, each
    device's results hold its own), one row per fused implementation (impl `reidfast`,
    `reidfast:<backend>` or `reidfast-<variant>`), with its speed-up over each (impl, column title) of `baselines`."""

    title: str
    op: str
    passes: tuple[str, ...] | None
    shapes: tuple[tuple[int, ...], ...]
    baselines: tuple[tuple[str, str], ...]
    pass_title: str = "pass"


RESNET_MAPS = ((32, 2048, 24, 8), (64, 2048, 24, 8))  # ResNet-50 at 384x128: the CPU and GPU batch
BOTH_PASSES = ("forward", "forward+backward")
HEADLINES = (
    Headline(
        "`pyramid_pool`: the 21 windows of a 6-stripe pyramid on a ResNet-50 map",
        "pyramid_pool", BOTH_PASSES, RESNET_MAPS,
        (("reference", "vs per-window reference"), ("reference-compiled", "vs reference, compiled"),
         ("stripes", "vs stripes"), ("stripes-compiled", "vs stripes, compiled")),
    ),
    Headline(
        "`PyramidHead`: 21 branches and a 751-identity classifier on a ResNet-50 map",
        "pyramid_head", BOTH_PASSES, RESNET_MAPS, (("reference", "vs per-branch head"),),
    ),
    Headline(
        "`triplet_loss` (batch-hard), N x D embeddings in batches of 4 images per identity",
        "triplet_loss", ("forward+backward",), ((256, 128), (256, 2048), (1024, 2048)),
        (("reference", "vs reference"), ("reference-compiled", "vs reference, compiled"),
         ("pml", "vs pytorch-metric-learning")),
    ),
    Headline(
        "`adaptive_margin_loss`, N x D embeddings in batches of 4 images per identity",
        "adaptive_margin_loss", ("forward+backward",), ((256, 800), (1024, 800), (1024, 2048)),
        (("reference", "vs reference"), ("reference-compiled", "vs reference, compiled")),
    ),
    Headline(
        "`evaluate_rank`: CMC, mAP and mINP of Q x G distances (Market-1501 and MSMT17 sizes)",
        "evaluate_rank", None, ((3368, 15913), (11659, 82161)),
        (("fastreid-cython", "vs fast-reid's Cython"), ("reference", "vs per-query argsort")),
        pass_title="distances",
    ),
    Headline(
        "`evaluate` from Q x G x 2048 features, distances made and ranked chunk by chunk",
        "evaluate", None, ((3368, 15913, 2048), (11659, 82161, 2048)), (), pass_title="metric",
    ),
    Headline(
        "input pipeline: 1,024 synthetic JPEGs per run through each method's transforms, 2 DataLoader workers",
        "data_pipeline", ("training",), ((256, 128), (384, 128)), (("torchreid", "vs torchreid's pipeline"),),
    ),
)


def load_results(directory=RESULTS):
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


# --------------------------------------------------------------------------------- BENCHMARKS.md


def group_table(cases):
    by_impl = {case["impl"]: case for case in cases}
    baselines = [b for b in BASELINES if b in by_impl]
    bandwidth = any("bytes_moved" in case for case in cases)
    memory = any("peak_memory_mb" in case for case in cases)
    p90 = any("p90_ms" in case for case in cases)
    header = ["implementation", "median ms", "p20-p80 ms", *["p90 ms"] * p90, *(f"vs {b}" for b in baselines)]
    header += ["GB/s"] * bandwidth + ["peak MiB"] * memory
    lines = [_row(header), "|---|" + "---:|" * (len(header) - 1)]
    for case in sorted(cases, key=lambda c: c["median_ms"]):
        cells = [case["impl"], f"{case['median_ms']:.3f}", f"{case['p20_ms']:.3f}-{case['p80_ms']:.3f}"]
        cells += [f"{case['p90_ms']:.3f}" if "p90_ms" in case else "-"] * p90
        cells += [_ratio(by_impl[b], case) for b in baselines]
        if bandwidth:
            cells.append(f"{case['bytes_moved'] / case['median_ms'] / 1e6:.0f}" if "bytes_moved" in case else "-")
        if memory:
            cells.append(f"{case['peak_memory_mb']:.0f}" if "peak_memory_mb" in case else "-")
        lines.append(_row(cells))
    return "\n".join(lines)


def render_device(result):
    parts = [f"## {result['device_name']}", "", _provenance(result, result["cases"])]
    groups: dict[str, list] = {}
    for case in result["cases"]:
        groups.setdefault(case["group"], []).append(case)
    for group in sorted(groups):
        parts += ["", f"### {group}", "", group_table(groups[group])]
    return "\n".join(parts)


def benchmarks_md(results):
    body = "\n\n".join(render_device(result) for result in results) or "No results yet."
    return (
        "# Benchmarks\n\n"
        "Written by `bench/report.py` from `bench/results/*.json` (`pytest bench/ --benchmark-only`).\n"
        "Ratios are speed-ups (baseline median / implementation median) within one group, measured on\n"
        "the device named. `reference` is an op's plain-PyTorch specification (eager), `reference-compiled`\n"
        "the same under `torch.compile`. For pyramid_pool, `stripes` is the best plain-PyTorch\n"
        "formulation; `read-x` is `x.sum()`, one read of the input (the memory floor of a forward\n"
        "pass); `copy-x` is `y.copy_(x)`, the copy bandwidth. `fastreid-cython` is fast-reid's\n"
        "Cython `evaluate_cy`, built from its source package. `torchreid` is torchreid's input pipeline\n"
        "(PIL, per-image float transforms) built from torchvision.transforms.\n\n" + body + "\n"
    )


# ----------------------------------------------------------------------------------- README.md


def _is_fused(impl):
    return impl == "reidfast" or impl.startswith(("reidfast:", "reidfast-"))


def headline_cases(headline, cases):
    """The cases of one device that `headline`'s table draws on."""
    return [
        case for case in cases
        if case["op"] == headline.op
        and (headline.passes is None or case["passname"] in headline.passes)
        and tuple(case["shape"]) in headline.shapes
    ]


def headline_table(headline, cases):
    """The markdown of one headline table from one device's cases, or None when none is there."""
    chosen = headline_cases(headline, cases)
    groups: dict[str, list] = {}
    for case in chosen:
        groups.setdefault(case["group"], []).append(case)
    passes = headline.passes or tuple(dict.fromkeys(case["passname"] for case in chosen))

    def order(group):
        first = group[0]
        shape = headline.shapes.index(tuple(first["shape"]))
        return passes.index(first["passname"]), shape, first.get("bank", 0), first["dtype"]

    rows = [(case, group) for group in sorted(groups.values(), key=order) for case in group if _is_fused(case["impl"])]
    if not rows:
        return None
    impls = {case["impl"] for group in groups.values() for case in group}
    baselines = [(impl, title) for impl, title in headline.baselines if impl in impls]
    memory = any("peak_memory_mb" in case for case, _ in rows)
    # A pass or dtype common to every row goes into the title; the distance kinds always get a column.
    show_pass = headline.passes is None or len({case["passname"] for case, _ in rows}) > 1
    dtypes = {case["dtype"] for case, _ in rows}
    labels = [headline.pass_title] * show_pass + ["shape"] + ["dtype"] * (len(dtypes) > 1) + ["implementation"]
    numbers = ["median ms", *(title for _, title in baselines)] + ["peak MiB"] * memory
    lines = [_row(labels + numbers), "|" + "---|" * len(labels) + "---:|" * len(numbers)]
    for case, group in rows:
        by_impl = {other["impl"]: other for other in group}
        cells = [case["passname"]] * show_pass + [_shape(case)] + [case["dtype"]] * (len(dtypes) > 1)
        cells += [f"`{case['impl']}`", _milliseconds(case["median_ms"])]
        cells += [_ratio(by_impl[impl], case) if impl in by_impl else "-" for impl, _ in baselines]
        if memory:
            cells.append(f"{case['peak_memory_mb']:.0f}" if "peak_memory_mb" in case else "-")
        lines.append(_row(cells))
    common = [rows[0][0]["passname"]] * (not show_pass) + sorted(dtypes) * (len(dtypes) == 1)
    return ", ".join([headline.title, *common]) + ":\n\n" + "\n".join(lines)


def deploy_table(cases):
    """The markdown of the deployment latency table (bench/bench_deploy.py) from one device's
    cases, or None when it has none: per model and batch, each runtime's median and p90 latency,
    images/s and speed-up over eager (two decimals: the suite's goal is a ratio), in the suite's
    runtime order."""
    chosen = [case for case in cases if case["op"] == "deploy"]
    if not chosen:
        return None
    matmul = [case for case in cases if case["op"] == "deploy-matmul"]
    models = list(dict.fromkeys(case["model"] for case in chosen))
    chosen.sort(key=lambda c: (models.index(c["model"]), c["shape"][0], DEPLOY_RUNTIMES.index(c["impl"])))
    eager = {(case["model"], case["shape"][0]): case for case in chosen if case["impl"] == "eager"}
    header = ["model", "input", "batch", "runtime", "median ms", "p90 ms", "images/s", "GFLOP/s", "vs eager",
              "setup s", "rounds"]
    lines = [_row(header), "|---|---|---:|---|" + "---:|" * 7]
    for case in chosen:
        batch = case["shape"][0]
        baseline = eager.get((case["model"], batch))
        images_per_second = 1e3 * batch / case["median_ms"]
        lines.append(_row([
            case["model"], " x ".join(map(str, case["shape"][2:])), str(batch),
            f"`{case['impl']}`" + (" (float16)" if case["dtype"] != "float32" else ""),
            _milliseconds(case["median_ms"]), _milliseconds(case["p90_ms"]), f"{images_per_second:.1f}",
            f"{images_per_second * case['gflop_per_image']:.1f}" if "gflop_per_image" in case else "-",
            f"{baseline['median_ms'] / case['median_ms']:.2f}x" if baseline else "-",
            f"{case['setup_s']:.1f}" if "setup_s" in case else "-", str(case["rounds"]),
        ]))
    return ("Deployment latency (`bench/bench_deploy.py`): one batch of preprocessed images through each runtime of "
            "`reidfast.deploy.Embedder`, randomly initialised models in eval mode, float32 unless named; median "
            "and p90 over the rounds timed; GFLOP/s: the model's floating-point operations (convolutions and "
            "matrix products) per second at the median; setup: the export made in that case (a runtime's first "
            "batch size makes it, the others share it) and the first call (compilation, for `compile`):\n\n"
            + "\n".join(lines)
            + "".join(f"\n\nFor scale, a {' x '.join(map(str, case['shape'][:2]))} float32 matrix product "
                      f"(`torch.mm`) runs at {1e3 * case['gflop'] / case['median_ms']:.1f} GFLOP/s on this device."
                      for case in matmul))


def readme_section(results):
    """The README text between BEGIN and END."""
    parts = []
    for result in results:
        tables = [headline_table(headline, result["cases"]) for headline in HEADLINES]
        tables.append(deploy_table(result["cases"]))
        tables = [table for table in tables if table is not None]
        if tables:
            chosen = [case for headline in HEADLINES for case in headline_cases(headline, result["cases"])]
            chosen += [case for case in result["cases"] if case["op"] in ("deploy", "deploy-matmul")]
            parts += [f"### {result['device_name']}", _provenance(result, chosen), *tables]
    if not parts:
        parts.append("No results yet.")
    if not any(case.get("device") == "cuda" for result in results for case in result["cases"]):
        parts.append("No GPU has been measured yet: the CUDA and Triton kernels compile, and the Triton kernels "
                     "pass their tests in Triton's interpreter, but none has been timed on a GPU.")
    return "\n\n".join(parts)


def demo_section(results_path=DEMO_RESULTS, folder=DEMO_PICTURES):
    """The README text between DEMO_BEGIN and DEMO_END: the recorded demo's table and pictures."""
    if not results_path.is_file():
        return "No demo run is recorded yet (bench/results/demo/results.json)."
    from reidfast.demo import markdown_report

    results = json.loads(results_path.read_text())
    machine = results["machine"]
    parts = [
        f"Measured on {machine['device']} ({machine['threads']} threads), torch {machine['torch']}, "
        f"{machine['date']}, with `reidfast demo --seeds {' '.join(map(str, results['seeds']))}`:",
        markdown_report(results).rstrip(),
    ]
    pictures = sorted(path.name for path in folder.glob("*.png"))
    if pictures:
        parts.append(" ".join(f"![{name[:-4]}](docs/demo/{name})" for name in pictures))
    return "\n\n".join(parts)


def training_section(folder=TRAINING_RESULTS):
    """The README text between TRAINING_BEGIN and TRAINING_END: a table per recorded study of
    bench/train_methods.py, each metric the mean over the seeds with its range."""
    parts = []
    methods = folder / "methods.json"
    if methods.is_file():
        results = json.loads(methods.read_text())
        parts += [f"**Every method at one budget** ({_study_provenance(results)}; `python bench/train_methods.py "
                  "methods`): each method's `-synthetic` config trained from scratch for 3 epochs (ResNet-18; PLR-OSNet: OSNet; the adaptive-margin network its own).",
                  _metrics_table(results, "method", ("config",))]
    modes = folder / "pyramid-modes.json"
    if modes.is_file():
        results = json.loads(modes.read_text())
        parts += [f"**Pyramid's weighting modes** ({_study_provenance(results)}; `python bench/train_methods.py "
                  "pyramid-modes --seeds ...`): `pyramid-synthetic` with each mode of "
                  "`loss.options.weighting` (paper: `dynamic` with `data.sampler=switching`; fixed: (0.5, 1.5)); "
                  "switches: sampler changes per run; the steps by the weights applied: Eq. 2 (ID loss alone), "
                  "(1, 1) (the code mode, or Algorithm 1's both-rising rule) and the others (Eq. 7's focal "
                  "weights, rescaled in the normalized mode; the fixed weights), with their median weights, one "
                  "per seed.",
                  _metrics_table(results, "mode", ("switching",))]
    search = folder / "pla-search.json"
    if search.is_file():
        results = json.loads(search.read_text())
        parts += [f"**PLA: the Bayesian progressive search against its fixed defaults** ({_study_provenance(results)}; "
                  "`python bench/train_methods.py pla-search`): `pla-synthetic` for 20 epochs of 25 batches each "
                  "way; the search: 2 rounds of 3 trials of 2 epochs, scored by Eq. 9 on 2 held-out images per "
                  "identity, and 4 epochs of exploitation.",
                  _metrics_table(results, "run", ()), *_trials_tables(results)]
    return "\n\n".join(parts) if parts else "No training study is recorded yet (bench/results/training/)."


def _study_provenance(results):
    machine = results["machine"]
    return f"{machine['device']}, {machine['threads']} threads, torch {machine['torch']}, {machine['date']}"


def _spread(values, scale=1.0, digits=1):
    values = [scale * value for value in values]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _metrics_table(results, first, extra):
    """One row per study entry: mAP, rank-1, mINP (%) over the seeds and the `extra` columns
    ("config", or "switching": the switches per run, the shares of Eq. 2, (1, 1) and other steps
    and the other steps' median weights). No training time: the studies run for accuracy, often
    beside other jobs (the demo's table gives the speed)."""
    rows = {}
    for run in results["runs"]:
        rows.setdefault(run["name"], []).append(run)
    titles = {"config": ["config"],
              "switching": ["switches", "Eq. 2 steps", "(1, 1) steps", "other steps", "their ID weight",
                            "their triplet weight"]}
    seeds = ", ".join(map(str, results["seeds"]))
    header = [first, "mAP", "rank-1", "mINP", *(title for name in extra for title in titles[name])]
    lines = [_row(header), "|" + "---|" * len(header)]
    diverged = []
    for name, runs in rows.items():
        failed = [run for run in runs if "diverged" in run]
        if failed:
            diverged.append(f"{name}: {failed[0]['diverged']}")
            cells = [name, *(["diverged"] * 3)]
            runs = [run for run in runs if "diverged" not in run] or failed
        else:
            cells = [name, *(_spread([run[metric] for run in runs], 100) for metric in ("mAP", "rank1", "mINP"))]
        for column in extra:
            if column == "config":
                cells.append(f"`{runs[0]['config']}`")
                continue
            switching = [run["switching"] for run in runs]
            cells.append(_spread([entry["switches"] for entry in switching], digits=0))
            cells += [f"{_spread([entry[kind] for entry in switching], 100, 0)} %"
                      for kind in ("eq2_steps", "unit_steps", "other_steps")]
            for weight in ("id_weight", "triplet_weight"):
                medians = [entry[weight]["median"] for entry in switching if weight in entry]
                cells.append(" / ".join(_number(value) for value in medians) if medians else "-")
        lines.append(_row(cells))
    lines.append("")
    lines.append(f"Seeds {seeds}" + (" (mean, and range in brackets)" if len(results["seeds"]) > 1 else "")
                 + f"; metrics in %; synthetic set of {results['dataset']['identities']} training identities."
                 + "".join(f" Diverged: {text}." for text in diverged))
    return "\n".join(lines)


def _trials_tables(results):
    """Each search run's trials and exploitations, in order."""
    tables = []
    for run in results["runs"]:
        if "search" not in run:
            continue
        lines = [_row(["round", "trial", "lambda", "m", "k", "p", "mean loss, 1st half", "2nd half", "drop", "Eq. 9 f"]),
                 "|" + "---|" * 10]
        for trial in run["search"]["trials"]:
            params = trial["params"]
            lines.append(_row([str(trial["round"]), str(trial["trial"]), f"{params['triplet_weight']:.3f}",
                               f"{params['margin']:.3f}", str(params["k"]), str(params["p"]),
                               f"{trial['first_half']:.4f}", f"{trial['second_half']:.4f}", f"{trial['drop']:.3f}",
                               f"{trial['objective']:.3f}"]))
        exploited = "; ".join(
            f"round {row['round']}: {row['epochs']} epochs with lambda {row['params']['triplet_weight']:.3f}, "
            f"m {row['params']['margin']:.3f}, k {row['params']['k']}, p {row['params']['p']}"
            for row in run["search"]["exploitations"])
        tables += [f"Trials of the search (seed {run['seed']}):", "\n".join(lines), f"Exploitation: {exploited}."]
    return tables


def _number(value):
    """Weights span 1e-11 to 2: three significant figures, in exponent notation below 0.01."""
    return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.3g}"


def splice(readme, section, begin=BEGIN, end=END):
    """`readme` with the text between `begin` and `end` replaced by `section`."""
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"README.md must hold the lines {begin!r} and {end!r}, in that order")
    return readme[: start + len(begin)] + "\n\n" + section + "\n\n" + readme[stop:]


# ------------------------------------------------------------------------------------- helpers


def _row(cells):
    return "| " + " | ".join(cells) + " |"


def _ratio(baseline, case):
    return f"{baseline['median_ms'] / case['median_ms']:.1f}x"


def _milliseconds(value):
    """At least three significant figures, never in exponent notation."""
    integer_digits = len(str(int(value))) if value >= 1 else 0
    return f"{value:.{max(0, 3 - integer_digits)}f}"


def _shape(case):
    shape = " x ".join(map(str, case["shape"]))
    return shape + (f", bank {case['bank']}" if case.get("bank") else "")


def _provenance(result, cases):
    """Device, dates and versions; a case carries the date of its own run (the file's date for
    results written before cases carried one)."""
    dates = sorted({case.get("date", result["date"]) for case in cases} or {result["date"]})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return f"Measured {when}, torch {result['torch']}, reidfast {result['reidfast']}."


def outputs(results):
    """{path: the text the results give}."""
    readme = splice(README.read_text(), readme_section(results))
    readme = splice(readme, demo_section(), DEMO_BEGIN, DEMO_END)
    return {BENCHMARKS: benchmarks_md(results), README: splice(readme, training_section(), TRAINING_BEGIN, TRAINING_END)}


def stale(results):
    """[(path, text)] of each file whose text differs from what `results` give."""
    return [(path, text) for path, text in outputs(results).items() if not path.exists() or path.read_text() != text]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    out_of_date = stale(load_results())
    names = ", ".join(path.name for path, _ in out_of_date)
    if args.check:
        if out_of_date:
            print(f"out of date (run python bench/report.py): {names}", file=sys.stderr)
            return 1
        print("BENCHMARKS.md and the README's benchmark section are up to date")
        return 0
    for path, text in out_of_date:
        path.write_text(text)
    print(f"written: {names}" if out_of_date else "up to date: nothing written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
