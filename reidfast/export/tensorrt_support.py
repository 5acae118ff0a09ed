"""TensorRT's ONNX-parser operator support, shipped as data (tensorrt_onnx_ops.txt: the support
matrix of onnx/onnx-tensorrt's docs/operators.md for TensorRT 10.15, its source named in the
file), and the check of an ONNX graph against it.

The check is by operator (and, for operators whose restrictions name inputs that must be
constants, whether those inputs are initializers or Constant outputs); the parser's other
restrictions (ranks, attribute values) are listed with the operator for the reader but not
evaluated. A graph that passes can still fail to build for other reasons (its types, the
engine's profile); `build_tensorrt_engine` surfaces the parser's own errors.
"""

from __future__ import annotations

import functools
import pathlib

TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)
_DATA = pathlib.Path(__file__).with_name("tensorrt_onnx_ops.txt")
# Operators whose listed restriction is that an input be a build-time constant: (input index, name).
_CONSTANT_INPUTS = {
    **{op: (1, "axes") for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                  "Squeeze", "Unsqueeze")},
    "CumSum": (1, "axis"), "OneHot": (1, "depth"),
}


@functools.lru_cache(maxsize=1)
def support_matrix() -> dict[str, tuple[bool, tuple[str, ...], str]]:
    """{operator: (supported, types, restrictions)} of TensorRT TENSORRT_VERSION's ONNX parser."""
    matrix = {}
    for line in _DATA.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, flag, types, restrictions = line.split("|")
        matrix[name] = (flag == "Y", tuple(t.strip() for t in types.split(",") if t.strip()), restrictions)
    return matrix


def unsupported_nodes(model) -> list[tuple[str, str, str]]:
    """[(node name, operator, why)] of the nodes of `model` (an onnx.ModelProto, or the path of
    an ONNX file) that TensorRT TENSORRT_VERSION's ONNX parser rejects: an operator it does not
    support or does not know, a non-standard domain, an opset outside OPSET_RANGE, or an input
    that must be a constant and is computed. Subgraphs (If, Loop, Scan bodies) are checked too."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    found = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= opset.version <= OPSET_RANGE[1]:
            found.append(("<model>", "opset", f"opset {opset.version} outside TensorRT {TENSORRT_VERSION}'s "
                                              f"{OPSET_RANGE[0]}-{OPSET_RANGE[1]}"))
    _check_graph(model.graph, found)
    return found


def _check_graph(graph, found: list, outer_constants: frozenset = frozenset()) -> None:
    matrix = support_matrix()
    constants = set(outer_constants) | {init.name for init in graph.initializer}
    constants |= {output for node in graph.node if node.op_type == "Constant" for output in node.output}
    for node in graph.node:
        name = node.name or f"<{node.op_type}>"
        if node.domain not in ("", "ai.onnx"):
            found.append((name, f"{node.domain}::{node.op_type}", "not a standard ONNX operator (needs a plugin)"))
            continue
        supported, _, restrictions = matrix.get(node.op_type, (None, (), ""))
        if supported is None:
            found.append((name, node.op_type, "not in TensorRT's support matrix"))
        elif not supported:
            found.append((name, node.op_type, "not supported by TensorRT's ONNX parser"))
        elif node.op_type in _CONSTANT_INPUTS:
            index, input_name = _CONSTANT_INPUTS[node.op_type]
            if len(node.input) > index and node.input[index] and node.input[index] not in constants:
                found.append((name, node.op_type, f"its {input_name} input must be a build-time constant ({restrictions})"))
        for attribute in node.attribute:
            if attribute.g.node:
                _check_graph(attribute.g, found, frozenset(constants))
            for subgraph in attribute.graphs:
                _check_graph(subgraph, found, frozenset(constants))
