"""build_criterion and CenterLoss: each method's total and components against a plain-PyTorch
formula written here, gradients to every tensor the method's losses use (and the learnable
centres), the Pyramid criterion's dynamic weighting and state, and each error."""

import math

import pytest
import torch
import torch.nn.functional as F

from reidfast.losses import CenterLoss, CriterionResult, build_criterion
from reidfast.nn.outputs import EmbeddingOutput, MGNOutput, PartOutput, PLAOutput, PLROSNetOutput

IDENTITIES, IMAGES, CLASSES = 4, 3, 7
BATCH = IDENTITIES * IMAGES
TOLERANCE = dict(rel=1e-5, abs=1e-6)


def balanced_labels(generator):
    """IDENTITIES x IMAGES labels: IDENTITIES distinct classes out of CLASSES, shuffled."""
    classes = torch.randperm(CLASSES, generator=generator)[:IDENTITIES]
    return classes.repeat_interleave(IMAGES)[torch.randperm(BATCH, generator=generator)]


def leaf(generator, *shape):
    return torch.randn(*shape, generator=generator).requires_grad_()


def distances(x):
    """Non-squared Euclidean distances in the package's convention; the anchor's own distance 0."""
    squares = (x.pow(2).sum(1)[:, None] + x.pow(2).sum(1)[None, :] - 2 * x @ x.t()).clamp(min=1e-12)
    return squares.sqrt() * (1 - torch.eye(x.shape[0]))


def plain_triplet(x, labels, margin, soft=False, k=1, p=1):
    """Mean over anchors of hinge/softplus(margin + d_ap^(k) - d_an^(p)) from the distance matrix."""
    dist = distances(x)
    same = labels[:, None] == labels[None, :]
    d_ap, d_an = [], []
    for i in range(x.shape[0]):
        positives = dist[i][same[i]].sort(descending=True).values
        negatives = dist[i][~same[i]].sort().values
        d_ap.append(positives[min(k, len(positives)) - 1])
        d_an.append(negatives[min(p, len(negatives)) - 1])
    z = margin + torch.stack(d_ap) - torch.stack(d_an)
    return (F.softplus(z) if soft else F.relu(z)).mean()


def plain_branch_ce(logits, labels):
    return sum(F.cross_entropy(logits[:, b], labels) for b in range(logits.shape[1]))


def part_output(generator, branches=3, dim=5):
    features = leaf(generator, BATCH, branches, dim)
    logits = leaf(generator, BATCH, branches, CLASSES)
    return PartOutput(features, logits, features.flatten(1))


def mgn_output(generator, dim=6):
    logits = tuple(leaf(generator, BATCH, CLASSES) for _ in range(8))
    global_features = leaf(generator, BATCH, 3, dim)
    return MGNOutput(global_features, logits, torch.randn(BATCH, 8 * dim, generator=generator))


def pla_output(generator, dim=6):
    logits, triplet_features = leaf(generator, BATCH, CLASSES), leaf(generator, BATCH, dim)
    embedding = torch.cat([torch.randn(BATCH, dim, generator=generator), triplet_features], 1)
    return PLAOutput(triplet_features, logits, embedding)


GLOBAL_DIM, LOCAL_DIM = 4, 8
PLR_OPTIONS = {"num_classes": CLASSES, "global_dim": GLOBAL_DIM, "local_dim": LOCAL_DIM}


def plr_output(generator):
    global_features, local_features = leaf(generator, BATCH, GLOBAL_DIM), leaf(generator, BATCH, LOCAL_DIM)
    global_logits, local_logits = leaf(generator, BATCH, CLASSES), leaf(generator, BATCH, CLASSES)
    embedding = torch.randn(BATCH, GLOBAL_DIM + LOCAL_DIM, generator=generator)
    return PLROSNetOutput(global_features, local_features, global_logits, local_logits, embedding)


def assert_components(result, expected):
    assert isinstance(result, CriterionResult)
    assert set(result.components) == set(expected)
    for name, value in expected.items():
        component = result.components[name]
        assert component.dim() == 0 and not component.requires_grad
        expected_value = value.item() if isinstance(value, torch.Tensor) else value
        assert component.item() == pytest.approx(expected_value, **TOLERANCE), name


def assert_gradients(*tensors):
    for tensor in tensors:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def test_pyramid_first_batch_is_id_only(generator):
    output, labels = part_output(generator), balanced_labels(generator)
    criterion = build_criterion("pyramid", weighting="dynamic")
    assert criterion.sampling == "random"
    result = criterion(output, labels)
    id_loss = plain_branch_ce(output.logits, labels)
    triplet = plain_triplet(output.embedding, labels, margin=1.4)
    assert result.loss.item() == pytest.approx(id_loss.item(), **TOLERANCE)
    assert_components(result, {"id": id_loss, "triplet": triplet, "id_weight": 1.0, "triplet_weight": 0.0})
    result.loss.backward()
    assert_gradients(output.logits)
    assert output.features.grad is None  # the triplet loss is evaluated but not optimised
    averages = criterion.weighting.loss_average.tolist()
    assert averages == pytest.approx([id_loss.item(), triplet.item()], rel=1e-5)


def test_pyramid_eq7_weights_from_state(generator):
    output, labels = part_output(generator), balanced_labels(generator)
    criterion = build_criterion("pyramid", weighting="dynamic")
    state = criterion.state_dict()
    assert set(state) == {"weighting.loss_average", "weighting.reduction_likelihood", "weighting.seeded"}
    p_id, p_tp = 0.9, 0.85
    state["weighting.reduction_likelihood"] = torch.tensor([p_id, p_tp], dtype=torch.float64)
    criterion.load_state_dict(state)
    fl_id, fl_tp = (-((1 - p) ** 2) * math.log(p) for p in (p_id, p_tp))
    assert fl_tp / fl_id >= 0.16 and criterion.sampling == "identity"
    result = criterion(output, labels)
    id_loss = plain_branch_ce(output.logits, labels)
    triplet = plain_triplet(output.embedding, labels, margin=1.4)
    assert result.loss.item() == pytest.approx((fl_id * id_loss + fl_tp * triplet).item(), **TOLERANCE)
    expected = {"id": id_loss, "triplet": triplet, "id_weight": fl_id, "triplet_weight": fl_tp}
    assert_components(result, expected)
    result.loss.backward()
    assert_gradients(output.logits, output.features)


def test_pyramid_code_mode_per_branch(generator):
    output, labels = part_output(generator), balanced_labels(generator)
    criterion = build_criterion("pyramid", weighting="code", triplet_on="per_branch", margin=0.7)
    assert criterion.sampling == "identity" and criterion.state_dict() == {}
    result = criterion(output, labels)
    id_loss = plain_branch_ce(output.logits, labels)
    triplet = sum(plain_triplet(output.features[:, b], labels, margin=0.7) for b in range(3))
    assert result.loss.item() == pytest.approx((id_loss + triplet).item(), **TOLERANCE)
    assert_components(result, {"id": id_loss, "triplet": triplet, "id_weight": 1.0, "triplet_weight": 1.0})
    result.loss.backward()
    assert_gradients(output.logits, output.features)


def test_pyramid_dynamic_options_reach_the_weighting():
    weighting = build_criterion("pyramid", weighting="dynamic", alpha=0.5, gamma=1.0, delta=0.3).weighting
    assert (weighting.alpha, weighting.gamma, weighting.delta) == (0.5, 1.0, 0.3)


def test_pcb(generator):
    output, labels = part_output(generator, branches=6), balanced_labels(generator)
    result = build_criterion("pcb")(output, labels)
    id_loss = plain_branch_ce(output.logits, labels)
    assert result.loss.item() == pytest.approx(id_loss.item(), **TOLERANCE)
    assert_components(result, {"id": id_loss})
    result.loss.backward()
    assert_gradients(output.logits)


def test_mgn(generator):
    output, labels = mgn_output(generator), balanced_labels(generator)
    result = build_criterion("mgn")(output, labels)
    id_loss = sum(F.cross_entropy(z, labels) for z in output.logits) / 8
    triplet = sum(plain_triplet(output.global_features[:, g], labels, margin=1.2) for g in range(3)) / 3
    assert result.loss.item() == pytest.approx((id_loss + triplet).item(), **TOLERANCE)
    assert_components(result, {"id": id_loss, "triplet": triplet})
    result.loss.backward()
    assert_gradients(output.global_features, *output.logits)


@pytest.mark.parametrize(
    "options, weight, margin, k, p",
    [({}, 1.0, 0.1, 1, 1), ({"triplet_weight": 1.5, "margin": -0.1, "k": 2, "p": 3}, 1.5, -0.1, 2, 3)],
)
def test_pla(generator, options, weight, margin, k, p):
    output, labels = pla_output(generator), balanced_labels(generator)
    result = build_criterion("pla", **options)(output, labels)
    id_loss = F.cross_entropy(output.logits, labels)
    triplet = plain_triplet(output.triplet_features, labels, margin=margin, soft=True, k=k, p=p)
    assert result.loss.item() == pytest.approx((id_loss + weight * triplet).item(), **TOLERANCE)
    assert_components(result, {"id": id_loss, "triplet": triplet})
    result.loss.backward()
    assert_gradients(output.logits, output.triplet_features)


def test_plr_osnet(generator):
    output, labels = plr_output(generator), balanced_labels(generator)
    criterion = build_criterion("plr_osnet", **PLR_OPTIONS)
    centers = {"global": criterion.global_center.centers, "local": criterion.local_center.centers}
    assert [name for name, _ in criterion.named_parameters()] == ["global_center.centers", "local_center.centers"]
    result = criterion(output, labels)
    expected = {}
    for branch in ("global", "local"):
        features = getattr(output, f"{branch}_features")
        logits = getattr(output, f"{branch}_logits")
        expected[f"id_{branch}"] = F.cross_entropy(logits, labels, label_smoothing=0.1)
        expected[f"triplet_{branch}"] = plain_triplet(features, labels, margin=0.0, soft=True)
        expected[f"center_{branch}"] = (features - centers[branch][labels]).pow(2).sum(1).mean()
    total = sum(
        weight * (expected[f"{term}_global"] + expected[f"{term}_local"])
        for term, weight in (("id", 0.5), ("triplet", 0.5), ("center", 0.0005 * 0.5))
    )
    assert result.loss.item() == pytest.approx(total.item(), **TOLERANCE)
    assert_components(result, expected)
    result.loss.backward()
    assert_gradients(output.global_features, output.local_features, output.global_logits, output.local_logits)
    assert_gradients(*centers.values())


@pytest.mark.parametrize("reduction", ["mean", "sum", "balanced"])
def test_adaptive_margin(generator, reduction):
    embedding, labels = leaf(generator, BATCH, 6), balanced_labels(generator)
    criterion = build_criterion("adaptive_margin", mu=4.0, gamma=1.5, reduction=reduction)
    result = criterion(EmbeddingOutput(embedding), labels)
    rows, cols = torch.triu_indices(BATCH, BATCH, offset=1)
    squared = distances(embedding).pow(2)[rows, cols]
    positive = labels[rows] == labels[cols]
    s, d = squared[positive].mean().detach(), squared[~positive].mean().detach()
    mp, mn = (1 - torch.exp(-4.0 * d)) / 4.0, torch.log1p(torch.exp(1.5 * s)) / 1.5
    terms = torch.where(positive, F.relu(squared - mp), F.relu(mn - squared))
    loss = {
        "mean": terms.mean(),
        "sum": terms.sum(),
        "balanced": terms[positive].mean() + terms[~positive].mean(),
    }[reduction]
    assert result.loss.item() == pytest.approx(loss.item(), **TOLERANCE)
    assert_components(result, {
        "adaptive_margin": loss, "margin_positive": mp, "margin_negative": mn,
        "mean_distance_positive": s, "mean_distance_negative": d,
    })
    result.loss.backward()
    assert_gradients(embedding)


def test_center_loss_formula_and_gradient(generator):
    center = CenterLoss(CLASSES, 5)
    assert center.centers.shape == (CLASSES, 5) and center.centers.requires_grad
    features, labels = leaf(generator, BATCH, 5), balanced_labels(generator)
    loss = center(features, labels)
    expected = sum(((features[i] - center.centers[labels[i]]) ** 2).sum() for i in range(BATCH)) / BATCH
    assert loss.item() == pytest.approx(expected.item(), **TOLERANCE)
    loss.backward()
    # dL/dc_j = -(2 / B) * sum over i with label j of (x_i - c_j); classes absent from the batch get 0.
    expected_grad = torch.zeros(CLASSES, 5)
    expected_grad.index_add_(0, labels, -(2 / BATCH) * (features - center.centers[labels]).detach())
    torch.testing.assert_close(center.centers.grad, expected_grad)
    assert_gradients(features)


def test_center_init_is_standard_normal():
    torch.manual_seed(0)
    centers = CenterLoss(200, 100).centers.detach()
    assert abs(centers.mean().item()) < 0.02 and abs(centers.std().item() - 1) < 0.02


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((0, 4), ValueError, r"num_classes must be >= 1, got 0"),
        ((3, 2.0), TypeError, r"feat_dim must be an int, got float 2.0"),
    ],
)
def test_center_loss_construction_errors(args, error, message):
    with pytest.raises(error, match=message):
        CenterLoss(*args)


def test_center_loss_input_errors():
    center = CenterLoss(3, 4)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got label 3"):
        center(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got label -1"):
        center(torch.randn(2, 4), torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"features must have feat_dim=4 columns, got shape \(2, 5\)"):
        center(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must hold B=2 labels, got 3"):
        center(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match=r"features must be float32, .* or float64, got torch.int64"):
        center(torch.ones(2, 4, dtype=torch.long), torch.tensor([0, 1]))


def test_build_errors():
    names = r"\('pyramid', 'pcb', 'mgn', 'pla', 'plr_osnet', 'adaptive_margin'\)"
    with pytest.raises(ValueError, match=rf"name must be one of {names}, got 'osnet'"):
        build_criterion("osnet")
    with pytest.raises(TypeError, match=r"the 'mgn' criterion takes the options \('margin', 'backend'\), got unknown \['k'\]"):
        build_criterion("mgn", k=2)
    with pytest.raises(TypeError, match=r"the 'pcb' criterion takes the options \(\), got unknown \['backend'\]"):
        build_criterion("pcb", backend="cpu")
    with pytest.raises(TypeError, match=r"the 'plr_osnet' criterion needs the option\(s\) \['num_classes'\]"):
        build_criterion("plr_osnet")


@pytest.mark.parametrize(
    "name, options, error, message",
    [
        ("pyramid", {"triplet_on": "branches"}, ValueError, r"triplet_on must be one of \('concatenated', .* got 'branches'"),
        ("pyramid", {"weighting": "static"}, ValueError,
         r"weighting must be one of \('dynamic', 'code', 'fixed', 'normalized'\), got 'static'"),
        ("pyramid", {"weighting": "code", "delta": 0.2}, ValueError, r"takes no alpha, gamma or delta, got \{'delta': 0.2\}"),
        ("pyramid", {"weighting": "dynamic", "fixed_weights": (1, 2)}, ValueError,
         r"fixed_weights is an option of mode='fixed', got mode='dynamic'"),
        ("pyramid", {"weighting": "fixed", "fixed_weights": (1, -2)}, ValueError, r"fixed_weights\[1\] must be >= 0"),
        ("pyramid", {"margin": "1.4"}, TypeError, r"margin must be a float, got str '1.4'"),
        ("pla", {"triplet_weight": 2.5}, ValueError, r"triplet_weight must be in \[0.0, 2.0\], got 2.5"),
        ("pla", {"k": 0}, ValueError, r"k must be >= 1, got 0"),
        ("plr_osnet", {"num_classes": 0}, ValueError, r"num_classes must be >= 1, got 0"),
        ("plr_osnet", {"num_classes": 3, "local_dim": 0}, ValueError, r"local_dim must be >= 1, got 0"),
        ("plr_osnet", {"num_classes": 3, "label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0.0, 1.0\], got 1.5"),
        ("adaptive_margin", {"reduction": "max"}, ValueError, r"reduction must be one of"),
    ],
)
def test_option_errors(name, options, error, message):
    with pytest.raises(error, match=message):
        build_criterion(name, **options)


def test_wrong_output_type(generator):
    labels = balanced_labels(generator)
    expected = r"the 'pyramid' criterion needs output of type PartOutput \(the train-mode output of build_model\('pyramid'\)\)"
    with pytest.raises(TypeError, match=rf"{expected}, got MGNOutput"):
        build_criterion("pyramid")(mgn_output(generator), labels)
    with pytest.raises(TypeError, match=r"'adaptive_margin' criterion needs output of type EmbeddingOutput .* got Tensor"):
        build_criterion("adaptive_margin")(torch.randn(BATCH, 4), labels)


@pytest.mark.parametrize(
    "name, make_output, field",
    [
        ("pyramid", lambda g: part_output(g)._replace(logits=None), "logits"),
        ("pcb", lambda g: part_output(g)._replace(logits=None), "logits"),
        ("mgn", lambda g: mgn_output(g)._replace(logits=None), "logits"),
        ("pla", lambda g: pla_output(g)._replace(logits=None), "logits"),
        ("plr_osnet", lambda g: plr_output(g)._replace(local_logits=None), "local_logits"),
    ],
)
def test_missing_logits(generator, name, make_output, field):
    criterion = build_criterion(name, **(PLR_OPTIONS if name == "plr_osnet" else {}))
    message = rf"output.{field} is None \(a model built with num_classes=0\); the '{name}' criterion needs logits"
    with pytest.raises(ValueError, match=message):
        criterion(make_output(generator), balanced_labels(generator))


def test_output_and_label_errors(generator):
    labels = balanced_labels(generator)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 7\), got label 7"):
        build_criterion("pcb")(part_output(generator), torch.full((BATCH,), 7))
    with pytest.raises(ValueError, match=rf"labels must hold B={BATCH} labels, got 3"):
        build_criterion("pla")(pla_output(generator), labels[:3])
    with pytest.raises(TypeError, match=r"labels must have an integer dtype, got torch.float32"):
        build_criterion("pcb")(part_output(generator), labels.float())
    mgn = mgn_output(generator)
    with pytest.raises(ValueError, match=r"output.logits must hold 8 tensors, got 7"):
        build_criterion("mgn")(mgn._replace(logits=mgn.logits[:7]), labels)
    narrow = (*mgn.logits[:5], mgn.logits[5][:, :3], *mgn.logits[6:])
    with pytest.raises(ValueError, match=r"output.logits\[5\] must have output.logits\[0\]'s 7 classes, got shape \(12, 3\)"):
        build_criterion("mgn")(mgn._replace(logits=narrow), labels)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 7\), got label -1"):
        build_criterion("mgn")(mgn, labels - labels.min() - 1)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 7\), got label 7"):
        build_criterion("plr_osnet", **PLR_OPTIONS)(plr_output(generator), labels + 7 - labels.max())
    part = part_output(generator)
    with pytest.raises(ValueError, match=r"output.logits must be 3-D \[B, branches, num_classes\], got shape \(12, 7\)"):
        build_criterion("pcb")(part._replace(logits=part.logits[:, 0]), labels)
    with pytest.raises(ValueError, match=rf"output.features must have the labels' batch size B={BATCH}, got shape \(6,"):
        build_criterion("pyramid", triplet_on="per_branch")(part._replace(features=part.features[:6]), labels)
    plr = build_criterion("plr_osnet", **{**PLR_OPTIONS, "global_dim": GLOBAL_DIM + 1})
    with pytest.raises(ValueError, match=rf"output.global_features must have global_dim={GLOBAL_DIM + 1} columns"):
        plr(plr_output(generator), labels)
    plr = build_criterion("plr_osnet", **{**PLR_OPTIONS, "num_classes": CLASSES + 1})
    with pytest.raises(ValueError, match=rf"output.global_logits must have num_classes={CLASSES + 1} columns"):
        plr(plr_output(generator), labels)
    with pytest.raises(ValueError, match=r"labels: an anchor with label 2 has no negative"):
        build_criterion("mgn")(mgn_output(generator), torch.full((BATCH,), 2))
