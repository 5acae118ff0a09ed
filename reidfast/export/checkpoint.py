"""`reidfast export`: a training checkpoint's model to ONNX, through ONNX to a TensorRT engine, or
to an AOTInductor package, at its run's input size and normalisation."""

from __future__ import annotations

import os
import pathlib

from reidfast.data.transforms import recipe_for
from reidfast.export.aoti import export_aoti
from reidfast.export.onnx import OnnxExport, Preprocessing, export_onnx
from reidfast.export.tensorrt import build_tensorrt_engine

FORMATS = ("onnx", "tensorrt", "aoti")


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, format: str = "onnx", *,
                      opset: int | None = None, half: bool = False, normalize: bool = False,
                      dynamic_batch: bool = True, precision: str = "fp32", min_batch: int = 1, opt_batch: int = 16,
                      max_batch: int = 64, workspace: int = 1 << 30,
                      device: str = "cpu") -> tuple[OnnxExport | None, pathlib.Path | None]:
    """Exports the model of `checkpoint` (a run's checkpoints/*.pt) for serving.

    format "onnx": `output` is the ONNX file (export_onnx's options). format "tensorrt": the ONNX
    file is written beside `output` (`output` with the suffix .onnx) and the engine to `output`
    (build_tensorrt_engine's options). format "aoti": `output` is the .pt2 package, compiled for
    `device` and batches up to `max_batch` (export_aoti). The input size and the normalisation
    are the run's test transform's. Returns (the ONNX export's report or None, the engine's or
    the package's path or None).
    """
    from reidfast.training import model_from_checkpoint

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    output = pathlib.Path(output)
    onnx_path = output if format == "onnx" else output.with_suffix(".onnx")
    if format == "tensorrt" and onnx_path == output:
        raise ValueError(f"output {str(output)!r}: the engine needs a suffix other than .onnx (e.g. .engine)")
    model, config = model_from_checkpoint(checkpoint)
    recipe = recipe_for(config.method, **config.data.transforms)
    preprocessing = Preprocessing(recipe.height, recipe.width, tuple(recipe.mean), tuple(recipe.std),
                                  l2_normalized=normalize)
    if format == "aoti":
        return None, export_aoti(model, output, (recipe.height, recipe.width), max_batch=max_batch,
                                 normalize=normalize, preprocessing=preprocessing, device=device)
    report = export_onnx(model, onnx_path, (recipe.height, recipe.width), dynamic_batch=dynamic_batch, opset=opset,
                         half=half, normalize=normalize, preprocessing=preprocessing)
    engine = None
    if format == "tensorrt":
        engine = build_tensorrt_engine(onnx_path, output, precision=precision, min_batch=min_batch,
                                       opt_batch=opt_batch, max_batch=max_batch, workspace=workspace)
    return report, engine
