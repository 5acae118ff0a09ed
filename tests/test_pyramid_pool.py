"""pyramid_pool: every backend against the reference, forward and backward, and its contract."""

import math

import pytest
import torch
from compile_check import assert_compiles_like_eager
from conftest import cpu_backends, requires_extension
from numerics import assert_close_to_float64

import reidfast
from reidfast.ops import pyramid_pool, pyramid_pool_reference, pyramid_windows
from reidfast.ops.pyramid_pool import pyramid_pool_from_stripes, reference_forward

MODES = ("max", "avg", "max+avg")
MGN_WINDOWS = [(0, 6), (0, 3), (3, 3), (0, 2), (2, 2), (4, 2)]

# (shape, num_parts, windows): awkward on purpose. B=1, odd C, H not divisible by n, W=1, one
# stripe per row, overlapping and repeated windows.
SHAPES = [
    ((2, 17, 24, 8), 6, None),
    ((1, 5, 7, 1), 3, None),
    ((3, 70, 13, 5), 6, MGN_WINDOWS),
    ((2, 3, 9, 20), 2, [(0, 2), (1, 1), (1, 1), (0, 1)]),
    ((2, 4, 5, 3), 5, None),
]
# The interpreter costs milliseconds per program: Triton gets the small shapes.
TRITON_SHAPES = [SHAPES[1], ((2, 9, 12, 3), 4, None), SHAPES[3]]

LAYOUTS = ("contiguous", "channels_last", "strided")


def make_input(shape, layout, dtype=torch.float32, values="random", generator=None):
    """A fresh feature map of `shape` in `layout`; 'ties' draws from {0, 1, 2} so maxima repeat."""
    batch, channels, height, width = shape
    if layout == "strided":  # every other channel of a larger map: C and B strides are not dense
        full = _values((batch, 2 * channels, height, width), values, generator)
        x = full[:, ::2]
    elif layout == "permuted":  # H innermost: neither W nor C is contiguous
        x = _values((batch, channels, width, height), values, generator).transpose(2, 3)
    else:
        x = _values(shape, values, generator)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype)


def _values(shape, values, generator):
    if values == "ties":
        return torch.randint(0, 3, shape, generator=generator).float()
    return torch.randn(shape, generator=generator)


def windows_of(num_parts, windows):
    windows = pyramid_windows(num_parts) if windows is None else windows
    return [s for s, _ in windows], [n for _, n in windows]


def assert_matches_reference(x, num_parts, windows, mode, backend, rtol, atol, check_argmax=True):
    """Forward value (and argmax) and backward of `backend` against the reference."""
    starts, lengths = windows_of(num_parts, windows)
    expected, expected_argmax = reference_forward(x, num_parts, starts, lengths, mode)

    x_ref = x.detach().clone().requires_grad_()
    x_fast = x.detach().clone().requires_grad_()
    out_ref = pyramid_pool_reference(x_ref, num_parts, windows, mode)
    out = pyramid_pool(x_fast, num_parts, windows, mode, backend=backend)
    assert out.shape == (x.shape[0], len(starts), x.shape[1])
    assert out.dtype == x.dtype and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)

    if check_argmax and "max" in mode and backend != "reference":
        op = _forward_op(backend)
        _, argmax = op(x, num_parts, starts, lengths, mode, True)
        assert argmax.dtype == torch.int32
        torch.testing.assert_close(argmax, expected_argmax, rtol=0, atol=0)

    grad = torch.randn(out.shape, dtype=torch.float32).to(x.dtype)
    out_ref.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=rtol, atol=atol)


def _forward_op(backend):
    # Looked up by name, so that the Triton op is found without the extension's ops.
    return getattr(torch.ops.reidfast, "pyramid_pool_forward_triton" if backend == "triton" else "pyramid_pool_forward")


# --------------------------------------------------------------------------- windows


def test_pyramid_windows_order():
    windows = pyramid_windows(6)
    assert len(windows) == 21
    assert windows[:7] == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (0, 2)]
    assert windows[-1] == (0, 6)
    assert pyramid_windows(3, levels=(1, 3)) == [(0, 1), (1, 1), (2, 1), (0, 3)]
    assert len(pyramid_windows(6, levels=(1, 2, 5, 6))) == 6 + 5 + 2 + 1


def test_stripes_partition_rows():
    # H=7, n=3: stripes are rows [0,2), [2,4), [4,7); window (1,1) is the mean of rows 2..3.
    x = torch.arange(7.0).view(1, 1, 7, 1)
    out = pyramid_pool_reference(x, 3, [(0, 1), (1, 1), (2, 1), (0, 3)], pool="avg")
    torch.testing.assert_close(out.flatten(), torch.tensor([0.5, 2.5, 5.0, 3.0]))


@pytest.mark.parametrize(
    "levels, message",
    [((0,), r"levels must be integers in \[1, num_parts=4\], got 0"),
     ((5,), r"got 5"),
     ((1, 1), "must not repeat"),
     ((), "at least one pyramid level"),
     ((1.0,), r"got 1.0")],
)
def test_pyramid_windows_errors(levels, message):
    with pytest.raises(ValueError, match=message):
        pyramid_windows(4, levels)


# --------------------------------------------------------------------------- backends vs reference


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b != "triton"])
@pytest.mark.parametrize("shape, num_parts, windows", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_float32(backend, shape, num_parts, windows, layout, mode):
    x = make_input(shape, layout)
    assert_matches_reference(x, num_parts, windows, mode, backend, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b != "triton"])
@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "permuted"))
@pytest.mark.parametrize("mode", ("max", "max+avg"))
def test_ties_go_to_first_maximum(backend, layout, mode):
    x = make_input((2, 11, 12, 4), layout, values="ties")
    assert_matches_reference(x, 4, None, mode, backend, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif("triton" not in cpu_backends(), reason="Triton is not installed")
@pytest.mark.parametrize("shape, num_parts, windows", TRITON_SHAPES)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("mode", MODES)
def test_triton_matches_reference(shape, num_parts, windows, layout, mode):
    x = make_input(shape, layout)
    assert_matches_reference(x, num_parts, windows, mode, "triton", rtol=1e-5, atol=1e-6)


@pytest.mark.skipif("triton" not in cpu_backends(), reason="Triton is not installed")
@pytest.mark.parametrize("layout", ("strided", "permuted"))
def test_triton_ties_and_strides(layout):
    x = make_input((2, 5, 12, 3), layout, values="ties")
    assert_matches_reference(x, 4, None, "max+avg", "triton", rtol=1e-5, atol=1e-6)


def assert_low_precision_matches_float64(x, num_parts, mode, backend, factor, atol):
    """Forward and backward of `backend` on a low-precision `x` by the float64 rule
    (tests/numerics.py): within `factor` of the reference's own error in x's dtype, plus `atol`
    (max mode is exact: both errors are then 0). The argmax is exact in any dtype."""
    grad = torch.randn(x.shape[0], len(pyramid_windows(num_parts)), x.shape[1]).to(device=x.device, dtype=x.dtype)

    def forward_backward(inputs, pool):
        leaf = inputs.detach().clone().requires_grad_()
        out = pool(leaf)
        out.backward(grad.to(out.dtype))
        return out, leaf.grad

    got = forward_backward(x, lambda t: pyramid_pool(t, num_parts, None, mode, backend=backend))
    baseline = forward_backward(x, lambda t: pyramid_pool_reference(t, num_parts, None, mode))
    exact = forward_backward(x.double(), lambda t: pyramid_pool_reference(t, num_parts, None, mode))
    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
    assert_close_to_float64(got, baseline, exact, factor=factor, atol=atol, names=("output", "grad_x"))
    if "max" in mode:
        starts, lengths = windows_of(num_parts, None)
        _, argmax = _forward_op(backend)(x, num_parts, starts, lengths, mode, True)
        torch.testing.assert_close(argmax, reference_forward(x, num_parts, starts, lengths, mode)[1], rtol=0, atol=0)


# Low precision: (dtype, factor, atol) of the float64 rule. The kernels accumulate in float32 and
# round once, as the reference's forward does; its backward accumulates the windows' gradients in
# the low dtype, so the kernels' gradients are closer to float64 than the reference's.
LOW_PRECISION = [(torch.float16, 2.0, 1e-5), (torch.bfloat16, 2.0, 1e-4)]


@requires_extension
@pytest.mark.parametrize("dtype, factor, atol", LOW_PRECISION)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("mode", MODES)
def test_cpu_low_precision(dtype, factor, atol, layout, mode):
    x = make_input((2, 19, 12, 3), layout, dtype=dtype)
    assert_low_precision_matches_float64(x, 4, mode, "cpu", factor, atol)


@pytest.mark.skipif("triton" not in cpu_backends(), reason="Triton is not installed")
def test_triton_float16():
    dtype, factor, atol = LOW_PRECISION[0]
    x = make_input((2, 5, 12, 3), "contiguous", dtype=dtype)
    assert_low_precision_matches_float64(x, 4, "max+avg", "triton", factor, atol)


@requires_extension
def test_cpu_float64():
    x = make_input((2, 7, 10, 3), "channels_last", dtype=torch.float64)
    assert_matches_reference(x, 3, None, "max+avg", "cpu", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", cpu_backends())
def test_nan_propagates_to_first_nan(backend):
    x = torch.randn(1, 3, 6, 2)
    x[0, 0, 1, 1] = math.nan
    x[0, 0, 4, 0] = math.nan
    starts, lengths = windows_of(3, None)
    out = pyramid_pool(x, 3, pool="max", backend=backend)
    expected, expected_argmax = reference_forward(x, 3, starts, lengths, "max")
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    if backend != "reference":
        _, argmax = _forward_op(backend)(x, 3, starts, lengths, "max", True)
        assert argmax[0, -1, 0].item() == 1 * 2 + 1  # the first NaN in row-major order
        torch.testing.assert_close(argmax, expected_argmax, rtol=0, atol=0)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape", [(0, 4, 6, 2), (2, 0, 6, 2)])
def test_empty_batch_or_channels(backend, shape):
    x = torch.randn(shape, requires_grad=True)
    out = pyramid_pool(x, 3, backend=backend)
    assert out.shape == (shape[0], 6, shape[1])
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_from_stripes_matches_reference():
    for layout in LAYOUTS:
        x = make_input((3, 70, 13, 5), layout)
        for mode in MODES:
            torch.testing.assert_close(
                pyramid_pool_from_stripes(x, 6, MGN_WINDOWS, mode),
                pyramid_pool_reference(x, 6, MGN_WINDOWS, mode),
                rtol=1e-5, atol=1e-6,
            )


# --------------------------------------------------------------------------- autograd contract


@requires_extension
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck_float64(layout, mode, seed):
    generator = torch.Generator().manual_seed(seed)
    x = make_input((2, 3, 7, 2), layout, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pyramid_pool(t, 3, pool=mode, backend="cpu"), (x,))


@requires_extension
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_backward_is_deterministic(layout):
    x = make_input((4, 33, 12, 4), layout, values="ties").requires_grad_()
    grads = []
    for _ in range(2):
        x.grad = None
        pyramid_pool(x, 4, backend="cpu").backward(torch.ones(4, 10, 33))
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert grads[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@requires_extension
def test_backward_without_argmax_is_refused():
    x = torch.randn(1, 2, 4, 2, requires_grad=True)
    out, _ = torch.ops.reidfast.pyramid_pool_forward(x, 2, [0], [2], "max", False)
    with pytest.raises(RuntimeError, match="return_argmax=True"):
        out.sum().backward()


@requires_extension
def test_no_argmax_without_grad():
    x = torch.randn(2, 3, 4, 2)
    out, argmax = torch.ops.reidfast.pyramid_pool_forward(x, 2, [0, 1], [1, 1], "max+avg", False)
    assert argmax.shape == (0,)
    _, argmax = torch.ops.reidfast.pyramid_pool_forward(x, 2, [0, 1], [1, 1], "avg", True)
    assert argmax.shape == (0,)


OPCHECK_CASES = [
    ("contiguous", "max+avg", True),
    ("channels_last", "max+avg", True),
    ("contiguous", "avg", False),
    ("strided", "max", True),
]


@requires_extension
@pytest.mark.parametrize("layout, mode, return_argmax", OPCHECK_CASES)
def test_opcheck_cpu(layout, mode, return_argmax):
    x = make_input((2, 5, 7, 3), layout).requires_grad_(return_argmax)
    torch.library.opcheck(torch.ops.reidfast.pyramid_pool_forward.default, (x, 3, [0, 1, 0], [1, 2, 3], mode, return_argmax))
    _, argmax = torch.ops.reidfast.pyramid_pool_forward(x.detach(), 3, [0, 1, 0], [1, 2, 3], mode, True)
    grad_out = torch.randn(2, 3, 5)
    torch.library.opcheck(
        torch.ops.reidfast.pyramid_pool_backward.default,
        (grad_out, argmax, 3, [0, 1, 0], [1, 2, 3], mode, 7, 3, layout == "channels_last"),
    )


@pytest.mark.skipif("triton" not in cpu_backends(), reason="Triton is not installed")
def test_opcheck_triton():
    x = make_input((2, 5, 7, 3), "contiguous").requires_grad_()
    op = torch.ops.reidfast.pyramid_pool_forward_triton.default
    torch.library.opcheck(op, (x, 3, [0, 1], [1, 2], "max+avg", True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@requires_extension
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_compile_fullgraph(layout):
    def head(t):
        return pyramid_pool(t, 6, backend="cpu").relu().sum(dim=1)

    x = make_input((2, 9, 24, 4), layout).requires_grad_()
    assert_compiles_like_eager(head, x, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x=[1.0]), TypeError, "x must be a Tensor"),
        (dict(x=torch.randn(2, 3, 4)), ValueError, r"x must be 4-D \[B, C, H, W\], got shape \(2, 3, 4\)"),
        (dict(x=torch.ones(1, 2, 4, 2, dtype=torch.int64)), TypeError, "got torch.int64"),
        (dict(x=torch.randn(1, 2, 8, 0)), ValueError, r"x must have W >= 1 .*got shape \(1, 2, 8, 0\)"),
        (dict(num_parts=0), ValueError, "num_parts must be >= 1, got 0"),
        (dict(num_parts=True), TypeError, "num_parts must be an int, got bool"),
        (dict(num_parts=2.0), TypeError, "num_parts must be an int, got float"),
        (dict(num_parts=9), ValueError, "num_parts must be at most H=8"),
        (dict(windows=[]), ValueError, "non-empty sequence"),
        (dict(windows=[(0, 0)]), ValueError, r"window \(0, 0\) is empty"),
        (dict(windows=[(3, 2)]), ValueError, r"window \(3, 2\) is empty or outside the 4 stripes"),
        (dict(windows=[(-1, 1)]), ValueError, r"window \(-1, 1\)"),
        (dict(windows=[(0, 1, 2)]), ValueError, r"\(start, length\) pairs of ints, got \(0, 1, 2\)"),
        (dict(windows=[(0.0, 1)]), ValueError, "pairs of ints"),
        (dict(pool="sum"), ValueError, "pool must be one of .*got 'sum'"),
        (dict(backend="gpu"), ValueError, "backend must be one of .*got 'gpu'"),
    ],
)
def test_errors(kwargs, error, message):
    args = dict(x=torch.randn(1, 2, 8, 2), num_parts=4, windows=None, pool="max+avg", backend=None)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        pyramid_pool(**args)


def test_unavailable_backend_says_why():
    status = reidfast.available_backends()["cuda"]
    if status.available:
        pytest.skip("the cuda backend is available here")
    with pytest.raises(RuntimeError, match="backend='cuda' is not available on this machine: .+"):
        pyramid_pool(torch.randn(1, 2, 4, 2), 2, backend="cuda")


@requires_extension
def test_backend_for_wrong_device():
    with pytest.raises(ValueError, match="backend='cpu' runs on cpu tensors; the input is on meta"):
        pyramid_pool(torch.randn(1, 2, 4, 2, device="meta"), 2, backend="cpu")


def test_environment_selects_backend(monkeypatch):
    monkeypatch.setenv("REIDFAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="REIDFAST_BACKEND must be one of .*got 'nope'"):
        pyramid_pool(torch.randn(1, 2, 4, 2), 2)
    monkeypatch.setenv("REIDFAST_BACKEND", "reference")
    x = torch.randn(1, 2, 4, 2)
    torch.testing.assert_close(pyramid_pool(x, 2), pyramid_pool_reference(x, 2))


@requires_extension
def test_default_backend_on_cpu_is_cpu():
    assert reidfast.backend.resolve_backend(None, torch.device("cpu")) == "cpu"


@pytest.mark.skipif("triton" not in cpu_backends(), reason="Triton is not installed")
def test_triton_refuses_float64():
    with pytest.raises(TypeError, match="float64 runs on the 'reference' and 'cpu' backends only"):
        pyramid_pool(torch.randn(1, 2, 4, 2, dtype=torch.float64), 2, backend="triton")


@requires_extension
@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.randn(2, 3, 4), 2, [0], [1], "max", False), "x must be 4-D"),
        ((torch.randn(1, 2, 4, 0), 2, [0], [1], "max", False), "x must have W >= 1"),
        ((torch.randn(1, 2, 4, 2), 5, [0], [1], "max", False), r"num_parts must be in \[1, H=4\], got 5"),
        ((torch.randn(1, 2, 4, 2), 2, [1], [2], "max", False), r"window 0 = \(start 1, length 2\)"),
        ((torch.randn(1, 2, 4, 2), 2, [0, 1], [1], "max", False), "differ in length"),
        ((torch.randn(1, 2, 4, 2), 2, [0], [1], "min", False), "mode must be 'max', 'avg' or 'max\\+avg', got 'min'"),
    ],
)
def test_registered_op_checks_its_arguments(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.reidfast.pyramid_pool_forward(*args)


# --------------------------------------------------------------------------- GPU


def gpu_backends():
    return [name for name in ("cuda", "triton") if "cuda" in reidfast.available_backends()[name].devices]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("shape, num_parts, windows", SHAPES + [((64, 2048, 24, 8), 6, None)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_gpu_matches_reference_float32(backend, shape, num_parts, windows, layout, mode):
    if backend not in gpu_backends():
        pytest.fail(f"backend {backend!r} is not available on this GPU machine: {reidfast.available_backends()[backend].reason}")
    x = make_input(shape, layout).cuda()
    assert_matches_reference(x, num_parts, windows, mode, backend, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("values", ("random", "ties"))
def test_gpu_bfloat16_and_ties(backend, layout, values):
    if backend not in gpu_backends():
        pytest.fail(f"backend {backend!r} is not available on this GPU machine: {reidfast.available_backends()[backend].reason}")
    dtype, factor, atol = LOW_PRECISION[1]
    x = make_input((8, 130, 24, 8), layout, dtype=dtype, values=values).cuda()
    assert_low_precision_matches_float64(x, 6, "max+avg", backend, factor, atol)
