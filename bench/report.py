"""Writes BENCHMARKS.md from bench/results/*.json and prints the tables.

Per device and per benchmark group (op, pass, shape, dtype): each implementation's median time
with its p20-p80 range, the speed-up of every implementation over the eager reference and over the
best plain-PyTorch formulation ("stripes"), the bandwidth of the forward pass (the bytes it must
move: input read once, output written; for copy-x, read and write) and peak GPU memory where
measured. Every ratio in a table comes from one run on one device.
"""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BASELINES = ("reference", "stripes")


def table(cases):
    by_impl = {case["impl"]: case for case in cases}
    lines = [
        "| implementation | median ms | p20-p80 ms | vs reference | vs stripes | GB/s | peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in sorted(cases, key=lambda c: c["median_ms"]):
        ratios = [
            f"{by_impl[b]['median_ms'] / case['median_ms']:.1f}x" if b in by_impl else "-"
            for b in BASELINES
        ]
        memory = f"{case['peak_memory_mb']:.0f}" if "peak_memory_mb" in case else "-"
        bandwidth = f"{case['bytes_moved'] / case['median_ms'] / 1e6:.0f}" if "bytes_moved" in case else "-"
        lines.append(
            f"| {case['impl']} | {case['median_ms']:.3f} | {case['p20_ms']:.3f}-{case['p80_ms']:.3f} "
            f"| {ratios[0]} | {ratios[1]} | {bandwidth} | {memory} |"
        )
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
        "device named. `stripes` is the best plain-PyTorch formulation; `read-x` is `x.sum()`, one read\n"
        "of the input (the memory floor of a forward pass); `copy-x` is `y.copy_(x)`, the copy bandwidth.\n\n" + body + "\n"
    )
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(body)


if __name__ == "__main__":
    main()
