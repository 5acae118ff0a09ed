"""Benchmark configuration: timing helpers, and the results written as JSON per device.

`pytest bench/ --benchmark-only` times every case; at the end the statistics are written to
bench/results/<device>.json (one file per device), each case under its pytest node id (file and
test: `bench/bench_triplet_select.py::test_forward[...]`); a case run again replaces its earlier
result. bench/report.py turns the files into BENCHMARKS.md and the README's benchmark section.

`pytest bench/ --benchmark-disable` is the smoke run (every case once, untimed, as CI does); it
leaves out the cases marked `large` (the largest sizes, seconds per call), which only a timed run
needs.
"""

import datetime
import json
import pathlib
import re

import pytest
import torch

import reidfast
from benchutil import device_name, merge_cases

RESULTS = pathlib.Path(__file__).parent / "results"


def pytest_collection_modifyitems(config, items):
    if not config.getoption("benchmark_disable"):
        return
    skip = pytest.mark.skip(reason="a large case: runs with --benchmark-only")
    for item in items:
        if item.get_closest_marker("large") is not None:
            item.add_marker(skip)


@pytest.fixture
def timed(benchmark):
    """benchmark(fn) that synchronises a GPU inside the timed call and records peak GPU memory."""

    def run(fn, device, rounds=None, **extra_info):
        """Times fn() on `device` after one warm-up call, `rounds` times (None: as many as
        pytest-benchmark's calibration chooses)."""
        benchmark.extra_info.update(extra_info, device=device, device_name=device_name(device))
        measure = benchmark if rounds is None else (lambda call: benchmark.pedantic(call, rounds=rounds))
        if device == "cuda":
            def call():
                fn()
                torch.cuda.synchronize()

            fn()  # warm-up outside the timing (compilation, autotuning, allocator)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            measure(call)
            benchmark.extra_info["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            fn()
            measure(fn)

    return run


def _percentile(sorted_data, q):
    index = min(len(sorted_data) - 1, max(0, round(q * (len(sorted_data) - 1))))
    return sorted_data[index]


def pytest_sessionfinish(session):
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is None or bench_session.disabled or not bench_session.benchmarks:
        return
    by_device: dict[str, list] = {}
    today = datetime.date.today().isoformat()
    for bench in bench_session.benchmarks:
        if not bench.stats or not bench.stats.data:
            continue
        data = sorted(bench.stats.data)
        by_device.setdefault(bench.extra_info["device_name"], []).append({
            "id": bench.fullname,
            "group": bench.group,
            **bench.extra_info,
            "rounds": len(data),
            "median_ms": 1e3 * bench.stats.median,
            "p20_ms": 1e3 * _percentile(data, 0.2),
            "p80_ms": 1e3 * _percentile(data, 0.8),
            "p90_ms": 1e3 * _percentile(data, 0.9),
            "date": today,
        })
    RESULTS.mkdir(exist_ok=True)
    for name, cases in by_device.items():
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
        path = RESULTS / f"{slug}.json"
        earlier = json.loads(path.read_text())["cases"] if path.exists() else []
        path.write_text(json.dumps({
            "device_name": name,
            "date": today,
            "torch": torch.__version__,
            "reidfast": reidfast.__version__,
            "cases": merge_cases(earlier, cases),
        }, indent=1) + "\n")
