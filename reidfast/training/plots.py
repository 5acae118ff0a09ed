"""Training curves: the metrics a run logs (`metrics.jsonl`), drawn as one PNG of panels with
Pillow (no plotting library needed).

Records are dicts with an int "step" (the optimiser step, >= 0), a "kind" ("train", "eval",
"switch" or "trial") and numeric fields; other values (strings, nested data), the keys "step" and
"epoch", the "switch" records (Pyramid's sampler changes, a log of decisions) and the "trial"
records (PLA's scored search trials) are not drawn.
Non-finite values, values beyond +-LARGEST (no axis of float64 ticks spans them) and missing keys
leave a gap: the point is skipped.

Panels, in this order, each only when it has data:
    1. "loss": every numeric key of the train records except "lr", "images_per_s" and the keys
       ending in "_weight" ("loss" first, the others in the order they first appear);
    2. "loss weights": the train records' keys ending in "_weight";
    3. "learning rate": "lr", on a log10 scale when it spans more than a factor of 10 and all its
       values are > 0 (the title then says "(log scale)");
    4. "images/s": "images_per_s";
    5. "evaluation": the eval records' "mAP", "rank1", "rank5", "mINP" (y covers [0, 1]).

Layout (pixels): panels fill a grid of COLUMNS columns row by row, with MARGIN around and between
them, under a TITLE-pixel strip when a title is given: panel i's top-left corner is
(MARGIN + c (panel width + MARGIN), top + MARGIN + r (panel height + MARGIN)), c = i % COLUMNS,
r = i // COLUMNS, top = TITLE or 0; the image is MARGIN + C (panel width + MARGIN) wide and
top + MARGIN + R (panel height + MARGIN) tall, for C = min(COLUMNS, panels) columns and R rows.
A panel is PANEL_WIDTH x PANEL_HEIGHT with a PANEL_BORDER outline; it grows wider when a legend
name needs more than LEGEND_WIDTH, and taller when a legend has more entries than fit (every
panel then takes the largest size). Inside a panel at (x, y):
    - its title in the HEADER-pixel strip at the top;
    - the plot area, framed in black: columns x + AXIS_LEFT .. x + width - legend width - 1 (the
      left edge moves right when a y tick label is wider than AXIS_LEFT - 8), rows
      y + HEADER .. y + height - AXIS_BOTTOM - 1; y tick labels on its left, x tick labels
      (the step) under it, light grey GRID lines at the ticks;
    - the legend column on the right: per series a colour swatch and its name, LEGEND_LINE
      pixels per entry, and "x: step" level with the x tick labels.
Axes run between round tick values (1, 2 or 5 times a power of ten; decades on a log scale) that
enclose the data; the x axis, shared by all panels, starts at step 0. A value v on an axis
[lo, hi] (log10 v and decades on a log scale) is drawn at lo's pixel + (v - lo) / (hi - lo)
(extent - 1), the extent being the plot area less PAD pixels on each side.

Series: the i-th series of a panel is drawn in PALETTE[i % len(PALETTE)], darkened by a factor
0.65 for each further round through the palette, as a 2-pixel polyline over the points sorted by
step, with a dot of radius DOT on each point when it has at most DOTS_UP_TO points (eval series,
short runs). A series of at least SMOOTH_FROM points is drawn as its raw polyline, 1 pixel in the
colour faded FADE of the way to white, under the moving average over a centred window of
2 (n // 100) + 1 points (those that exist, at the ends), n the series' point count.

The output is a function of the records only: the same records give the same bytes.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reidfast._checks import check_int

COLUMNS = 2
MARGIN = 8
TITLE = 24
PANEL_WIDTH = 520
PANEL_HEIGHT = 300
HEADER = 20
AXIS_LEFT = 64
AXIS_BOTTOM = 24
LEGEND_WIDTH = 130
LEGEND_LINE = 14
PAD = 4
DOT = 2
DOTS_UP_TO = 50
SMOOTH_FROM = 1000
FADE = 0.7
LARGEST = 1e300
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
AXIS = (0, 0, 0)
GRID = (232, 232, 232)
PANEL_BORDER = (200, 200, 200)
# Ten well-separated hues (blue, orange, green, red, purple, brown, pink, grey, olive, cyan).
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
EVAL_METRICS = ("mAP", "rank1", "rank5", "mINP")
KINDS = ("train", "eval", "switch", "trial")
_NOT_DRAWN = ("step", "epoch", "skipped_images")  # skipped_images: a count of unreadable files, not a curve
_TICKS = 5  # intervals aimed at per axis: enough to read a value off, few enough to label


def plot_training_curves(records, path, title: str | None = None) -> pathlib.Path:
    """Draws a run's training curves (see the module docstring for the panels and layout).

    Args:
        records: a sequence of dicts as the trainer logs them, or the path of a `metrics.jsonl`
            file holding one such dict as a JSON object per line (blank lines skipped).
        path: the PNG to write; its folder must exist. It is written under a temporary name,
            then renamed over `path`.
        title: a line written above the panels (none if None).

    Returns:
        `path` as a pathlib.Path.
    """
    rows = _read_records(records)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__} {title!r}")
    if title is not None and "\n" in title:
        raise ValueError(f"title must be one line (its strip is TITLE={TITLE} pixels tall), got {title!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: folder {str(path.parent)!r} does not exist")
    panels = _panels(rows)
    if not panels:
        raise ValueError(
            "records hold no numeric series to plot (train records: loss, its components, lr, "
            f"images_per_s; eval records: {', '.join(EVAL_METRICS)}), got {len(rows)} records"
        )
    image = _draw(panels, title)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(temporary, format="PNG")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _read_records(records) -> list[tuple[str, Mapping]]:
    """The records, each with the place it came from ("records[i]" or "<file> line n") for errors."""
    if isinstance(records, (str, os.PathLike)):
        file = pathlib.Path(records)
        if not file.is_file():
            raise FileNotFoundError(f"records: no metrics file {str(file)!r}")
        rows = []
        with open(file, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{file} line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{file} line {number} is not JSON: {error.msg}") from None
    elif isinstance(records, Sequence) and not isinstance(records, (bytes, bytearray)):
        rows = [(f"records[{index}]", record) for index, record in enumerate(records)]
    else:
        raise TypeError(
            f"records must be a sequence of dicts or the path of a metrics.jsonl file, "
            f"got {type(records).__name__} {records!r}"
        )
    for where, record in rows:
        if not isinstance(record, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(record).__name__} {record!r}")
        if "step" not in record:
            raise ValueError(f'{where} has no "step": {record!r}')
        check_int(f'{where}: "step"', record["step"], minimum=0)
        if record.get("kind") not in KINDS:
            raise ValueError(f'{where}: "kind" must be one of {KINDS}, got {record.get("kind")!r}')
    return rows


def _panel_of(kind: str, key: str) -> str | None:
    if key in _NOT_DRAWN or kind in ("switch", "trial"):
        return None
    if kind == "eval":
        return "evaluation" if key in EVAL_METRICS else None
    if key == "lr":
        return "learning rate"
    if key == "images_per_s":
        return "images/s"
    return "loss weights" if key.endswith("_weight") else "loss"


def _panels(rows) -> list[tuple[str, dict[str, np.ndarray]]]:
    """[(panel title, {series name: float64 [n, 2] of (step, value) sorted by step})], in panel order."""
    points: dict[str, dict[str, list]] = {}
    for _, record in rows:
        for key, value in record.items():
            panel = _panel_of(record["kind"], key)
            if panel is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if math.isfinite(value) and abs(value) <= LARGEST:
                points.setdefault(panel, {}).setdefault(key, []).append((record["step"], float(value)))
    panels = []
    for panel in ("loss", "loss weights", "learning rate", "images/s", "evaluation"):
        if panel not in points:
            continue
        names = list(points[panel])
        if panel == "loss" and "loss" in names:
            names.remove("loss")
            names.insert(0, "loss")
        elif panel == "evaluation":
            names = [name for name in EVAL_METRICS if name in names]
        series = {}
        for name in names:
            array = np.array(points[panel][name], dtype=np.float64)
            series[name] = array[np.argsort(array[:, 0], kind="stable")]
        panels.append((panel, series))
    return panels


def _linear_ticks(lo: float, hi: float, integer: bool = False) -> tuple[list[float], float]:
    """Round ticks enclosing [lo, hi]: multiples of 1, 2 or 5 x 10^k, about _TICKS intervals
    (whole numbers only if `integer`). Returns (ticks, the interval between them)."""
    scale = max(abs(lo), abs(hi))
    # A range too narrow for float64 ticks to tell apart is drawn as a constant.
    if hi - lo <= scale * 1e-9 or hi - lo < 1e-290:
        pad = 1.0 if integer or scale < 1e-290 else scale * 0.1
        lo, hi = (lo, lo + pad) if integer else (lo - pad, lo + pad)
    raw = (hi - lo) / _TICKS
    power = 10.0 ** math.floor(math.log10(raw))
    interval = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    if integer:
        interval = max(1.0, round(interval))
    # The 1e-9 slack keeps a bound that is a multiple of the interval up to rounding on the tick.
    first = math.floor(lo / interval + 1e-9)
    last = math.ceil(hi / interval - 1e-9)
    return [k * interval for k in range(first, last + 1)], interval


def _tick_label(value: float, interval: float, scale: float) -> str:
    """`value` with as many digits as the tick interval needs at the axis' largest magnitude
    `scale`; in scientific notation when `scale` is outside [1e-3, 1e6)."""
    if abs(value) < interval * 1e-6:
        return "0"
    if 1e-3 <= scale < 1e6:
        return f"{value:.{max(0, -math.floor(math.log10(interval) + 1e-9))}f}"
    digits = max(0, math.floor(math.log10(scale) + 1e-9) - math.floor(math.log10(interval) + 1e-9))
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


class _Axis:
    """A value range with round tick values enclosing it (decades of a log10 scale when `log`)."""

    def __init__(self, values: np.ndarray, integer: bool = False, log: bool = False, cover=(math.inf, -math.inf)):
        lo, hi = min(float(values.min()), cover[0]), max(float(values.max()), cover[1])
        self.log = log
        if log:
            first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
            stride = math.ceil((last - first) / _TICKS)
            last = first + stride * math.ceil((last - first) / stride)
            self.ticks = [float(e) for e in range(first, last + 1, stride)]
            self.labels = [f"1e{e}" for e in range(first, last + 1, stride)]
        else:
            self.ticks, interval = _linear_ticks(lo, hi, integer)
            scale = max(abs(self.ticks[0]), abs(self.ticks[-1]))
            self.labels = [_tick_label(t, interval, scale) for t in self.ticks]
        self.lo, self.hi = self.ticks[0], self.ticks[-1]

    def fraction(self, values: np.ndarray) -> np.ndarray:
        """Where `values` lie between the first tick (0) and the last (1)."""
        return ((np.log10(values) if self.log else values) - self.lo) / (self.hi - self.lo)

    def tick_fractions(self) -> list[float]:
        return [(tick - self.lo) / (self.hi - self.lo) for tick in self.ticks]


def _colour(index: int) -> tuple[int, int, int]:
    base = PALETTE[index % len(PALETTE)]
    factor = 0.65 ** (index // len(PALETTE))
    return tuple(round(c * factor) for c in base)


def _faded(colour) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * FADE) for c in colour)


def _moving_average(values: np.ndarray) -> np.ndarray:
    """Centred moving average over 2 (n // 100) + 1 points, over those that exist at the ends."""
    half = len(values) // 100
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    lo = np.maximum(index - half, 0)
    hi = np.minimum(index + half + 1, len(values))
    return (sums[hi] - sums[lo]) / (hi - lo)


def _draw(panels, title: str | None) -> Image.Image:
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [name for _, series in panels for name in series]
    # A legend entry: 10 pixels from the plot area, a 20-pixel swatch and gap, the name, 6 spare.
    legend_width = max([LEGEND_WIDTH] + [int(math.ceil(measure.textlength(n, font=font))) + 36 for n in names])
    entries = max(len(series) for _, series in panels)
    width = PANEL_WIDTH + legend_width - LEGEND_WIDTH
    height = max(PANEL_HEIGHT, HEADER + entries * LEGEND_LINE + AXIS_BOTTOM + PAD)
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / COLUMNS)
    top = TITLE if title is not None else 0
    image = Image.new("RGB", (MARGIN + columns * (width + MARGIN), top + MARGIN + rows * (height + MARGIN)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title is not None:
        draw.text((MARGIN, MARGIN), title, fill=TEXT, font=font)
    steps = np.concatenate([points[:, 0] for _, series in panels for points in series.values()])
    x_axis = _Axis(steps, integer=True, cover=(0.0, 0.0))
    for index, (name, series) in enumerate(panels):
        left = MARGIN + (index % COLUMNS) * (width + MARGIN)
        upper = top + MARGIN + (index // COLUMNS) * (height + MARGIN)
        _draw_panel(draw, font, name, series, x_axis, (left, upper, width, height), legend_width)
    return image


def _draw_panel(draw, font, name, series, x_axis, box, legend_width):
    left, upper, width, height = box
    values = np.concatenate([points[:, 1] for points in series.values()])
    log = name == "learning rate" and values.min() > 0 and values.max() > 10 * values.min()
    y_axis = _Axis(values, log=log, cover=(0.0, 1.0) if name == "evaluation" else (math.inf, -math.inf))
    draw.rectangle([left, upper, left + width - 1, upper + height - 1], outline=PANEL_BORDER)
    draw.text((left + 6, upper + 4), f"{name} (log scale)" if log else name, fill=TEXT, font=font)

    label_width = max(draw.textlength(label, font=font) for label in y_axis.labels)
    plot_left = left + max(AXIS_LEFT, int(math.ceil(label_width)) + 8)
    plot_right = left + width - legend_width - 1
    plot_top, plot_bottom = upper + HEADER, upper + height - AXIS_BOTTOM - 1

    def columns(steps):
        return np.rint(plot_left + PAD + x_axis.fraction(steps) * (plot_right - plot_left - 2 * PAD)).astype(int)

    def rows(values):
        # Pixel rows grow downwards: a value's fraction of the axis is counted from the bottom.
        return np.rint(plot_bottom - PAD - y_axis.fraction(values) * (plot_bottom - plot_top - 2 * PAD)).astype(int)

    for fraction, label in zip(y_axis.tick_fractions(), y_axis.labels):
        row = round(plot_bottom - PAD - fraction * (plot_bottom - plot_top - 2 * PAD))
        draw.line([(plot_left, row), (plot_right, row)], fill=GRID)
        draw.line([(plot_left - 4, row), (plot_left, row)], fill=AXIS)
        draw.text((plot_left - 6 - draw.textlength(label, font=font), row - 6), label, fill=TEXT, font=font)
    for fraction, label in zip(x_axis.tick_fractions(), x_axis.labels):
        column = round(plot_left + PAD + fraction * (plot_right - plot_left - 2 * PAD))
        draw.line([(column, plot_top), (column, plot_bottom)], fill=GRID)
        draw.line([(column, plot_bottom), (column, plot_bottom + 4)], fill=AXIS)
        draw.text((column - draw.textlength(label, font=font) / 2, plot_bottom + 6), label, fill=TEXT, font=font)
    draw.rectangle([plot_left, plot_top, plot_right, plot_bottom], outline=AXIS)

    legend_left = plot_right + 10
    for index, (series_name, points) in enumerate(series.items()):
        colour = _colour(index)
        xs = columns(points[:, 0]).tolist()
        smooth = len(points) >= SMOOTH_FROM
        if smooth:
            draw.line(list(zip(xs, rows(points[:, 1]).tolist())), fill=_faded(colour), width=1)
        line = list(zip(xs, rows(_moving_average(points[:, 1]) if smooth else points[:, 1]).tolist()))
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        if len(line) <= DOTS_UP_TO:
            for x, y in line:
                draw.ellipse([x - DOT, y - DOT, x + DOT, y + DOT], fill=colour)
        entry = plot_top + index * LEGEND_LINE
        draw.line([(legend_left, entry + 6), (legend_left + 14, entry + 6)], fill=colour, width=3)
        draw.text((legend_left + 20, entry), series_name, fill=TEXT, font=font)
    draw.text((legend_left + 20, plot_bottom + 6), "x: step", fill=TEXT, font=font)
