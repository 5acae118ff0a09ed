"""Deployment latency: one batch of preprocessed images through each runtime a deployed model runs
on (reidfast.deploy.Embedder's; decoding and resizing, the same for every runtime, are left out).

Models, randomly initialised (the weights do not change the arithmetic), eval mode:
  pyramid     Pyramid on ResNet-50 at 384 x 128 (docs/methods.md)
  plr_osnet   PLR-OSNet at 256 x 128
Runtimes:
  eager         the model in PyTorch under no_grad: the baseline
  compile       torch.compile with a dynamic batch (Embedder.from_model(compile=True))
  aoti          an AOTInductor package for batches 1-64 (reidfast.export.export_aoti)
  onnxruntime   ONNX Runtime's CPU provider with as many threads as torch (export_onnx, dynamic batch)
  cuda-graphs   GPU only: the eager forward captured in one CUDA graph per batch size
  tensorrt, tensorrt-fp16   GPU only, where TensorRT is installed: an engine for batches 1-64
                (build_tensorrt_engine) in float32, and in float16
Each runtime's embeddings are checked against eager's on the timed batch before timing (the
largest error relative to the embeddings' scale is recorded as `max_error`). Every export is made
once per run, by the first batch size's case, and shared. A case records median and p90 latency,
`setup_s` (the export made in this case, and the first call: a compilation for `compile`'s first
graph of that batch class, CUDA graph capture) and the model's GFLOP per image; the report adds
images/s, GFLOP/s and the speed-up over eager.

The smoke run (--benchmark-disable) makes only PLR-OSNet's eager case at batch 1 and the matrix
product: the other cases need exports or compilations of half a minute to minutes each on a
laptop-class CPU (the exports themselves are tested in tests/).
"""

import functools
import time

import pytest
import torch
from benchutil import devices
from torch.utils.flop_counter import FlopCounterMode

from reidfast.deploy import Embedder
from reidfast.export import Preprocessing, build_tensorrt_engine, export_aoti, export_onnx
from reidfast.models import build_model

MODELS = {"pyramid": (384, 128), "plr_osnet": (256, 128)}
BATCHES = (1, 16, 64)
MAX_BATCH = max(BATCHES)
RUNTIMES = {"cpu": ("eager", "compile", "aoti", "onnxruntime"),
            "cuda": ("eager", "compile", "cuda-graphs", "aoti", "tensorrt", "tensorrt-fp16")}
ROUNDS = {"cpu": {1: 30, 16: 10, 64: 5}, "cuda": {1: 200, 16: 100, 64: 50}}
TOLERANCE = {"tensorrt-fp16": 2e-2}  # float32 runtimes: 1e-3 (summation order, convolution algorithms)
NUM_CLASSES = 751  # Market-1501's training identities: the classifiers a checkpoint holds (unused in eval)
SMOKE = {("plr_osnet", 1, "eager")}


@functools.cache
def model(name, device):
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES).to(device).eval()


@functools.cache
def gflop(name):
    """The model's floating-point operations per image in GFLOP (torch.utils.flop_counter: the
    convolutions and matrix products, 2 per multiply-add)."""
    height, width = MODELS[name]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(name, "cpu")(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e9


EMBEDDERS = {}  # (name, runtime, device) -> Embedder, made by the first case that needs it


def embedder(name, runtime, device, folder):
    """(the Embedder of `name` on `runtime`, the seconds spent making it now: its export, 0 when an
    earlier case made it); exports are written to `folder`."""
    key = (name, runtime, device)
    if key in EMBEDDERS:
        return EMBEDDERS[key], 0.0
    start = time.perf_counter()
    EMBEDDERS[key] = make_embedder(name, runtime, device, folder)
    return EMBEDDERS[key], time.perf_counter() - start


def make_embedder(name, runtime, device, folder):
    height, width = MODELS[name]
    preprocessing = Preprocessing(height, width)
    net = model(name, device)
    if runtime in ("eager", "compile"):
        return Embedder.from_model(net, preprocessing, compile=runtime == "compile", device=device)
    if runtime == "aoti":
        package = export_aoti(net, folder / f"{name}-{device}.pt2", (height, width), max_batch=MAX_BATCH, device=device)
        return Embedder.from_aoti(package, device=device, max_batch=MAX_BATCH)
    if runtime == "onnxruntime":
        onnx = export_onnx(net, folder / f"{name}.onnx", (height, width)).path
        return Embedder.from_onnx(onnx, threads=torch.get_num_threads())
    if runtime.startswith("tensorrt"):
        pytest.importorskip("tensorrt")
        half = runtime == "tensorrt-fp16"
        onnx = export_onnx(net, folder / f"{name}-{runtime}.onnx", (height, width), half=half).path
        engine = build_tensorrt_engine(onnx, folder / f"{name}-{runtime}.engine", "fp16" if half else "fp32",
                                       min_batch=1, opt_batch=16, max_batch=MAX_BATCH)
        return Embedder.from_tensorrt(engine)
    raise ValueError(f"runtime {runtime!r} is made per batch (cuda-graphs) or unknown")


def cuda_graph(net, batch, height, width):
    """The eager forward of `net` captured for batches of `batch`: run(images) copies images into
    the graph's input and replays it (the output tensor is the graph's, overwritten by the next call)."""
    static_input = torch.zeros(batch, 3, height, width, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):  # warm-up on a side stream, as capture requires
            net(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_output = net(static_input)

    def run(images):
        static_input.copy_(images)
        graph.replay()
        return static_output

    return run


def cases():
    for device in devices():
        for name in MODELS:
            for batch in BATCHES:
                for runtime in RUNTIMES[device]:
                    marks = [] if (name, batch, runtime) in SMOKE else [pytest.mark.large]
                    yield pytest.param(name, batch, runtime, device, marks=marks,
                                       id=f"{name}-{batch}-{runtime}-{device}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")


@pytest.mark.parametrize("name, batch, runtime, device", list(cases()))
def test_latency(benchmark, timed, folder, name, batch, runtime, device):
    height, width = MODELS[name]
    benchmark.group = f"deploy {name} {device} batch={batch}"
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch)).to(device)
    net, work = model(name, device), gflop(name)  # built before any clock starts
    start = time.perf_counter()
    if runtime == "cuda-graphs":
        run = cuda_graph(net, batch, height, width)
        exported = time.perf_counter() - start
    else:
        runtime_embedder, exported = embedder(name, runtime, device, folder)
        run = runtime_embedder.run
    start = time.perf_counter()
    got = run(images).float().to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    first_call = time.perf_counter() - start
    with torch.no_grad():
        want = net(images).float()
    error = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    assert error <= TOLERANCE.get(runtime, 1e-3), f"{runtime} differs from eager by {error:.3g}"
    dtype = "float16" if runtime == "tensorrt-fp16" else "float32"
    timed(lambda: run(images), device, rounds=ROUNDS[device][batch], op="deploy", impl=runtime, model=name,
          passname="inference", shape=[batch, 3, height, width], dtype=dtype, max_error=error,
          gflop_per_image=work, setup_s=exported + first_call)


@pytest.mark.parametrize("device", devices())
def test_matmul_throughput(benchmark, timed, device):
    """For scale: the GFLOP/s of one large float32 matrix product (torch.mm, 4096 x 4096), close
    to what the device's float32 arithmetic allows; a model's GFLOP/s is read against it."""
    size = 4096
    a, b = (torch.randn(size, size, generator=torch.Generator().manual_seed(i)).to(device) for i in range(2))
    benchmark.group = f"deploy matmul {device}"
    timed(lambda: torch.mm(a, b), device, rounds=10, op="deploy-matmul", impl="torch.mm", passname="forward",
          shape=[size, size, size], dtype="float32", gflop=2 * size**3 / 1e9)
