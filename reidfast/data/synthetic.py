"""A procedural synthetic pedestrian set: the Re-ID problem in miniature, without downloads.

No real Re-ID dataset can be downloaded where reidfast is built and tested, so the demo, the
examples and the end-to-end tests train on pedestrians drawn here. Published synthetic sets render
3-D characters in game engines: PersonX (Sun and Zheng, "Dissecting Person Re-identification from
the Viewpoint of Viewpoint", arXiv:1812.02162), RandPerson (Wang et al., "Surpassing Real-World
Source Training Data: Random 3D Characters for Generalizable Person Re-Identification",
arXiv:2006.12774), UnrealPerson (Zhang et al., "UnrealPerson: An Adaptive Pipeline towards Costless
Person Re-identification", arXiv:2012.04268) and ClonedPerson (Wang et al., "Cloning Outfits from
Real-World Images to 3D Characters for Generalizable Person Re-Identification", arXiv:2204.02611).
Their lesson is that the number of identities and the diversity of clothing textures matter most,
more than photo-realism; PersonX shows that viewpoint alone changes accuracy a lot. This module
draws flat 2-D pedestrians, so it keeps what those papers found to matter and what Re-ID methods
exist to handle:

- identity: body proportions (stature, shoulder and hip width, head size, leg length), skin and
  hair colour and hair length, upper and lower garments (colours from a weighted palette of real
  clothing colours, mostly dark, with continuous jitter around each; plain, stripes in three
  orientations, checks or dots with their own scale and duty; long or short sleeves; an open
  jacket showing the shirt under it from the front only; trousers, shorts or a skirt), shoe
  colour, a logo on the front of the upper garment only, a backpack (seen from behind, its
  straps from the front), a shoulder bag on one side (seen from the front, the back, and the
  side it hangs on);
- camera: the mix of viewpoints (front, back, side facing left or right) each camera sees (a
  person's images by one camera are one track: one direction with occasional turns, so images
  within a camera look alike and across cameras differ, as in real tracks),
  illumination, colour cast and saturation with a gradient across the frame, blur, resolution,
  sensor noise, its own textured background (a facade with windows, a hedge or railings above
  paved ground; never flat), the typical scale of people in its boxes;
- detector noise: the person's vertical shift and scale inside the box, which crops the head or
  the feet: the part misalignment that the Pyramid model's multi-scale stripes address
  ("Pyramidal Person Re-IDentification via Multi-Loss Dynamic Training", arXiv:1810.12193) and
  that PCB's fixed stripes suffer from ("Beyond Part Models: Person Retrieval with Refined Part
  Pooling", arXiv:1711.09349); partial occlusion by a pole, an object in the foreground or
  another pedestrian;
- hard negatives: groups of two or three identities that wear the same clothes and differ only
  in a local detail (shoes, the logo, or the bag), which a globally pooled feature averages away.

Shading (a body lit as a cylinder, folds in the clothes, a shadow on the ground) keeps the
flat shapes from being separable by exact colour values alone.

Everything is deterministic: an identity depends on (seed, identity), a camera on (seed, camera),
an image on (seed, identity, camera, frame), each drawn from its own `numpy.random.SeedSequence`,
so rendering one image never depends on which others were rendered, or in which process.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reidfast._checks import check_float, check_int
from reidfast.data.datasets import Market1501, ReIDDataset
from reidfast.data.records import ReIDRecord

__all__ = ["SyntheticReID", "make_synthetic_reid"]

# Bumped whenever the pictures change, so that a cached set written by another version is refused
# rather than silently reused.
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic_reid.json"
JPEG_QUALITY = 90

# Domain tags of the SeedSequence entropy: each kind of draw has its own stream.
(_TAG_IDENTITY, _TAG_CAMERA, _TAG_IMAGE, _TAG_LAYOUT, _TAG_GROUPS, _TAG_BACKGROUND, _TAG_NOISE, _TAG_FABRIC,
 _TAG_TRACK) = range(9)

# Viewpoints. A side view is named by where the person faces in the image.
FRONT, BACK, FACING_LEFT, FACING_RIGHT = range(4)

# Real clothing is mostly dark and unsaturated (black, grey, navy, denim); the weights say how
# often each base colour is worn, and each identity jitters its colour around the base.
_CLOTHING = np.array(
    [
        (25, 25, 28), (60, 60, 66), (128, 128, 130), (190, 190, 192), (235, 235, 230),
        (30, 40, 80), (60, 90, 140), (140, 180, 220), (180, 30, 35), (110, 30, 40),
        (230, 150, 170), (230, 120, 40), (230, 200, 60), (100, 110, 50), (40, 120, 60),
        (180, 160, 110), (110, 75, 45), (215, 195, 160), (100, 60, 130), (30, 120, 130),
    ],
    dtype=np.float32,
)
_CLOTHING_WEIGHTS = np.array(
    [6, 4, 3, 2, 4, 4, 3, 2, 2, 1.5, 1, 1, 1, 1.5, 1.5, 2, 2, 1.5, 1, 1], dtype=np.float64
)
_SKIN = np.array(
    [(240, 205, 180), (225, 185, 150), (200, 155, 120), (160, 115, 85), (120, 80, 55), (85, 60, 45)],
    dtype=np.float32,
)
_HAIR = np.array(
    [(20, 18, 18), (60, 40, 30), (100, 70, 45), (200, 170, 110), (150, 150, 150), (130, 60, 35)],
    dtype=np.float32,
)
# Shoe colours far apart from each other, so that a hard-negative group differing in shoes differs
# visibly.
_SHOES = np.array(
    [(20, 20, 20), (240, 240, 240), (120, 70, 35), (200, 30, 30), (40, 70, 170), (130, 130, 130)],
    dtype=np.float32,
)
_SCENE = np.array(
    [
        (150, 150, 150), (120, 115, 105), (170, 160, 140), (140, 80, 60), (90, 110, 70),
        (100, 110, 125), (190, 185, 175), (80, 80, 85),
    ],
    dtype=np.float32,
)

PLAIN, STRIPES, CHECKS, DOTS = range(4)
# How often a frame of a track shows the person from another side than the track's direction.
TURN_PROBABILITY = 0.2
LOGO_SHAPES = ("disc", "square", "triangle", "diamond")
HARD_NEGATIVE_DETAILS = ("shoes", "logo", "bag")


@dataclass(frozen=True)
class Garment:
    """A garment's look. `colour` and `second` are RGB in 0..255; `pattern` is PLAIN, STRIPES,
    CHECKS or DOTS; stripes run horizontally, vertically or diagonally (`orientation` 0, 1, 2)
    with `frequency` periods per person height and `duty` the share of each period in the second
    colour (also the checks' and dots' share). Patterns are laid out in body coordinates, so they
    move with the body."""

    colour: tuple
    second: tuple
    pattern: int
    orientation: int
    frequency: float
    duty: float


@dataclass(frozen=True)
class Identity:
    """Everything that makes a pedestrian recognisable, fixed across cameras and frames.

    Lengths are fractions of the person's height: `head` (head radius), `shoulders` and `hips`
    (half widths), `legs` (hip to sole). `stature` scales the person inside the detection box.
    `hat` is None or the colour of a cap. `inner` is None, or the colour of the shirt an open
    jacket shows from the front only; `logo` None or (shape, colour, size); `backpack` None or a
    colour; `bag` None or (side, colour) with side -1 for the person's right, +1 for their left.
    """

    stature: float
    head: float
    shoulders: float
    hips: float
    legs: float
    skin: tuple
    hair: tuple
    long_hair: bool
    hat: tuple | None
    upper: Garment
    inner: tuple | None
    long_sleeves: bool
    lower: Garment
    lower_kind: str
    shoes: tuple
    logo: tuple | None
    backpack: tuple | None
    bag: tuple | None


@dataclass(frozen=True)
class Camera:
    """One camera's look: `views` the probabilities of FRONT, BACK, FACING_LEFT, FACING_RIGHT
    (where people walk relative to it), `gain` and `cast` (RGB multipliers) its illumination,
    `gradient` (dx, dy) light falling off across the frame, `blur` passes of a [1, 2, 1] filter,
    `downsample` 1 or 2 (a low-resolution camera; applied when height and width are even),
    `noise` the sensor noise std in 0..255 levels, `scale` the typical person height over the box
    height, `saturation` how much colour it keeps (1 all; cameras render the same clothes with
    different colourfulness)."""

    views: tuple
    gain: float
    cast: tuple
    gradient: tuple
    blur: int
    downsample: int
    noise: float
    scale: float
    saturation: float


def _rng(seed: int, tag: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, tag, *keys]))


def _jitter_colour(rng: np.random.Generator, base: np.ndarray, spread: float) -> tuple:
    """`base` RGB with a relative (log-normal, `spread`) and an absolute (6 levels) jitter."""
    factors, offsets = rng.normal(0.0, spread, 3).tolist(), rng.normal(0.0, 6.0, 3).tolist()
    return tuple(min(max(b * math.exp(f) + o, 0.0), 255.0) for b, f, o in zip(base.tolist(), factors, offsets))


def _pick(rng: np.random.Generator, probabilities) -> int:
    """An index drawn with `probabilities`, by inverse CDF: Generator.choice with `p` validates
    its argument at every call and costs more than the rest of an identity."""
    cdf = list(itertools.accumulate(probabilities))
    return min(bisect.bisect_right(cdf, rng.random() * cdf[-1]), len(cdf) - 1)


def _clothing_colour(rng: np.random.Generator) -> tuple:
    return _jitter_colour(rng, _CLOTHING[_pick(rng, _CLOTHING_WEIGHTS)], 0.1)


def _contrasting_colour(rng: np.random.Generator, other: tuple) -> tuple:
    """A clothing colour at least 120 levels (summed over RGB) from `other`: a stripe, a logo or a
    bag that matched what it lies on would not be seen."""
    colour = _clothing_colour(rng)
    while sum(abs(a - b) for a, b in zip(colour, other)) < 120:
        colour = _clothing_colour(rng)
    return colour


def _draw_garment(rng: np.random.Generator, pattern_p: tuple) -> Garment:
    colour = _clothing_colour(rng)
    return Garment(
        colour=colour,
        second=_contrasting_colour(rng, colour),
        pattern=_pick(rng, pattern_p),
        orientation=_pick(rng, (0.6, 0.25, 0.15)),
        frequency=float(rng.uniform(14.0, 40.0)),
        duty=float(rng.uniform(0.25, 0.6)),
    )


def _draw_logo(rng: np.random.Generator, shape: int, garment: Garment) -> tuple:
    return (shape, _contrasting_colour(rng, garment.colour), float(rng.uniform(0.035, 0.055)))


def _draw_identity(rng: np.random.Generator) -> Identity:
    """A random pedestrian. The probabilities are rough street frequencies: most upper garments
    plain, most trousers plain; about a third with long hair, a logo or a backpack; a quarter
    with a shoulder bag; one in eight with a cap."""
    upper = _draw_garment(rng, (0.45, 0.28, 0.17, 0.1))
    return Identity(
        stature=float(rng.uniform(0.9, 1.0)),
        head=float(rng.uniform(0.055, 0.07)),
        shoulders=float(rng.uniform(0.095, 0.135)),
        hips=float(rng.uniform(0.075, 0.105)),
        legs=float(rng.uniform(0.43, 0.52)),
        skin=_jitter_colour(rng, _SKIN[rng.integers(len(_SKIN))], 0.05),
        hair=_jitter_colour(rng, _HAIR[rng.integers(len(_HAIR))], 0.08),
        long_hair=bool(rng.random() < 0.35),
        hat=_clothing_colour(rng) if rng.random() < 0.12 else None,
        upper=upper,
        inner=_clothing_colour(rng) if rng.random() < 0.2 else None,
        long_sleeves=bool(rng.random() < 0.5),
        lower=_draw_garment(rng, (0.9, 0.03, 0.07, 0.0)),
        lower_kind=("trousers", "shorts", "skirt")[_pick(rng, (0.7, 0.18, 0.12))],
        shoes=_jitter_colour(rng, _SHOES[rng.integers(len(_SHOES))], 0.05),
        logo=_draw_logo(rng, int(rng.integers(len(LOGO_SHAPES))), upper) if rng.random() < 0.3 else None,
        backpack=_clothing_colour(rng) if rng.random() < 0.3 else None,
        bag=(int(rng.choice((-1, 1))), _clothing_colour(rng)) if rng.random() < 0.25 else None,
    )


def _hard_negative_variants(rng: np.random.Generator, base: Identity, size: int) -> list[Identity]:
    """`size` identities wearing `base`'s clothes, each differing from the others in one local
    detail (the same detail for the whole group): distinct shoes, distinct logos (or none), or the
    bag on a different side (or none). Body proportions get a small jitter, as two people in the
    same uniform are never the same shape."""
    detail = HARD_NEGATIVE_DETAILS[rng.integers(len(HARD_NEGATIVE_DETAILS))]
    if detail == "shoes":
        picks = rng.choice(len(_SHOES), size, replace=False)
        values = [{"shoes": _jitter_colour(rng, _SHOES[i], 0.05)} for i in picks]
    elif detail == "logo":
        shapes = rng.choice(len(LOGO_SHAPES), size - 1, replace=False)
        values = [{"logo": logo} for logo in [None] + [_draw_logo(rng, int(s), base.upper) for s in shapes]]
    else:
        colour = _contrasting_colour(rng, base.upper.colour)
        values = [{"bag": bag} for bag in (None, (-1, colour), (1, colour))[:size]]
    variants = []
    for value in values:
        body = {
            name: getattr(base, name) * float(np.exp(rng.normal(0.0, 0.03)))
            for name in ("stature", "head", "shoulders", "hips", "legs")
        }
        variants.append(dataclasses.replace(base, **body, **value))
    return variants


def _draw_camera(rng: np.random.Generator) -> Camera:
    """A random camera. Each sees every viewpoint (at least 7.5% of the time each) in its own mix,
    as each camera's position relative to the walkways decides which side of people it sees."""
    views = rng.dirichlet((1.5, 1.5, 1.5, 1.5)) * 0.7 + 0.3 / 4
    return Camera(
        views=tuple(float(p) for p in views / views.sum()),
        gain=float(rng.uniform(0.7, 1.2)),
        cast=tuple(float(c) for c in np.exp(rng.normal(0.0, 0.08, 3))),
        gradient=tuple(float(g) for g in rng.normal(0.0, 0.15, 2)),
        blur=_pick(rng, (0.4, 0.4, 0.2)),
        downsample=1 + _pick(rng, (0.67, 0.33)),
        noise=float(rng.uniform(2.0, 7.0)),
        scale=float(rng.uniform(0.8, 0.92)),
        saturation=float(rng.uniform(0.6, 1.15)),
    )


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1], float32 [height, width]: a random grid of one value per `cell`
    pixels, interpolated bilinearly."""
    grid = rng.uniform(-1.0, 1.0, (height // cell + 2, width // cell + 2)).astype(np.float32)
    ys = np.arange(height, dtype=np.float32) / cell
    xs = np.arange(width, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _saturate(colours: np.ndarray, saturation: float) -> np.ndarray:
    """Colours [..., 3] moved towards (saturation < 1) or away from their grey by `saturation`."""
    grey = colours.mean(axis=-1, keepdims=True)
    return grey + np.float32(saturation) * (colours - grey)


@lru_cache(maxsize=32)
def _background(seed: int, index: int, camera: Camera, height: int, width: int) -> np.ndarray:
    """The scene camera `index` looks at, float32 [1.25 * height, 2.5 * width, 3] in 0..255, in
    the camera's colours: a textured facade with windows, a hedge, or a wall behind railings,
    above a paved ground with tile joints. Each image shows a random window of it, as people pass
    at different places in front of the camera. Backgrounds differ between cameras and repeat
    within one, as in real camera networks: a model must learn to ignore them."""
    rng = _rng(seed, _TAG_BACKGROUND, index)
    bh, bw = int(height * 1.25), int(width * 2.5)
    ys = np.arange(bh, dtype=np.float32)[:, None]
    xs = np.arange(bw, dtype=np.float32)[None, :]
    horizon = rng.uniform(0.45, 0.7) * bh
    wall, ground = _SCENE[rng.choice(len(_SCENE), 2, replace=False)]
    texture = 0.6 * _value_noise(rng, bh, bw, max(4, height // 16)) + 0.4 * _value_noise(rng, bh, bw, 3)
    scene = np.where((ys < horizon)[..., None], wall, ground) * (1 + 0.12 * texture[..., None])
    above = ys < horizon - 2
    kind = rng.integers(3)
    if kind == 0:
        # Windows or pillars: a regular grid of darker or lighter rectangles.
        period_x, period_y = rng.uniform(0.25, 0.6) * width, rng.uniform(0.2, 0.4) * height
        fill_x, fill_y = rng.uniform(0.3, 0.7), rng.uniform(0.4, 1.0)
        windows = ((xs % period_x) < fill_x * period_x) & ((ys % period_y) < fill_y * period_y) & above
        scene = np.where(windows[..., None], scene * rng.uniform(0.45, 1.4), scene)
    elif kind == 1:
        # A hedge: leaves as high-contrast green noise, over the lower part of the facade.
        leaves = _value_noise(rng, bh, bw, max(2, height // 40))
        green = np.asarray((60, 100, 45), dtype=np.float32) * (1 + 0.5 * leaves[..., None])
        hedge = above & (ys > horizon * rng.uniform(0.2, 0.6))
        scene = np.where(hedge[..., None], green, scene)
    else:
        # Railings: thin vertical bars and two rails in front of the wall.
        period = rng.uniform(0.06, 0.15) * width
        rail_y = horizon - rng.uniform(0.15, 0.3) * height
        bars = ((xs % period) < 0.25 * period) & (ys > rail_y) & above
        rails = (np.abs(ys - rail_y) < 2) | (np.abs(ys - (rail_y + horizon) / 2) < 1.5)
        metal = _SCENE[rng.integers(len(_SCENE))] * 0.5
        scene = np.where((bars | (rails & above))[..., None], metal, scene)
    # Tile joints on the ground, closer together towards the horizon (a hint of perspective).
    depth = np.maximum(ys - horizon, 1.0)
    joints = ((np.sqrt(depth) * rng.uniform(0.8, 1.6)) % 2.0 < 0.18) | (((xs - bw / 2) / depth * 30.0) % 9.0 < 0.6)
    scene = np.where((joints & (ys > horizon))[..., None], scene * 0.7, scene)
    return _camera_colours(np.clip(scene, 0, 255).astype(np.float32), camera)


@lru_cache(maxsize=32)
def _fabric_folds(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth noise in [-1, 1], float32 [2 * height, 2 * width]: the folds and wrinkles that make
    a garment's shade vary (each image takes a random window of it)."""
    return _value_noise(_rng(seed, _TAG_FABRIC), 2 * height, 2 * width, max(3, height // 24))


def _camera_colours(colours: np.ndarray, camera: Camera) -> np.ndarray:
    """Colours [..., 3] as `camera` records them: its colour cast, then its saturation."""
    return _saturate(colours * np.asarray(camera.cast, dtype=np.float32), camera.saturation)


@lru_cache(maxsize=32)
def _light_falloff(camera: Camera, height: int, width: int) -> np.ndarray:
    """The camera's illumination over the frame relative to its gain, float32 [height, width]: a
    linear fall-off from one side."""
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    return np.clip(1 + camera.gradient[0] * xs + camera.gradient[1] * ys, 0.5, 1.5)


def _smooth(image: np.ndarray, passes: int) -> np.ndarray:
    """`passes` passes of the separable [1, 2, 1] / 4 filter over [H, W, C] (edges replicated):
    lens blur and focus."""
    for _ in range(passes):
        for axis in (0, 1):
            x = np.moveaxis(image, axis, 0)
            out = 0.5 * x
            out[1:] += 0.25 * x[:-1]
            out[:-1] += 0.25 * x[1:]
            out[0] += 0.25 * x[0]
            out[-1] += 0.25 * x[-1]
            image = np.moveaxis(out, 0, axis)
    return image


@lru_cache(maxsize=32)
def _sensor_noise(seed: int, index: int, camera: Camera, height: int, width: int) -> np.ndarray:
    """Camera `index`'s sensor noise, Gaussian with std `camera.noise`, float32 [2 * height,
    2 * width, 3], plus 0.5 (the rounding to uint8 that follows); each image adds a random window
    of it, which costs one addition instead of drawing a fresh normal per pixel."""
    rng = _rng(seed, _TAG_NOISE, index)
    noise = rng.standard_normal((2 * height, 2 * width, 3), dtype=np.float32)
    return noise * np.float32(camera.noise) + np.float32(0.5)


class _Canvas:
    """A label map being painted in body coordinates: u (horizontal) and v (vertical, 0 at the
    top of the head, 1 at the soles), both in units of the person's height. Painting writes a
    colour index per pixel, over the rows a shape spans only; colours are looked up once at the
    end, which is what makes a few dozen shapes per image cheap."""

    def __init__(self, height: int, width: int, centre_x: float, top: float, person_height: float, shared=None):
        """A canvas for a person `person_height` pixels tall whose head top is at row `top`,
        centred at column `centre_x`; with `shared` (a _Canvas), one painting into its label map
        (a second person in the same picture)."""
        # uint8 labels: a person and an occluding stranger paint about a hundred shapes.
        self.label = np.zeros((height, width), dtype=np.uint8) if shared is None else shared.label
        self.colours = [(0.0, 0.0, 0.0)] if shared is None else shared.colours  # label 0: background
        self.u = ((np.arange(width, dtype=np.float32) - centre_x) / person_height)[None, :]  # [1, W]
        self.v = ((np.arange(height, dtype=np.float32) - top) / person_height)[:, None]  # [H, 1]
        self.top, self.person_height, self.height = top, person_height, height
        self.person_labels = 0
        self.shadow = None  # the region of the ground in the person's shadow

    def rows(self, v0: float, v1: float) -> slice:
        """The rows whose v lies in [v0, v1)."""
        first = min(max(math.ceil(self.top + v0 * self.person_height), 0), self.height)
        last = min(max(math.ceil(self.top + v1 * self.person_height), first), self.height)
        return slice(first, last)

    def band(self, u0: float, slope: float, half: float, v0: float, v1: float):
        """Pixels within `half` of the line u = u0 + slope * (v - v0), for v0 <= v < v1."""
        rows = self.rows(v0, v1)
        return rows, np.abs(self.u - u0 - slope * (self.v[rows] - v0)) < half

    def ellipse(self, uc: float, vc: float, ru: float, rv: float):
        """Pixels inside the ellipse centred at (uc, vc) with radii ru and rv."""
        rows = self.rows(vc - rv, vc + rv)
        return rows, ((self.u - uc) / ru) ** 2 + ((self.v[rows] - vc) / rv) ** 2 < 1

    def trapezoid(self, v0: float, v1: float, half0: float, half1: float, centre: float = 0.0):
        """Pixels between v0 and v1 whose half width goes linearly from half0 to half1."""
        rows = self.rows(v0, v1)
        t = (self.v[rows] - v0) / (v1 - v0)
        return rows, np.abs(self.u - centre) < half0 + (half1 - half0) * t

    def _label(self, colour) -> int:
        self.colours.append(tuple(float(c) for c in colour))
        return len(self.colours) - 1

    def paint(self, region, colour) -> None:
        rows, mask = region
        self.label[rows][mask] = self._label(colour)

    def paint_garment(self, region, garment: Garment) -> None:
        """Fill `region` with the garment's colour, then its pattern's second colour."""
        rows, mask = region
        self.paint(region, garment.colour)
        if garment.pattern == PLAIN:
            return
        u, v = self.u, self.v[rows]
        f = garment.frequency
        if garment.pattern == STRIPES:
            # `+ 0 * u` and `+ 0 * v` broadcast a 1-D coordinate to the region's [rows, W].
            coordinate = (v + 0 * u, u + 0 * v, u + v)[garment.orientation]
            second = (coordinate * f) % 1.0 < garment.duty
        elif garment.pattern == CHECKS:
            second = ((u * f * 0.7) % 1.0 < garment.duty) ^ ((v * f * 0.7) % 1.0 < garment.duty)
        else:
            second = ((u * f * 0.5) % 1.0 - 0.5) ** 2 + ((v * f * 0.5) % 1.0 - 0.5) ** 2 < 0.1 * garment.duty
        self.label[rows][mask & second] = self._label(garment.second)

    def end_person(self) -> None:
        """Labels painted from now on (occluders) are not part of the person."""
        self.person_labels = len(self.colours)

    def compose(
        self, camera: Camera, background: np.ndarray, gain: np.ndarray, shading: np.ndarray, light: np.ndarray
    ) -> np.ndarray:
        """float32 [H, W, 3]: the painted colours, in `camera`'s colours, over `background`
        [H, W, 3] (already in them), all times `gain` [3] and `light` [H, W], the person's also
        times `shading` [H, W], the ground in the person's shadow darkened."""
        height, width = self.label.shape
        colours = _camera_colours(np.asarray(self.colours, dtype=np.float32), camera) * gain
        # One gather from [painted colours; background pixels]: label 0 points at its own pixel.
        source = np.empty((len(colours) + height * width, 3), dtype=np.float32)
        source[: len(colours)] = colours
        np.multiply(background.reshape(-1, 3), gain, out=source[len(colours) :])
        pixel = np.arange(len(colours), len(colours) + height * width).reshape(height, width)
        image = np.take(source, np.where(self.label == 0, pixel, self.label), axis=0)
        person = (self.label > 0) & (self.label < self.person_labels)
        factor = np.where(person, shading, np.float32(1.0))
        if self.shadow is not None:
            rows, mask = self.shadow
            factor[rows][mask & (self.label[rows] == 0)] = 0.6
        factor *= light
        image *= factor[..., None]
        return image


def _paint_logo(canvas: _Canvas, logo: tuple, uc: float, vc: float) -> None:
    shape, colour, size = logo
    rows = canvas.rows(vc - size, vc + size)
    du, dv = canvas.u - uc, canvas.v[rows] - vc
    if LOGO_SHAPES[shape] == "disc":
        mask = du**2 + dv**2 < size**2
    elif LOGO_SHAPES[shape] == "square":
        mask = (np.abs(du) < 0.8 * size) & (np.abs(dv) < 0.8 * size)
    elif LOGO_SHAPES[shape] == "triangle":
        mask = (dv < 0.7 * size) & (np.abs(du) < (dv + size) * 0.6)
    else:
        mask = np.abs(du) + np.abs(dv) < size
    canvas.paint((rows, mask), colour)


def _paint_person(canvas: _Canvas, person: Identity, view: int, phase: float) -> None:
    """Paint `person` seen from `view`, walking at gait `phase` (radians), back to front. Every
    length is a body proportion, a fraction of the person's height (v = 0 at the top of the head,
    1 at the soles; u = 0 on the body's axis)."""
    side = view in (FACING_LEFT, FACING_RIGHT)
    facing = -1.0 if view == FACING_LEFT else 1.0
    head_r = person.head
    head_v = head_r * 1.1
    shoulder_v = 2 * head_r + 0.02
    hip_v = 1.0 - person.legs
    ankle_v = 0.965
    knee_v = hip_v + 0.5 * (ankle_v - hip_v)
    # Seen from the side the body is narrower; the walking stride opens the legs.
    width = 0.55 if side else 1.0
    shoulders, hips = person.shoulders * width, person.hips * width
    stride = math.sin(phase) * (0.22 if side else 0.04)
    leg_half = 0.038

    # The bag on the person's left (+1) is on the image's right when they face the camera, on the
    # left when seen from behind, and in front of the body only in the side view that shows it.
    bag_visible, bag_u = False, 0.0
    if person.bag is not None:
        bag_side = person.bag[0]
        if view == FRONT:
            bag_visible, bag_u = True, bag_side * (hips + 0.045)
        elif view == BACK:
            bag_visible, bag_u = True, -bag_side * (hips + 0.045)
        else:
            # Facing right, the person's left side is towards the camera.
            bag_visible, bag_u = (bag_side == 1) == (facing > 0), -facing * 0.02

    canvas.shadow = canvas.ellipse(0.0, 0.99, shoulders * 2.0 + abs(stride) * 0.5, 0.03)
    if side and person.backpack is not None:
        behind = -facing * (shoulders + 0.03)
        canvas.paint(canvas.trapezoid(shoulder_v + 0.02, hip_v - 0.05, 0.05, 0.05, behind), person.backpack)
    if person.long_hair and view != FRONT:
        hair_u = -facing * 0.01 if side else 0.0
        canvas.paint(canvas.trapezoid(head_v, shoulder_v + 0.12, head_r * 0.9, head_r * 1.0, hair_u), person.hair)

    # Legs, then the lower garment over them, shoes at the soles.
    legs = [(0.0, stride), (0.0, -stride)] if side else [(-(hips - leg_half), -stride), (hips - leg_half, stride)]
    lower_end = {"trousers": ankle_v, "shorts": knee_v, "skirt": knee_v}[person.lower_kind]
    for u0, slope in legs:
        canvas.paint(canvas.band(u0, slope, leg_half, hip_v, ankle_v + 0.01), person.skin)
        if person.lower_kind == "trousers" or person.lower_kind == "shorts":
            canvas.paint_garment(canvas.band(u0, slope, leg_half + 0.004, hip_v, lower_end), person.lower)
        foot_u = u0 + slope * (ankle_v - hip_v) + (facing * 0.02 if side else 0.0)
        canvas.paint(canvas.ellipse(foot_u, 0.982, 0.05 if side else 0.034, 0.02), person.shoes)
    if person.lower_kind == "skirt":
        canvas.paint_garment(canvas.trapezoid(hip_v - 0.02, lower_end, hips, hips * 1.6), person.lower)
    else:
        canvas.paint_garment(canvas.trapezoid(hip_v - 0.02, hip_v + 0.07, hips, hips), person.lower)

    # Arms: behind the torso in the side view (one visible, swinging against the stride).
    arm_half = 0.03
    wrist_v = hip_v + 0.07
    sleeve_v = wrist_v - 0.04 if person.long_sleeves else shoulder_v + 0.11
    arms = [(0.0, -stride * 0.8)] if side else [(-(shoulders + 0.015), -0.05), (shoulders + 0.015, 0.05)]
    for u0, slope in arms:
        canvas.paint(canvas.band(u0, slope, arm_half * 0.85, shoulder_v, wrist_v + 0.035), person.skin)
    # Neck, torso (upper garment down over the hips), sleeves.
    canvas.paint(canvas.trapezoid(head_v, shoulder_v + 0.01, head_r * 0.45, head_r * 0.45), person.skin)
    canvas.paint_garment(canvas.trapezoid(shoulder_v, hip_v + 0.03, shoulders, hips * 1.05), person.upper)
    if person.inner is not None and view == FRONT:
        opening = canvas.trapezoid(shoulder_v + 0.005, hip_v + 0.03, shoulders * 0.25, hips * 0.35)
        canvas.paint(opening, person.inner)
    for u0, slope in arms:
        canvas.paint_garment(canvas.band(u0, slope, arm_half, shoulder_v, sleeve_v), person.upper)

    # Head and hair: the face shows from the front, the hair covers the back of the head.
    head_u = facing * 0.01 if side else 0.0
    canvas.paint(canvas.ellipse(head_u, head_v, head_r * 0.82, head_r), person.skin)
    rows, head = canvas.ellipse(head_u, head_v - 0.004, head_r * 0.86, head_r * 1.04)
    v = canvas.v[rows]
    if view == FRONT:
        hair = head & (v < head_v - 0.45 * head_r)
    elif view == BACK:
        hair = head & (v < head_v + 0.75 * head_r)
    else:
        hair = head & ((v < head_v - 0.45 * head_r) | (facing * (canvas.u - head_u) < -0.2 * head_r))
    canvas.paint((rows, hair), person.hair)
    if person.hat is not None:
        canvas.paint((rows, head & (v < head_v - 0.3 * head_r)), person.hat)
        # The brim: all round seen from the front or back, sticking out forwards from the side.
        brim_u, brim_half = (head_u + facing * 0.5 * head_r, 0.7 * head_r) if side else (head_u, 1.05 * head_r)
        brim = canvas.trapezoid(head_v - 0.4 * head_r, head_v - 0.2 * head_r, brim_half, brim_half, brim_u)
        canvas.paint(brim, person.hat)
    if person.long_hair and view == FRONT:
        for u0 in (-head_r * 0.85, head_r * 0.85):
            lock = canvas.band(u0, 0.0, head_r * 0.2, head_v - 0.3 * head_r, shoulder_v + 0.05)
            canvas.paint(lock, person.hair)

    # Accessories over the body: the logo on the front only, the backpack from behind (its
    # straps from the front), the bag and its strap across the chest.
    chest_v = shoulder_v + 0.3 * (hip_v - shoulder_v)
    if view == FRONT and person.logo is not None:
        _paint_logo(canvas, person.logo, 0.0, chest_v)
    if person.backpack is not None and view == BACK:
        pack = canvas.trapezoid(shoulder_v + 0.02, hip_v - 0.05, shoulders * 0.8, shoulders * 0.75)
        canvas.paint(pack, person.backpack)
    elif person.backpack is not None and view == FRONT:
        for u0 in (-shoulders * 0.6, shoulders * 0.6):
            canvas.paint(canvas.band(u0, 0.0, 0.01, shoulder_v, chest_v + 0.06), person.backpack)
    if bag_visible:
        bag_colour = person.bag[1]
        if not side:
            # The strap runs from the opposite shoulder across the chest.
            slope = math.copysign(0.9, bag_u) * (hips + 0.05) / (hip_v - shoulder_v)
            canvas.paint(canvas.band(-bag_u * 0.8, slope, 0.009, shoulder_v, hip_v - 0.03), bag_colour)
        canvas.paint(canvas.trapezoid(hip_v - 0.04, hip_v + 0.07, 0.045, 0.05, bag_u), bag_colour)


def _paint_occluder(canvas: _Canvas, rng: np.random.Generator) -> None:
    """An occluder in front of the person: a pole, an object at the bottom of the box (bench, bin,
    car), or another pedestrian entering from one side. Drawn in box coordinates (the label map's
    pixels), since occluders do not move with the person."""
    height, width = canvas.label.shape
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    everywhere = slice(0, height)
    kind = rng.integers(3)
    colour = _SCENE[rng.integers(len(_SCENE))] * rng.uniform(0.5, 1.2)
    if kind == 0:
        centre, half = rng.uniform(0.1, 0.9) * width, rng.uniform(0.05, 0.12) * width
        canvas.paint((everywhere, np.broadcast_to(np.abs(xs - centre) < half, (height, width))), colour)
        # The lit side of the pole.
        lit = np.abs(xs - centre + 0.3 * half) < 0.3 * half
        canvas.paint((everywhere, np.broadcast_to(lit, (height, width))), colour * 1.25)
    elif kind == 1:
        top = rng.uniform(0.55, 0.8) * height
        left, right = sorted(rng.uniform(-0.3, 1.3, 2) * width)
        right = max(right, left + 0.5 * width)
        canvas.paint((everywhere, (ys > top) & (xs > left) & (xs < right)), colour)
        canvas.paint((everywhere, (np.abs(ys - top - 0.08 * height) < 2) & (xs > left) & (xs < right)), colour * 1.3)
    else:
        # Another pedestrian, closer to the camera, entering the box from one side.
        stranger = _draw_identity(rng)
        side = float(rng.choice((-1.0, 1.0)))
        other = _Canvas(
            height,
            width,
            width * (0.5 + side * rng.uniform(0.35, 0.65)),
            canvas.top + rng.normal(0.0, 0.05) * height,
            canvas.person_height * rng.uniform(1.0, 1.2),
            shared=canvas,
        )
        _paint_person(other, stranger, int(rng.integers(4)), float(rng.uniform(0, 2 * math.pi)))


def _check_fraction(name: str, value, upper: float = 1.0) -> None:
    check_float(name, value)
    if not 0.0 <= value <= upper:
        raise ValueError(f"{name} must be in [0, {upper}], got {value}")


@dataclass(frozen=True)
class _Shot:
    """What one file shows: an identity (an index into the identity table) by a camera at a frame;
    `junk` marks a bad detection (a fragment of a person)."""

    identity: int
    camera: int
    frame: int
    junk: bool = False


class SyntheticReID(ReIDDataset):
    """An in-memory synthetic Re-ID set with Market-1501's splits; images rendered on demand.

    Args:
        num_identities (int): labelled identities, >= 2. The first ceil(n / 2) train, the rest
            test (Market-1501's 751 / 750).
        images_per_identity (int): images of each labelled identity, >= 4. Each identity is seen
            by 2 to min(num_cameras, images_per_identity // 2) cameras, at least 2 images each.
        num_cameras (int): 2..9 (file names hold one camera digit).
        height, width (int): image size in pixels (>= 32 and >= 16).
        seed (int): >= 0; the same seed gives the same pixels.
        misalignment (float): std of the person's vertical shift inside the detection box, as a
            fraction of the box height (0.07 by default, clipped at 2.5 std); the person's scale
            varies by the same relative amount (log-normal). With the default, about one box in
            four cuts into the head or the feet, as detector boxes do. The horizontal shift is
            fixed at 0.03 of the width: detectors centre people better across than along.
        occlusion (float): probability that an image has an occluder (0.2).
        hard_negatives (float): fraction of identities (within each split, rounded down to whole
            groups) that belong to a group of 2 or 3 identities dressed alike and differing in one
            local detail: shoes, logo or bag (0.3).
        colour_jitter (float): std of the per-image log RGB gain (0.06): the same clothes look a
            little different from frame to frame (white balance, pose to the light).
        distractors (float): distractor images (pid 0, identities seen nowhere else) added to the
            gallery, as a fraction of the test identities' images, rounded down (0.1).
        junk (float): junk images (pid -1, bad detections) as a fraction of the test identities'
            images, rounded down (0.05); written to the gallery folder and dropped by the reader,
            so they are in `junk`, not in `gallery`.

    Attributes (besides ReIDDataset's):
        train, query, gallery, junk (list[ReIDRecord]): `path` is the file's path in the
            Market-1501 layout, relative to the set's root ("bounding_box_train/0002_c1s1_...");
            `camid` is 0-based; training pids are relabelled 0..num_train_pids-1 (file pids
            1..num_train_pids); query and gallery pids are the file names' (0 for distractors);
            each list is sorted by path, as `Market1501` finds them in the written set.
        identities (list[Identity]), cameras (list[Camera]): what the images are drawn from.
        hard_negative_groups (list[tuple[int, ...]]): groups of identity indices dressed alike.

    `load(record)` renders one image as a uint8 Tensor [3, height, width] (RGB).
    """

    name = "synthetic"

    def __init__(
        self,
        num_identities: int = 750,
        images_per_identity: int = 16,
        num_cameras: int = 6,
        height: int = 256,
        width: int = 128,
        seed: int = 0,
        misalignment: float = 0.07,
        occlusion: float = 0.2,
        hard_negatives: float = 0.3,
        colour_jitter: float = 0.06,
        distractors: float = 0.1,
        junk: float = 0.05,
    ):
        check_int("num_identities", num_identities, 2)
        check_int("images_per_identity", images_per_identity, 4)
        check_int("num_cameras", num_cameras, 2)
        if num_cameras > 9:
            raise ValueError(f"num_cameras must be <= 9 (one digit in Market-1501 file names), got {num_cameras}")
        check_int("height", height, 32)
        check_int("width", width, 16)
        check_int("seed", seed, 0)
        _check_fraction("misalignment", misalignment, 0.5)
        _check_fraction("occlusion", occlusion)
        _check_fraction("hard_negatives", hard_negatives)
        _check_fraction("colour_jitter", colour_jitter, 0.5)
        _check_fraction("distractors", distractors, 10.0)
        _check_fraction("junk", junk, 10.0)
        self.parameters = {
            "num_identities": num_identities,
            "images_per_identity": images_per_identity,
            "num_cameras": num_cameras,
            "height": height,
            "width": width,
            "seed": seed,
            "misalignment": float(misalignment),
            "occlusion": float(occlusion),
            "hard_negatives": float(hard_negatives),
            "colour_jitter": float(colour_jitter),
            "distractors": float(distractors),
            "junk": float(junk),
        }
        self.height, self.width, self.seed = height, width, seed
        self.misalignment, self.occlusion, self.colour_jitter = misalignment, occlusion, colour_jitter

        num_train = (num_identities + 1) // 2
        num_test = num_identities - num_train
        num_distractors = int(distractors * num_test * images_per_identity)
        num_junk = int(junk * num_test * images_per_identity)
        self.identities, self.hard_negative_groups = self._draw_identities(
            num_identities, num_train, hard_negatives, num_distractors + num_junk
        )
        self.cameras = [_draw_camera(_rng(seed, _TAG_CAMERA, c)) for c in range(num_cameras)]

        self._shots: dict[str, _Shot] = {}
        train, query, gallery, junk_records = [], [], [], []
        for index in range(num_identities):
            pid = index + 1
            for camera, frames in self._appearances(index, num_cameras, images_per_identity):
                for j, frame in enumerate(frames):
                    folder = "bounding_box_train" if index < num_train else ("query" if j == 0 else "bounding_box_test")
                    path = self._add(folder, pid, _Shot(index, camera, j), frame)
                    if index < num_train:
                        train.append(ReIDRecord(path, pid, camera))
                    else:
                        (query if j == 0 else gallery).append(ReIDRecord(path, pid, camera))
        for d in range(num_distractors + num_junk):
            rng = _rng(seed, _TAG_LAYOUT, num_identities + d)
            camera = int(rng.integers(num_cameras))
            is_junk = d >= num_distractors
            pid = -1 if is_junk else 0
            path = self._add("bounding_box_test", pid, _Shot(num_identities + d, camera, 0, is_junk), d + 1)
            (junk_records if is_junk else gallery).append(ReIDRecord(path, pid, camera))
        self.junk = sorted(junk_records)
        notes = [
            f"synthetic: {num_cameras} cameras, {height}x{width}, seed {seed}, "
            f"{len(self.hard_negative_groups)} hard-negative groups, {num_distractors} distractors",
            f"junk images (identity -1) written but in no split: {num_junk}",
        ]
        super().__init__(sorted(train), sorted(query), sorted(gallery), root=None, notes=notes)

    def _draw_identities(self, num_identities: int, num_train: int, fraction: float, extra: int):
        """The identity table: labelled identities (hard-negative groups formed within each split,
        so that a test group is never half in training) followed by `extra` unlabelled ones for
        distractors and junk."""
        identities = [_draw_identity(_rng(self.seed, _TAG_IDENTITY, i)) for i in range(num_identities + extra)]
        groups = []
        for first, last in ((0, num_train), (num_train, num_identities)):
            rng = _rng(self.seed, _TAG_GROUPS, first)
            order = first + rng.permutation(last - first)
            budget = int(fraction * (last - first))
            position = 0
            while budget - position >= 2:
                size = 3 if budget - position >= 5 and rng.random() < 0.5 else 2
                group = tuple(sorted(int(i) for i in order[position : position + size]))
                for member, variant in zip(group, _hard_negative_variants(rng, identities[group[0]], size)):
                    identities[member] = variant
                groups.append(group)
                position += size
        return identities, groups

    def _appearances(self, index: int, num_cameras: int, images: int):
        """(camera, frame numbers) for each camera that sees identity `index`: at least 2 images
        in each, so each test identity has one query per camera and a gallery match elsewhere."""
        rng = _rng(self.seed, _TAG_LAYOUT, index)
        count = int(rng.integers(2, min(num_cameras, images // 2) + 1))
        cameras = np.sort(rng.choice(num_cameras, count, replace=False))
        per_camera = 2 + rng.multinomial(images - 2 * count, np.full(count, 1.0 / count))
        start = int(rng.integers(1, 100000))
        return [(int(c), [start + 25 * j for j in range(n)]) for c, n in zip(cameras, per_camera)]

    def _add(self, folder: str, pid: int, shot: _Shot, frame: int) -> str:
        name = f"{pid:04d}" if pid >= 0 else str(pid)
        path = f"{folder}/{name}_c{shot.camera + 1}s1_{frame:06d}_00.jpg"
        self._shots[path] = shot
        return path

    def paths(self) -> list[str]:
        """Every file of the set (junk included), sorted."""
        return sorted(self._shots)

    def load(self, record) -> torch.Tensor:
        """The image of `record` (a ReIDRecord of this set, or its path) as uint8 Tensor[3, H, W]."""
        return torch.from_numpy(np.ascontiguousarray(self.render(record).transpose(2, 0, 1)))

    def render(self, record) -> np.ndarray:
        """The image of `record` (a ReIDRecord of this set, or its path) as uint8 [H, W, 3]."""
        path = record.path if isinstance(record, ReIDRecord) else record
        if not isinstance(path, str):
            raise TypeError(f"record must be a ReIDRecord or a path str, got {type(record).__name__}")
        shot = self._shots.get(path)
        if shot is None:
            raise ValueError(f"record {path!r} is not an image of this synthetic set")
        return self._render(shot)

    def _render(self, shot: _Shot) -> np.ndarray:
        h, w = self.height, self.width
        camera = self.cameras[shot.camera]
        rng = _rng(self.seed, _TAG_IMAGE, shot.identity, shot.camera, shot.frame)
        person = self.identities[shot.identity]

        background = _background(self.seed, shot.camera, camera, h, w)
        oy = int(rng.integers(background.shape[0] - h + 1))
        ox = int(rng.integers(background.shape[1] - w + 1))
        background = background[oy : oy + h, ox : ox + w]

        # Detector noise: the box is not centred on the person; its size varies too.
        scale = camera.scale * person.stature * float(np.exp(rng.normal(0.0, self.misalignment)))
        shift = float(np.clip(rng.normal(0.0, self.misalignment), -2.5 * self.misalignment, 2.5 * self.misalignment))
        centre_x = w * (0.5 + float(rng.normal(0.0, 0.03)))
        if shot.junk:
            # A bad detection: the box catches a fragment of someone at its edge.
            shift = float(rng.choice((-1, 1)) * rng.uniform(0.45, 0.75))
            centre_x = w * (0.5 + float(rng.choice((-1, 1)) * rng.uniform(0.3, 0.6)))
        person_h = scale * h
        canvas = _Canvas(h, w, centre_x, (h - person_h) / 2 + shift * h, person_h)
        # The images of one person by one camera are frames of one track: they walked past in
        # one direction, turning away from it now and then, their gait advancing frame by frame.
        track = _rng(self.seed, _TAG_TRACK, shot.identity, shot.camera)
        view, phase = _pick(track, camera.views), float(track.uniform(0, 2 * math.pi))
        if rng.random() < TURN_PROBABILITY:
            view = _pick(rng, camera.views)
        _paint_person(canvas, person, view, phase=phase + 0.9 * shot.frame)
        canvas.end_person()
        if rng.random() < self.occlusion:
            _paint_occluder(canvas, rng)
        # A body is a cylinder lit from the front: darker towards its silhouette's sides; folds
        # vary the shade of the clothes.
        shade = np.clip(1.0 - 0.25 * (canvas.u / (1.3 * person.shoulders)) ** 2, 0.7, 1.0)
        folds = _fabric_folds(self.seed, h, w)
        fy, fx = int(rng.integers(h + 1)), int(rng.integers(w + 1))
        shading = shade * (1.0 + 0.12 * folds[fy : fy + h, fx : fx + w])
        # Per-image white balance and exposure: the same clothes never look quite the same twice.
        gain = np.exp(rng.normal(0.0, self.colour_jitter, 3) + rng.normal(0.0, self.colour_jitter)).astype(np.float32)
        image = canvas.compose(camera, background, camera.gain * gain, shading, _light_falloff(camera, h, w))

        image = _smooth(image, camera.blur)
        if camera.downsample == 2 and h % 2 == 0 and w % 2 == 0:
            small = image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2]
            image = np.repeat(np.repeat(small * np.float32(0.25), 2, axis=0), 2, axis=1)
        noise = _sensor_noise(self.seed, shot.camera, camera, h, w)
        ny, nx = int(rng.integers(h + 1)), int(rng.integers(w + 1))
        image += noise[ny : ny + h, nx : nx + w]
        return np.clip(image, 0, 255, out=image).astype(np.uint8)


# The set a writing process renders from: handed over once when the process starts, not pickled
# with every chunk of files.
_worker_dataset: SyntheticReID | None = None


def _set_worker_dataset(dataset: SyntheticReID) -> None:
    global _worker_dataset
    _worker_dataset = dataset


def _write_shots(root: str, paths: list[str], dataset: SyntheticReID | None = None) -> int:
    dataset = _worker_dataset if dataset is None else dataset
    for path in paths:
        Image.fromarray(dataset.render(path)).save(os.path.join(root, path), format="JPEG", quality=JPEG_QUALITY)
    return len(paths)


def _write_manifest(root: Path, dataset: SyntheticReID, complete: bool) -> None:
    manifest = {
        "generator": "reidfast.data.synthetic",
        "version": GENERATOR_VERSION,
        "parameters": dataset.parameters,
        "counts": {split: len(getattr(dataset, split)) for split in ("train", "query", "gallery", "junk")},
        "complete": complete,
    }
    temporary = root / (MANIFEST_NAME + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(temporary, root / MANIFEST_NAME)


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != "reidfast.data.synthetic":
        return None
    return manifest


def make_synthetic_reid(
    root,
    num_identities: int = 750,
    images_per_identity: int = 16,
    num_cameras: int = 6,
    height: int = 256,
    width: int = 128,
    seed: int = 0,
    misalignment: float = 0.07,
    occlusion: float = 0.2,
    hard_negatives: float = 0.3,
    colour_jitter: float = 0.06,
    distractors: float = 0.1,
    junk: float = 0.05,
    workers: int | None = None,
):
    """Write a SyntheticReID set (same arguments) as JPEGs in the Market-1501 layout and read it.

    `root` receives bounding_box_train/, bounding_box_test/ (gallery, distractors 0000_*, junk
    -1_*), query/ and a manifest (synthetic_reid.json). A `root` already holding a complete set
    made with the same arguments by the same generator version is returned as it is (the set is a
    cache); one whose writing was interrupted is written again. Any other non-empty `root` is
    refused: nothing a user put there is overwritten. `workers` processes render and encode
    (default: the CPUs this process may use; 1 renders in this process).

    Returns:
        reidfast.data.datasets.Market1501 read from `root`.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or os.PathLike, got {type(root).__name__} {root!r}")
    if workers is not None:
        check_int("workers", workers, 1)
    dataset = SyntheticReID(
        num_identities=num_identities,
        images_per_identity=images_per_identity,
        num_cameras=num_cameras,
        height=height,
        width=width,
        seed=seed,
        misalignment=misalignment,
        occlusion=occlusion,
        hard_negatives=hard_negatives,
        colour_jitter=colour_jitter,
        distractors=distractors,
        junk=junk,
    )
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"root must be a directory, got the file {str(root)!r}")
    if root.exists() and any(root.iterdir()):
        manifest = _read_manifest(root)
        if manifest is None:
            raise ValueError(f"root {str(root)!r} is not empty and holds no synthetic set: refusing to write into it")
        found = {"generator version": manifest.get("version"), **(manifest.get("parameters") or {})}
        asked = {"generator version": GENERATOR_VERSION, **dataset.parameters}
        differences = [
            f"{key} {found.get(key)!r} (asked {value!r})" for key, value in asked.items() if found.get(key) != value
        ]
        if differences:
            raise ValueError(
                f"root {str(root)!r} holds a synthetic set made with other arguments: "
                f"{', '.join(differences)}; refusing to overwrite it"
            )
        if manifest.get("complete") is True:
            return Market1501(str(root))
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _write_manifest(root, dataset, complete=False)

    paths = dataset.paths()
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers == 1:
        _write_shots(str(root), paths, dataset)
    else:
        # Chunks of consecutive files: few enough tasks that scheduling costs nothing, many enough
        # that the processes finish together.
        size = max(1, min(256, len(paths) // (workers * 8)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        processes = min(workers, len(chunks))
        with ProcessPoolExecutor(processes, initializer=_set_worker_dataset, initargs=(dataset,)) as pool:
            written = sum(pool.map(_write_shots, [str(root)] * len(chunks), chunks))
        if written != len(paths):
            raise RuntimeError(f"wrote {written} of {len(paths)} images under {str(root)!r}")
    _write_manifest(root, dataset, complete=True)
    return Market1501(str(root))
