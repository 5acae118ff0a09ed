"""ResNet backbone and the ResNet-based models: Pyramid, PLA, MGN, PCB, and build_model."""

import pytest
import torch
import torchvision
from onnx_parity import check_onnx_parity

from reidfast.models import AdaptiveMarginNet, MGN, PCB, PLA, PLROSNet, Pyramid, ResNetBackbone, build_model, resnet
from reidfast.nn.outputs import MGNOutput, PartOutput, PLAOutput

NUM_CLASSES = 7
MODEL_CLASSES = {"pyramid": Pyramid, "mgn": MGN, "pla": PLA, "pcb": PCB}

# Blocks per stage and block type of torchvision's ResNets.
STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def conv_bn(in_channels, out_channels, kernel):
    """Parameters of a bias-free k x k convolution followed by BatchNorm."""
    return kernel * kernel * in_channels * out_channels + 2 * out_channels


def stage_block_parameters(depth):
    """Parameters of each block of each of the 4 stages (list of lists), and of the stem."""
    kind, blocks = STAGES[depth]
    stem = conv_bn(3, 64, 7)
    in_channels, stages = 64, []
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        out_channels = width if kind == "basic" else 4 * width
        sizes = []
        for block in range(count):
            if kind == "basic":
                size = conv_bn(in_channels, width, 3) + conv_bn(width, width, 3)
            else:
                size = conv_bn(in_channels, width, 1) + conv_bn(width, width, 3) + conv_bn(width, out_channels, 1)
            # The first block of a stage has a 1x1 shortcut projection when it changes the shape.
            if block == 0 and (stage > 0 or in_channels != out_channels):
                size += conv_bn(in_channels, out_channels, 1)
            sizes.append(size)
            in_channels = out_channels
        stages.append(sizes)
    return stem, stages


def resnet_parameters(depth):
    stem, stages = stage_block_parameters(depth)
    return stem + sum(sum(stage) for stage in stages)


def count(module):
    return sum(p.numel() for p in module.parameters())


def expected_parameters(name, num_classes):
    """Parameters of each model at its defaults (ResNet-50), from the architecture."""
    backbone, channels = resnet_parameters(50), 2048
    if name == "pyramid":  # 21 branches: conv 2048->128 with bias, BatchNorm, Linear(128, N)
        return backbone + 21 * (channels * 128 + 128 + 2 * 128) + 21 * (128 * num_classes + num_classes)
    if name == "pcb":  # 6 stripes: conv 2048->256 with bias, BatchNorm, Linear(256, N)
        return backbone + 6 * (channels * 256 + 256 + 2 * 256) + 6 * (256 * num_classes + num_classes)
    if name == "pla":  # two 1x1 convs 2048->1024 with bias, Linear(1024, N)
        return backbone + 2 * (channels * 1024 + 1024) + 1024 * num_classes + num_classes
    stem, stages = stage_block_parameters(50)  # MGN
    trunk = stem + sum(stages[0]) + sum(stages[1]) + stages[2][0]
    branch = sum(stages[2][1:]) + sum(stages[3])
    reductions = 8 * (channels * 256 + 2 * 256)
    classifiers = 3 * (channels * num_classes + num_classes) + 5 * (256 * num_classes + num_classes)
    return trunk + 3 * branch + reductions + classifiers


@pytest.fixture(scope="module")
def default_models():
    """Each model at its defaults (ResNet-50), built once for the module."""
    torch.manual_seed(0)
    return {name: model_class(NUM_CLASSES) for name, model_class in MODEL_CLASSES.items()}


def train_shapes(name, batch):
    """Expected shapes of the train-mode output fields (logits of MGN: 8 tensors)."""
    n = NUM_CLASSES
    return {
        "pyramid": [(batch, 21, 128), (batch, 21, n), (batch, 2688)],
        "pcb": [(batch, 6, 256), (batch, 6, n), (batch, 1536)],
        "pla": [(batch, 1024), (batch, n), (batch, 2048)],
        "mgn": [(batch, 3, 256), [(batch, n)] * 8, (batch, 2048)],
    }[name]


def shapes_of(output):
    return [[tuple(t.shape) for t in field] if isinstance(field, tuple) else tuple(field.shape) for field in output]


OUTPUT_TYPES = {"pyramid": PartOutput, "pcb": PartOutput, "pla": PLAOutput, "mgn": MGNOutput}


@pytest.mark.parametrize("size", [(384, 128), (256, 128)])
@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_output_shapes_train_and_eval(default_models, name, size):
    model = default_models[name]
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = model.train()(x)
        embedding = model.eval()(x[:1])  # BatchNorm in train mode needs 2 samples, eval mode 1
    assert isinstance(output, OUTPUT_TYPES[name])
    assert shapes_of(output) == train_shapes(name, 2)
    assert embedding.shape == (1, output.embedding.shape[1])


@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_parameter_count_matches_architecture(default_models, name):
    assert count(default_models[name]) == expected_parameters(name, NUM_CLASSES)


def test_parameter_counts_stated_in_docstrings():
    stated = {"pyramid": (29_021_120, 2709), "pcb": (26_658_368, 1542), "pla": (27_704_384, 1025),
              "mgn": (68_807_744, 7432)}
    for name, (base, per_class) in stated.items():
        assert expected_parameters(name, 0) == base
        assert expected_parameters(name, 1) - base == per_class
        assert f"{base:,}" in MODEL_CLASSES[name].__doc__


def leaves(output):
    for field in output:
        yield from field if isinstance(field, tuple) else (field,)


@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_every_parameter_gets_a_gradient(default_models, name):
    model = default_models[name].train()
    model.zero_grad(set_to_none=True)
    output = model(torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(2)))
    # Squares, not sums: the sum of a BatchNorm's outputs over the batch does not depend on its input.
    sum(t.pow(2).mean() for t in leaves(output)).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without, f"parameters without a gradient: {without}"


@pytest.mark.parametrize("name", ["pyramid", "pla", "mgn", "pcb"])
def test_without_classes_logits_are_none(name):
    model = MODEL_CLASSES[name](0, depth=18)
    assert not any("classifier" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        output = model(torch.randn(2, 3, 128, 64))
    assert output.logits is None


def test_options_shape_the_output():
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        pyramid = Pyramid(3, depth=18, levels=(1, 2, 5, 6), embed_dim=16)(x)
        pcb = PCB(3, depth=34, num_parts=4, embed_dim=32)(x)
    assert pyramid.features.shape == (2, 14, 16) and pyramid.embedding.shape == (2, 224)
    assert pcb.features.shape == (2, 4, 32) and pcb.logits.shape == (2, 4, 3)
    assert Pyramid(3, depth=18, num_parts=4).head.num_branches == 10


def test_mgn_pool_option_changes_the_pooling():
    torch.manual_seed(3)
    max_model = MGN(3, depth=18).eval()
    avg_model = MGN(3, depth=18, pool="avg").eval()
    avg_model.load_state_dict(max_model.state_dict())
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        assert not torch.allclose(max_model(x), avg_model(x))
    assert (max_model.pool, avg_model.pool) == ("max", "avg")


def test_mgn_branches_are_independent_copies_at_their_strides():
    model = MGN(3, depth=18)
    shared = torch.randn(2, 256, 8, 4)  # layer3[0]'s output at 128x64 for ResNet-18
    with torch.no_grad():
        assert model.global_branch(shared).shape == (2, 512, 4, 2)
        assert model.part2_branch(shared).shape == (2, 512, 8, 4)
        assert model.part3_branch(shared).shape == (2, 512, 8, 4)
    global_weight = model.global_branch[1][0].conv1.weight
    part_weight = model.part2_branch[1][0].conv1.weight
    assert global_weight is not part_weight and torch.equal(global_weight, part_weight)


def test_mgn_branches_start_from_the_backbone_weights(tmp_path):
    torch.manual_seed(4)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = MGN(3, depth=18, backbone_weights=path)
    for branch in (model.global_branch, model.part2_branch, model.part3_branch):
        torch.testing.assert_close(branch[1].state_dict(), reference.layer4.state_dict(), rtol=0, atol=0)
        torch.testing.assert_close(branch[0].state_dict(), reference.layer3[1:].state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(model.trunk[6].state_dict(), reference.layer3[0].state_dict(), rtol=0, atol=0)


# ResNet backbone


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_resnet_parameter_count(depth):
    assert count(resnet(depth)) == resnet_parameters(depth)


def test_resnet50_map_at_384x128_with_last_stride_1():
    backbone = resnet(50)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 384, 128)).shape == (1, 2048, 24, 8)
    assert backbone.out_channels == 2048


def test_last_stride():
    x = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        assert resnet(18, last_stride=1)(x).shape == (1, 512, 8, 4)
        assert resnet(18, last_stride=2)(x).shape == (1, 512, 4, 2)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A ResNet-50 state dict as torchvision saves it (fc.* included), and the model it came from."""
    torch.manual_seed(5)
    reference = torchvision.models.resnet50().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_resnet_loads_a_torchvision_state_dict(resnet50_file):
    path, reference = resnet50_file
    backbone = resnet(50, last_stride=2, weights=str(path)).eval()
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    torch.testing.assert_close(backbone.state_dict(), expected, rtol=0, atol=0)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        features = torch.nn.Sequential(*list(reference.children())[:-2])(x)
        torch.testing.assert_close(backbone(x), features)


def test_resnet_loads_a_file_saved_before_num_batches_tracked(tmp_path):
    # torchvision's original ImageNet files have no num_batches_tracked keys and no version record.
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    backbone = resnet(18, weights=path)
    torch.testing.assert_close(backbone.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(6)
    return torchvision.models.resnet18().state_dict()


def save(tmp_path, state):
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return path


def test_resnet_weights_with_an_unexpected_key(tmp_path, resnet18_state):
    path = save(tmp_path, {**resnet18_state, "layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys in .*\['layer5.0.conv1.weight'\]"):
        resnet(18, weights=path)


def test_resnet_weights_with_a_missing_key(tmp_path, resnet18_state):
    state = {k: v for k, v in resnet18_state.items() if k != "layer2.1.bn2.weight"}
    with pytest.raises(ValueError, match=r"keys missing from .*\['layer2.1.bn2.weight'\]"):
        resnet(18, weights=save(tmp_path, state))


def test_resnet_weights_of_another_depth(tmp_path, resnet18_state):
    message = r"'layer1.0.conv1.weight' has shape \(64, 64, 3, 3\) .* expects \(64, 64, 1, 1\)"
    with pytest.raises(ValueError, match=message):
        resnet(50, weights=save(tmp_path, resnet18_state))


def test_resnet_weights_not_a_state_dict(tmp_path):
    with pytest.raises(TypeError, match="does not hold a state dict"):
        resnet(18, weights=save(tmp_path, [torch.zeros(1)]))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"depth": 51}, ValueError, r"depth must be one of \(18, 34, 50, 101, 152\), got 51"),
        ({"depth": "50"}, ValueError, r"depth must be one of .*, got '50'"),
        ({"last_stride": 3}, ValueError, "last_stride must be 1 or 2, got 3"),
        ({"last_stride": 0}, ValueError, "last_stride must be >= 1, got 0"),
        ({"last_stride": 1.0}, TypeError, "last_stride must be an int, got float 1.0"),
        ({"weights": 3}, TypeError, "weights must be a file path or None, got int 3"),
        ({"weights": "no/such/file.pth"}, FileNotFoundError, "weights: no file at 'no/such/file.pth'"),
    ],
)
def test_resnet_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        resnet(**kwargs)


def test_backbone_module_names_follow_torchvision():
    names = [name for name, _ in ResNetBackbone(18).named_children()]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


# Model arguments and build_model


@pytest.mark.parametrize(
    ("model_class", "kwargs", "error", "message"),
    [
        (Pyramid, {"num_classes": -1}, ValueError, "num_classes must be >= 0, got -1"),
        (PLA, {"num_classes": 2.0}, TypeError, "num_classes must be an int, got float 2.0"),
        (MGN, {"num_classes": -1}, ValueError, "num_classes must be >= 0, got -1"),
        (PCB, {"num_classes": 3, "depth": 20}, ValueError, "depth must be one of"),
        (Pyramid, {"num_classes": 3, "levels": (7,)}, ValueError, r"levels must be integers in \[1, num_parts=6\]"),
        (Pyramid, {"num_classes": 3, "embed_dim": 0}, ValueError, "embed_dim must be >= 1, got 0"),
        (PCB, {"num_classes": 3, "num_parts": 0}, ValueError, "num_parts must be >= 1, got 0"),
        (MGN, {"num_classes": 3, "pool": "max+avg"}, ValueError, r"pool must be one of \('max', 'avg'\), got 'max\+"),
        (PLA, {"num_classes": 3, "last_stride": 4}, ValueError, "last_stride must be 1 or 2, got 4"),
        (MGN, {"num_classes": 3, "backbone_weights": "missing.pth"}, FileNotFoundError, "no file at 'missing.pth'"),
    ],
)
def test_model_bad_arguments(model_class, kwargs, error, message):
    with pytest.raises(error, match=message):
        model_class(**kwargs)


def test_build_model_passes_options():
    pyramid = build_model("pyramid", 3, depth=18, levels=(1,), embed_dim=8)
    assert isinstance(pyramid, Pyramid) and pyramid.head.num_branches == 6 and pyramid.num_classes == 3
    mgn = build_model("mgn", 3, depth=18, pool="avg")
    assert isinstance(mgn, MGN) and mgn.pool == "avg"
    assert isinstance(build_model("pla", 0, depth=18), PLA)
    assert isinstance(build_model("pcb", 0, depth=18), PCB)


@pytest.mark.parametrize(("name", "model_class"), [("plr_osnet", PLROSNet), ("adaptive_margin", AdaptiveMarginNet)])
def test_build_model_other_architectures(name, model_class):
    assert isinstance(build_model(name, 0), model_class)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match=r"name must be one of \('pyramid', 'mgn', 'pla', 'plr_osnet', "
                                         r"'adaptive_margin', 'pcb'\), got 'resnet'"):
        build_model("resnet", 3)


def test_build_model_unknown_option():
    with pytest.raises(TypeError, match=r"build_model\('pla'\): unknown option 'levels'; PLA takes"):
        build_model("pla", 3, levels=(1,))


# ONNX export


@pytest.mark.parametrize("name", ["pyramid", "mgn", "pla", "pcb"])
def test_eval_export_to_onnx_matches_onnxruntime(tmp_path, name):
    """Each model as built by default (ResNet-50; for Pyramid, the PyramidHead on a ResNet-50)."""
    torch.manual_seed(7)
    model = build_model(name, NUM_CLASSES).eval()
    check_onnx_parity(model, torch.randn(2, 3, 256, 128), tmp_path, "images", ["embedding"])
