"""plot_training_curves: the PNG's size and panels from the documented layout, known points in
their series' colours where the axes put them, smoothing of long series, gaps for non-finite
values, the jsonl input, round ticks, and each error."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from reidfast.training.plots import (
    AXIS_BOTTOM, AXIS_LEFT, COLUMNS, FADE, HEADER, LEGEND_WIDTH, MARGIN, PAD, PALETTE, PANEL_HEIGHT,
    PANEL_WIDTH, TITLE, _Axis, plot_training_curves,
)


def run_records(evaluate=True):
    """Steps 0..10: loss 10 - s = id + triplet (0.3 and 0.7 of it); x and loss axes are [0, 10]."""
    records = [
        {"kind": "train", "step": s, "epoch": s / 10, "loss": 10.0 - s, "id": 0.3 * (10 - s),
         "triplet": 0.7 * (10 - s), "id_weight": 1.0, "lr": 0.1, "images_per_s": 50.0 + s}
        for s in range(11)
    ]
    if evaluate:
        records += [{"kind": "eval", "step": 5, "epoch": 0.5, "mAP": 0.5, "rank1": 0.7, "rank5": 0.9, "mINP": 0.2}]
    return records


def read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def plot_area(panel, top=0):
    """(left, top, right, bottom) of panel `panel`'s plot area, inclusive, for short y labels."""
    left = MARGIN + (panel % COLUMNS) * (PANEL_WIDTH + MARGIN)
    upper = top + MARGIN + (panel // COLUMNS) * (PANEL_HEIGHT + MARGIN)
    right, bottom = left + PANEL_WIDTH - LEGEND_WIDTH - 1, upper + PANEL_HEIGHT - AXIS_BOTTOM - 1
    return left + AXIS_LEFT, upper + HEADER, right, bottom


def pixel(sheet, panel, x, y, x_range, y_range, top=0):
    """The colour where the point (x, y) on axes x_range, y_range is drawn in panel `panel`."""
    left, upper, right, bottom = plot_area(panel, top)
    column = round(left + PAD + (x - x_range[0]) / (x_range[1] - x_range[0]) * (right - left - 2 * PAD))
    row = round(bottom - PAD - (y - y_range[0]) / (y_range[1] - y_range[0]) * (bottom - upper - 2 * PAD))
    return tuple(sheet[row, column])


def has_colour(sheet, panel, colour, top=0):
    left, upper, right, bottom = plot_area(panel, top)
    return bool((sheet[upper:bottom + 1, left:right + 1] == colour).all(axis=-1).any())


def test_panels_and_known_points(tmp_path):
    path = plot_training_curves(run_records(), tmp_path / "curves.png", title="a run")
    assert path == tmp_path / "curves.png"
    sheet = read(path)
    # Five panels (loss, loss weights, lr, images/s, evaluation): 2 columns, 3 rows, a title.
    assert sheet.shape == (TITLE + MARGIN + 3 * (PANEL_HEIGHT + MARGIN), MARGIN + 2 * (PANEL_WIDTH + MARGIN), 3)
    # Step 4: loss 6 (first colour), id 1.8 (second), triplet 4.2 (third), on x and y in [0, 10].
    for colour, value in zip(PALETTE, (6.0, 1.8, 4.2)):
        assert pixel(sheet, 0, 4, value, (0, 10), (0, 10), top=TITLE) == colour
    # One series each in the weights, lr and throughput panels: only the first colour there.
    for panel in (1, 2, 3):
        assert [has_colour(sheet, panel, c, TITLE) for c in PALETTE[:4]] == [True, False, False, False]
    # Evaluation (y in [0, 1]): mAP 0.5, rank1 0.7, rank5 0.9, mINP 0.2 at step 5.
    for colour, value in zip(PALETTE, (0.5, 0.7, 0.9, 0.2)):
        assert pixel(sheet, 4, 5, value, (0, 10), (0, 1), top=TITLE) == colour

    sheet = read(plot_training_curves(run_records(evaluate=False), tmp_path / "no_eval.png"))
    assert sheet.shape == (MARGIN + 2 * (PANEL_HEIGHT + MARGIN), MARGIN + 2 * (PANEL_WIDTH + MARGIN), 3)
    assert pixel(sheet, 0, 4, 6.0, (0, 10), (0, 10)) == PALETTE[0]


def test_long_series_smoothed_over_faint_raw_line(tmp_path):
    # 1200 steps of loss alternating 0, 2: the raw line spans the axis [0, 2]; the moving average
    # over 2 (1200 // 100) + 1 = 25 points stays within 1 +- 2 / 25.
    records = [{"kind": "train", "step": s, "epoch": 0.0, "loss": 2.0 * (s % 2)} for s in range(1200)]
    sheet = read(plot_training_curves(records, tmp_path / "long.png"))
    assert sheet.shape[:2] == (MARGIN + PANEL_HEIGHT + MARGIN, MARGIN + PANEL_WIDTH + MARGIN)
    faint = tuple(round(c + (255 - c) * FADE) for c in PALETTE[0])
    for step in (300, 600, 900):  # x axis [0, 1200]
        assert pixel(sheet, 0, step, 1.0, (0, 1200), (0, 2)) == PALETTE[0]
        assert pixel(sheet, 0, step, 2.0, (0, 1200), (0, 2)) == faint
        assert pixel(sheet, 0, step, 0.0, (0, 1200), (0, 2)) == faint
        assert pixel(sheet, 0, step, 1.5, (0, 1200), (0, 2)) != PALETTE[0]


def test_jsonl_input_and_gaps_give_the_same_bytes(tmp_path):
    records = run_records()
    gappy = [dict(r) for r in records]
    gappy[3]["loss"] = math.nan
    gappy[5]["id"] = math.inf
    gappy[6]["triplet"] = -math.inf
    gappy[7].update(note="text", nested={"a": 1}, flag=True)
    gappy[-1]["mINP"] = math.nan
    plain = [dict(r) for r in records]
    del plain[3]["loss"], plain[5]["id"], plain[6]["triplet"], plain[-1]["mINP"]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in gappy) + "\n")
    outputs = [
        plot_training_curves(gappy, tmp_path / "list.png"),
        plot_training_curves(str(metrics), tmp_path / "file.png"),
        plot_training_curves(plain, tmp_path / "plain.png"),
        plot_training_curves(tuple(gappy), tmp_path / "again.png"),
    ]
    contents = [p.read_bytes() for p in outputs]
    assert all(c == contents[0] for c in contents[1:])


@pytest.mark.parametrize("values, options, labels", [
    ([0.0, 9.0], {}, ["0", "2", "4", "6", "8", "10"]),
    ([0.31, 0.72], {}, ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]),
    ([3.5e-5, 3.5e-4], {}, ["0", "1e-4", "2e-4", "3e-4", "4e-4"]),
    ([1e-6, 3.5e-4], {"log": True}, ["1e-6", "1e-5", "1e-4", "1e-3"]),
    ([0.0, 3.0], {"integer": True}, ["0", "1", "2", "3"]),
    ([0.0], {"integer": True}, ["0", "1"]),
    ([2.5, 2.5], {}, ["2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8"]),  # 2.5 +- 10%
])
def test_round_ticks(values, options, labels):
    assert _Axis(np.array(values), **options).labels == labels


GOOD = {"kind": "train", "step": 0, "epoch": 0.0, "loss": 1.0}


@pytest.mark.parametrize("change, error, message", [
    (dict(records=5), TypeError, "records must be a sequence of dicts or the path of a metrics.jsonl file, got int 5"),
    (dict(records="nowhere.jsonl"), FileNotFoundError, "records: no metrics file 'nowhere.jsonl'"),
    (dict(records=[1]), TypeError, r"records\[0\] must be a dict, got int 1"),
    (dict(records=[GOOD, {"kind": "train", "loss": 1.0}]), ValueError, r'records\[1\] has no "step"'),
    (dict(records=[{**GOOD, "step": 1.0}]), TypeError, r'records\[0\]: "step" must be an int, got float 1.0'),
    (dict(records=[{**GOOD, "step": -1}]), ValueError, r'records\[0\]: "step" must be >= 0, got -1'),
    (dict(records=[{**GOOD, "kind": "test"}]), ValueError,
     r"records\[0\]: \"kind\" must be one of \('train', 'eval', 'switch', 'trial'\), got 'test'"),
    (dict(records=[]), ValueError, "records hold no numeric series to plot"),
    (dict(records=[{**GOOD, "loss": math.nan, "epoch": 1.0}]), ValueError, "records hold no numeric series to plot"),
    (dict(path="missing_folder/curves.png"), FileNotFoundError, "path: folder 'missing_folder' does not exist"),
    (dict(path=3), TypeError, "path must be a str or os.PathLike, got int 3"),
    (dict(title=3), TypeError, "title must be a str or None, got int 3"),
    (dict(title="two\nlines"), ValueError, "title must be one line"),
])
def test_errors(tmp_path, monkeypatch, change, error, message):
    monkeypatch.chdir(tmp_path)
    arguments = dict(records=[GOOD], path=tmp_path / "curves.png")
    arguments.update(change)
    with pytest.raises(error, match=message):
        plot_training_curves(**arguments)
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("last, error, message", [
    ('{"kind": "train", "step": 2,', ValueError, "metrics.jsonl line 3 is not JSON"),
    (json.dumps({**GOOD, "step": "2"}), TypeError, 'metrics.jsonl line 3: "step" must be an int, got str'),
])
def test_jsonl_errors_name_the_file_and_line(tmp_path, last, error, message):
    (tmp_path / "metrics.jsonl").write_text("\n".join([json.dumps(GOOD), "", last]))
    with pytest.raises(error, match=message):
        plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
