"""Retrieval evaluation (CMC / mAP / mINP, Market-1501 protocol) at the sizes of Market-1501
(3,368 queries x 15,913 gallery) and MSMT17 (11,659 x 82,161), on every available device.

Implementations timed per case:
  reidfast    evaluate_rank: the chunked counting evaluator, default memory budget
  reference   evaluate_rank_reference: a stable argsort of every whole gallery row, per query
  reidfast-from-features   evaluate: distances made chunk by chunk from 2048-d features and
                           evaluated as they come (the Q x G matrix never exists)

Data: identities and cameras laid out like the data set (gallery images spread over the cameras,
one query per identity and camera, 2,793 of the Market gallery images distractors of their own
identity) and distances of two kinds:
  realistic       Euclidean distances of random clustered 64-d features (identity centre +
                  camera offset + noise), at a trained model's figures (Market-1501 size: mAP
                  0.75, mINP 0.30, rank-1 0.96);
  uninformative   independent uniform distances (mAP about 0): the worst case for the evaluator,
                  where nearly every entry ranks before some query's last match.

Peak memory is the growth of the process's resident set (Linux VmHWM, reset before the call)
beyond what it held before, i.e. beyond the distance matrix and the features: one untimed call.
The MSMT17 cases, and the from-features cases, run only when benchmarking (--benchmark-only).
"""

import ctypes
import pathlib
import re

import numpy as np
import pytest
import torch
from benchutil import device_name, devices

from reidfast.evaluation import evaluate, evaluate_rank, evaluate_rank_reference
from reidfast.ops import pairwise_distance

# name: (queries, gallery, identities, cameras, gallery distractors)
DATASETS = {
    "market1501": (3368, 15913, 751, 6, 2793),
    "msmt17": (11659, 82161, 3060, 15, 0),
}
FEATURE_DIM = 2048  # ResNet-50 embeddings
_MATRICES: dict = {}  # one distance matrix at a time: the MSMT17 one is 3.8 GB
_RESULTS: dict = {}  # the first implementation's figures per case, which the others must equal


def labels(name, seed=0):
    """q_pids, g_pids, q_camids, g_camids (int64 numpy arrays) laid out like the data set."""
    num_q, num_g, identities, cameras, distractors = DATASETS[name]
    generator = np.random.default_rng(seed)
    # Queries: one image per (identity, camera) drawn without replacement, as in Market-1501.
    pairs = generator.choice(identities * cameras, num_q, replace=False)
    q_pids, q_camids = pairs // cameras, pairs % cameras
    g_pids = np.concatenate([generator.integers(0, identities, num_g - distractors),
                             identities + np.arange(distractors)])  # distractors: their own identity
    g_camids = generator.integers(0, cameras, num_g)
    return q_pids, g_pids, q_camids, g_camids


def features(name, dim, noise=0.95, seed=0):
    """Clustered features: identity centre + camera offset + noise (unit-variance parts) in 64
    dimensions, mapped to `dim` by a fixed random projection (which keeps the distances'
    structure, and so a trained model's figures, at any dimension)."""
    q_pids, g_pids, q_camids, g_camids = labels(name, seed)
    cameras = DATASETS[name][3]
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(int(g_pids.max()) + 1, 64, generator=generator)
    offsets = 0.3 * torch.randn(cameras, 64, generator=generator)
    projection = torch.randn(64, dim, generator=generator) / dim**0.5 if dim != 64 else None

    def draw(pids, camids):
        pids, camids = torch.from_numpy(pids), torch.from_numpy(camids)
        x = centres[pids] + offsets[camids] + noise * torch.randn(pids.shape[0], 64, generator=generator)
        return x if projection is None else x @ projection

    return draw(q_pids, q_camids), draw(g_pids, g_camids), (q_pids, g_pids, q_camids, g_camids)


def distances(name, kind):
    """The [Q, G] float32 distance matrix of a data set and its labels, made once per session."""
    key = (name, kind)
    if key not in _MATRICES:
        _MATRICES.clear()
        if kind == "realistic":
            queries, gallery, label_arrays = features(name, dim=64)
            distmat = torch.empty(queries.shape[0], gallery.shape[0])
            for start in range(0, queries.shape[0], 1024):  # without the GEMM's [Q, G] temporaries
                distmat[start : start + 1024] = pairwise_distance(queries[start : start + 1024], gallery)
        else:
            label_arrays = labels(name)
            num_q, num_g = DATASETS[name][:2]
            distmat = torch.rand(num_q, num_g, generator=torch.Generator().manual_seed(1))
        _MATRICES[key] = (distmat, label_arrays)
    return _MATRICES[key]


def run_measured(fn):
    """fn()'s result and the growth of the resident set during the call, in MiB (Linux; None
    elsewhere), beyond what was resident before."""
    status, refs = pathlib.Path("/proc/self/status"), pathlib.Path("/proc/self/clear_refs")
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages, so reuse is not hidden
        refs.write_text("5")  # reset the peak (VmHWM) to the current resident set
    except OSError:
        return fn(), None

    def read(field):
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read_text()).group(1)) / 1024

    before = read("VmRSS")
    result = fn()
    return result, read("VmHWM") - before


CASES = [
    pytest.param(name, kind, impl, id=f"{name}-{kind}-{impl}")
    for name, kinds in (("market1501", ("realistic", "uninformative")), ("msmt17", ("realistic",)))
    for kind in kinds
    for impl in ("reference", "reidfast")  # the reference first: its figures check the other
]


def _skip_unless_benchmarking(request, name, impl):
    """The smoke run (--benchmark-disable) keeps the fused evaluator at Market-1501 size; the
    per-query argsort reference (minutes there) and MSMT17 size run with --benchmark-only."""
    if request.config.getoption("benchmark_disable") and (name == "msmt17" or impl == "reference"):
        pytest.skip("runs with --benchmark-only")


def _time(benchmark, timed, fn, device, rounds, **extra_info):
    """timed() (rounds=None) for calls well under a second; else `rounds` rounds of one call each,
    for calls of seconds to minutes (results come back to the host, which synchronises a GPU)."""
    if rounds is None:
        timed(fn, device, **extra_info)
    else:
        benchmark.extra_info.update(extra_info, device=device, device_name=device_name(device))
        benchmark.pedantic(fn, rounds=rounds, iterations=1)


def _figures(result):
    return dict(mAP=result.mAP, mINP=result.mINP, rank1=float(result.cmc[0]))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name, kind, impl", CASES)
def test_evaluate_rank(benchmark, timed, request, device, name, kind, impl):
    _skip_unless_benchmarking(request, name, impl)
    num_q, num_g = DATASETS[name][:2]
    benchmark.group = f"evaluate_rank {device} {kind} distances [{num_q}, {num_g}] float32"
    distmat, label_arrays = distances(name, kind)
    distmat = distmat.to(device)
    evaluator = evaluate_rank if impl == "reidfast" else evaluate_rank_reference
    result, peak = run_measured(lambda: evaluator(distmat, *label_arrays))
    # Every implementation computes the same figures; a faster wrong one would be no result.
    expected = _RESULTS.setdefault((name, kind, device), result)
    np.testing.assert_array_equal(result.cmc, expected.cmc)
    np.testing.assert_allclose(result.all_ap, expected.all_ap, rtol=1e-12)
    extra = dict(op="evaluate_rank", impl=impl, passname=kind, shape=[num_q, num_g], dtype="float32",
                 **_figures(result))
    if device == "cpu" and peak is not None:
        extra["peak_memory_mb"] = peak
    quick = impl == "reidfast" and kind == "realistic" and name == "market1501"
    rounds = None if quick else (1 if name == "msmt17" else 3)
    _time(benchmark, timed, lambda: evaluator(distmat, *label_arrays), device, rounds, **extra)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", DATASETS)
def test_evaluate_from_features(benchmark, timed, request, device, name):
    if request.config.getoption("benchmark_disable"):
        pytest.skip("from-features cases run with --benchmark-only")
    num_q, num_g = DATASETS[name][:2]
    benchmark.group = f"evaluate {device} from features [{num_q}, {num_g}] x {FEATURE_DIM} float32"
    _MATRICES.clear()
    queries, gallery, label_arrays = features(name, FEATURE_DIM)
    queries, gallery = queries.to(device), gallery.to(device)
    result, peak = run_measured(lambda: evaluate(queries, gallery, *label_arrays))
    extra = dict(op="evaluate", impl="reidfast-from-features", passname="euclidean",
                 shape=[num_q, num_g, FEATURE_DIM], dtype="float32", **_figures(result))
    if device == "cpu" and peak is not None:
        extra["peak_memory_mb"] = peak
    _time(benchmark, timed, lambda: evaluate(queries, gallery, *label_arrays), device, rounds=1, **extra)
