"""AOTInductor packages: a model compiled ahead of time by torch.export and Inductor into one
.pt2 file that `load_aoti` (torch._inductor.aoti_load_package) runs without Python model code.

reidfast's ops decompose under torch.export (pyramid_pool is traced as its stripe reductions, the
pairwise losses are not part of an embedding model), so a package holds only ATen kernels:
reidfast need not be importable where it is loaded, only torch (of the version that compiled it)
and a C++ runtime for the device it was compiled for (tested: a package loads and runs in a
process that cannot import reidfast). The preprocessing contract is stored in the package
(`reidfast.preprocessing` in its extra files) and returned by `load_aoti`.
"""

from __future__ import annotations

import copy
import os
import pathlib
import zipfile

import torch
from torch import nn

from reidfast._checks import check_int
from reidfast.export.onnx import Preprocessing, _Embedder, check_export, check_model

CONTRACT = "extra/reidfast_preprocessing.json"


def export_aoti(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int], *, max_batch: int = 64,
                normalize: bool = False, preprocessing: Preprocessing | None = None,
                device: torch.device | str = "cpu") -> pathlib.Path:
    """Compiles `model`'s eval-mode forward (L2-normalised with `normalize`) for images
    [B, 3, H, W], 1 <= B <= max_batch, on `device`, into the AOTInductor package `path` (.pt2),
    with the preprocessing contract inside. The model itself is not changed (a copy is compiled).
    Returns the package's path."""
    path, preprocessing = check_export(model, path, input_size, normalize, preprocessing)
    if path.suffix != ".pt2":
        raise ValueError(f"path must end in .pt2 (an AOTInductor package), got {str(path)!r}")
    program = export_program(model, input_size, max_batch=max_batch, normalize=normalize, device=device)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/{CONTRACT}", preprocessing.to_json())
    return path


def export_program(model: nn.Module, input_size: tuple[int, int], *, max_batch: int = 64, normalize: bool = False,
                   device: torch.device | str = "cpu") -> torch.export.ExportedProgram:
    """`model`'s eval-mode forward (L2-normalised with `normalize`) captured by torch.export for
    images [B, 3, H, W], 1 <= B <= max_batch, on `device`: the graph export_aoti compiles (and a
    starting point for other ahead-of-time toolchains). The model itself is not changed."""
    check_model(model, input_size)
    check_int("max_batch", max_batch, minimum=2)
    height, width = input_size
    device = torch.device(device)
    module = _Embedder(copy.deepcopy(model).to(device).eval(), normalize).eval()
    # Traced at batch 2: torch.export specialises a dimension traced at size 1.
    example = torch.randn(2, 3, height, width, device=device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})


def load_aoti(path: str | os.PathLike):
    """(the package's runner: Tensor[B, 3, H, W] -> Tensor[B, D], its Preprocessing). The runner
    takes contiguous (NCHW) inputs: its kernels do not check strides, and a channels_last view
    gives wrong embeddings."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AOTInductor package {str(path)!r} does not exist")
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(CONTRACT)]
        if not names:
            raise ValueError(f"{str(path)!r} holds no preprocessing contract: it was not exported by reidfast.export")
        preprocessing = Preprocessing.from_json(archive.read(names[0]).decode())
    return torch._inductor.aoti_load_package(str(path)), preprocessing
