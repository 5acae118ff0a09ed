"""Shared check of the ONNX tests: export with the dynamo exporter and a dynamic batch dimension,
then compare onnxruntime with PyTorch at several batch sizes."""

import inspect

import pytest
import torch


def check_onnx_parity(model, example, tmp_path, input_name, output_names, batches=(1, 3), tolerance=1e-4):
    """Exports `model` (in its current mode) for inputs shaped like `example` with any batch size,
    checks the graph (standard ONNX operators only, batch dimension dynamic), and compares every
    output of onnxruntime with PyTorch's for each batch size in `batches`, within `tolerance` of
    the output's scale (the largest magnitude, at least 1: randomly initialised backbones in eval
    mode output values in the thousands, where an absolute 1e-4 asks for more digits than float32
    has). Returns the ONNX graph for further checks."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    forward_input = next(iter(inspect.signature(model.forward).parameters))
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, external_data=False,
        input_names=[input_name], output_names=list(output_names),
        dynamic_shapes={forward_input: {0: torch.export.Dim("batch")}},
    )
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {""}, "the model needs operators outside standard ONNX"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the batch dimension is not dynamic"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in batches:
        x = torch.randn(batch, *example.shape[1:])
        outputs = session.run(None, {input_name: x.numpy()})
        with torch.no_grad():
            expected = model(x)
        expected = (expected,) if isinstance(expected, torch.Tensor) else tuple(expected)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            scale = max(1.0, want.abs().max().item())
            torch.testing.assert_close(torch.from_numpy(got) / scale, want / scale, rtol=0, atol=tolerance)
    return graph
