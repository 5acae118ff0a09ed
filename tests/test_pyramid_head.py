"""PyramidHead and the batched per-branch layers against the per-branch head (PyramidHeadReference)."""

import math

import pytest
import torch
from onnx_parity import check_onnx_parity
from torch import nn

import reidfast
from reidfast.nn import (
    BranchClassifier,
    BranchEmbedding,
    PartOutput,
    PyramidHead,
    PyramidHeadReference,
    reference_to_batched_state_dict,
)

SMALL = dict(in_channels=24, num_classes=10, embed_dim=16, dropout=0.0)


def make_pair(**config):
    """A per-branch head and a batched head holding the same weights."""
    torch.manual_seed(0)
    reference = PyramidHeadReference(**config)
    head = PyramidHead(**config)
    head.load_reference(reference)
    return head, reference


def run(head, x, grads):
    """Forward, then backward of <output, grads> over features, logits and embedding."""
    x = x.detach().clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    out = head(x)
    total = (out.features * grads.features).sum() + (out.embedding * grads.embedding).sum()
    if out.logits is not None:
        total = total + (out.logits * grads.logits).sum()
    total.backward()
    return out, x.grad


def batched_gradients(reference):
    """The per-branch head's parameter gradients in PyramidHead's layout."""
    gradients = {name: param.grad for name, param in reference.named_parameters()}
    return reference_to_batched_state_dict({**reference.state_dict(), **gradients})


def random_output_grads(head, batch, dtype=torch.float32):
    """Random gradients for each output of `head` (made without running it, which would move its
    BatchNorm statistics)."""
    branches, dim = head.num_branches, head.embed_dim
    return PartOutput(
        torch.randn(batch, branches, dim, dtype=dtype),
        torch.randn(batch, branches, head.num_classes, dtype=dtype) if head.num_classes else None,
        torch.randn(batch, branches * dim, dtype=dtype),
    )


def assert_heads_agree(head, reference, x, tolerance):
    """Outputs, input gradient and every parameter gradient of the two heads agree."""
    grads = random_output_grads(head, x.shape[0], x.dtype)
    out, grad_x = run(head, x, grads)
    expected, expected_grad_x = run(reference, x, grads)
    for name in PartOutput._fields:
        if getattr(expected, name) is None:
            assert getattr(out, name) is None
        else:
            torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad_x, expected_grad_x, rtol=tolerance, atol=tolerance)
    expected_grads = batched_gradients(reference)
    for name, param in head.named_parameters():
        torch.testing.assert_close(param.grad, expected_grads[name], rtol=tolerance, atol=tolerance, msg=name)


CONFIGS = [
    pytest.param((4, 24, 24, 8), dict(SMALL), id="384x128-map"),
    pytest.param((4, 24, 16, 8), dict(SMALL), id="256x128-map"),
    pytest.param((3, 24, 14, 3), dict(SMALL), id="H-not-divisible"),
    pytest.param((4, 24, 24, 8), dict(SMALL, levels=(1, 2, 5, 6)), id="levels-1256"),
    pytest.param((4, 24, 12, 4), dict(SMALL, num_parts=4, levels=(3, 1)), id="levels-unordered"),
    pytest.param((4, 24, 24, 8), dict(SMALL, pool="max"), id="pool-max"),
    pytest.param((4, 24, 24, 8), dict(SMALL, pool="avg", num_classes=0), id="pool-avg-no-classes"),
]


@pytest.mark.parametrize("shape, config", CONFIGS)
def test_matches_reference_in_train_then_eval_mode(shape, config):
    head, reference = make_pair(**config)
    head.double()
    reference.double()
    x = torch.randn(shape, dtype=torch.float64)
    assert_heads_agree(head, reference, x, tolerance=1e-10)

    # The step applies each head's own gradients and BatchNorm has updated its running statistics in
    # the train-mode forward: both heads must still hold the same state.
    for module in (head, reference):
        with torch.no_grad():
            for param in module.parameters():
                param -= 0.1 * param.grad
    converted = reference_to_batched_state_dict(reference.state_dict())
    for name, value in head.state_dict().items():
        torch.testing.assert_close(value, converted[name], rtol=1e-10, atol=1e-10, msg=name)
    assert head.embedding.norm.num_batches_tracked.item() == 1
    assert not torch.allclose(head.embedding.norm.running_var, torch.ones_like(head.embedding.norm.running_var))

    head.eval()
    reference.eval()
    assert_heads_agree(head, reference, torch.randn(shape, dtype=torch.float64), tolerance=1e-10)


def test_matches_reference_on_the_reference_pooling_backend():
    head, reference = make_pair(**SMALL)
    head.backend = "reference"
    assert_heads_agree(head, reference, torch.randn(4, 24, 24, 8), tolerance=1e-4)


@pytest.mark.parametrize("layout", ["channels_last", "permuted", "sliced"])
def test_any_input_layout_gives_the_same_result(layout):
    """Backbones run channels_last in mixed-precision training; the head reads any strides."""
    head, _ = make_pair(**SMALL)
    head.eval()
    x = torch.randn(4, 24, 24, 8)
    if layout == "channels_last":
        strided = x.contiguous(memory_format=torch.channels_last)
    elif layout == "permuted":
        strided = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    else:
        strided = torch.randn(4, 48, 24, 8)[:, ::2]
        x = strided.contiguous()
    with torch.no_grad():
        expected, got = head(x), head(strided)
    for want, out in zip(expected, got):
        torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("height", [24, 16], ids=["384x128", "256x128"])
def test_resnet50_map_shapes_and_float32_parity(height):
    head, reference = make_pair(num_classes=751)
    head.eval()
    reference.eval()
    x = torch.randn(2, 2048, height, 8)
    with torch.no_grad():
        out, expected = head(x), reference(x)
    assert isinstance(out, PartOutput)
    assert out.features.shape == (2, 21, 128)
    assert out.logits.shape == (2, 21, 751)
    assert out.embedding.shape == (2, 21 * 128)
    torch.testing.assert_close(out.embedding, out.features.flatten(1))
    torch.testing.assert_close(out.features, expected.features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-4, atol=1e-5)


def test_level_subset_gives_its_branches_in_order():
    head = PyramidHead(num_parts=6, levels=(1, 2, 5, 6), **SMALL)
    assert head.num_branches == 6 + 5 + 2 + 1
    assert head.levels == (1, 2, 5, 6)
    assert head.windows[:6] == [(s, 1) for s in range(6)]
    assert head.windows[6:] == [(s, 2) for s in range(5)] + [(0, 5), (1, 5), (0, 6)]
    out = head.eval()(torch.randn(2, 24, 24, 8))
    assert out.features.shape == (2, 14, 16)
    assert out.logits.shape == (2, 14, 10)
    assert out.embedding.shape == (2, 14 * 16)


def test_no_classes_gives_no_logits_and_no_classifier():
    head = PyramidHead(in_channels=24, num_classes=0, embed_dim=16)
    assert head.classifier is None
    out = head.eval()(torch.randn(2, 24, 24, 8))
    assert out.logits is None
    assert out.features.shape == (2, 21, 16)


def expected_parameter_count(branches, channels, dim, classes):
    """1x1 conv (weight and bias), BatchNorm (weight and bias), Linear (weight and bias) per branch."""
    conv = channels * dim + dim
    norm = 2 * dim
    linear = dim * classes + classes if classes else 0
    return branches * (conv + norm + linear)


@pytest.mark.parametrize(
    "config, branches",
    [
        (dict(num_classes=751), 21),
        (dict(num_classes=0), 21),
        (dict(in_channels=512, num_classes=100, num_parts=4, levels=(1, 4), embed_dim=64), 5),
    ],
)
def test_parameter_count_follows_the_architecture(config, branches):
    head = PyramidHead(**config)
    reference = PyramidHeadReference(**config)
    expected = expected_parameter_count(
        branches, config.get("in_channels", 2048), config.get("embed_dim", 128), config["num_classes"]
    )
    assert sum(p.numel() for p in head.parameters()) == expected
    assert sum(p.numel() for p in reference.parameters()) == expected


def test_parameter_count_of_the_default_configuration_is_the_documented_figure():
    assert sum(p.numel() for p in PyramidHead().parameters()) == 5_513_088
    assert sum(p.numel() for p in PyramidHead(num_classes=751).parameters()) == 5_513_088 + 2_709 * 751 == 7_547_547


def test_initialisation_statistics():
    torch.manual_seed(0)
    head = PyramidHead(num_classes=751)
    weight = head.embedding.weight
    assert abs(weight.mean().item()) < 1e-3
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.02)
    assert torch.all(head.embedding.bias == 0)
    assert torch.all(head.embedding.norm.weight == 1) and torch.all(head.embedding.norm.bias == 0)
    assert head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert torch.all(head.classifier.bias == 0)

    reference = PyramidHeadReference(in_channels=256, num_classes=751)
    conv_weights = torch.stack([branch[0].weight for branch in reference.branch_embeddings])
    assert conv_weights.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.02)
    linear_weights = torch.stack([linear.weight for linear in reference.branch_classifiers])
    assert linear_weights.std().item() == pytest.approx(0.001, rel=0.02)


@pytest.mark.parametrize("bias", [True, False])
def test_branch_embedding_matches_per_branch_conv_batchnorm_relu(bias):
    torch.manual_seed(0)
    layer = BranchEmbedding(3, 12, 5, bias=bias).double()
    per_branch = [
        nn.Sequential(nn.Conv2d(12, 5, 1, bias=bias), nn.BatchNorm2d(5), nn.ReLU()).double() for _ in range(3)
    ]
    with torch.no_grad():
        for k, branch in enumerate(per_branch):
            branch[0].weight.copy_(layer.weight[k].t()[:, :, None, None])
            if bias:
                branch[0].bias.copy_(layer.bias[k])
    x = torch.randn(6, 3, 12, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    expected = torch.stack([branch(x[:, k, :, None, None]).flatten(1) for k, branch in enumerate(per_branch)], 1)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad(out, x, grad, retain_graph=True)
    (expected_grad_x,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(grad_x, expected_grad_x)
    assert (layer.bias is None) == (not bias)
    running = torch.cat([branch[1].running_var for branch in per_branch])
    torch.testing.assert_close(layer.norm.running_var, running)


def test_dropout_acts_per_branch_in_train_mode_only():
    torch.manual_seed(0)
    classifier = BranchClassifier(4, 256, 256, dropout=0.5)
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(256).expand(4, 256, 256))
    x = torch.ones(2, 4, 256)
    out = classifier.train()(x)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    dropped = out == 0
    assert 0.4 < dropped.float().mean().item() < 0.6
    for k in range(1, 4):
        assert not torch.equal(dropped[:, 0], dropped[:, k]), "branches share one dropout mask"
    torch.testing.assert_close(classifier.eval()(x), x)

    head = PyramidHead(**{**SMALL, "dropout": 0.5})
    x = torch.randn(4, 24, 24, 8)
    first, second = head.train()(x), head(x)
    torch.testing.assert_close(first.features, second.features)
    assert not torch.allclose(first.logits, second.logits)
    head.eval()
    first, second = head(x), head(x)
    torch.testing.assert_close(first.logits, second.logits)


def test_load_reference_accepts_per_branch_checkpoints_and_refuses_mismatches():
    head = PyramidHead(**SMALL)
    with pytest.raises(TypeError, match="reference must be a PyramidHeadReference, got PyramidHead"):
        head.load_reference(PyramidHead(**SMALL))
    with pytest.raises(ValueError, match=r"reference is configured differently: pool='max' \(this head: 'max\+avg'\)"):
        head.load_reference(PyramidHeadReference(**{**SMALL, "pool": "max"}))
    with pytest.raises(ValueError, match=r"windows=\[\(0, 6\)\]"):
        head.load_reference(PyramidHeadReference(**{**SMALL, "levels": (6,)}))


def test_reference_state_dict_conversion_errors():
    state = PyramidHeadReference(**SMALL).state_dict()
    with pytest.raises(ValueError, match="state_dict has no 'branch_embeddings.0.0.weight'"):
        reference_to_batched_state_dict({})
    missing = {k: v for k, v in state.items() if k != "branch_embeddings.3.1.running_var"}
    with pytest.raises(ValueError, match=r"state_dict has no 'branch_embeddings.3.1.running_var'"):
        reference_to_batched_state_dict(missing)
    with pytest.raises(ValueError, match=r"keys outside a 21-branch Pyramid head: \['backbone.conv1.weight'\]"):
        reference_to_batched_state_dict({**state, "backbone.conv1.weight": torch.zeros(1)})
    uneven = {**state, "branch_embeddings.2.1.num_batches_tracked": torch.tensor(5)}
    with pytest.raises(ValueError, match="counted different numbers of batches"):
        reference_to_batched_state_dict(uneven)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(in_channels=0), ValueError, "in_channels must be >= 1, got 0"),
        (dict(in_channels=2048.0), TypeError, "in_channels must be an int, got float 2048.0"),
        (dict(num_classes=-1), ValueError, "num_classes must be >= 0, got -1"),
        (dict(num_parts=0), ValueError, "num_parts must be >= 1, got 0"),
        (dict(levels=3), TypeError, "levels must be None or a sequence of pyramid levels"),
        (dict(levels=(1, 7)), ValueError, r"levels must be integers in \[1, num_parts=6\], got 7"),
        (dict(levels=(2, 2)), ValueError, r"levels must not repeat a level, got \(2, 2\)"),
        (dict(levels=()), ValueError, "levels must name at least one pyramid level"),
        (dict(embed_dim=0), ValueError, "embed_dim must be >= 1, got 0"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), ValueError, r"dropout must be in \[0, 1\), got -0.1"),
        (dict(dropout="0.2"), TypeError, "dropout must be a float, got str"),
        (dict(pool="mean"), ValueError, r"pool must be one of \('max', 'avg', 'max\+avg'\), got 'mean'"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    for head_class in (PyramidHead, PyramidHeadReference):
        with pytest.raises(error, match=message):
            head_class(**kwargs)


def test_backend_name_is_checked_at_construction():
    with pytest.raises(ValueError, match=r"backend must be None or one of \('reference', .*\), got 'gpu'"):
        PyramidHead(backend="gpu")


@pytest.mark.parametrize(
    "x, error, message",
    [
        ([[1.0]], TypeError, r"x must be a Tensor \[B, C, H, W\], got list"),
        (torch.zeros(2, 24, 24), ValueError, r"x must be 4-D \[B, C, H, W\], got shape \(2, 24, 24\)"),
        (torch.zeros(2, 32, 24, 8), ValueError, r"x must have C=in_channels=24 channels, got shape \(2, 32, 24, 8\)"),
        (torch.zeros(2, 24, 5, 8), ValueError, r"x must have H >= num_parts=6 rows .*got shape \(2, 24, 5, 8\)"),
    ],
)
def test_forward_errors(x, error, message):
    for head in (PyramidHead(**SMALL), PyramidHeadReference(**SMALL)):
        with pytest.raises(error, match=message):
            head(x)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: BranchEmbedding(0, 4, 4), ValueError, "branches must be >= 1, got 0"),
        (lambda: BranchEmbedding(2, 4, 4, bias=1), TypeError, "bias must be a bool, got int 1"),
        (lambda: BranchClassifier(2, 4, 0), ValueError, "num_classes must be >= 1, got 0"),
        (lambda: BranchClassifier(2, 4, 3, std=0.0), ValueError, "std must be > 0, got 0.0"),
        (lambda: BranchClassifier(2, 4, 3, dropout=1.5), ValueError, r"dropout must be in \[0, 1\), got 1.5"),
    ],
)
def test_branch_layer_constructor_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_branch_layer_forward_errors():
    with pytest.raises(ValueError, match=r"x must be 3-D \[B, branches=3, in_channels=4\], got shape \(2, 12\)"):
        BranchEmbedding(3, 4, 5)(torch.zeros(2, 12))
    with pytest.raises(ValueError, match=r"x must have shape \[B, branches=3, in_features=4\], got \(2, 3, 5\)"):
        BranchClassifier(3, 4, 5)(torch.zeros(2, 3, 5))


def test_front_door_import():
    assert reidfast.PyramidHead is PyramidHead
    assert reidfast.nn.PyramidHead is PyramidHead


def test_compiles_with_fullgraph():
    head, _ = make_pair(**SMALL)
    compiled = torch.compile(head, fullgraph=True)
    x = torch.randn(4, 24, 12, 4)
    grads = random_output_grads(head, 4)
    eager_out, eager_grad = run(head, x, grads)
    eager_param_grads = {name: p.grad.clone() for name, p in head.named_parameters()}
    out, grad_x = run(compiled, x, grads)
    for got, expected in zip(out, eager_out):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_x, eager_grad, rtol=1e-4, atol=1e-4)
    for name, param in head.named_parameters():
        torch.testing.assert_close(param.grad, eager_param_grads[name], rtol=1e-4, atol=1e-4, msg=name)


def test_onnx_export_dynamic_batch_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    head = PyramidHead(in_channels=64, num_classes=10, embed_dim=16).eval()
    with torch.no_grad():
        head.embedding.norm.running_mean.normal_()
        head.embedding.norm.running_var.uniform_(0.5, 2.0)
    check_onnx_parity(head, torch.randn(2, 64, 24, 8), tmp_path, "feature_map", PartOutput._fields, batches=(1, 5))
