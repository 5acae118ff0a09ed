"""The typed config: shipped configs load, unknown keys and wrong types are errors naming the key
(with the closest valid key), overrides are typed, and a dumped config reads back equal."""

import math

import pytest

from reidfast.training import Config, ConfigError, LRSchedule, dump_config, load_config, shipped_configs
from reidfast.training.config import ScheduleConfig


def test_every_shipped_config_loads_and_round_trips(tmp_path):
    names = shipped_configs()
    methods = {"pyramid", "pcb", "mgn", "pla", "plr_osnet", "adaptive_margin"}
    assert methods <= set(names)
    for name in names:
        config = load_config(name)
        assert config.method in methods
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(config))
        assert load_config(path) == config


def test_paper_recipes_are_the_papers():
    pyramid = load_config("pyramid")
    assert (pyramid.optimizer.lr, pyramid.optimizer.head_lr_factor, pyramid.schedule.epochs) == (0.01, 10.0, 120)
    assert pyramid.schedule.milestones == [60, 70, 80, 90] and pyramid.schedule.gamma == 0.5
    assert (pyramid.data.sampler, pyramid.data.identities_per_batch, pyramid.data.images_per_identity) == (
        "identity", 8, 8)
    assert pyramid.loss.options["weighting"] == "code" and pyramid.data.min_images == 8  # the measured default
    pla = load_config("pla")
    assert (pla.schedule.epochs, pla.progressive.enabled, pla.progressive.explore_epochs, pla.progressive.exploit_epochs,
            pla.progressive.expected_drop) == (3000, True, 20, 300, 0.15)
    assert (pla.optimizer.beta1_switch_epoch, pla.optimizer.beta1_after, pla.schedule.decay_start) == (150, 0.5, 150)
    assert (pla.evaluation.ten_crop, pla.evaluation.pca_dim) == (True, 512)
    mgn = load_config("mgn")
    assert (mgn.schedule.milestones, mgn.schedule.epochs, mgn.evaluation.flip) == ([40, 60], 80, True)
    plr = load_config("plr_osnet")
    assert (plr.optimizer.name, plr.optimizer.lr, plr.schedule.warmup_epochs) == ("adam", 3.5e-4, 20)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.weight_deacy=1", r"optimizer.weight_deacy: unknown key; did you mean 'weight_decay'\?"),
        ("trian.amp=none", r"trian: unknown key; did you mean 'train'\?"),
        ("train.amp=bf16", r"train.amp must be one of .* got 'bf16' \(did you mean 'bfloat16'\?\)"),
        ("schedule.epochs=1.5", r"schedule.epochs must be an int, got float 1.5"),
        ("schedule.epochs=true", r"schedule.epochs must be an int, got bool True"),
        ("optimizer.lr=fast", r"optimizer.lr must be a number, got str 'fast'"),
        ("seed=-1", r"seed must be >= 0, got -1"),
        ("optimizer.betas=[0.9]", r"optimizer.betas must hold 2 values, got \[0.9\]"),
        ("schedule.milestones=[40, x]", r"schedule.milestones\[1\] must be an int, got str 'x'"),
        ("model.options=3", r"model.options must be a mapping of options, got int 3"),
        ("data=3", r"data must be a mapping, got int 3"),
        ("optimizer.lr", r"override 'optimizer.lr' must be 'dotted.key=value'"),
        ("optimizer.lr.x=1", r"optimizer.lr is not a section"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("mgn", [override])


def test_overrides_are_typed_yaml_and_numbers_read_as_yaml_1_2():
    config = load_config("pyramid", [
        "optimizer.lr=3e-4", "optimizer.weight_decay=5E-4", "schedule.milestones=[40, 60]", "train.amp=bfloat16",
        "model.options.levels=[6]", "train.max_steps=null", "data.options={num_identities: 20}", "seed=7",
    ])
    assert config.optimizer.lr == 3e-4 and config.optimizer.weight_decay == 5e-4
    assert config.schedule.milestones == [40, 60] and config.model.options == {"depth": 50, "backbone_weights": None,
                                                                                 "levels": [6]}
    assert config.train.max_steps is None and config.data.options == {"num_identities": 20} and config.seed == 7
    assert load_config({}, ["optimizer.lr=1"]).optimizer.lr == 1.0  # an int where a float goes


def test_sources():
    assert load_config({}) == Config()
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config; shipped: adaptive_margin"):
        load_config("no-such-config")
    with pytest.raises(TypeError, match="overrides must be a sequence"):
        load_config({}, "optimizer.lr=1")


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: [pyramid\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(path)
    path.write_text("- 1\n")
    with pytest.raises(ConfigError, match="bad.yaml must hold a mapping of config sections, got list"):
        load_config(path)


class _Optimizer:
    def __init__(self, *rates):
        self.param_groups = [{"base_lr": rate, "lr": rate} for rate in rates]


def _factors(steps, **schedule):
    lr = LRSchedule(_Optimizer(1.0), ScheduleConfig(**schedule), steps_per_epoch=4)
    return [lr.factor(step) for step in steps]


def test_schedule_factors_worked_by_hand():
    # Multistep: x0.1 from the first step of epoch 2 (step 8), x0.01 from epoch 3 (step 12).
    assert _factors([0, 7, 8, 11, 12], epochs=4, milestones=[2, 3]) == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    # Warm-up over 2 epochs from 0.1: linear in the step (8 steps), then the decay's factor.
    assert _factors([0, 2, 4, 8, 12], epochs=4, milestones=[3], warmup_epochs=2) == pytest.approx(
        [0.1, 0.325, 0.55, 1.0, 0.1])
    # Cosine over the 2 epochs after a 2-epoch warm-up: 1 at step 8, 0.5 at step 12, min at 16.
    assert _factors([8, 12, 16], epochs=4, kind="cosine", warmup_epochs=2, min_factor=0.1) == pytest.approx(
        [1.0, 0.55, 0.1])
    # PLA's Eq. 10: constant to epoch 150, then 0.001 ** ((e - 150) / 150).
    assert _factors([4 * 150, 4 * 225, 4 * 300], epochs=300, kind="exponential", decay_start=150,
                    min_factor=0.001) == pytest.approx([1.0, math.sqrt(0.001), 0.001])
    assert _factors([0, 100], epochs=4, kind="constant") == [1.0, 1.0]


def test_schedule_sets_every_group_and_checks():
    optimizer = _Optimizer(0.01, 0.1)
    LRSchedule(optimizer, ScheduleConfig(epochs=4, milestones=[1]), steps_per_epoch=2).apply(2)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.001, 0.01])
    with pytest.raises(ValueError, match=r"param_groups\[0\] has no 'base_lr'"):
        LRSchedule(type("O", (), {"param_groups": [{"lr": 1}]})(), ScheduleConfig(), 1)
    with pytest.raises(ValueError, match="exponential schedule decays to schedule.min_factor > 0"):
        LRSchedule(_Optimizer(1.0), ScheduleConfig(kind="exponential", min_factor=0.0), 1)
    with pytest.raises(ValueError, match="leaves no epoch for the cosine decay"):
        LRSchedule(_Optimizer(1.0), ScheduleConfig(epochs=2, kind="cosine", warmup_epochs=2), 1)
