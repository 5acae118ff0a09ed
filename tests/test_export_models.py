"""reidfast.export: ONNX with the preprocessing contract and the onnxruntime check on export,
TensorRT's support-matrix check, the engine builder's checks before TensorRT, and `reidfast
export` from a training checkpoint."""

import importlib.util
import json

import pytest
import torch

from reidfast.models import MODEL_NAMES, build_model
from reidfast.ops import pyramid_pool

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from reidfast.export import (  # noqa: E402 (after the skips)
    OnnxParityError,
    Preprocessing,
    build_tensorrt_engine,
    export_onnx,
    export_program,
    read_preprocessing,
    support_matrix,
    unsupported_nodes,
)


class TinyReID(torch.nn.Module):
    """A conv stem and Pyramid's 21 windows of GMP + GAP: the kind of graph reidfast exports."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU())

    def forward(self, images):
        return pyramid_pool(self.stem(images), 6, pool="max+avg").flatten(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = TinyReID().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return model, export_onnx(model, path, (48, 16), normalize=True)


def test_export_writes_the_contract_and_matches_onnxruntime(exported):
    model, report = exported
    assert report.preprocessing == Preprocessing(48, 16, l2_normalized=True)
    assert read_preprocessing(report.path) == report.preprocessing
    assert set(report.max_errors) == {1, 3} and max(report.max_errors.values()) < 1e-4
    assert report.unsupported == []
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 3, 48, 16)  # a batch size never exported: the batch is dynamic
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = torch.nn.functional.normalize(model(images), dim=1)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-5)
    assert not model.training  # the user's model is left as it was


def test_export_fixed_batch_half_and_errors(tmp_path):
    model = TinyReID().train()
    report = export_onnx(model, tmp_path / "fixed.onnx", (48, 16), dynamic_batch=False, half=True,
                         parity_batches=(2, 2))
    graph_input = onnx.load(str(report.path)).graph.input[0].type.tensor_type
    assert graph_input.elem_type == onnx.TensorProto.FLOAT16 and graph_input.shape.dim[0].dim_value == 2
    assert model.training and next(model.parameters()).dtype == torch.float32  # not changed
    with pytest.raises(ValueError, match="input_size must be"):
        export_onnx(model, tmp_path / "x.onnx", (48,))
    with pytest.raises(ValueError, match="two distinct batch sizes"):
        export_onnx(model, tmp_path / "x.onnx", (48, 16), parity_batches=(2, 2))
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        export_onnx(model, tmp_path / "missing" / "x.onnx", (48, 16))
    with pytest.raises(ValueError, match="disagrees with input_size"):
        export_onnx(model, tmp_path / "x.onnx", (48, 16), preprocessing=Preprocessing(32, 16))


def test_parity_failure_names_the_batch_and_the_error(tmp_path, monkeypatch):
    real = onnxruntime.InferenceSession.run

    def off_at_batch_3(self, outputs, feeds, *args):  # a runtime that disagrees at one batch size
        results = real(self, outputs, feeds, *args)
        return [result + 0.5 for result in results] if feeds["images"].shape[0] == 3 else results

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", off_at_batch_3)
    with pytest.raises(OnnxParityError, match=r"batch 3: onnxruntime differs from PyTorch by 0\.1\d+ \(relative"):
        export_onnx(TinyReID().eval(), tmp_path / "x.onnx", (48, 16))


def test_a_resnet_model_keeps_its_dynamic_batch(tmp_path):
    """Traced at batch 1, a ResNet's graph came out with the batch fixed at 1 (torch.export
    specialises size-1 dimensions): export_onnx traces at 2, whatever parity_batches holds."""
    model = build_model("pyramid", 10, depth=18).eval()
    report = export_onnx(model, tmp_path / "pyramid.onnx", (96, 32), parity_batches=(1, 3))
    assert onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 3, 96, 32)
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = model(images)
    scale = float(want.abs().max())
    torch.testing.assert_close(torch.from_numpy(got) / scale, want / scale, rtol=0, atol=1e-4)


def test_a_graph_that_fixes_the_batch_is_refused(tmp_path, monkeypatch):
    real = torch.onnx.export

    def static_export(*args, dynamic_shapes=None, **kwargs):  # an exporter that specialises the batch
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", static_export)
    with pytest.raises(ValueError, match="the exported graph fixes the batch at 2: the model's forward depends on"):
        export_onnx(TinyReID().eval(), tmp_path / "x.onnx", (48, 16))


def _graph(nodes, initializers=(), opset=18):
    helper = onnx.helper
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_support_matrix_check():
    helper = onnx.helper
    assert support_matrix()["Conv"][0] and not support_matrix()["Unique"][0]
    axes = helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])
    good = _graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum")], [axes])
    assert unsupported_nodes(good) == []
    computed = _graph([helper.make_node("Shape", ["x"], ["s"], name="shape"),
                       helper.make_node("ReduceSum", ["x", "s"], ["y"], name="sum")])
    bad = _graph([helper.make_node("Unique", ["x"], ["y"], name="unique"),
                  helper.make_node("MyOp", ["x"], ["z"], name="custom", domain="com.example")], opset=25)
    assert [(name, op) for name, op, _ in unsupported_nodes(computed)] == [("sum", "ReduceSum")]
    assert [(name, op) for name, op, _ in unsupported_nodes(bad)] == [
        ("<model>", "opset"), ("unique", "Unique"), ("custom", "com.example::MyOp")]


def test_tensorrt_builder_checks_before_tensorrt(exported, tmp_path):
    _, report = exported
    with pytest.raises(ValueError, match="precision must be one of"):
        build_tensorrt_engine(report.path, tmp_path / "e.engine", precision="int8")
    with pytest.raises(ValueError, match="max_batch must be >= 16"):
        build_tensorrt_engine(report.path, tmp_path / "e.engine", max_batch=8)
    helper = onnx.helper
    plain = _graph([helper.make_node("Unique", ["x"], ["y"], name="unique")])
    plain.metadata_props.add(key="reidfast.preprocessing", value=Preprocessing(48, 16).to_json())
    onnx.save(plain, str(tmp_path / "unique.onnx"))
    with pytest.raises(ValueError, match=r"does not support: unique \(Unique"):
        build_tensorrt_engine(tmp_path / "unique.onnx", tmp_path / "e.engine")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ImportError, match="needs TensorRT 10 or 11"):
            build_tensorrt_engine(report.path, tmp_path / "e.engine")


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    from reidfast.cli import main as cli
    from reidfast.data import make_synthetic_reid
    from reidfast.training import load_config, model_from_checkpoint, train

    root = tmp_path / "data"
    make_synthetic_reid(root, num_identities=8, images_per_identity=6, height=96, width=32, workers=1)
    result = train(load_config("pla-synthetic", [
        f"data.root={root}", "data.options={num_identities: 8, images_per_identity: 6, height: 96, width: 32}",
        "data.transforms={height: 64, width: 32}", "data.identities_per_batch=2", "data.images_per_identity=2",
        "data.num_workers=0", "train.max_steps=1", "train.progress=false", "evaluation.ranked_results=0",
        f"output_dir={tmp_path / 'run'}"]))
    assert cli(["export", str(result.last_checkpoint), "--output", str(tmp_path / "pla.onnx")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["preprocessing"]["height"] == 64 and printed["tensorrt_10.15_unsupported_nodes"] == []
    model, _ = model_from_checkpoint(result.last_checkpoint)
    session = onnxruntime.InferenceSession(str(tmp_path / "pla.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        want = model(images)
    (got,) = session.run(None, {"images": images.numpy()})
    scale = float(want.abs().max())
    torch.testing.assert_close(torch.from_numpy(got) / scale, want / scale, rtol=0, atol=1e-4)
    assert cli(["export", str(result.last_checkpoint), "--output", str(tmp_path / "x.onnx"), "--format",
                "tensorrt"]) == 2
    assert "needs a suffix other than .onnx" in capsys.readouterr().err


EXPORT_SIZE = {"plr_osnet": (128, 64), "adaptive_margin": (230, 80)}  # the ResNet-50 models: (192, 64)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_exports_a_program_with_a_dynamic_batch(name):
    """The graph export_aoti compiles, for every method's model: any batch up to max_batch."""
    torch.manual_seed(0)
    model = build_model(name, 0 if name == "adaptive_margin" else 10).eval()
    size = EXPORT_SIZE.get(name, (192, 64))
    program = export_program(model, size, max_batch=8, normalize=True).module()
    for batch in (1, 5, 8):
        images = torch.randn(batch, 3, *size)
        with torch.no_grad():
            want = torch.nn.functional.normalize(model(images), dim=1)
            torch.testing.assert_close(program(images), want, rtol=1e-4, atol=1e-5)
    assert not model.training  # the user's model, as it was


def test_export_program_checks_its_arguments():
    with pytest.raises(ValueError, match="max_batch must be >= 2, got 1"):
        export_program(TinyReID(), (48, 16), max_batch=1)
    with pytest.raises(ValueError, match=r"input_size must be \(H, W\), got \(48,\)"):
        export_program(TinyReID(), (48,))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        export_program(lambda images: images, (48, 16))


def test_aoti_package_runs_without_reidfast(tmp_path):
    import subprocess
    import sys

    from reidfast.deploy import Embedder
    from reidfast.export import export_aoti, load_aoti

    model = TinyReID().eval()
    path = export_aoti(model, tmp_path / "tiny.pt2", (48, 16), max_batch=8)
    runner, preprocessing = load_aoti(path)
    assert preprocessing == Preprocessing(48, 16)
    images = torch.randn(5, 3, 48, 16)
    with torch.no_grad():
        torch.testing.assert_close(runner(images), model(images), rtol=1e-5, atol=1e-5)
    uint8 = torch.randint(0, 256, (3, 3, 60, 20), dtype=torch.uint8)
    torch.testing.assert_close(Embedder.from_aoti(path, max_batch=8, batch_size=2)(uint8),
                               Embedder.from_model(model, preprocessing)(uint8), rtol=1e-5, atol=1e-5)
    # reidfast is not importable: the package holds ATen kernels only.
    script = ("import sys; sys.modules['reidfast'] = None; import torch; "
              f"run = torch._inductor.aoti_load_package({str(path)!r}); "
              "print(tuple(run(torch.zeros(3, 3, 48, 16)).shape))")
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip().splitlines()[-1] == "(3, 168)"
    with pytest.raises(ValueError, match="must end in .pt2"):
        export_aoti(model, tmp_path / "tiny.zip", (48, 16))
    with pytest.raises(ValueError, match="batch_size=16 lies outside the aoti runtime's batch range"):
        Embedder.from_aoti(path, max_batch=8, batch_size=16)
