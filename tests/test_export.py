"""Export of models using reidfast ops: ONNX (dynamo exporter) with onnxruntime parity."""

import pytest
import torch

from reidfast.ops import pyramid_pool

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

STANDARD_OPS = {"Slice", "ReduceMax", "ReduceSum", "ReduceMean", "Max", "Add", "Div", "Mul", "Concat",
                "Unsqueeze", "Squeeze", "Cast", "Constant", "Reshape", "Relu", "Identity", "Transpose"}


class PyramidBranches(torch.nn.Module):
    """A part-based head's pooling: the full pyramid (GMP + GAP) and MGN's stripes (GMP)."""

    def forward(self, x):
        pyramid = pyramid_pool(x, 6, mode="max+avg")
        stripes = pyramid_pool(x, 6, [(0, 6), (0, 3), (3, 3), (0, 2), (2, 2), (4, 2)], mode="max")
        return torch.cat([pyramid, stripes], dim=1).relu()


def test_onnx_export_dynamic_batch_matches_pytorch(tmp_path):
    model = PyramidBranches().eval()
    example = torch.randn(2, 16, 24, 8)
    path = tmp_path / "pyramid.onnx"
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, external_data=False,
        input_names=["features"], output_names=["pooled"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    graph = onnx.load(str(path)).graph
    op_types = {node.op_type for node in graph.node}
    assert op_types <= STANDARD_OPS, f"non-standard ONNX ops: {op_types - STANDARD_OPS}"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch dimension is not dynamic"

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 16, 24, 8)
        (onnx_out,) = session.run(None, {"features": x.numpy()})
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(torch.from_numpy(onnx_out), expected, rtol=1e-5, atol=1e-5)
