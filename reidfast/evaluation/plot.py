"""Ranked-result sheets: each query beside its top-k gallery images, true matches framed green and
false ones red, as PNG files (drawn with Pillow, which torchvision already depends on).

Layout of a sheet (pixels): tiles of width x height with a margin of MARGIN around and between
them; the query is the first tile, the gallery ranks 1 .. k follow in one row. A tile's top-left
corner is (MARGIN + c (width + MARGIN), MARGIN) for column c (0: the query, r: rank r). Gallery
tiles get a frame FRAME pixels wide drawn inside the tile (GREEN for a true match, RED otherwise);
the query gets a GREY frame. Under each tile, a CAPTION-pixel strip says "query <index>" or
"<rank>: <distance>".
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
from PIL import Image, ImageDraw

from reidfast.evaluation.rank import _as_distance_matrix, _as_labels
from reidfast._checks import check_int

MARGIN = 8
FRAME = 4
CAPTION = 16
GREEN = (0, 170, 0)
RED = (220, 0, 0)
GREY = (128, 128, 128)
BACKGROUND = (255, 255, 255)


def plot_ranked_results(
    distmat,
    query_images,
    gallery_images,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    out_dir: str | os.PathLike,
    topk: int = 10,
    query_indices=None,
    width: int = 128,
    height: int = 256,
) -> list[pathlib.Path]:
    """Writes one PNG per query: the query and its top-k valid gallery entries.

    The ranking is evaluate_rank's: same-identity same-camera gallery entries are left out, and
    the others are ordered by (distance, gallery index). A true match is the same identity from
    another camera.

    Args:
        distmat (ndarray or Tensor[Q, G]): distances, smaller is closer.
        query_images (sequence of Q), gallery_images (sequence of G): each an image path, a PIL
            image, or a uint8 array [H, W, 3] or [H, W].
        q_pids, q_camids (Tensor[Q]), g_pids, g_camids (Tensor[G]): integer identities and cameras.
        out_dir: folder for the PNGs (created if missing), named query_<index>.png.
        topk: gallery entries shown per query (fewer where the valid gallery is smaller).
        query_indices: the queries to draw (default: all).
        width, height: tile size; every image is resized to it.

    Returns:
        The paths written, in query order.
    """
    dist = _as_distance_matrix(distmat)
    num_q, num_g = dist.shape
    if len(query_images) != num_q:
        raise ValueError(f"query_images must hold Q={num_q} images, got {len(query_images)}")
    if len(gallery_images) != num_g:
        raise ValueError(f"gallery_images must hold G={num_g} images, got {len(gallery_images)}")
    q_pids = _as_labels("q_pids", q_pids, num_q, "Q", "cpu")
    g_pids = _as_labels("g_pids", g_pids, num_g, "G", "cpu")
    q_camids = _as_labels("q_camids", q_camids, num_q, "Q", "cpu")
    g_camids = _as_labels("g_camids", g_camids, num_g, "G", "cpu")
    check_int("topk", topk, minimum=1)
    check_int("width", width, minimum=2 * FRAME + 1)
    check_int("height", height, minimum=2 * FRAME + 1)
    indices = range(num_q) if query_indices is None else [int(i) for i in query_indices]
    for index in indices:
        if not 0 <= index < num_q:
            raise ValueError(f"query_indices: {index} is not a query index in [0, {num_q})")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    paths = []
    for index in indices:
        row = dist[index].cpu()
        same_pid = g_pids == q_pids[index]
        valid = (~(same_pid & (g_camids == q_camids[index]))).nonzero().squeeze(1)
        order = torch.sort(row[valid], stable=True).indices[:topk]  # ties: lower gallery index first
        ranked = valid[order]
        sheet = _sheet(len(ranked) + 1, width, height)
        _place(sheet, 0, _load(query_images[index], "query_images", index), GREY, f"query {index}", width, height)
        for rank, gallery_index in enumerate(ranked.tolist(), start=1):
            match = bool(same_pid[gallery_index])
            caption = f"{rank}: {float(row[gallery_index]):.3g}"
            image = _load(gallery_images[gallery_index], "gallery_images", gallery_index)
            _place(sheet, rank, image, GREEN if match else RED, caption, width, height)
        path = out_dir / f"query_{index}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def _sheet(columns: int, width: int, height: int) -> Image.Image:
    size = (MARGIN + columns * (width + MARGIN), MARGIN + height + CAPTION + MARGIN)
    return Image.new("RGB", size, BACKGROUND)


def _place(sheet: Image.Image, column: int, image: Image.Image, colour, caption: str, width: int, height: int):
    left, top = MARGIN + column * (width + MARGIN), MARGIN
    sheet.paste(image.resize((width, height)), (left, top))
    draw = ImageDraw.Draw(sheet)
    draw.rectangle([left, top, left + width - 1, top + height - 1], outline=colour, width=FRAME)
    draw.text((left, top + height + 2), caption, fill=(0, 0, 0))


def _load(image, name: str, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(
                f"{name}[{index}] must be a uint8 array [H, W, 3] or [H, W], got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image).convert("RGB")
    raise TypeError(f"{name}[{index}] must be a path, a PIL image or a uint8 array, got {type(image).__name__}")
