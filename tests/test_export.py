"""Export of models using reidfast ops: ONNX (dynamo exporter) with onnxruntime parity."""

import torch
from onnx_parity import check_onnx_parity

from reidfast.ops import pyramid_pool

STANDARD_OPS = {"Slice", "ReduceMax", "ReduceSum", "ReduceMean", "Max", "Add", "Div", "Mul", "Concat",
                "Unsqueeze", "Squeeze", "Cast", "Constant", "Reshape", "Relu", "Identity", "Transpose"}


class PyramidBranches(torch.nn.Module):
    """A part-based head's pooling: the full pyramid (GMP + GAP) and MGN's stripes (GMP)."""

    def forward(self, x):
        pyramid = pyramid_pool(x, 6, pool="max+avg")
        stripes = pyramid_pool(x, 6, [(0, 6), (0, 3), (3, 3), (0, 2), (2, 2), (4, 2)], pool="max")
        return torch.cat([pyramid, stripes], dim=1).relu()


def test_onnx_export_dynamic_batch_matches_pytorch(tmp_path):
    graph = check_onnx_parity(PyramidBranches().eval(), torch.randn(2, 16, 24, 8), tmp_path, "features", ["pooled"],
                              batches=(1, 5), tolerance=1e-5)
    op_types = {node.op_type for node in graph.node}
    assert op_types <= STANDARD_OPS, f"non-standard ONNX ops: {op_types - STANDARD_OPS}"
