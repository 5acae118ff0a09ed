"""Writes BENCHMARKS.md from bench/results/*.json and prints the tables.

Per device and per benchmark group (op, pass, shape, dtype): each implementation's median time
with its p20-p80 range, the speed-up of every implementation over the eager reference and over the
reference under torch.compile and the best plain-PyTorch formulation ("stripes"), where the group
has them, the bandwidth of the forward pass (the bytes it must
move: input read once, output written; for copy-x, read and write) and peak GPU memory where
measured. Every ratio in a table comes from one run on one device.
"""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BASELINES = ("reference", "reference-compiled", "stripes")


def table(cases):
    by_impl = {case["impl"]: case for case in cases}
    baselines = [b for b in BASELINES if b in by_impl]
    bandwidth = any("bytes_moved" in case for case in cases)
    memory = any("peak_memory_mb" in case for case in cases)
    header = ["implementation", "median ms", "p20-p80 ms", *(f"vs {b}" for b in baselines)]
    header += ["GB/s"] * bandwidth + ["peak MiB"] * memory
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for case in sorted(cases, key=lambda c: c["median_ms"]):
        cells = [case["impl"], f"{case['median_ms']:.3f}", f"{case['p20_ms']:.3f}-{case['p80_ms']:.3f}"]
        cells += [f"{by_impl[b]['median_ms'] / case['median_ms']:.1f}x" for b in baselines]
        if bandwidth:
            cells.append(f"{case['bytes_moved'] / case['median_ms'] / 1e6:.0f}" if "bytes_moved" in case else "-")
        if memory:
            cells.append(f"{case['peak_memory_mb']:.0f}" if "peak_memory_mb" in case else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(result):
    parts = [
        f"## {result['device_name']}",
        "",
        f"Measured {result['date']}, torch {result['torch']}, reidfast {result['reidfast']}.",
    ]
    groups: dict[str, list] = {}
    for case in result["cases"]:
        groups.setdefault(case["group"], []).append(case)
    for group in sorted(groups):
        parts += ["", f"### {group}", "", table(groups[group])]
    return "\n".join(parts)


def main():
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    body = "\n\n".join(render(result) for result in results) or "No results yet."
    text = (
        "# Benchmarks\n\n"
        "Written by `bench/report.py` from `bench/results/*.json` (`pytest bench/ --benchmark-only`).\n"
        "Ratios are speed-ups (baseline median / implementation median), measured in one run on the\n"
        "device named. `reference` is an op's plain-PyTorch specification (eager), `reference-compiled`\n"
        "the same under `torch.compile`. For pyramid_pool, `stripes` is the best plain-PyTorch\n"
        "formulation; `read-x` is `x.sum()`, one read of the input (the memory floor of a forward\n"
        "pass); `copy-x` is `y.copy_(x)`, the copy bandwidth.\n\n" + body + "\n"
    )
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(body)


if __name__ == "__main__":
    main()
