"""DynamicLossWeighting (the Pyramid paper's Algorithm 1): the state machine step by step on
scripted losses, its edge cases, resuming from a state_dict, the authors' "code" mode, and errors."""

import io
import math

import pytest
import torch

from reidfast.losses import DynamicLossWeighting
from reidfast.losses.dynamic import focal_weight

ALPHA, GAMMA, DELTA = 0.25, 2.0, 0.16


def focal(p, gamma=GAMMA):
    """Eq. 6, written out independently: -(1 - p)^gamma * log(p)."""
    return math.inf if p == 0 else -((1 - p) ** gamma) * math.log(p)


def ema(loss, previous, alpha=ALPHA):
    """Eq. 4."""
    return alpha * loss + (1 - alpha) * previous


def step(weighting, id_value, triplet_value):
    """One batch with scalar losses that require a gradient; returns (result, id_loss, triplet_loss)."""
    id_loss = torch.tensor(id_value, dtype=torch.float64, requires_grad=True)
    triplet_loss = torch.tensor(triplet_value, dtype=torch.float64, requires_grad=True)
    return weighting(id_loss, triplet_loss), id_loss, triplet_loss


def likelihoods(weighting):
    return weighting.reduction_likelihood.tolist()


def test_scripted_sequence_starts_on_id_only_and_switches():
    weighting = DynamicLossWeighting()
    # Algorithm 1's initial state: p_id = 0 (FL = +inf), p_tp = 1 (FL = 0), ratio 0.
    assert likelihoods(weighting) == [0.0, 1.0]
    assert weighting.sampling == "random" and weighting.task_weights == (1.0, 0.0)

    # Batch 1 only seeds the averages: k(-1) = L(0); p keeps its initial value.
    result, id_loss, triplet_loss = step(weighting, 4.0, 2.0)
    assert (result.id_weight, result.triplet_weight) == (1.0, 0.0)
    assert result.loss is id_loss
    result.loss.backward()
    assert id_loss.grad.item() == 1.0 and triplet_loss.grad is None  # the triplet loss is not optimised
    assert weighting.loss_average.tolist() == [4.0, 2.0]
    assert likelihoods(weighting) == [0.0, 1.0] and weighting.sampling == "random"

    # Batch 2: the ID loss falls, the triplet loss does not -> FL_tp = 0, ratio 0: still Eq. 2.
    result, _, _ = step(weighting, 2.0, 2.0)
    assert result.triplet_weight == 0.0
    k_id, k_tp = ema(2.0, 4.0), 2.0
    assert likelihoods(weighting) == pytest.approx([k_id / 4.0, 1.0], rel=1e-12)
    assert weighting.sampling == "random"

    # Batch 3: both fall; FL_tp / FL_id >= 0.16 -> Eq. 7 with identity-balanced sampling next.
    step(weighting, 2.0, 1.0)
    p_id, p_tp = ema(2.0, k_id) / k_id, ema(1.0, k_tp) / k_tp
    assert likelihoods(weighting) == pytest.approx([p_id, p_tp], rel=1e-12)
    assert focal(p_tp) / focal(p_id) >= DELTA
    assert weighting.sampling == "identity"
    assert weighting.task_weights == pytest.approx((focal(p_id), focal(p_tp)), rel=1e-12)

    # Batch 4 is optimised with Eq. 7: both losses weighted by FL, both receive a gradient.
    result, id_loss, triplet_loss = step(weighting, 1.5, 0.9)
    assert result.loss.item() == pytest.approx(focal(p_id) * 1.5 + focal(p_tp) * 0.9, rel=1e-12)
    result.loss.backward()
    assert id_loss.grad.item() == pytest.approx(focal(p_id), rel=1e-12)
    assert triplet_loss.grad.item() == pytest.approx(focal(p_tp), rel=1e-12)


@pytest.mark.parametrize("triplet_value, expected", [(0.84, "random"), (0.76, "identity")])
def test_threshold_on_either_side(triplet_value, expected):
    weighting = DynamicLossWeighting()
    step(weighting, 1.0, 1.0)
    step(weighting, 0.6, triplet_value)
    p_id, p_tp = ema(0.6, 1.0), ema(triplet_value, 1.0)
    ratio = focal(p_tp) / focal(p_id)
    assert (ratio < DELTA) == (expected == "random")  # the scripted values straddle the threshold
    assert weighting.sampling == expected


def test_ratio_equal_to_delta_selects_eq7():
    history = DynamicLossWeighting()
    step(history, 1.0, 1.0)
    step(history, 0.6, 0.8)
    p_id, p_tp = likelihoods(history)
    ratio = focal_weight(p_tp, GAMMA) / focal_weight(p_id, GAMMA)
    at_threshold = DynamicLossWeighting(delta=ratio)
    at_threshold.load_state_dict(history.state_dict())
    assert at_threshold.sampling == "identity"
    above = DynamicLossWeighting(delta=math.nextafter(ratio, math.inf))
    above.load_state_dict(history.state_dict())
    assert above.sampling == "random"


def test_rising_loss_counts_as_p_one():
    weighting = DynamicLossWeighting()
    step(weighting, 1.0, 1.0)
    step(weighting, 1.2, 0.5)  # the ID loss rises: min() makes p_id = 1, so FL_id = 0
    p_tp = ema(0.5, 1.0)
    assert likelihoods(weighting) == pytest.approx([1.0, p_tp], rel=1e-12)
    # FL_id == 0 makes the ratio +inf: Eq. 7 with the weights as they are (the ID loss weighs 0).
    assert weighting.sampling == "identity"
    assert weighting.task_weights == pytest.approx((0.0, focal(p_tp)), rel=1e-12)
    result, id_loss, _ = step(weighting, 1.0, 0.4)
    result.loss.backward()
    assert id_loss.grad.item() == 0.0
    assert result.loss.item() == pytest.approx(focal(p_tp) * 0.4, rel=1e-12)


def test_no_loss_falling_uses_eq7_with_unit_weights():
    weighting = DynamicLossWeighting()
    step(weighting, 1.0, 1.0)
    step(weighting, 1.0, 3.0)  # neither falls: both FL are 0
    assert likelihoods(weighting) == [1.0, 1.0]
    assert weighting.sampling == "identity" and weighting.task_weights == (1.0, 1.0)
    result, _, _ = step(weighting, 0.5, 0.25)
    assert result.loss.item() == pytest.approx(0.75, rel=1e-12)


def test_zero_average_counts_as_p_one():
    weighting = DynamicLossWeighting()
    step(weighting, 1.0, 0.0)  # a hinge loss of exactly 0 seeds k_tp = 0
    step(weighting, 0.5, 0.3)  # k_tp(tau - 1) == 0: p_tp = 1 instead of 0/0
    assert likelihoods(weighting) == pytest.approx([ema(0.5, 1.0), 1.0], rel=1e-12)
    assert weighting.sampling == "random"


def test_focal_weight_ends():
    assert focal_weight(0.0, GAMMA) == math.inf
    assert focal_weight(1.0, GAMMA) == 0.0 and math.copysign(1.0, focal_weight(1.0, GAMMA)) == 1.0
    assert focal_weight(0.5, GAMMA) == pytest.approx(focal(0.5), rel=1e-12)
    assert focal_weight(0.5, 0.0) == pytest.approx(math.log(2.0), rel=1e-12)


def test_custom_gamma_is_used():
    weighting = DynamicLossWeighting(gamma=1.0, delta=0.2)  # with gamma 2 the ratio would be 0.12: Eq. 2
    step(weighting, 1.0, 1.0)
    step(weighting, 0.6, 0.8)
    p_id, p_tp = ema(0.6, 1.0), ema(0.8, 1.0)
    assert weighting.task_weights == pytest.approx((focal(p_id, 1.0), focal(p_tp, 1.0)), rel=1e-12)


def test_custom_alpha_is_used():
    weighting = DynamicLossWeighting(alpha=0.5)
    step(weighting, 1.0, 1.0)
    step(weighting, 0.5, 1.0)
    assert likelihoods(weighting)[0] == pytest.approx(ema(0.5, 1.0, alpha=0.5), rel=1e-12)


def scripted_losses(count, seed):
    generator = torch.Generator().manual_seed(seed)
    # Noisy, falling losses: both modes occur in such a run.
    base = torch.linspace(3.0, 0.5, count, dtype=torch.float64)
    noise = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 0.3
    return [(float(base[i] + noise[i, 0]), float(base[i] * 0.5 + noise[i, 1])) for i in range(count)]


def test_state_dict_round_trip_resumes_identically():
    losses = scripted_losses(40, seed=0)
    original = DynamicLossWeighting()
    for values in losses[:20]:
        step(original, *values)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = DynamicLossWeighting()
    resumed.load_state_dict(torch.load(buffer))
    samplings = set()
    for values in losses[20:]:
        assert resumed.sampling == original.sampling
        samplings.add(original.sampling)
        first, _, _ = step(original, *values)
        second, _, _ = step(resumed, *values)
        assert first.loss.item() == second.loss.item()
        assert (first.id_weight, first.triplet_weight) == (second.id_weight, second.triplet_weight)
    assert torch.equal(original.loss_average, resumed.loss_average)
    assert torch.equal(original.reduction_likelihood, resumed.reduction_likelihood)
    assert samplings == {"random", "identity"}  # the resumed stretch went through both modes


def test_eval_mode_leaves_state_alone():
    weighting = DynamicLossWeighting()
    step(weighting, 2.0, 1.0)
    step(weighting, 1.5, 0.8)
    before = {key: value.clone() for key, value in weighting.state_dict().items()}
    weighting.eval()
    step(weighting, 0.1, 0.1)
    assert all(torch.equal(before[key], value) for key, value in weighting.state_dict().items())


def test_code_mode_never_switches():
    weighting = DynamicLossWeighting(mode="code")
    assert weighting.state_dict() == {}
    for id_value, triplet_value in scripted_losses(30, seed=1):
        assert weighting.sampling == "identity"
        result, id_loss, triplet_loss = step(weighting, id_value, triplet_value)
        assert (result.id_weight, result.triplet_weight) == (1.0, 1.0)
        assert result.loss.item() == pytest.approx(id_value + triplet_value, rel=1e-12)
    result.loss.backward()
    assert id_loss.grad.item() == 1.0 and triplet_loss.grad.item() == 1.0


def test_invalid_loss_leaves_state_alone():
    weighting = DynamicLossWeighting()
    step(weighting, 2.0, 1.0)
    before = weighting.loss_average.clone()
    with pytest.raises(ValueError, match=r"triplet_loss must be finite and >= 0 .* got nan"):
        step(weighting, 1.0, float("nan"))
    with pytest.raises(ValueError, match=r"id_loss must be finite and >= 0 .* got -1.0"):
        step(weighting, -1.0, 1.0)
    assert torch.equal(weighting.loss_average, before)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"mode": "paper"}, ValueError, r"mode must be one of \('dynamic', 'code', 'fixed', 'normalized'\), got 'paper'"),
        ({"alpha": 1.0}, ValueError, r"alpha must be in \[0, 1\), got 1.0"),
        ({"alpha": -0.1}, ValueError, r"alpha must be in \[0, 1\), got -0.1"),
        ({"alpha": "0.25"}, TypeError, r"alpha must be a float, got str '0.25'"),
        ({"gamma": -1.0}, ValueError, r"gamma must be >= 0, got -1.0"),
        ({"delta": 0.0}, ValueError, r"delta must be > 0, got 0.0"),
        ({"mode": "code", "alpha": 0.3}, ValueError, r"mode='code' .* takes no alpha, gamma or delta, got \{'alpha': 0.3"),
    ],
)
def test_construction_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        DynamicLossWeighting(**kwargs)


def test_loss_shape_errors():
    weighting = DynamicLossWeighting()
    with pytest.raises(ValueError, match=r"id_loss must be 0-D \[\] \(a scalar\), got shape \(2,\)"):
        weighting(torch.ones(2), torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"triplet_loss must be a Tensor \[\] \(a scalar\), got float"):
        weighting(torch.tensor(1.0), 1.0)


def test_state_summary_worked_by_hand():
    weighting = DynamicLossWeighting()
    assert weighting.state_summary() == {
        "sampling": "random", "id_weight": 1.0, "triplet_weight": 0.0, "id_average": 0.0, "triplet_average": 0.0,
        "id_likelihood": 0.0, "triplet_likelihood": 1.0}
    step(weighting, 4.0, 2.0)  # seeds the averages
    step(weighting, 2.0, 1.0)  # k = (3.5, 1.75), p = (3.5 / 4, 1.75 / 2) = (0.875, 0.875)
    summary = weighting.state_summary()
    assert (summary["id_average"], summary["triplet_average"]) == (3.5, 1.75)
    assert (summary["id_likelihood"], summary["triplet_likelihood"]) == (0.875, 0.875)
    # Equal likelihoods: FL_tp / FL_id = 1 >= delta, so Eq. 7 with both weights FL(0.875).
    assert summary["sampling"] == "identity"
    assert summary["id_weight"] == summary["triplet_weight"] == pytest.approx(focal(0.875))
    assert DynamicLossWeighting(mode="code").state_summary() == {
        "sampling": "identity", "id_weight": 1.0, "triplet_weight": 1.0}


def test_fixed_mode_weights_by_constants():
    weighting = DynamicLossWeighting(mode="fixed", fixed_weights=(0.5, 2.0))
    assert weighting.state_dict() == {} and weighting.sampling == "identity"
    result, _, _ = step(weighting, 3.0, 1.0)
    assert (result.id_weight, result.triplet_weight, result.loss.item()) == (0.5, 2.0, 3.5)
    assert DynamicLossWeighting(mode="fixed").task_weights == (1.0, 1.0)
    with pytest.raises(TypeError, match="fixed_weights must be a pair"):
        DynamicLossWeighting(mode="fixed", fixed_weights=(1.0,))


def test_normalized_mode_keeps_the_decisions_and_rescales_eq7_weights():
    dynamic, normalized = DynamicLossWeighting(), DynamicLossWeighting(mode="normalized")
    for id_value, triplet_value in scripted_losses(40, seed=3):
        assert normalized.sampling == dynamic.sampling
        (fl_id, fl_tp), (w_id, w_tp) = dynamic.task_weights, normalized.task_weights
        if fl_tp == 0.0 and fl_id == 1.0:  # Eq. 2: the ID loss alone, unchanged
            assert (w_id, w_tp) == (1.0, 0.0)
        else:  # Eq. 7: the same ratio, summing to 2
            assert w_id + w_tp == pytest.approx(2.0) and w_tp * fl_id == pytest.approx(w_id * fl_tp)
        step(dynamic, id_value, triplet_value)
        step(normalized, id_value, triplet_value)
    assert torch.equal(dynamic.loss_average, normalized.loss_average)
