"""reidfast.data.transforms: the per-sample uint8 stage, the batched float stage, the recipes and
flip averaging, against expectations worked out by hand and against plain torchvision."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from reidfast.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    BatchTransform,
    SampleTransform,
    TransformRecipe,
    _erase_by_mask,
    _erase_by_slices,
    flip_average,
    recipe_for,
    transforms_for,
)

from conftest import seed_for


def _numbered(height, width):
    """Tensor[3, H, W] uint8 with value 100 * channel + 10 * row + column + 1 (never 0, so the
    zero padding shows)."""
    c = torch.arange(3).view(3, 1, 1)
    r = torch.arange(height).view(1, height, 1)
    x = torch.arange(width).view(1, 1, width)
    return (100 * c + 10 * r + x + 1).to(torch.uint8)


def test_flip_reverses_the_columns():
    image = _numbered(2, 3)
    out = SampleTransform(2, 3, 2, 3, flip_p=1.0).apply(image, True, 0, 0)
    assert out[0].tolist() == [[3, 2, 1], [13, 12, 11]]
    assert out[2].tolist() == [[203, 202, 201], [213, 212, 211]]


def test_pad_and_crop_offsets():
    image = _numbered(3, 3)
    transform = SampleTransform(3, 3, 3, 3, pad=1, flip_p=0.5)
    # Corner (0, 2) of the image padded by 1: padded rows 0..2 = image rows -1..1, columns 1..3.
    assert transform.apply(image, False, 0, 2)[0].tolist() == [[0, 0, 0], [2, 3, 0], [12, 13, 0]]
    # Flipped first: padded, mirrored row 0 is [0, 3, 2, 1, 0]; columns 2..4 are [2, 1, 0].
    assert transform.apply(image, True, 0, 2)[0].tolist() == [[0, 0, 0], [2, 1, 0], [12, 11, 0]]
    # The centre crop of the padded image is the image itself.
    assert torch.equal(transform.apply(image, False, 1, 1), image)
    assert transform.apply(image, False, 2, 0)[1].tolist() == [[0, 111, 112], [0, 121, 122], [0, 0, 0]]


def test_draws_cover_every_crop_and_flip_at_the_set_rate():
    transform = SampleTransform(8, 6, 8, 6, pad=2, flip_p=0.25)
    generator = torch.Generator().manual_seed(seed_for("draws"))
    draws = [transform.params(generator) for _ in range(4000)]
    tops, lefts = {top for _, top, _ in draws}, {left for _, _, left in draws}
    assert tops == set(range(5)) and lefts == set(range(5))  # 2 * pad + 1 positions each way
    flips = sum(flip for flip, _, _ in draws) / len(draws)
    assert abs(flips - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5


def test_same_generator_seed_gives_the_same_sample():
    transform = recipe_for("pla", height=32, width=16).sample_transform()
    image = torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8)
    first = transform(image, torch.Generator().manual_seed(5))
    assert torch.equal(first, transform(image, torch.Generator().manual_seed(5)))
    others = [transform(image, torch.Generator().manual_seed(seed)) for seed in range(6, 12)]
    assert any(not torch.equal(first, other) for other in others)


def test_normalisation_by_hand():
    images = torch.tensor([255, 0, 128], dtype=torch.uint8).view(1, 3, 1, 1)
    out = BatchTransform()(images).flatten().tolist()
    # (255/255 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128/255 - 0.406) / 0.225
    assert out == pytest.approx([2.2489083, -2.0357143, 0.4264924], abs=1e-6)


def test_erasing_region_statistics():
    # 200 x 200 with areas up to 0.25: no draw is ever rejected (h and w stay below 200), so the
    # erased area fraction is U(0.02, 0.25) (mean 0.135) and the aspect U(0.3, 1/0.3) (mean 1.8167).
    transform = BatchTransform(erase_p=0.5, erase_area=(0.02, 0.25), seed=seed_for("erasing"))
    boxes = transform.sample_erasing(4000, 200, 200).double()
    top, left, h, w = boxes.unbind(1)
    erased = h > 0
    assert abs(erased.double().mean().item() - 0.5) < 4 * (0.25 / 4000) ** 0.5
    assert bool((top + h <= 200).all() and (left + w <= 200).all() and (top >= 0).all() and (left >= 0).all())
    area = (h * w / 200**2)[erased]
    assert area.min() >= 0.019 and area.max() <= 0.252
    assert abs(area.mean().item() - 0.135) < 0.006
    assert abs((h / w)[erased].mean().item() - 1.8167) < 0.06
    # The corner is uniform over the positions where the rectangle fits.
    assert abs((top / (200 - h))[erased].mean().item() - 0.5) < 0.02
    assert bool((boxes[~erased] == 0).all())


def test_erasing_never_overflows_a_person_image():
    boxes = BatchTransform(erase_p=1.0, seed=3).sample_erasing(2000, 256, 128)
    top, left, h, w = boxes.unbind(1)
    assert bool((h < 256).all() and (w < 128).all() and (top + h <= 256).all() and (left + w <= 128).all())
    assert (h > 0).float().mean() > 0.95  # the 100 attempts almost always find a fitting rectangle


def test_erased_rectangle_is_the_mean_pixel():
    images = torch.randint(0, 256, (2, 3, 10, 8), dtype=torch.uint8)
    transform = BatchTransform()
    out = transform.apply(images, torch.tensor([[2, 1, 3, 4], [0, 0, 0, 0]]))
    plain = transform.apply(images, None)
    assert bool((out[0, :, 2:5, 1:5] == 0).all())
    mask = torch.ones(10, 8, dtype=torch.bool)
    mask[2:5, 1:5] = False
    assert torch.equal(out[0][:, mask], plain[0][:, mask])
    assert torch.equal(out[1], plain[1])


def test_erasing_by_mask_equals_erasing_by_slices():
    # The CPU erases by slices, other devices by a mask: both on the CPU here, on the same boxes.
    boxes = BatchTransform(erase_p=0.7, seed=9).sample_erasing(16, 40, 24)
    by_slices = torch.randn(16, 3, 40, 24)
    by_mask = by_slices.clone()
    _erase_by_slices(by_slices, boxes)
    _erase_by_mask(by_mask, boxes)
    assert torch.equal(by_slices, by_mask)
    assert (by_mask == 0).sum() == 3 * (boxes[:, 2] * boxes[:, 3]).sum() > 0


def test_batched_path_equals_plain_torchvision_per_sample():
    sample, batch = transforms_for("plr_osnet", height=48, width=24, pad=4, scale=1.125, seed=11)
    generator = torch.Generator().manual_seed(seed_for("plain"))
    images = [torch.randint(0, 256, (3, 30 + 7 * i, 15 + 3 * i), dtype=torch.uint8, generator=generator)
              for i in range(8)]
    seeds = [seed_for("sample", i) for i in range(8)]
    out = batch(torch.stack([sample(image, torch.Generator().manual_seed(s)) for image, s in zip(images, seeds)]))
    boxes = BatchTransform(erase_p=0.5, seed=11).sample_erasing(8, 48, 24).tolist()
    flips = 0
    for image, seed, box, got in zip(images, seeds, boxes, out):
        flip, top, left = sample.params(torch.Generator().manual_seed(seed))
        flips += flip
        x = TF.resize(image, [54, 27], antialias=True)  # round(1.125 * 48) x round(1.125 * 24)
        x = TF.horizontal_flip(x) if flip else x
        x = TF.crop(TF.pad(x, [4]), top, left, 48, 24)
        x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))
        if box[2] > 0:
            x = TF.erase(x, *box, v=torch.tensor(0.0))
        torch.testing.assert_close(got, x, rtol=0, atol=1e-6)
    assert 0 < flips < 8 and 0 < sum(box[2] > 0 for box in boxes) < 8  # both branches were taken


def test_batch_transform_reproducible_and_resumable():
    images = torch.randint(0, 256, (6, 3, 32, 16), dtype=torch.uint8)
    first, second = BatchTransform(erase_p=0.5, seed=4), BatchTransform(erase_p=0.5, seed=4)
    assert torch.equal(first(images), second(images))
    assert first(images).is_contiguous(memory_format=torch.channels_last)
    state = first.state_dict()
    expected = first(images)
    resumed = BatchTransform(erase_p=0.5, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(images), expected)
    assert not torch.equal(BatchTransform(erase_p=0.5, seed=5)(images), second(images))


def test_recipes_as_the_papers_give_them():
    assert (RECIPES["pyramid"].height, RECIPES["mgn"].height, RECIPES["plr_osnet"].height) == (384, 384, 256)
    assert (RECIPES["adaptive_margin"].height, RECIPES["adaptive_margin"].width) == (230, 80)
    pla = recipe_for("pla").sample_transform()
    assert (pla.resize_height, pla.resize_width, pla.height, pla.width) == (288, 144, 256, 128)
    assert RECIPES["pla"].erase_p == RECIPES["plr_osnet"].erase_p == 0.5 and RECIPES["mgn"].erase_p == 0.0
    test = recipe_for("pla").sample_transform(train=False)
    image = torch.randint(0, 256, (3, 128, 64), dtype=torch.uint8)
    torch.testing.assert_close(test(image), TF.resize(image, [256, 128], antialias=True), rtol=0, atol=0)
    assert transforms_for("plr_osnet", train=False).batch.erase_p == 0.0
    assert recipe_for("mgn", height=256, erase_p=0.5) == TransformRecipe(256, 128, erase_p=0.5)


@pytest.mark.parametrize("call, error, message", [
    (lambda: recipe_for("resnet"), ValueError, "method must be one of"),
    (lambda: recipe_for("mgn", erase_prob=0.5), TypeError, "unknown transform option 'erase_prob'"),
    (lambda: recipe_for("mgn", erase_p=1.5), ValueError, "erase_p must be in \\[0, 1\\], got 1.5"),
    (lambda: recipe_for("mgn", height=0), ValueError, "height must be >= 1, got 0"),
    (lambda: recipe_for("mgn", scale=0.5), ValueError, "no room for a 384x128 crop"),
    (lambda: recipe_for("mgn", erase_area=(0.4, 0.1)), ValueError, "erase_area must satisfy"),
    (lambda: recipe_for("mgn", erase_aspect=2.0), ValueError, "erase_aspect must be in \\(0, 1\\]"),
    (lambda: recipe_for("mgn", std=(1.0, 0.0, 1.0)), ValueError, "std must be > 0"),
    (lambda: SampleTransform(8, 8, 4, 4, pad=1), ValueError, "does not fit"),
    (lambda: SampleTransform(4, 4, 4, 4)(torch.zeros(3, 4, 4)), ValueError, "image must be a uint8"),
    (lambda: BatchTransform()(torch.zeros(1, 3, 4, 4)), ValueError, "images must be uint8"),
    (lambda: BatchTransform()(torch.zeros(3, 4, 4, dtype=torch.uint8)), ValueError, "images must be 4-D"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_flip_average_by_hand():
    images = torch.tensor([1.0, 2.0, 6.0]).view(1, 1, 1, 3).expand(2, 3, 1, 3)

    def embed(x):
        return x[:, 0, 0, :] * torch.tensor([1.0, 0.0, 0.0])  # the leftmost pixel only

    # leftmost of the image 1, of its mirror 6: the average is 3.5.
    assert flip_average(embed, images).tolist() == [[3.5, 0.0, 0.0]] * 2


@pytest.mark.gpu
def test_batch_transform_on_the_gpu_matches_the_cpu_on_its_boxes():
    images = torch.randint(0, 256, (16, 3, 64, 32), dtype=torch.uint8)
    gpu = BatchTransform(erase_p=0.5, seed=2, device="cuda")
    out = gpu(images.cuda())
    again = BatchTransform(erase_p=0.5, seed=2, device="cuda")
    boxes = again.sample_erasing(16, 64, 32)
    assert torch.equal(out, again.apply(images.cuda(), boxes))  # the same draws on the device
    expected = BatchTransform().apply(images, boxes.cpu())
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-6)
    assert 0 < int((boxes[:, 2] > 0).sum()) < 16
