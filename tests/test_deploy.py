"""reidfast.deploy.Embedder: the same embeddings from eager PyTorch, torch.compile and ONNX
Runtime for paths, arrays and tensors, equal to the trainer's evaluation features; batch ranges
and bad input refused; the gallery example end to end."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from reidfast.data import make_synthetic_reid
from reidfast.data.loader import read_image
from reidfast.deploy import Embedder
from reidfast.export import Preprocessing, export_onnx
from reidfast.ops import pyramid_pool

PRE = Preprocessing(48, 16)


class TinyReID(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU())

    def forward(self, images):
        return pyramid_pool(self.stem(images), 6, pool="max+avg").flatten(1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    dataset = make_synthetic_reid(root, num_identities=8, images_per_identity=4, height=96, width=32, workers=1)
    return root, [record.path for record in dataset.gallery[:5]]


def test_runtimes_agree_on_paths_arrays_and_tensors(images, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, paths = images
    model = TinyReID()
    eager = Embedder.from_model(model, PRE, batch_size=2)
    expected = eager(paths)
    assert expected.shape == (5, 21 * 8) and expected.dtype == torch.float32
    decoded = [read_image(path) for path in paths]
    torch.testing.assert_close(eager(decoded), expected, rtol=0, atol=0)
    torch.testing.assert_close(eager([image.permute(1, 2, 0).numpy() for image in decoded]), expected, rtol=0, atol=0)
    report = export_onnx(model, tmp_path / "tiny.onnx", (48, 16))
    runtime = Embedder.from_onnx(report.path, batch_size=3, threads=1)
    torch.testing.assert_close(runtime(paths), expected, rtol=1e-5, atol=1e-5)
    compiled = Embedder.from_model(model, PRE, compile=True, batch_size=4)
    torch.testing.assert_close(compiled(paths), expected, rtol=1e-5, atol=1e-5)


def test_batch_range_and_bad_input(images, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, paths = images
    report = export_onnx(TinyReID(), tmp_path / "fixed.onnx", (48, 16), dynamic_batch=False, parity_batches=(2, 2))
    with pytest.raises(ValueError, match=r"batch_size=3 lies outside the onnxruntime runtime's batch range \[2, 2\]"):
        Embedder.from_onnx(report.path, batch_size=3)
    with pytest.raises(ValueError, match="threads must be"):
        Embedder.from_onnx(report.path, batch_size=2, threads=0)
    fixed = Embedder.from_onnx(report.path, batch_size=2)
    assert fixed(paths[:4]).shape[0] == 4
    with pytest.raises(ValueError, match="5 images leave a last batch of 1, below the onnxruntime runtime's smallest"):
        fixed(paths)
    eager = Embedder.from_model(TinyReID(), PRE)
    with pytest.raises(ValueError, match=r"images\[1\]: an array must be uint8 \[H, W, 3\]"):
        eager([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match=r"images\[0\]: a tensor must be uint8 \[3, H, W\]"):
        eager(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="images must be paths"):
        eager(42)
    with pytest.raises(FileNotFoundError):
        eager(["missing.jpg"])


def test_checkpoint_embedder_equals_the_evaluation_features(images, tmp_path):
    from reidfast.training import load_config, train
    from reidfast.training.trainer import _read_dataset, extract_features, init_distributed
    from reidfast.data import transforms_for
    from reidfast.training import model_from_checkpoint

    root, paths = images
    config = load_config("pla-synthetic", [
        f"data.root={root}", "data.options={num_identities: 8, images_per_identity: 4, height: 96, width: 32}",
        "data.transforms={height: 64, width: 32}", "data.identities_per_batch=2", "data.images_per_identity=2",
        "data.num_workers=0", "train.max_steps=1", "train.progress=false", "evaluation.ranked_results=0",
        f"output_dir={tmp_path / 'run'}"])
    result = train(config)
    embedder = Embedder.from_checkpoint(result.last_checkpoint, batch_size=4)
    model, _ = model_from_checkpoint(result.last_checkpoint)
    context = init_distributed("cpu")
    dataset = _read_dataset(config.data, context)
    test = transforms_for("pla", False, "cpu", 0, height=64, width=32)
    features = extract_features(model, dataset.gallery[:5], test, config, context)
    torch.testing.assert_close(embedder(paths), features, rtol=1e-5, atol=1e-5)

    example = subprocess.run([sys.executable, "examples/index_gallery.py", str(result.last_checkpoint),
                              str(root / "bounding_box_test"), paths[0], "--top", "3"],
                             capture_output=True, text=True, timeout=120)
    assert example.returncode == 0, example.stderr[-2000:]
    lines = example.stdout.splitlines()
    assert lines[0] == paths[0] and len(lines) == 4
    assert lines[1].split()[0] == "0.0000" and lines[1].split()[1] == paths[0]  # the query itself is closest
