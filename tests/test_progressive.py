"""PLA's progressive search: the state machine against a hand-worked sequence, Eq. 9, the held-out
split, the optuna study (defaults first, resumable, deterministic), the beta1 switch, and a tiny
search run that crashes and resumes to the run it would have been."""

import json

import pytest
import torch

from reidfast.losses import PLACriterion
from reidfast.training import load_checkpoint, load_config, train
from reidfast.training.config import ConfigError, ProgressiveConfig, ScheduleConfig
from reidfast.training.progressive import OptunaStudy, ProgressiveSearch, eq9_objective, hold_out_images
from reidfast.training.schedule import LRSchedule
from reidfast.training.trainer import _Run
from test_trainer import tiny_data  # noqa: F401 (the shared fixture: 8 identities x 6 images)

DEFAULTS = {"triplet_weight": 1.0, "margin": 0.1, "k": 1, "p": 1}


class ListStudy:
    """Proposes the given options in turn and records what it is told."""

    def __init__(self, proposals):
        self.proposals, self.told, self.asked = list(proposals), [], 0

    def ask(self):
        self.asked += 1
        return self.asked - 1, self.proposals[self.asked - 1]

    def tell(self, number, value):
        self.told.append((number, value))


def options(weight):
    return {"triplet_weight": weight, "margin": 0.0, "k": 2, "p": 3}


def drive(search, losses):
    """Runs the search to its budget; per epoch (phase, data epoch, phase epoch, options, round
    start, restore). `losses` gives each exploration epoch's validation loss in turn."""
    losses, steps = iter(losses), []
    while not search.finished:
        phase, data_epoch, phase_epoch = search.phase, search.data_epoch, search.phase_epoch
        starts, params = search.starts_round(), search.params()
        restore = search.end_epoch(next(losses) if phase == "explore" else None)
        steps.append((phase, data_epoch, phase_epoch, params["triplet_weight"], starts, restore))
    return steps


def test_search_follows_the_hand_worked_sequence():
    # N = 2 candidates of E = 2 epochs, exploitation X = 3, budget 13 epochs:
    # round 0: trial 0 (epochs 1-2), trial 1 (3-4), exploitation 3 epochs (5-7): 6 left >= N E + 1;
    # round 1: trial 2 (8-9), trial 3 (10-11), exploitation of the 2 left (12-13).
    settings = ProgressiveConfig(enabled=True, candidates=2, explore_epochs=2, exploit_epochs=3, expected_drop=0.15)
    study = ListStudy([options(0.5), options(1.5), options(0.25), options(1.75)])
    search = ProgressiveSearch(settings, 13, DEFAULTS, study)
    # Eq. 9: trial 0 drops 10 -> 8 (20 %, f = 0.05), trial 1 10 -> 9.5 (5 %, f = 0.10),
    # trial 2 4 -> 3.4 (15 %, f = 0), trial 3 4 -> 4 (0 %, f = 0.15).
    steps = drive(search, [10.0, 8.0, 10.0, 9.5, 4.0, 3.4, 4.0, 4.0])
    assert steps == [
        ("explore", 0, 0, 0.5, True, False), ("explore", 1, 1, 0.5, False, True),
        ("explore", 0, 0, 1.5, False, False), ("explore", 1, 1, 1.5, False, True),
        ("exploit", 0, 0, 0.5, False, False), ("exploit", 1, 1, 0.5, False, False), ("exploit", 2, 2, 0.5, False, False),
        ("explore", 3, 0, 0.25, True, False), ("explore", 4, 1, 0.25, False, True),
        ("explore", 3, 0, 1.75, False, False), ("explore", 4, 1, 1.75, False, True),
        ("exploit", 3, 0, 0.25, False, False), ("exploit", 4, 1, 0.25, False, False),
    ]
    assert [number for number, _ in study.told] == [0, 1, 2, 3]
    assert [value for _, value in study.told] == pytest.approx([0.05, 0.10, 0.0, 0.15], abs=1e-12)
    state = search.state
    assert [(row["round"], row["params"]["triplet_weight"], row["epochs"]) for row in state.exploitations] == [
        (0, 0.5, 3), (1, 0.25, 2)]
    assert [row["losses"] for row in state.trials] == [[10.0, 8.0], [10.0, 9.5], [4.0, 3.4], [4.0, 4.0]]
    with pytest.raises(RuntimeError, match="budget of 13 epochs is spent"):
        search.end_epoch(None)


@pytest.mark.parametrize("budget, phases", [
    (12, [("explore", 4), ("exploit", 3), ("explore", 4), ("exploit", 1)]),
    (9, [("explore", 4), ("exploit", 5)]),  # after 3 exploitation epochs, 2 < N E + 1 would be left
    (4, [("exploit", 4)]),  # no room for the explorations: the configured options throughout
])
def test_budget_cuts_rounds_and_ends_on_exploitation(budget, phases):
    settings = ProgressiveConfig(enabled=True, candidates=2, explore_epochs=2, exploit_epochs=3)
    search = ProgressiveSearch(settings, budget, DEFAULTS, ListStudy([options(w / 10) for w in range(10)]))
    steps = drive(search, [1.0] * 20)
    runs = []
    for phase, *_ in steps:
        if runs and runs[-1][0] == phase and not (phase == "explore" and runs[-1][1] == 4):
            runs[-1][1] += 1
        else:
            runs.append([phase, 1])
    assert [tuple(run) for run in runs] == phases
    if budget == 4:
        assert steps[0][3] == DEFAULTS["triplet_weight"]


def test_search_state_round_trips_mid_trial():
    settings = ProgressiveConfig(enabled=True, candidates=2, explore_epochs=2, exploit_epochs=3)
    proposals = [options(w / 10) for w in range(1, 9)]
    losses = [5.0, 4.0, 5.0, 4.5, 3.0, 2.9, 3.0, 2.0]
    whole = drive(ProgressiveSearch(settings, 13, DEFAULTS, ListStudy(proposals)), losses)
    first = ProgressiveSearch(settings, 13, DEFAULTS, ListStudy(proposals))
    done = []
    for _ in range(3):  # into trial 1
        phase = first.phase
        done.append(first.params()["triplet_weight"])
        first.end_epoch(losses[len(done) - 1] if phase == "explore" else None)
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as a checkpoint holds it
    study = ListStudy(proposals)
    study.asked = 2
    second = ProgressiveSearch(settings, 13, DEFAULTS, study)
    second.load_state_dict(state)
    rest = drive(second, losses[3:])
    assert [step[3] for step in whole] == done + [step[3] for step in rest]


def test_eq9_objective():
    assert eq9_objective([10.0, 8.0], 0.15) == pytest.approx((0.05, 10.0, 8.0, 0.2))
    # The means of the halves: (4 + 6) / 2 = 5 and (4 + 4) / 2 = 4: drop 0.2.
    assert eq9_objective([4.0, 6.0, 4.0, 4.0], 0.0) == pytest.approx((0.2, 5.0, 4.0, 0.2))
    with pytest.raises(ValueError, match="even number"):
        eq9_objective([1.0, 2.0, 3.0], 0.15)
    with pytest.raises(ValueError, match="positive first-half mean"):
        eq9_objective([float("nan"), 1.0], 0.15)


def test_hold_out_images():
    class Record:
        def __init__(self, pid, index):
            self.pid, self.index = pid, index

    records = [Record(pid, i) for i, pid in enumerate([0, 0, 0, 1, 1, 1, 1, 2, 2])]
    train_part, held = hold_out_images(records, 1, seed=0)
    assert sorted(r.pid for r in held) == [0, 1]  # identity 2 would keep one image: not held out
    assert sorted(r.index for r in train_part + held) == list(range(9))
    assert [r.index for r in train_part] == sorted(r.index for r in train_part)
    assert [r.index for r in hold_out_images(records, 1, seed=0)[1]] == [r.index for r in held]
    with pytest.raises(ConfigError, match="validation_images=3"):
        hold_out_images(records, 3, seed=0)


def make_study(path, seed=0):
    return OptunaStudy(path, seed, identities_per_batch=4, images_per_identity=3, triplet_weight_range=(0.0, 2.0),
                       margin_range=(-0.1, 0.3), defaults=DEFAULTS, startup_trials=2)


def test_optuna_study_is_resumable_and_deterministic(tmp_path):
    pytest.importorskip("optuna")
    study = make_study(tmp_path / "a.journal")
    number, params = study.ask()
    assert (number, params) == (0, DEFAULTS)  # the configured options come first
    study.tell(0, 0.3)
    study.tell(0, 0.3)  # told again after an interruption: nothing happens
    assert study.ask() == study.ask()  # asked, not told (interrupted): the same trial again
    study.tell(1, 0.1)
    resumed = make_study(tmp_path / "a.journal")  # the journal continues
    number, third = resumed.ask()  # after the 2 startup trials: the Gaussian process's choice
    assert number == 2 and 0 <= third["triplet_weight"] <= 2 and 1 <= third["k"] <= 3 and 1 <= third["p"] <= 4
    other = make_study(tmp_path / "b.journal")
    for value in (0.3, 0.1):
        other.tell(other.ask()[0], value)
    assert other.ask() == (2, third)
    with pytest.raises(ConfigError, match="loss.options.k=7"):
        OptunaStudy(tmp_path / "c.journal", 0, 4, 3, (0.0, 2.0), (-0.1, 0.3), {**DEFAULTS, "k": 7}, 2)


def test_beta1_switch():
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([{"params": [parameter], "base_lr": 1.0}], betas=(0.9, 0.999))
    schedule = LRSchedule(optimizer, ScheduleConfig(epochs=4, kind="constant"), steps_per_epoch=2,
                          beta1_switch=(2, 0.5))
    betas = []
    for step in range(6):
        schedule.apply(step)
        betas.append(optimizer.param_groups[0]["betas"])
    assert betas == [(0.9, 0.999)] * 4 + [(0.5, 0.999)] * 2
    with pytest.raises(ValueError, match="needs an optimizer with betas"):
        LRSchedule(torch.optim.SGD([{"params": [parameter], "base_lr": 1.0}], lr=1.0),
                   ScheduleConfig(), 1, beta1_switch=(2, 0.5))


def test_pla_criterion_set_options_checks():
    criterion = PLACriterion()
    criterion.set_options(0.5, -0.05, 2, 3)
    assert (criterion.triplet_weight, criterion.margin, criterion.k, criterion.p) == (0.5, -0.05, 2, 3)
    with pytest.raises(ValueError, match="triplet_weight"):
        criterion.set_options(2.5, 0.1, 1, 1)


# ------------------------------------------------------------------------------------------------
# The search in the trainer


def search_config(tiny_data, output_dir, *overrides):
    """5 epochs of one batch: trial 0 (2 epochs), trial 1 (2 epochs), one exploitation epoch."""
    return load_config("pla-synthetic", [
        f"data.root={tiny_data}", "data.options={num_identities: 8, images_per_identity: 6, height: 96, width: 32}",
        "data.transforms={height: 96, width: 32}", "data.identities_per_batch=2", "data.images_per_identity=2",
        "data.batches_per_epoch=1", "data.num_workers=0", "train.progress=false", "train.log_every=1",
        "evaluation.batch_size=16", "evaluation.ranked_results=0", f"output_dir={output_dir}",
        "schedule.epochs=5", "schedule.warmup_epochs=0", "progressive.enabled=true", "progressive.candidates=2",
        "progressive.explore_epochs=2", "progressive.exploit_epochs=1", "progressive.validation_images=1",
        "optimizer.beta1_switch_epoch=1", *overrides])


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def whole_search(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("whole")
    return train(search_config(tiny_data, run)), run


@pytest.mark.parametrize("crash_at", [2, 3])  # 2: trial 0 told, not checkpointed; 3: trial 1 asked, not checkpointed
def test_search_crashed_and_resumed_is_the_uninterrupted_search(tiny_data, whole_search, tmp_path, monkeypatch,
                                                                crash_at):
    whole, whole_dir = whole_search
    tables = json.loads((whole_dir / "trials.json").read_text())
    assert [row["trial"] for row in tables["trials"]] == [0, 1]
    assert tables["trials"][0]["params"] == DEFAULTS and len(tables["exploitations"]) == 1
    assert tables["exploitations"][0]["params"] == min(tables["trials"], key=lambda r: r["objective"])["params"]
    records = [json.loads(line) for line in (whole_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in records if r["kind"] == "trial"] == [0, 1]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [5]  # trials are not evaluated

    checkpoint, calls = _Run._checkpoint, []

    def crashing(self, metrics):
        calls.append(self.step)
        if len(calls) == crash_at:
            raise Crash
        checkpoint(self, metrics)

    monkeypatch.setattr(_Run, "_checkpoint", crashing)
    with pytest.raises(Crash):
        train(search_config(tiny_data, tmp_path / "crashed"))
    monkeypatch.setattr(_Run, "_checkpoint", checkpoint)
    resumed = train(search_config(tiny_data, tmp_path / "crashed"), resume=True)
    assert json.loads((tmp_path / "crashed" / "trials.json").read_text()) == tables
    assert resumed.metrics == whole.metrics
    a, b = load_checkpoint(whole.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    import optuna

    def trials(run):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run / "study.journal")))
        return [(t.number, t.state.name, t.params, t.value) for t in optuna.load_study(
            study_name=OptunaStudy.STUDY_NAME, storage=storage).trials]

    assert trials(tmp_path / "crashed") == trials(whole_dir)


@pytest.mark.parametrize("overrides, message", [
    (["method=pcb"], "progressive.enabled searches PLA"),
    (["progressive.explore_epochs=3"], "must be even"),
    (["data.sampler=random"], "data.sampler='identity'"),
    (["progressive.margin_range=[0.2, 0.1]"], "low < high"),
    (["loss.options={k: 3}"], "loss.options.k=3"),
])
def test_search_config_errors(tiny_data, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(search_config(tiny_data, tmp_path / "run", *overrides))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# Test-time options


def test_ten_crop_averages_the_ten_views():
    from reidfast.evaluation import ten_crop_features

    images = torch.randn(2, 3, 16, 8)
    seen = []

    def embed(view):
        seen.append(view)
        return view.flatten(1)

    features = ten_crop_features(embed, images)
    large = torch.nn.functional.interpolate(images, size=(18, 9), mode="bilinear", align_corners=False)
    crops = [large[..., t:t + 16, l:l + 8] for t, l in ((0, 0), (0, 1), (2, 0), (2, 1), (1, 0))]
    expected = torch.stack([v.flatten(1) for c in crops for v in (c, c.flip(-1))]).mean(0)
    assert len(seen) == 10 and all(view.shape == (2, 3, 16, 8) for view in seen)
    torch.testing.assert_close(features, expected)


def test_pca_matches_the_covariance_eigenvectors():
    from reidfast.evaluation import fit_pca

    generator = torch.Generator().manual_seed(0)
    # Variances 9, 4, 1 along the axes, rotated: the components are the rotation's columns.
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    features = (torch.randn(4000, 3, generator=generator, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0])) @ rotation.T
    pca = fit_pca(features.float() + 5, 2)
    for i in range(2):
        assert abs(float(pca.components[:, i] @ rotation[:, i])) > 0.99
    assert pca.explained.tolist() == pytest.approx([9 / 14, 4 / 14], abs=0.02)
    projected = pca.project(features.float() + 5)
    assert projected.shape == (4000, 2)
    assert projected.mean(0).abs().max() < 1e-3
    with pytest.raises(ValueError, match="dim=4 exceeds"):
        fit_pca(features, 4)


def test_pla_evaluates_with_ten_crop_and_pca(tiny_data, tmp_path):
    overrides = ["progressive.enabled=false", "schedule.epochs=1", "evaluation.ten_crop=true", "evaluation.pca_dim=8"]
    result = train(search_config(tiny_data, tmp_path / "run", *overrides))
    assert 0 < result.metrics["mAP"] <= 1
    with pytest.raises(ConfigError, match="evaluation.pca_dim=100 exceeds"):
        train(search_config(tiny_data, tmp_path / "other", "progressive.enabled=false", "evaluation.pca_dim=100"))
    with pytest.raises(ConfigError, match="ten_crop averages"):
        train(search_config(tiny_data, tmp_path / "other", "evaluation.ten_crop=true", "evaluation.flip=true"))
