"""Retrieval evaluation (CMC / mAP / mINP, Market-1501 protocol) at the sizes of Market-1501
(3,368 queries x 15,913 gallery) and MSMT17 (11,659 x 82,161), on every available device.

Implementations timed per case:
  reidfast    evaluate_rank: the counting evaluator, default backend and memory budget
  reference   evaluate_rank_reference: a stable argsort of every whole gallery row, per query
  fastreid-cython   fast-reid's `evaluate_cy` (rank_cy.pyx of fastreid 1.4.0, built with Cython
              from its source package into a cache outside the repository: fastreid_baseline.py;
              Market-1501 size only, skipped with the reason where it cannot be built)
  reidfast-from-features   evaluate: distances made chunk by chunk from 2048-d features and
                           evaluated as they come (the Q x G matrix never exists)

Data: identities and cameras laid out like the data set (gallery images spread over the cameras,
one query per identity and camera, 2,793 of the Market gallery images distractors of their own
identity) and distances of three kinds:
  strong          Euclidean distances of random clustered 64-d features (identity centre +
                  camera offset + noise), at a trained model's figures (Market-1501 size: mAP
                  0.75, mINP 0.30, rank-1 0.96);
  weak            the same with more noise: true matches only mildly closer, as a model's early in
                  training, when the trainer evaluates (mAP 0.11, mINP 0.006, rank-1 0.30);
  uninformative   independent uniform distances (mAP about 0).
An evaluator that narrows its work to the entries before each query's last match is fast only on
the first kind; each kind is timed.

Peak memory is the growth of the process's resident set (Linux VmHWM, reset before the call)
beyond what it held before, i.e. beyond the distance matrix and the features: one untimed call.
The MSMT17 cases, the baselines and the from-features cases run only when benchmarking
(--benchmark-only). fast-reid's figures (float32) are checked against reidfast's before it is timed.
"""

import ctypes
import pathlib
import re

import numpy as np
import pytest
import torch
import fastreid_baseline
from benchutil import device_name, devices

from reidfast.evaluation import evaluate, evaluate_rank, evaluate_rank_reference
from reidfast.ops import pairwise_distance

# name: (queries, gallery, identities, cameras, gallery distractors)
DATASETS = {
    "market1501": (3368, 15913, 751, 6, 2793),
    "msmt17": (11659, 82161, 3060, 15, 0),
}
FEATURE_DIM = 2048  # ResNet-50 embeddings
# Feature noise of each kind of clustered distances (unit-variance identity centres).
NOISE = {"strong": 0.95, "weak": 1.5}
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
        if kind in NOISE:
            queries, gallery, label_arrays = features(name, dim=64, noise=NOISE[kind])
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
    for name, kinds in (("market1501", ("strong", "weak", "uninformative")), ("msmt17", ("strong",)))
    for kind in kinds
    for impl in ("reference", "reidfast")  # the reference first: its figures check the other
] + [
    pytest.param("market1501", kind, "fastreid-cython", id=f"market1501-{kind}-fastreid-cython")
    for kind in ("strong", "weak", "uninformative")
]
_BASELINE: dict = {}  # fast-reid's compiled module, or why it is unavailable (built once)


def _skip_unless_benchmarking(request, name, kind, impl):
    """The smoke run (--benchmark-disable) keeps the fused evaluator at Market-1501 size on weak
    distances; the other kinds, the baselines (seconds to minutes each) and MSMT17 size run with
    --benchmark-only."""
    if request.config.getoption("benchmark_disable") and (name == "msmt17" or impl != "reidfast" or kind != "weak"):
        pytest.skip("runs with --benchmark-only")


def _fastreid():
    """fast-reid's rank_cy module, built on first use; skips the case, saying why, where it cannot be."""
    if not _BASELINE:
        try:
            _BASELINE["module"] = fastreid_baseline.load()
        except fastreid_baseline.BaselineUnavailable as error:
            _BASELINE["error"] = str(error)
    if "error" in _BASELINE:
        pytest.skip(f"fast-reid baseline unavailable: {_BASELINE['error']}")
    return _BASELINE["module"]


def _check_fastreid_figures(figures, result):
    """fast-reid's CMC and mAP equal ours to its float32 arithmetic. Single queries' APs may differ
    a little more: fast-reid's np.argsort is not stable, so where a match ties a non-match in
    float32 it may order them either way."""
    cmc, all_ap, _ = figures
    np.testing.assert_allclose(cmc, result.cmc, rtol=1e-6, atol=1e-6)
    assert float(np.mean(all_ap)) == pytest.approx(result.mAP, rel=1e-5)


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
    _skip_unless_benchmarking(request, name, kind, impl)
    if impl == "fastreid-cython" and device != "cpu":
        pytest.skip("fast-reid's Cython evaluator runs on the CPU")
    num_q, num_g = DATASETS[name][:2]
    benchmark.group = f"evaluate_rank {device} {kind} distances [{num_q}, {num_g}] float32"
    distmat, label_arrays = distances(name, kind)
    distmat = distmat.to(device)
    if impl == "fastreid-cython":
        evaluate_cy = _fastreid().evaluate_cy
        result = evaluate_rank(distmat, *label_arrays)
        as_numpy = distmat.numpy()  # float32, shared: evaluate_cy reads it without a copy
        figures, peak = run_measured(lambda: evaluate_cy(as_numpy, *label_arrays, 50))
        _check_fastreid_figures(figures, result)
        extra = dict(op="evaluate_rank", impl=impl, passname=kind, shape=[num_q, num_g], dtype="float32",
                     baseline=f"fastreid=={fastreid_baseline.FASTREID_VERSION} rank_cy.evaluate_cy",
                     **_figures(result))
        if peak is not None:
            extra["peak_memory_mb"] = peak
        _time(benchmark, timed, lambda: evaluate_cy(as_numpy, *label_arrays, 50), device, 3, **extra)
        return
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
    quick = impl == "reidfast" and name == "market1501"
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
