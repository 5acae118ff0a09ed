"""fast-reid's Cython evaluator, `evaluate_cy` of fastreid/evaluation/rank_cylib/rank_cy.pyx: the
baseline of bench_evaluation.py, built at benchmark time from fast-reid's source package on PyPI
into a cache folder outside the repository (none of its code is part of reidfast).

`load()` returns the compiled module, building it on first use as fast-reid's own rank_cylib
setup.py does (Cython, numpy's headers, the default compiler flags): `pip download` of the source
distribution, rank_cy.pyx extracted, cythonized and compiled. Needs pip with access to PyPI (or a
pip cache), Cython and a C compiler; `BaselineUnavailable` says which step failed.
The cache folder is $REIDFAST_BENCH_CACHE, else ~/.cache/reidfast-bench.
"""

import importlib.machinery
import importlib.util
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

FASTREID_VERSION = "1.4.0"
PYX_PATH = f"fastreid-{FASTREID_VERSION}/fastreid/evaluation/rank_cylib/rank_cy.pyx"
MODULE = "rank_cy"


class BaselineUnavailable(RuntimeError):
    """The baseline cannot be built here; the message says why."""


def cache_dir() -> pathlib.Path:
    root = os.environ.get("REIDFAST_BENCH_CACHE") or pathlib.Path.home() / ".cache" / "reidfast-bench"
    return pathlib.Path(root) / f"fastreid-{FASTREID_VERSION}"


def load():
    """The compiled rank_cy module (its `evaluate_cy(distmat, q_pids, g_pids, q_camids, g_camids,
    max_rank)` returns the CMC, the valid queries' APs and INPs, in float32)."""
    folder = cache_dir()
    built = _built_module(folder)
    if built is None:
        _build(folder)
        built = _built_module(folder)
        if built is None:
            raise BaselineUnavailable(f"building {MODULE} left no extension module in {folder}")
    spec = importlib.util.spec_from_file_location(MODULE, built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _built_module(folder: pathlib.Path):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"{MODULE}{suffix}"
        if path.exists():
            return path
    return None


def _build(folder: pathlib.Path) -> None:
    try:
        import numpy
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as error:
        raise BaselineUnavailable(f"the fast-reid baseline needs Cython and setuptools ({error})") from error
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        work = pathlib.Path(work)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   f"fastreid=={FASTREID_VERSION}", "--dest", str(work)]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or error
            raise BaselineUnavailable(f"pip could not download fastreid=={FASTREID_VERSION}: {detail}") from error
        with tarfile.open(work / f"fastreid-{FASTREID_VERSION}.tar.gz") as archive:
            pyx = work / f"{MODULE}.pyx"
            pyx.write_bytes(archive.extractfile(PYX_PATH).read())
        extension = Extension(MODULE, [str(pyx)], include_dirs=[numpy.get_include()])
        distribution = Distribution({"ext_modules": cythonize([extension], build_dir=str(work), quiet=True)})
        build_ext = distribution.get_command_obj("build_ext")
        build_ext.build_lib, build_ext.build_temp = str(work / "lib"), str(work / "temp")
        try:
            distribution.run_command("build_ext")
        except Exception as error:  # setuptools raises several types for a missing or failing compiler
            raise BaselineUnavailable(f"compiling {MODULE}.pyx failed: {error}") from error
        for path in (work / "lib").iterdir():
            os.replace(path, folder / path.name)  # atomic: a concurrent run sees all or nothing
