"""Builds reidfast._C, the compiled kernels of reidfast.

The CPU kernels are always built (with OpenMP, at compile and link time: without it
at::parallel_for runs on one thread). The CUDA kernels are built when torch has CUDA and nvcc is
found; FORCE_CUDA=1 makes a missing toolkit an error, REIDFAST_NO_CUDA=1 skips them. The default
GPU architectures are TORCH_CUDA_ARCH_LIST if set, else DEFAULT_CUDA_ARCHS below.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"  # Turing (T4) to Hopper, PTX for newer GPUs


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _build_cuda() -> bool:
    if _flag("REIDFAST_NO_CUDA"):
        return False
    has_toolkit = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if _flag("FORCE_CUDA"):
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return has_toolkit


def extensions():
    sources = ["csrc/reidfast.cpp", *sorted(glob.glob("csrc/autograd/*.cpp")), *sorted(glob.glob("csrc/cpu/*.cpp"))]
    # -fno-math-errno: no kernel reads errno, and without it sqrt and friends do not vectorise.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno"]
    define_macros = [("REIDFAST_PYTHON_MODULE", None)]
    if _build_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        return [
            cpp_extension.CUDAExtension(
                "reidfast._C",
                sources + sorted(glob.glob("csrc/cuda/*.cu")),
                define_macros=define_macros,
                extra_compile_args={
                    "cxx": cxx_flags,
                    "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"],
                },
                extra_link_args=["-fopenmp"],
                py_limited_api=True,
            )
        ]
    return [
        cpp_extension.CppExtension(
            "reidfast._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
