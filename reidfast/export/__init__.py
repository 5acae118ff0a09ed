"""Export for serving: ONNX with the preprocessing contract in its metadata (checked against
onnxruntime and against TensorRT's ONNX-parser support matrix on export), TensorRT engines built
from it, and AOTInductor packages; reidfast.deploy.Embedder runs any of them."""

from reidfast.export.aoti import export_aoti, export_program, load_aoti
from reidfast.export.onnx import OnnxExport, OnnxParityError, Preprocessing, export_onnx, read_preprocessing
from reidfast.export.tensorrt import build_tensorrt_engine
from reidfast.export.tensorrt_support import TENSORRT_VERSION, support_matrix, unsupported_nodes

__all__ = [
    "OnnxExport",
    "OnnxParityError",
    "Preprocessing",
    "TENSORRT_VERSION",
    "build_tensorrt_engine",
    "export_aoti",
    "export_onnx",
    "export_program",
    "load_aoti",
    "read_preprocessing",
    "support_matrix",
    "unsupported_nodes",
]
