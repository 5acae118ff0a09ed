"""Distributed helpers: the single-process behaviour of each, the checks of torchrun's environment
(all made before a process group exists), and two gloo processes on loopback averaging metrics,
gathering rows of different counts, broadcasting, and refusing mismatched calls on every rank."""

import dataclasses
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing

from reidfast.training.distributed import (
    DistributedContext,
    all_gather_variable,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    destroy_distributed,
    init_distributed,
    reduce_mean,
)

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TWO_RANKS = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture(autouse=True)
def _no_launch_environment(monkeypatch):
    """A torchrun environment in the caller's shell must not leak into these tests."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()


def single_context() -> DistributedContext:
    return DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def test_single_process_without_launch_environment():
    context = init_distributed("cpu")
    assert context == single_context()
    assert not context.is_distributed and context.is_main and context.owned_group is None
    destroy_distributed(context)
    assert not dist.is_initialized()
    expected_auto = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert init_distributed().device == expected_auto


def test_world_size_one_under_a_launcher_is_a_single_process(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert init_distributed("cpu") == single_context()
    assert not dist.is_initialized()


def test_context_is_frozen_and_checked():
    context = DistributedContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"), backend="gloo")
    assert context.is_distributed and not context.is_main
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.rank = 0
    with pytest.raises(ValueError, match="rank must be < world_size=2, got 2"):
        DistributedContext(rank=2, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(TypeError, match="device must be a torch.device, got str 'cpu'"):
        DistributedContext(rank=0, world_size=1, local_rank=0, device="cpu", backend=None)


def test_single_process_collectives_return_the_inputs():
    context = single_context()
    means = reduce_mean({"triplet": torch.tensor(2.5), "accuracy": 3, "loss": torch.tensor([0.25])}, context)
    assert list(means.items()) == [("accuracy", 3.0), ("loss", 0.25), ("triplet", 2.5)]
    assert all(type(value) is float for value in means.values())
    assert reduce_mean({}, context) == {}
    features = torch.arange(6.0).reshape(3, 2)
    assert all_gather_variable(features, context) is features
    config = {"lr": 0.1}
    assert broadcast_object(config, context) is config
    assert barrier(context) is None
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert convert_sync_batchnorm(model, context) is model
    assert type(model[1]) is torch.nn.BatchNorm2d


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda c: reduce_mean([("loss", 1.0)], c), TypeError, "values must be a mapping"),
        (lambda c: reduce_mean({1: 1.0}, c), TypeError, "keys must be str, got int 1"),
        (lambda c: reduce_mean({"ok": True}, c), TypeError, r"values\['ok'\] must be an int, float or one-element"),
        (lambda c: reduce_mean({"loss": torch.ones(2)}, c), ValueError, r"values\['loss'\] must be a one-element"),
        (lambda c: reduce_mean({"z": torch.ones(1, dtype=torch.complex64)}, c), TypeError, "real number"),
        (lambda c: all_gather_variable([1.0], c), TypeError, "tensor must be a Tensor"),
        (lambda c: all_gather_variable(torch.tensor(1.0), c), ValueError, r"at least 1 dimension .* got shape \(\)"),
        (lambda c: all_gather_variable(torch.ones(2, device="meta"), c), ValueError, "device cpu, got meta"),
        (lambda c: broadcast_object("x", c, src=1), ValueError, "src must be < world_size=1, got 1"),
        (lambda c: broadcast_object("x", c, src=-1), ValueError, "src must be >= 0, got -1"),
        (lambda c: convert_sync_batchnorm("model", c), TypeError, "model must be a torch.nn.Module, got str"),
        (lambda c: barrier(None), TypeError, "context must be a DistributedContext"),
    ],
)
def test_bad_arguments_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call(single_context())


def test_sync_batchnorm_on_a_distributed_cpu_context_is_refused():
    context = DistributedContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"SyncBatchNorm needs CUDA, but the context's device is cpu \(world_size=2"):
        convert_sync_batchnorm(model, context)
    assert type(model[1]) is torch.nn.BatchNorm2d


@pytest.mark.parametrize(
    "device, error, message",
    [
        ("gpu", ValueError, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        ("cpu:0", ValueError, "got 'cpu:0'"),
        ("cuda:", ValueError, "got 'cuda:'"),
        ("CUDA", ValueError, "got 'CUDA'"),
        (0, TypeError, "device must be a str .* got int 0"),
        (None, TypeError, "got NoneType None"),
    ],
)
def test_bad_device_argument(device, error, message):
    with pytest.raises(error, match=message):
        init_distributed(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
@pytest.mark.parametrize(
    "launched, device, message",
    [
        (False, "cuda", r"device='cuda' asks for CUDA, but torch.cuda.is_available\(\) is False"),
        (False, "cuda:0", r"device='cuda:0' asks for CUDA, but torch.cuda.is_available\(\) is False"),
        (True, "cuda", r"device='cuda' asks for CUDA, but torch.cuda.is_available\(\) is False"),
        (True, "cuda:0", "device='cuda:0' names one GPU"),
    ],
)
def test_cuda_asked_where_it_is_absent(monkeypatch, launched, device, message):
    if launched:
        for name, value in TWO_RANKS.items():
            monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        init_distributed(device)
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"WORLD_SIZE": None, "LOCAL_RANK": None}, "WORLD_SIZE and LOCAL_RANK not set but RANK='1' set"),
        ({"RANK": None}, "RANK not set but WORLD_SIZE='2', LOCAL_RANK='1' set"),
        ({"RANK": None, "WORLD_SIZE": None}, "RANK and WORLD_SIZE not set but LOCAL_RANK='1' set"),
        ({"RANK": "2"}, "RANK=2 must be < WORLD_SIZE=2"),
        ({"RANK": "one"}, "RANK must be an integer, got 'one'"),
        ({"RANK": "-1"}, "RANK must be >= 0, got -1"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE must be >= 1, got 0"),
        ({"LOCAL_RANK": None}, "LOCAL_RANK must be set when WORLD_SIZE=2 > 1"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 must be < WORLD_SIZE=2"),
        ({"MASTER_ADDR": None}, "MASTER_ADDR must be set when WORLD_SIZE=2 > 1"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR must be set"),
        ({"MASTER_PORT": None}, "MASTER_PORT must be set when WORLD_SIZE=2 > 1"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT must be an integer, got 'http'"),
        ({"MASTER_PORT": "0"}, "MASTER_PORT must be >= 1, got 0"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT must be <= 65535, got 70000"),
    ],
)
def test_inconsistent_launch_environment(monkeypatch, changes, message):
    for name, value in {**TWO_RANKS, **changes}.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        init_distributed("cpu")
    assert not dist.is_initialized()


def test_a_device_index_under_a_launcher_is_refused(monkeypatch):
    for name, value in TWO_RANKS.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="device='cuda:1' names one GPU, but each of the WORLD_SIZE=2 processes"):
        init_distributed("cuda:1")
    assert not dist.is_initialized()


def test_an_initialised_group_is_used_not_created_again(monkeypatch):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        context = init_distributed("auto")
        # A gloo group computes on the CPU even where CUDA is available.
        assert context == DistributedContext(0, 1, 0, torch.device("cpu"), "gloo")
        assert context.owned_group is None
        destroy_distributed(context)
        assert dist.is_initialized()
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ValueError, match="WORLD_SIZE=2 differs from the initialised process group's 1"):
            init_distributed("cpu")
    finally:
        dist.destroy_process_group()


def _one_image_features(folder: str, context: DistributedContext) -> torch.Tensor:
    """extract_features of a one-image split (fewer records than ranks) with a small seeded model."""
    import os

    from reidfast.data import ReIDRecord, transforms_for
    from reidfast.training import load_config
    from reidfast.training.trainer import extract_features

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    config = load_config("pla-synthetic", ["data.num_workers=0"])
    test = transforms_for("pla", False, "cpu", 0, height=32, width=16)
    return extract_features(model, [ReIDRecord(os.path.join(folder, "one.png"), 1, 0)], test, config, context)


def _two_rank_worker(index: int, port: int, folder: str) -> None:
    """One of two processes launched as torchrun would: its results go to folder/rank{index}.pt."""
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), WORLD_SIZE="2", LOCAL_RANK=str(index)
    )
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    results = {"context": (context.rank, context.world_size, context.local_rank, str(context.device), context.backend)}
    results["flags"] = (context.is_distributed, context.is_main, context.owned_group is not None)

    rejoined = init_distributed("cpu")
    destroy_distributed(rejoined)
    results["rejoined"] = (rejoined == context, rejoined.owned_group is None, dist.is_initialized())

    metrics = {"loss": [1.5, 3.0][index], "accuracy": torch.tensor([0.5, 0.25][index]), "images": [10, 14][index]}
    results["means"] = list(reduce_mean(metrics, context).items())
    mismatched = {"loss": 1.0} if index == 0 else {"loss": 1.0, "triplet": 2.0}
    try:
        reduce_mean(mismatched, context)
    except ValueError as error:
        results["key_error"] = str(error)

    rows = 3 if index == 0 else 5
    features = torch.arange(2.0 * rows).reshape(rows, 2) + 100 * index
    results["features"] = all_gather_variable(features, context)
    results["labels"] = all_gather_variable(torch.arange(rows) + 10 * index, context)
    results["one_rank_empty"] = all_gather_variable(torch.full((2 * index, 3), 7.0), context)
    try:
        all_gather_variable(torch.zeros(2, 3 + index), context)
    except ValueError as error:
        results["shape_error"] = str(error)

    results["one_image"] = _one_image_features(folder, context)
    results["broadcast"] = broadcast_object({"run": f"from rank {index}"}, context, src=1)
    barrier(context)
    destroy_distributed(context)
    results["destroyed"] = not dist.is_initialized()
    torch.save(results, os.path.join(folder, f"rank{index}.pt"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_processes_on_loopback(tmp_path, monkeypatch):
    from torchvision.io import write_png

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned children before they import torch
    write_png(torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
              str(tmp_path / "one.png"))
    processes = torch.multiprocessing.start_processes(
        _two_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 60
    try:
        # join raises with the child's traceback if one fails, and stops the other.
        while not processes.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("the two ranks did not finish within 60 s")
    finally:
        for process in processes.processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert [process.exitcode for process in processes.processes] == [0, 0]

    features = torch.tensor(
        [[0, 1], [2, 3], [4, 5], [100, 101], [102, 103], [104, 105], [106, 107], [108, 109]], dtype=torch.float32
    )
    for index in range(2):
        results = torch.load(tmp_path / f"rank{index}.pt", weights_only=True)
        assert results["context"] == (index, 2, index, "cpu", "gloo")
        assert results["flags"] == (True, index == 0, True)
        assert results["rejoined"] == (True, True, True)
        # (0.5 + 0.25) / 2, (10 + 14) / 2, (1.5 + 3.0) / 2: all exact in binary.
        assert results["means"] == [("accuracy", 0.375), ("images", 12.0), ("loss", 2.25)]
        assert results["key_error"] == (
            "reduce_mean's keys must be the same on every rank, got rank 0: ['loss']; rank 1: ['loss', 'triplet']"
        )
        torch.testing.assert_close(results["features"], features, rtol=0, atol=0)
        torch.testing.assert_close(results["labels"], torch.tensor([0, 1, 2, 10, 11, 12, 13, 14]), rtol=0, atol=0)
        torch.testing.assert_close(results["one_rank_empty"], torch.full((2, 3), 7.0), rtol=0, atol=0)
        assert results["shape_error"] == (
            "tensor's trailing shape and dtype must be the same on every rank, "
            "got rank 0: [N, 3] torch.float32; rank 1: [N, 4] torch.float32"
        )
        # One image, two ranks: rank 1's share is empty; both get rank 0's row.
        torch.testing.assert_close(results["one_image"], _one_image_features(str(tmp_path), single_context()),
                                   rtol=0, atol=0)
        assert results["broadcast"] == {"run": "from rank 1"}
        assert results["destroyed"]
