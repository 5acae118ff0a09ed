"""TensorRT engines from reidfast's ONNX exports, on the TensorRT 10 and 11 Python API.

Written against NVIDIA's documented API (TensorRT cannot be installed where reidfast is built
and tested: this module has not run; its checks before TensorRT is imported are tested):
`Builder.create_network(0)` (explicit batch, the only mode since 10), `OnnxParser` with every
parser error surfaced, an optimisation profile for the batch, `set_memory_pool_limit` for the
workspace and `build_serialized_network` (not the removed `build_engine` / `build_cuda_engine`
that broke fast-reid's exporter). TensorRT 11 networks are strongly typed: `BuilderFlag.FP16` no
longer exists there, and an fp16 engine needs an fp16-typed ONNX (`export_onnx(..., half=True)`);
the flag is set only where it exists.
"""

from __future__ import annotations

import os
import pathlib

from reidfast._checks import check_int
from reidfast.export.onnx import INPUT_NAME, read_preprocessing
from reidfast.export.tensorrt_support import TENSORRT_VERSION, unsupported_nodes

PRECISIONS = ("fp32", "fp16")


def build_tensorrt_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str = "fp32",
                          min_batch: int = 1, opt_batch: int = 16, max_batch: int = 64,
                          workspace: int = 1 << 30) -> pathlib.Path:
    """Builds a serialized TensorRT engine for the batch range [min_batch, max_batch] (tuned for
    opt_batch) from an ONNX file exported by `export_onnx` (dynamic batch), and writes it to
    `engine_path`; the ONNX file's preprocessing contract is written beside it
    (`engine_path` + ".json"). Returns engine_path.

    Raises (before TensorRT is imported): ValueError for a bad argument, an ONNX file without
    reidfast's metadata, nodes TensorRT's parser does not support (listed), or fp16 asked of a
    float32 graph on TensorRT 11; ImportError when TensorRT is not installed; RuntimeError with
    the parser's errors, or when the build fails.
    """
    import onnx

    onnx_path, engine_path = pathlib.Path(onnx_path), pathlib.Path(engine_path)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_int("min_batch", min_batch, minimum=1)
    check_int("opt_batch", opt_batch, minimum=min_batch)
    check_int("max_batch", max_batch, minimum=opt_batch)
    check_int("workspace", workspace, minimum=1)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"onnx_path {str(onnx_path)!r} does not exist")
    preprocessing = read_preprocessing(onnx_path)
    proto = onnx.load(str(onnx_path))
    unsupported = unsupported_nodes(proto)
    if unsupported:
        listed = "; ".join(f"{name} ({op}: {why})" for name, op, why in unsupported)
        raise ValueError(f"{str(onnx_path)!r} has nodes TensorRT {TENSORRT_VERSION}'s ONNX parser does not support: {listed}")
    (graph_input,) = [value for value in proto.graph.input if value.name == INPUT_NAME]
    half_graph = graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    if not graph_input.type.tensor_type.shape.dim[0].dim_param:
        raise ValueError(f"{str(onnx_path)!r} has a fixed batch dimension: export it with dynamic_batch=True")

    try:
        import tensorrt as trt
    except ImportError as error:
        raise ImportError("build_tensorrt_engine needs TensorRT 10 or 11 (the tensorrt Python package), which is not "
                          "installed") from error
    if precision == "fp16" and not half_graph and not hasattr(trt.BuilderFlag, "FP16"):
        raise ValueError(f"TensorRT {trt.__version__} builds strongly typed networks: an fp16 engine needs an fp16 "
                         "ONNX graph (export_onnx(..., half=True))")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "fp16" and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (3, preprocessing.height, preprocessing.width)
    profile.set_shape(INPUT_NAME, (min_batch, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build an engine from {str(onnx_path)!r} (see its log)")
    engine_path.write_bytes(bytes(plan))
    engine_path.with_name(engine_path.name + ".json").write_text(preprocessing.to_json() + "\n")
    return engine_path
