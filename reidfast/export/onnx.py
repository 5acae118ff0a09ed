"""ONNX export of a Re-ID model with its preprocessing contract, checked on export.

`export_onnx` traces the model in eval mode with the dynamo exporter (standard ONNX operators
only: reidfast's ops decompose to them under torch.export), writes the preprocessing contract
into the file's metadata (`reidfast.preprocessing`, JSON: input size, mean, std, colour order,
layout, pixel scale, whether the embedding is L2-normalised), runs onnxruntime against PyTorch at
two batch sizes and fails with the largest error if they disagree, and checks every node against
TensorRT's ONNX-parser support matrix (`tensorrt_support`), so an operator TensorRT cannot parse
is reported before anyone builds an engine.

The graph's input is the normalised float image batch `images` [B, 3, H, W] (RGB, (pixel / 255 -
mean) / std): the contract says so, and the graph does not normalise again (a common source of
exported models that disagree with PyTorch: normalising twice). The output is `embeddings` [B, D].
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pathlib
import warnings

import torch
from torch import nn

from reidfast._checks import check_int
from reidfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidfast.export.tensorrt_support import TENSORRT_VERSION, unsupported_nodes

METADATA_KEY = "reidfast.preprocessing"
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"


class OnnxParityError(AssertionError):
    """onnxruntime's embeddings differ from PyTorch's beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What an exported model expects and returns.

    height, width: the input size. mean, std: per-channel statistics of pixels scaled to [0, 1];
    the input is (pixel / pixel_scale - mean) / std. color: channel order ("RGB"). layout:
    "NCHW". l2_normalized: whether the embeddings are L2-normalised (compare them by inner
    product or Euclidean distance alike).
    """

    height: int
    width: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    layout: str = "NCHW"
    pixel_scale: float = 255.0
    l2_normalized: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        values = json.loads(text)
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)


@dataclasses.dataclass
class OnnxExport:
    """What `export_onnx` wrote and measured.

    path: the ONNX file. preprocessing: the contract in its metadata. max_errors: {batch size:
    the largest |onnxruntime - PyTorch| over the embeddings, relative to their largest magnitude
    (at least 1)}. unsupported: [(node name, operator, why)] that TensorRT `tensorrt_version`'s
    parser would reject (empty: none).
    """

    path: pathlib.Path
    preprocessing: Preprocessing
    max_errors: dict
    tensorrt_version: str
    unsupported: list


class _Embedder(nn.Module):
    """The model's test forward, L2-normalised if asked."""

    def __init__(self, model: nn.Module, normalize: bool):
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.model(images)
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"the model's eval-mode output must be a Tensor of embeddings, got {type(embeddings).__name__}")
        return nn.functional.normalize(embeddings, dim=1) if self.normalize else embeddings


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int], *, dynamic_batch: bool = True,
                opset: int | None = None, half: bool = False, normalize: bool = False,
                preprocessing: Preprocessing | None = None, parity_batches: tuple[int, int] = (1, 3),
                tolerance: float | None = None) -> OnnxExport:
    """Exports `model`'s eval-mode forward to ONNX at `path` (module docstring) and checks it.

    Args:
        model: maps images [B, 3, H, W] to embeddings [B, D] in eval mode (every reidfast model).
            It is not changed: a copy is exported (in float16 with `half`).
        path: the .onnx file to write (its folder must exist).
        input_size: (H, W).
        dynamic_batch: a symbolic batch dimension (else the graph takes batch parity_batches[0]).
        opset: the ONNX opset (None: the exporter's default).
        half: export in float16 (TensorRT 11's strongly typed fp16 engines need an fp16 graph).
        normalize: L2-normalise the embeddings in the graph.
        preprocessing: the contract to record (default: ImageNet statistics at `input_size`,
            with `normalize` as its l2_normalized); its size must be `input_size`.
        parity_batches: the batch sizes onnxruntime is compared at (distinct with a dynamic batch).
        tolerance: the largest error allowed, relative to the embeddings' scale (default 1e-4,
            2e-2 with `half`).

    Raises:
        OnnxParityError: onnxruntime and PyTorch disagree (names the batch and the error).
        ValueError / TypeError: bad arguments, before any work; a graph with non-standard ONNX
            operators.
    """
    import onnx

    path, preprocessing = check_export(model, path, input_size, normalize, preprocessing)
    height, width = input_size
    if opset is not None:
        check_int("opset", opset, minimum=18)
    batches = tuple(parity_batches)
    if len(batches) != 2 or (dynamic_batch and batches[0] == batches[1]):
        raise ValueError(f"parity_batches must be two {'distinct ' if dynamic_batch else ''}batch sizes, got {parity_batches}")
    for index, batch in enumerate(batches):
        check_int(f"parity_batches[{index}]", batch, minimum=1)
    if not dynamic_batch:
        batches = (batches[0],)
    tolerance = (2e-2 if half else 1e-4) if tolerance is None else tolerance
    dtype = torch.float16 if half else torch.float32

    module = _Embedder(copy.deepcopy(model).to(device="cpu", dtype=dtype).eval(), normalize).eval()
    # A dynamic batch is traced at 2: torch.export specialises a dimension traced at size 1.
    example = torch.randn(2 if dynamic_batch else batches[0], 3, height, width, dtype=dtype)
    dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
                          verbose=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=dynamic_shapes)
    proto = onnx.load(str(path))
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if dynamic_batch and not batch_dim.dim_param:
        raise ValueError(f"the exported graph fixes the batch at {batch_dim.dim_value}: the model's forward "
                         "depends on the batch size; export it with dynamic_batch=False")
    foreign = sorted({(node.domain, node.op_type) for node in proto.graph.node if node.domain not in ("", "ai.onnx")})
    if foreign:
        raise ValueError(f"the exported graph has operators outside standard ONNX: {foreign}")
    del proto.metadata_props[:]
    for key, value in ((METADATA_KEY, preprocessing.to_json()), ("reidfast.version", _version())):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))

    max_errors = _parity(module, path, batches, (height, width), dtype, tolerance)
    unsupported = unsupported_nodes(proto)
    if unsupported:
        listed = ", ".join(f"{name} ({op}: {why})" for name, op, why in unsupported[:5])
        warnings.warn(f"{path}: TensorRT {TENSORRT_VERSION}'s ONNX parser does not support {len(unsupported)} "
                      f"node(s): {listed}", stacklevel=2)
    return OnnxExport(path, preprocessing, max_errors, TENSORRT_VERSION, unsupported)


def check_model(model: nn.Module, input_size) -> None:
    """`model` is a Module and `input_size` an (H, W) of positive ints."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(input_size, (tuple, list)) and len(input_size) == 2):
        raise ValueError(f"input_size must be (H, W), got {input_size!r}")
    check_int("input_size[0]", input_size[0], minimum=1)
    check_int("input_size[1]", input_size[1], minimum=1)


def check_export(model: nn.Module, path, input_size, normalize: bool,
                 preprocessing: Preprocessing | None) -> tuple[pathlib.Path, Preprocessing]:
    """The arguments every exporter shares, checked: (path as a Path, the contract to record:
    `preprocessing`, or ImageNet statistics at `input_size`, consistent with `normalize`)."""
    check_model(model, input_size)
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path {str(path)!r}: its folder does not exist")
    height, width = input_size
    if preprocessing is None:
        return path, Preprocessing(height, width, l2_normalized=normalize)
    if (preprocessing.height, preprocessing.width) != (height, width) or preprocessing.l2_normalized != normalize:
        raise ValueError(f"preprocessing {preprocessing} disagrees with input_size={tuple(input_size)} or "
                         f"normalize={normalize}")
    return path, preprocessing


def read_preprocessing(path: str | os.PathLike) -> Preprocessing:
    """The preprocessing contract recorded in an ONNX file exported by `export_onnx`."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return Preprocessing.from_json(entry.value)
    raise ValueError(f"{str(path)!r} holds no {METADATA_KEY!r} metadata: it was not exported by reidfast.export")


def _parity(module: nn.Module, path: pathlib.Path, batches, size, dtype, tolerance) -> dict:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    errors = {}
    for batch in batches:
        images = torch.randn(batch, 3, *size, generator=generator).to(dtype)
        (got,) = session.run(None, {INPUT_NAME: images.numpy()})
        with torch.no_grad():
            want = module(images).float()
        got = torch.from_numpy(got).float()
        if got.shape != want.shape:
            raise OnnxParityError(f"batch {batch}: onnxruntime's embeddings have shape {tuple(got.shape)}, PyTorch's "
                                  f"{tuple(want.shape)}")
        scale = max(1.0, float(want.abs().max()))
        errors[batch] = float((got - want).abs().max()) / scale
        if not errors[batch] <= tolerance:
            raise OnnxParityError(f"batch {batch}: onnxruntime differs from PyTorch by {errors[batch]:.3g} (relative to "
                                  f"the embeddings' largest magnitude {scale:.3g}), above the tolerance {tolerance:g}")
    return errors


def _version() -> str:
    import reidfast

    return reidfast.__version__
