"""Ahead-of-time compilation of Triton launches for GPU architectures this machine lacks.

The interpreter proves a kernel's arithmetic on the CPU but not that it lowers to PTX: layouts,
register pressure and constexpr handling only meet the compiler on a real target. Compiling the
exact launch a launcher would run (same constexprs, same argument types, the specialisations
Triton applies at a launch: integer arguments equal to 1 become constants, pointers and integers
divisible by 16 are marked so, the pointers being taken as fresh allocations) for sm_75 (Turing),
sm_80 and sm_90 catches that here. Triton ships its own ptxas, so no CUDA device or driver is
needed.

Each compiled launch is held to three rules: it yields machine code; it does not spill registers
(no LOCAL or STACK bytes, from cuobjdump -res-usage, the `ptxas -v` figures); and every tl.dot in
its Triton IR has M, N and K >= MIN_DOT_BLOCK (16), which Triton before 3.4 (torch 2.6 and 2.7,
which the package admits) requires on NVIDIA GPUs while newer Triton and the interpreter accept
less.

The tests run Triton interpreted, where @triton.jit yields functions the compiler cannot take, so
the compilation runs in a child process without TRITON_INTERPRET: `compile_all(module, function)`
imports `module` there, calls `function()` for a {case id: [Launch, ...]} mapping, compiles every
launch for every architecture, and returns {(case id, arch): report}. `define_tests` gives a test
module its fixture and parametrised test over those reports.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ARCHITECTURES = (75, 80, 90)

_POINTER_TYPES = {
    "torch.float32": "*fp32",
    "torch.float16": "*fp16",
    "torch.bfloat16": "*bf16",
    "torch.float64": "*fp64",
    "torch.int32": "*i32",
    "torch.int64": "*i64",
}


def _compile_launch(launch, arch: int):
    """Compile `launch` (a Launch of reidfast.kernels) for sm_`arch`."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = launch.kernel
    names = kernel.arg_names
    constexprs = dict(launch.constexprs)
    signature = {}
    divisible_by_16 = []
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = launch.args[name]
        if isinstance(value, torch.Tensor):
            signature[name] = _POINTER_TYPES[str(value.dtype)]
            divisible_by_16.append(name)
        elif value == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                divisible_by_16.append(name)
    source = ASTSource(
        kernel,
        signature,
        {(names.index(n),): v for n, v in constexprs.items()},
        {(names.index(n),): [["tt.divisibility", 16]] for n in divisible_by_16},
    )
    return triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps}
    )


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED and LOCAL of the one kernel in `cubin`, read by the cuobjdump that ships
    with Triton (a spill shows as LOCAL or STACK bytes)."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run(
            [str(tool), "-res-usage", file.name], capture_output=True, text=True, check=True
        ).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", listing)}


def _dot_shapes(ttir: str) -> list[list[int]]:
    """[M, N, K] of every tt.dot in a kernel's Triton IR."""
    shapes = []
    for a_rows, a_cols, b_rows, b_cols in re.findall(
        r"tt\.dot [^:]*: tensor<(\d+)x(\d+)x\w+> \* tensor<(\d+)x(\d+)x\w+>", ttir
    ):
        assert a_cols == b_rows, (a_rows, a_cols, b_rows, b_cols)
        shapes.append([int(a_rows), int(b_cols), int(a_cols)])
    return shapes


def compile_all(module_path: str, function: str) -> dict[tuple[str, int], dict]:
    """{(case id, arch): report} for the launches of `module_path`'s `function()`, compiled in a
    child process (see the module docstring); a report lists each launch's kernel name, machine
    code size, tl.dot shapes [M, N, K] and REG / STACK / SHARED / LOCAL usage, or the error."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, __file__, module_path, function],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the compiling process failed:\n{result.stderr}")
    reports = json.loads(result.stdout.splitlines()[-1])
    return {(r["case"], r["arch"]): r for r in reports}


def assert_compiled(report: dict, expected_kernels: int | None = None) -> None:
    """A case's report: every launch compiled to machine code, without register spills (a spill
    to local memory would make a kernel memory-bound on its own scratch), with every tl.dot
    dimension >= MIN_DOT_BLOCK."""
    from reidfast.kernels._launch import MIN_DOT_BLOCK

    assert report["error"] is None, report["error"]
    assert report["kernels"], "no kernel compiled"
    if expected_kernels is not None:
        assert len(report["kernels"]) == expected_kernels, report["kernels"]
    for kernel in report["kernels"]:
        assert kernel["cubin_bytes"] > 0, f"{kernel['name']}: no machine code"
        assert kernel["LOCAL"] == 0 and kernel["STACK"] == 0, f"{kernel['name']} spills: {kernel}"
        for m, n, k in kernel["dots"]:
            assert min(m, n, k) >= MIN_DOT_BLOCK, f"{kernel['name']}: tl.dot of M={m}, N={n}, K={k}"


def define_tests(module_path: str, op: str, dtypes: dict, expected_kernels: int | None = None):
    """(fixture, test) for the test module of `op` whose `launches()` compiles the cases of
    `dtypes` ({case id: input dtype}): the launches compiled once for every architecture, and one
    test per (case, architecture) asserting `assert_compiled`, skipped with the reason where
    reidfast.kernels.supported says the dispatcher does not run Triton. The module binds them to
    module-level names, where pytest collects them."""
    import pytest

    from reidfast.kernels import supported

    @pytest.fixture(scope="module")
    def aot_reports():
        return compile_all(module_path, "launches")

    @pytest.mark.parametrize("arch", ARCHITECTURES)
    @pytest.mark.parametrize("case", list(dtypes))
    def test_kernels_compile(aot_reports, case, arch):
        reason = supported(op, divmod(arch, 10), dtypes[case])
        if reason is not None:
            pytest.skip(reason)
        assert_compiled(aot_reports[(case, arch)], expected_kernels)

    return aot_reports, test_kernels_compile


def _main(module_path: str, function: str) -> None:
    import importlib.util

    sys.path.insert(0, str(Path(module_path).parent))
    spec = importlib.util.spec_from_file_location("_aot_cases", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reports = []
    for case, launches in getattr(module, function)().items():
        for arch in ARCHITECTURES:
            report = {"case": case, "arch": arch, "error": None, "kernels": []}
            try:
                for launch in launches:
                    compiled = _compile_launch(launch, arch)
                    cubin = compiled.asm["cubin"]
                    report["kernels"].append(
                        {
                            "name": launch.kernel.fn.__name__,
                            "cubin_bytes": len(cubin),
                            "dots": _dot_shapes(compiled.asm["ttir"]),
                        }
                        | _resource_usage(cubin)
                    )
            except Exception as error:  # reported per case to the test, which fails on it
                report["error"] = f"{type(error).__name__}: {error}"
            reports.append(report)
    print(json.dumps(reports))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
