"""plot_ranked_results: the PNG read back, its frame colours where the layout puts them, the
ranking it draws (junk left out, ties by index), image sources, and each error."""

import numpy as np
import pytest
import torch
from PIL import Image

from reidfast.evaluation import plot_ranked_results
from reidfast.evaluation.plot import FRAME, GREEN, GREY, MARGIN, RED

WIDTH, HEIGHT = 32, 64


def tile_pixel(column, dx, dy):
    """A pixel dx, dy from the top-left corner of tile `column` (0: the query)."""
    return MARGIN + column * (WIDTH + MARGIN) + dx, MARGIN + dy


def solid(colour):
    return np.full((20, 10, 3), colour, dtype=np.uint8)


def test_frames_show_true_and_false_matches(tmp_path):
    # Query 0: pid 1, camera 0. Gallery: 0 pid 1 cam 0 (junk, nearest), 1 pid 2, 2 pid 1 cam 1,
    # 3 pid 1 cam 2 tied with 4 pid 3 at 0.4 (index order: 3 before 4).
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.4]], dtype=np.float32)
    gallery = [solid((50 * i, 0, 200)) for i in range(5)]
    paths = plot_ranked_results(
        distmat, [solid((0, 0, 255))], gallery, np.array([1]), np.array([1, 2, 1, 1, 3]),
        np.array([0]), np.array([0, 0, 1, 2, 0]), tmp_path / "sheets", topk=4, width=WIDTH, height=HEIGHT,
    )
    assert [p.name for p in paths] == ["query_0.png"]
    sheet = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert sheet.shape[1] == MARGIN + 5 * (WIDTH + MARGIN)  # the query and 4 ranks
    expected = [GREY, RED, GREEN, GREEN, RED]  # ranks: gallery 1, 2, 3, 4 (junk 0 left out)
    for column, colour in enumerate(expected):
        for dx, dy in ((0, 0), (FRAME - 1, HEIGHT // 2), (WIDTH - 1, HEIGHT - 1), (WIDTH // 2, 1)):
            x, y = tile_pixel(column, dx, dy)
            assert tuple(sheet[y, x]) == colour, (column, dx, dy)
    # Inside the frame, the image itself: gallery 1 (50, 0, 200) at rank 1.
    x, y = tile_pixel(1, WIDTH // 2, HEIGHT // 2)
    assert tuple(sheet[y, x]) == (50, 0, 200)
    x, y = tile_pixel(0, WIDTH // 2, HEIGHT // 2)
    assert tuple(sheet[y, x]) == (0, 0, 255)


def test_image_paths_pil_images_and_chosen_queries(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (8, 16), colour).save(tmp_path / f"g{i}.png")
    gallery = [tmp_path / "g0.png", str(tmp_path / "g1.png"), Image.open(tmp_path / "g2.png")]
    queries = [np.zeros((16, 8), np.uint8), solid((9, 9, 9))]  # grayscale and RGB arrays
    distmat = torch.tensor([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    paths = plot_ranked_results(
        distmat, queries, gallery, [5, 6], [5, 6, 7], [0, 0], [1, 1, 1], tmp_path / "out",
        topk=10, query_indices=[1], width=WIDTH, height=HEIGHT,
    )
    assert [p.name for p in paths] == ["query_1.png"]
    sheet = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert sheet.shape[1] == MARGIN + 4 * (WIDTH + MARGIN)  # topk beyond the gallery: all 3
    centres = [tuple(sheet[tile_pixel(c, WIDTH // 2, HEIGHT // 2)[::-1]]) for c in range(4)]
    assert centres == [(9, 9, 9), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [tuple(sheet[tile_pixel(c, 0, 0)[::-1]]) for c in range(1, 4)]
    assert frames == [RED, GREEN, RED]


@pytest.mark.parametrize("change, error, message", [
    (dict(query_images=[]), ValueError, "query_images must hold Q=1 images, got 0"),
    (dict(gallery_images=[np.zeros((4, 4, 3), np.float32)] * 2), ValueError,
     r"gallery_images\[0\] must be a uint8 array \[H, W, 3\] or \[H, W\]"),
    (dict(gallery_images=[1, 2]), TypeError, r"gallery_images\[0\] must be a path, a PIL image or a uint8 array"),
    (dict(query_indices=[3]), ValueError, r"query_indices: 3 is not a query index in \[0, 1\)"),
    (dict(topk=0), ValueError, "topk must be >= 1, got 0"),
    (dict(width=4), ValueError, "width must be >= 9, got 4"),
    (dict(g_pids=[1]), ValueError, "g_pids must hold G=2 labels, got 1"),
])
def test_errors(tmp_path, change, error, message):
    arguments = dict(
        distmat=np.zeros((1, 2), np.float32), query_images=[solid((0, 0, 0))],
        gallery_images=[solid((0, 0, 0))] * 2, q_pids=[1], g_pids=[1, 2], q_camids=[0], g_camids=[1, 1],
        out_dir=tmp_path,
    )
    arguments.update(change)
    with pytest.raises(error, match=message):
        plot_ranked_results(**arguments)
