"""Helpers shared by the benchmark suites."""

import torch

from reidfast.training.trainer import cpu_name


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def merge_cases(earlier: list[dict], cases: list[dict]) -> list[dict]:
    """The cases of a results file after a run: `cases` (this run's) replace the earlier cases of
    the same test id (the pytest node id, file included, so suites that share a test name keep
    separate results); earlier cases not run now are kept, in their order, before this run's.
    Cases from files written before results carried an id cannot be matched and are dropped."""
    ids = {case["id"] for case in cases}
    return [case for case in earlier if "id" in case and case["id"] not in ids] + cases
