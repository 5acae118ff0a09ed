"""OSNet x1.0, PLR-OSNet and the adaptive-margin network: shapes, parameter counts computed from the
architecture, gradients, torchreid checkpoint layout, ONNX export, bad input."""

import pytest
import torch
from onnx_parity import check_onnx_parity

from reidfast.models.adaptive_margin_net import AdaptiveMarginNet
from reidfast.models.osnet import OSNet, osnet_x1_0
from reidfast.models.plr_osnet import PLROSNet, SpatialAttention
from reidfast.nn.outputs import EmbeddingOutput, PLROSNetOutput


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- parameter counts from the architecture (weights + biases + BatchNorm weight and bias) ----


def conv_bn(cin: int, cout: int, kernel: int = 1) -> int:
    return cin * cout * kernel * kernel + 2 * cout


def os_block(cin: int, cout: int) -> int:
    mid = cout // 4
    lite = mid * mid + 9 * mid + 2 * mid  # 1x1, depthwise 3x3, BN
    gate = 2 * mid * (mid // 16) + mid // 16 + mid
    projection = conv_bn(cin, cout) if cin != cout else 0
    return conv_bn(cin, mid) + 10 * lite + gate + conv_bn(mid, cout) + projection


def osnet_parts() -> dict[str, int]:
    return {
        "conv1": conv_bn(3, 64, 7),
        "conv2": os_block(64, 256) + os_block(256, 256) + conv_bn(256, 256),
        "conv3": os_block(256, 384) + os_block(384, 384) + conv_bn(384, 384),
        "conv4": os_block(384, 512) + os_block(512, 512),
        "conv5": conv_bn(512, 512),
    }


def attention(channels: int) -> int:
    spatial = 2 * (channels * (channels // 8) + channels // 8) + channels * channels + channels + 1
    channel = 2 * channels * (channels // 16) + channels // 16 + channels
    return spatial + channel


def plr_osnet_params(num_classes: int, with_attention: bool, global_fc: bool) -> int:
    parts = osnet_parts()
    shared = parts["conv1"] + parts["conv2"] + parts["conv3"]
    branches = 2 * (parts["conv4"] + parts["conv5"])
    bnneck = 2 * 512 + 2 * 2048
    extra = (attention(256) + attention(384) if with_attention else 0) + (512 * 512 + 512 if global_fc else 0)
    return shared + branches + bnneck + extra + num_classes * (512 + 2048)


def adaptive_margin_params(num_blocks: int, map_rows: list[int], map_width: int, batch_norm: bool) -> int:
    conv3x3 = (lambda cin: cin * 32 * 9 + 64) if batch_norm else (lambda cin: cin * 32 * 9 + 32)
    per_part = [
        conv3x3(64) + conv3x3(32) + (num_blocks - 1) * 2 * conv3x3(32)
        + 32 * (rows - 2) * (map_width - 2) * 100 + 100 + 100 * 100 + 100
        for rows in map_rows
    ]
    return 3 * 64 * 49 + 64 + sum(per_part) + 400 * 400 + 400


def test_osnet_parameter_count_matches_architecture_and_docstring():
    expected = sum(osnet_parts().values())
    assert count(OSNet()) == expected == 1_905_828
    import reidfast.models.osnet as module

    assert "1,905,828" in module.__doc__


@pytest.mark.parametrize(
    "options", [dict(), dict(attention=False), dict(global_fc=True), dict(num_classes=751)], ids=str
)
def test_plr_osnet_parameter_count(options):
    options = {"num_classes": 0, **options}
    model = PLROSNet(**options)
    expected = plr_osnet_params(options["num_classes"], options.get("attention", True), options.get("global_fc", False))
    assert count(model) == expected


def test_plr_osnet_attention_off_removes_exactly_the_attention_modules():
    with_attention, without = PLROSNet(5), PLROSNet(5, attention=False)
    attention_params = count(with_attention.attention2) + count(with_attention.attention3)
    assert attention_params == attention(256) + attention(384) == 294_346
    assert count(with_attention) - count(without) == attention_params
    import reidfast.models.plr_osnet as module

    assert "3,274,622" in module.__doc__ and "294,346" in module.__doc__ and "262,656" in module.__doc__
    assert count(PLROSNet(0)) == 3_274_622


@pytest.mark.parametrize(
    "num_blocks, batch_norm, input_size, map_rows, map_width",
    [(1, False, (230, 80), [19] * 4, 26), (4, False, (230, 80), [19] * 4, 26), (2, True, (64, 40), [5, 5, 5, 6], 13)],
)
def test_adaptive_margin_parameter_count(num_blocks, batch_norm, input_size, map_rows, map_width):
    model = AdaptiveMarginNet(0, num_blocks, input_size, batch_norm)
    assert count(model) == adaptive_margin_params(num_blocks, map_rows, map_width, batch_norm)


def test_adaptive_margin_docstring_counts():
    import reidfast.models.adaptive_margin_net as module

    for num_blocks in (1, 4):
        figure = adaptive_margin_params(num_blocks, [19] * 4, 26, False)
        assert f"{figure:,}" in module.__doc__
    with_bn, without = adaptive_margin_params(3, [19] * 4, 26, True), adaptive_margin_params(3, [19] * 4, 26, False)
    assert with_bn - without == 3 * 256 and "256 per block" in module.__doc__


# ---- shapes ----


@pytest.mark.parametrize("height, width", [(256, 128), (384, 128)])
def test_osnet_map_shape(height, width):
    torch.manual_seed(0)
    with torch.no_grad():
        out = osnet_x1_0().eval()(torch.randn(1, 3, height, width))
    assert out.shape == (1, 512, height // 16, width // 16)


@pytest.mark.parametrize("height, width", [(256, 128), (384, 128)])
def test_plr_osnet_train_and_eval_shapes(height, width):
    torch.manual_seed(0)
    model = PLROSNet(7)
    maps = {}
    for name in ("global_branch", "local_branch"):
        getattr(model, name).register_forward_hook(lambda module, args, out, name=name: maps.update({name: out}))
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, PLROSNetOutput)
        assert out.global_features.shape == (2, 512) and out.local_features.shape == (2, 2048)
        assert out.global_logits.shape == out.local_logits.shape == (2, 7)
        assert out.embedding.shape == (2, 2560)
        rows = height // 64
        assert maps["local_branch"].shape == maps["global_branch"].shape == (2, 512, 4 * rows, width // 16)
        stripes = [maps["local_branch"][:, :, i * rows : (i + 1) * rows].mean(dim=(2, 3)) for i in range(4)]
        torch.testing.assert_close(out.local_features, torch.cat(stripes, dim=1))
        torch.testing.assert_close(out.global_features, maps["global_branch"].amax(dim=(2, 3)))
        embedding = model.eval()(x)
    assert embedding.shape == (2, 2560)
    norms = torch.stack([embedding[:, :512].norm(dim=1), embedding[:, 512:].norm(dim=1)])
    torch.testing.assert_close(norms, torch.ones(2, 2))


def test_plr_osnet_smallest_input_without_classes():
    torch.manual_seed(0)
    model = PLROSNet(0)
    assert model.global_classifier is None and model.local_classifier is None
    x = torch.randn(2, 3, 61, 13)  # a 4 x 1 map
    with torch.no_grad():
        out = model(x)
        assert out.global_logits is None and out.local_logits is None
        assert out.embedding.shape == (2, 2560)
        assert model.eval()(x).shape == (2, 2560)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_adaptive_margin_shapes(batch_norm):
    torch.manual_seed(0)
    model = AdaptiveMarginNet(0, num_blocks=1, batch_norm=batch_norm)
    x = torch.randn(2, 3, 230, 80)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, EmbeddingOutput) and out.embedding.shape == (2, 800)
        embedding = model.eval()(x)
    assert embedding.shape == (2, 800)
    if not batch_norm:  # without BatchNorm, train and eval mode compute the same function
        torch.testing.assert_close(embedding, out.embedding)


@pytest.mark.parametrize("height, width", [(256, 128), (384, 128)])
def test_adaptive_margin_refuses_other_sizes(height, width):
    model = AdaptiveMarginNet()
    with pytest.raises(ValueError, match=rf"x must be \[B, 3, 230, 80\].*input_size=\(230, 80\).*{height}, {width}"):
        model(torch.randn(2, 3, height, width))


def test_adaptive_margin_built_for_another_size():
    torch.manual_seed(0)
    model = AdaptiveMarginNet(0, num_blocks=1, input_size=(256, 128)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 256, 128)).shape == (2, 800)


# ---- attention ----


def test_spatial_attention_is_identity_at_init_and_learns_its_scale():
    torch.manual_seed(0)
    module = SpatialAttention(64)
    x = torch.randn(2, 64, 6, 4, requires_grad=True)
    out = module(x)
    torch.testing.assert_close(out, x)
    (out * torch.randn_like(out)).sum().backward()
    assert module.scale.grad.abs().item() > 0
    with torch.no_grad():
        module.scale.fill_(1.0)
        assert (module(x) - x).abs().max() > 1e-3


def test_spatial_attention_matches_explicit_sum_over_positions():
    torch.manual_seed(0)
    module = SpatialAttention(16)
    with torch.no_grad():
        module.scale.fill_(0.7)
        x = torch.randn(2, 16, 3, 5)
        out = module(x)
        q, k, v = (conv(x).flatten(2) for conv in (module.query, module.key, module.value))
        expected = torch.empty_like(x.flatten(2))
        for i in range(15):
            weights = torch.softmax((q[:, :, i : i + 1] * k).sum(dim=1), dim=1)  # [B, N]
            expected[:, :, i] = x.flatten(2)[:, :, i] + 0.7 * (v * weights[:, None, :]).sum(dim=2)
    torch.testing.assert_close(out, expected.view_as(x))


# ---- gradients ----


def touch_every_output(out) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return sum((t * torch.randn(t.shape, generator=generator)).sum() for t in out if t is not None)


def test_plr_osnet_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = PLROSNet(5, global_fc=True)
    with torch.no_grad():
        # A zero scale blocks the gradient of the attention's convolutions; open it for this test.
        model.attention2.spatial.scale.fill_(0.5)
        model.attention3.spatial.scale.fill_(0.5)
    touch_every_output(model(torch.randn(2, 3, 64, 32))).backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"global_bn.bias", "local_bn.bias"}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("batch_norm", [False, True])
def test_adaptive_margin_every_parameter_gets_a_gradient(batch_norm):
    torch.manual_seed(0)
    model = AdaptiveMarginNet(0, num_blocks=2, input_size=(48, 24), batch_norm=batch_norm)
    touch_every_output(model(torch.randn(2, 3, 48, 24))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_adaptive_margin_initialisation():
    torch.manual_seed(0)
    model = AdaptiveMarginNet(0, num_blocks=4)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    weights = torch.cat([layer.weight.flatten() for layer in layers])
    biases = torch.cat([layer.bias for layer in layers if layer.bias is not None])  # convs before BN have none
    assert abs(weights.std().item() - 0.01) < 1e-4 and abs(weights.mean().item()) < 1e-4
    assert biases.abs().max() == 0


# ---- torchreid checkpoint layout ----

# Keys of torchreid's osnet_x1_0 state dict (torchreid/models/osnet.py), with their shapes.
TORCHREID_KEYS = {
    "conv1.conv.weight": (64, 3, 7, 7),
    "conv2.0.conv1.conv.weight": (64, 64, 1, 1),
    "conv2.0.conv2a.conv1.weight": (64, 64, 1, 1),
    "conv2.0.conv2a.conv2.weight": (64, 1, 3, 3),
    "conv2.0.conv2b.1.bn.running_var": (64,),
    "conv2.0.conv2d.3.conv2.weight": (64, 1, 3, 3),
    "conv2.0.gate.fc1.weight": (4, 64, 1, 1),
    "conv2.0.gate.fc2.bias": (64,),
    "conv2.0.conv3.conv.weight": (256, 64, 1, 1),
    "conv2.0.downsample.conv.weight": (256, 64, 1, 1),
    "conv2.2.0.conv.weight": (256, 256, 1, 1),
    "conv3.2.0.bn.num_batches_tracked": (),
    "conv4.0.downsample.bn.running_mean": (512,),
    "conv4.1.gate.fc1.bias": (8,),
    "conv5.conv.weight": (512, 512, 1, 1),
}


def torchreid_checkpoint(model: OSNet) -> dict:
    """A torchreid training checkpoint of osnet_x1_0: DataParallel keys, embedding layer, classifier."""
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    state.update({
        "module.fc.0.weight": torch.randn(512, 512), "module.fc.0.bias": torch.zeros(512),
        "module.fc.1.weight": torch.ones(512), "module.fc.1.bias": torch.zeros(512),
        "module.fc.1.running_mean": torch.zeros(512), "module.fc.1.running_var": torch.ones(512),
        "module.fc.1.num_batches_tracked": torch.tensor(0),
        "module.classifier.weight": torch.randn(751, 512), "module.classifier.bias": torch.zeros(751),
    })
    return {"state_dict": state, "epoch": 150, "rank1": 0.94}


def randomised_osnet() -> OSNet:
    torch.manual_seed(0)
    model = OSNet()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(7)
    return model


def test_osnet_state_dict_has_torchreid_names():
    state = OSNet().state_dict()
    assert len(state) == 558
    for key, shape in TORCHREID_KEYS.items():
        assert tuple(state[key].shape) == shape, key


def test_osnet_loads_torchreid_checkpoint(tmp_path):
    source = randomised_osnet()
    path = tmp_path / "osnet_x1_0_market.pth"
    torch.save(torchreid_checkpoint(source), path)
    loaded = osnet_x1_0(path).state_dict()
    expected = source.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key


def test_osnet_state_dict_round_trip(tmp_path):
    source = randomised_osnet()
    path = tmp_path / "osnet.pth"
    torch.save(source.state_dict(), path)
    loaded = osnet_x1_0(str(path))
    loaded.load_state_dict(source.state_dict(), strict=True)
    for (key, value), (_, expected) in zip(loaded.state_dict().items(), source.state_dict().items()):
        assert torch.equal(value, expected), key


def test_plr_osnet_backbone_weights_reach_both_branches(tmp_path):
    source = randomised_osnet()
    path = tmp_path / "osnet.pth"
    torch.save(source.state_dict(), path)
    model = PLROSNet(3, backbone_weights=path)
    for branch in (model.global_branch, model.local_branch):
        assert torch.equal(branch.conv4[1].conv3.conv.weight, source.conv4[1].conv3.conv.weight)
        assert torch.equal(branch.conv5.bn.running_var, source.conv5.bn.running_var)
    assert branch.conv4[0].conv1.conv.weight is not model.global_branch.conv4[0].conv1.conv.weight
    assert torch.equal(model.conv2[0].gate.fc1.weight, source.conv2[0].gate.fc1.weight)


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda s: s.pop("conv3.1.gate.fc2.bias"), ValueError, r"keys missing from .*'conv3\.1\.gate\.fc2\.bias'"),
        (lambda s: s.update({"conv6.weight": torch.zeros(1)}), ValueError, r"unexpected keys in .*'conv6\.weight'"),
        (lambda s: s.update({"conv5.conv.weight": torch.zeros(256, 512, 1, 1)}), ValueError,
         r"'conv5\.conv\.weight' has shape \(256, 512, 1, 1\).*expects \(512, 512, 1, 1\)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_osnet_weights_mismatch_is_named(tmp_path, edit, error, message):
    state = OSNet().state_dict()
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(error, match=message):
        osnet_x1_0(path)


def test_osnet_weights_file_errors(tmp_path):
    with pytest.raises(TypeError, match=r"weights must be a file path or None, got int 3"):
        osnet_x1_0(3)
    with pytest.raises(FileNotFoundError, match=r"weights: no file at .*nothing\.pth"):
        osnet_x1_0(tmp_path / "nothing.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2], path)
    with pytest.raises(TypeError, match=r"does not hold a state dict"):
        osnet_x1_0(path)


# ---- ONNX export ----


def test_plr_osnet_onnx_export_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = PLROSNet(10)
    with torch.no_grad():
        # Nonzero attention scales and BatchNorm statistics, so that every path shows in the output.
        model.attention2.spatial.scale.fill_(0.5)
        model.attention3.spatial.scale.fill_(0.5)
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    check_onnx_parity(model.eval(), torch.randn(2, 3, 256, 128), tmp_path, "images", ["embedding"])


def test_adaptive_margin_onnx_export_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = AdaptiveMarginNet(0, num_blocks=4, batch_norm=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    check_onnx_parity(model.eval(), torch.randn(2, 3, 230, 80), tmp_path, "images", ["embedding"])


# ---- bad input ----


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(num_classes=-1), ValueError, r"num_classes must be >= 0, got -1"),
        (dict(num_classes=True), TypeError, r"num_classes must be an int, got bool True"),
        (dict(num_classes=5, attention=1), TypeError, r"attention must be a bool, got int 1"),
        (dict(num_classes=5, global_fc="yes"), TypeError, r"global_fc must be a bool, got str 'yes'"),
        (dict(num_classes=5, backbone_weights=5), TypeError,
         r"backbone_weights must be a file path or None, got int 5"),
        (dict(num_classes=5, backbone_weights="no/such/file.pth"), FileNotFoundError,
         r"backbone_weights: no file at 'no/such/file\.pth'"),
    ],
)
def test_plr_osnet_bad_arguments(options, error, message):
    with pytest.raises(error, match=message):
        PLROSNet(**options)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 64, 32), r"x must be 4-D \[B, 3, H, W\], got shape \(3, 64, 32\)"),
        ((2, 1, 64, 32), r"x must have 3 channels \(RGB\), got shape \(2, 1, 64, 32\)"),
        ((2, 3, 12, 64), r"a 12x64 image leaves an empty feature map"),
        ((2, 3, 48, 32), r"4 stripes, but a 48-row image gives a 3-row map \(at least 61 rows"),
    ],
)
def test_plr_osnet_bad_input(shape, message):
    model = PLROSNet(2)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_osnet_bad_input():
    with pytest.raises(TypeError, match=r"x must be a Tensor \[B, 3, H, W\], got ndarray"):
        OSNet()(torch.randn(1, 3, 64, 32).numpy())
    with pytest.raises(ValueError, match=r"OSNet downsamples by 16; a 64x8 image"):
        OSNet()(torch.randn(1, 3, 64, 8))


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(num_classes=751), ValueError,
         r"num_classes must be 0: the adaptive-margin network has no classifier.*751"),
        (dict(num_classes=-1), ValueError, r"num_classes must be >= 0, got -1"),
        (dict(num_blocks=0), ValueError, r"num_blocks must be >= 1, got 0"),
        (dict(num_blocks=2.0), TypeError, r"num_blocks must be an int, got float 2\.0"),
        (dict(input_size=(230,)), TypeError, r"input_size must be a pair of ints \(H, W\), got \(230,\)"),
        (dict(input_size="230x80"), TypeError, r"input_size must be a pair of ints"),
        (dict(input_size=(35, 80)), ValueError, r"input_size must be at least 36x9 .*got \(35, 80\)"),
        (dict(input_size=(230, 8)), ValueError, r"input_size must be at least 36x9 .*got \(230, 8\)"),
        (dict(batch_norm=None), TypeError, r"batch_norm must be a bool, got NoneType None"),
    ],
)
def test_adaptive_margin_bad_arguments(options, error, message):
    with pytest.raises(error, match=message):
        AdaptiveMarginNet(**options)


def test_adaptive_margin_smallest_input_size_runs():
    torch.manual_seed(0)
    with torch.no_grad():
        assert AdaptiveMarginNet(0, 1, (36, 9)).eval()(torch.randn(2, 3, 36, 9)).shape == (2, 800)


def test_adaptive_margin_bad_input():
    model = AdaptiveMarginNet(0, 1)
    with pytest.raises(ValueError, match=r"x must be 4-D \[B, 3, H, W\], got shape \(3, 230, 80\)"):
        model(torch.randn(3, 230, 80))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, 230, 80\].*got shape \(2, 4, 230, 80\)"):
        model(torch.randn(2, 4, 230, 80))
