"""Each method's image transforms, split where they run fastest.

A training image goes through two stages (docs/methods.md section 9):

1. `SampleTransform`, per image, on uint8 in the DataLoader workers: resize to the recipe's size
   (times `scale`), horizontal flip, zero padding and a random crop back to the input size. Its
   random draws come from a `torch.Generator` the caller passes (the dataset seeds one per sample,
   see reidfast.data.loader), so an image's augmentation depends on its seed only, not on which
   worker or process decoded it.
2. `BatchTransform`, per batch, on the device the model runs on: uint8 -> float, ImageNet
   normalisation and random erasing, every draw from the transform's own generator.

The test transform is the same two stages without randomness: resize, then normalise.
`flip_average` averages the features of an image and its mirror (MGN's test features).

Random erasing follows Zhong et al., "Random Erasing Data Augmentation", arXiv:1708.04896,
Algorithm 1: with probability p, draw the erased area S_e ~ U(s_l, s_h) * H * W and the aspect
r_e ~ U(r_1, 1 / r_1), take H_e = round(sqrt(S_e * r_e)), W_e = round(sqrt(S_e / r_e)), keep the
draw when H_e < H and W_e < W (else draw again, up to 100 attempts as in the authors' code), and
put the rectangle's top-left corner uniformly where it fits. The rectangle is filled with the
ImageNet mean pixel, i.e. 0 after normalisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import torch
from torchvision.transforms.v2 import functional as TF

from reidfast._checks import check_bool, check_float, check_int, check_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_ATTEMPTS = 100  # the Random Erasing authors' code gives up after 100 rejected draws


def _check_probability(name: str, value) -> None:
    check_float(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_triple(name: str, value, positive: bool) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise TypeError(f"{name} must be 3 floats (R, G, B), got {value!r}")
    for item in value:
        check_float(name, item, positive=positive)


def _check_image(image) -> None:
    check_tensor("image", image, 3, "[3, H, W]")
    if image.dtype != torch.uint8 or image.shape[0] != 3:
        raise ValueError(f"image must be a uint8 Tensor[3, H, W], got {image.dtype} of shape {tuple(image.shape)}")


def _zeros_in_layout_of(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zeros [3, height, width] laid out in memory as `image` is, so that copying `image` into it
    does not transpose: decoded images are [3, H, W] views of [H, W, 3] memory."""
    if image.stride(0) == 1:
        return image.new_zeros(height, width, 3).permute(2, 0, 1)
    return image.new_zeros(3, height, width)


class SampleTransform:
    """Resize, flip, pad and crop one uint8 image: the per-sample, geometric stage.

    `image` (Tensor[3, H, W] uint8) is resized (bilinear, antialiased) to
    `resize_height x resize_width` (skipped when it has that size already), flipped left-right
    with probability `flip_p`, padded with `pad` zero pixels on every side and cropped to
    `height x width` at a uniformly drawn position, in the order torchreid and fast-reid compose
    Resize, RandomHorizontalFlip, Pad and RandomCrop. Returns Tensor[3, height, width] uint8, in
    the input's memory layout (a view of the input when nothing but a crop happens).

    The draws (`params`) are the flip and the crop's top-left corner in the padded image; with
    `flip_p = 0` and no room to move the crop, the transform is deterministic (the test transform).

    Args:
        height, width: the output size.
        resize_height, resize_width: the size images are resized to first (>= height - 2 * pad,
            >= width - 2 * pad, so that the crop fits).
        pad: zero padding on each side before the crop.
        flip_p: the probability of a horizontal flip.
    """

    def __init__(self, height: int, width: int, resize_height: int, resize_width: int, pad: int = 0,
                 flip_p: float = 0.0):
        for name, value in (("height", height), ("width", width), ("resize_height", resize_height),
                            ("resize_width", resize_width)):
            check_int(name, value, minimum=1)
        check_int("pad", pad, minimum=0)
        _check_probability("flip_p", flip_p)
        if resize_height + 2 * pad < height or resize_width + 2 * pad < width:
            raise ValueError(
                f"the {height}x{width} crop does not fit the {resize_height}x{resize_width} image padded by {pad}"
            )
        self.height, self.width = height, width
        self.resize_height, self.resize_width = resize_height, resize_width
        self.pad, self.flip_p = pad, flip_p
        # Number of possible crop positions along each axis of the padded image.
        self._rows = resize_height + 2 * pad - height + 1
        self._cols = resize_width + 2 * pad - width + 1

    def params(self, generator: torch.Generator | None = None) -> tuple[bool, int, int]:
        """One draw: (flip, top, left), the crop's corner in the padded, flipped image. Three
        uniforms from `generator` (torch's default generator when None), always three, so that
        the stream of draws does not depend on the recipe's probabilities."""
        u_flip, u_top, u_left = torch.rand(3, generator=generator).tolist()
        return u_flip < self.flip_p, int(u_top * self._rows), int(u_left * self._cols)

    def apply(self, image: torch.Tensor, flip: bool, top: int, left: int) -> torch.Tensor:
        """The transform with given draws (see `params`): Tensor[3, height, width] uint8."""
        _check_image(image)
        if tuple(image.shape[1:]) != (self.resize_height, self.resize_width):
            image = TF.resize(image, [self.resize_height, self.resize_width], antialias=True)
        if flip:
            # The padding is symmetric, so cropping the flipped image at `left` is flipping the
            # crop of the unflipped image at the mirrored column: only the crop is flipped.
            left = self._cols - 1 - left
        # Rows and columns of the crop in the unpadded image; those outside are the zero padding.
        y0, x0 = top - self.pad, left - self.pad
        y1, x1 = y0 + self.height, x0 + self.width
        sy0, sx0 = max(y0, 0), max(x0, 0)
        sy1, sx1 = min(y1, self.resize_height), min(x1, self.resize_width)
        if (sy0, sx0, sy1, sx1) == (y0, x0, y1, x1):
            out = image[:, y0:y1, x0:x1]
        else:
            out = _zeros_in_layout_of(image, self.height, self.width)
            out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
        return out.flip(-1) if flip else out

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(image, *self.params(generator))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(height={self.height}, width={self.width}, resize_height="
                f"{self.resize_height}, resize_width={self.resize_width}, pad={self.pad}, flip_p={self.flip_p})")


class BatchTransform:
    """uint8 -> float, normalisation and random erasing of a whole batch, on `device`.

    `images` (Tensor[B, 3, H, W] uint8, on `device`) becomes `(images / 255 - mean) / std` in
    float32; then each image, with probability `erase_p`, gets one rectangle set to 0 (the mean
    pixel), drawn as Zhong et al.'s Algorithm 1 draws it (module docstring). Every draw comes from
    the transform's own `torch.Generator` on `device`, seeded with `seed`: the same seed and the
    same sequence of batch shapes give the same output on one device (CPU and CUDA streams
    differ). `state_dict()` holds the generator's state, for a checkpoint; in distributed training
    give each rank its own seed.

    Args:
        mean, std: per-channel statistics of images in [0, 1] (ImageNet's by default).
        erase_p: the probability p that an image is erased (0: no erasing).
        erase_area: (s_l, s_h), the range of the erased fraction of the image area.
        erase_aspect: r_1 in (0, 1]; the rectangle's aspect H_e / W_e is drawn from U(r_1, 1 / r_1).
        device: where the batches are, and the generator.
        seed: the generator's seed.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, erase_p: float = 0.0,
                 erase_area: tuple[float, float] = (0.02, 0.4), erase_aspect: float = 0.3,
                 device: torch.device | str = "cpu", seed: int = 0):
        _check_triple("mean", mean, positive=False)
        _check_triple("std", std, positive=True)
        _check_probability("erase_p", erase_p)
        _check_erase_shape(erase_area, erase_aspect)
        check_int("seed", seed, minimum=0)
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.erase_p, self.erase_area, self.erase_aspect = erase_p, tuple(erase_area), erase_aspect
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        # (x / 255 - mean) / std as one multiply-add per element.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32, device=self.device) / std_t
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # width -> scale, shift per pixel row

    def sample_erasing(self, batch_size: int, height: int, width: int) -> torch.Tensor:
        """The erasing draws of one batch: LongTensor[B, 4] on `device`, rows (top, left, h, w);
        h = w = 0 where an image is not erased (probability 1 - p, or all 100 attempts rejected).

        Draws, in this order and always all of them (so the stream does not depend on p): B
        uniforms for the decision, then B x 100 each of area fraction, aspect, top and left."""
        check_int("batch_size", batch_size, minimum=0)
        check_int("height", height, minimum=1)
        check_int("width", width, minimum=1)
        shape, g, dev = (batch_size, ERASE_ATTEMPTS), self.generator, self.device
        decide = torch.rand(batch_size, generator=g, device=dev)
        low, high = self.erase_area
        area = (low + (high - low) * torch.rand(shape, generator=g, device=dev, dtype=torch.float64)) * (height * width)
        r1 = self.erase_aspect
        aspect = r1 + (1.0 / r1 - r1) * torch.rand(shape, generator=g, device=dev, dtype=torch.float64)
        u_top = torch.rand(shape, generator=g, device=dev, dtype=torch.float64)
        u_left = torch.rand(shape, generator=g, device=dev, dtype=torch.float64)
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (h < height) & (w < width)
        first = fits.long().argmax(dim=1, keepdim=True)  # the first accepted attempt (0 if none)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        top = (u_top.gather(1, first).squeeze(1) * (height - h + 1)).long()
        left = (u_left.gather(1, first).squeeze(1) * (width - w + 1)).long()
        erased = (decide < self.erase_p) & fits.any(dim=1)
        boxes = torch.stack([top, left, h, w], dim=1)
        return boxes * erased.unsqueeze(1)

    def apply(self, images: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
        """Normalise `images` (Tensor[B, 3, H, W] uint8, best in channels_last memory format, as
        collated) and zero the rectangles `boxes` (LongTensor[B, 4] of (top, left, h, w), or None
        for no erasing): Tensor[B, 3, H, W] float32 in channels_last memory format."""
        check_tensor("images", images, 4, "[B, 3, H, W]")
        if images.dtype != torch.uint8 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} of shape {tuple(images.shape)}")
        if images.device != self.device:
            raise ValueError(f"images must be on the transform's device {self.device}, got {images.device}")
        batch, _, height, width = images.shape
        # Channels last, each pixel row is W * 3 contiguous values: the per-channel affine becomes
        # one row-long pattern, so the multiply-add runs over long contiguous rows (a [1, 3, 1, 1]
        # broadcast would make the innermost loop 3 elements long).
        pixels = images.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        rows = pixels.reshape(batch * height, width * 3).to(torch.float32)
        if width not in self._rows:
            self._rows[width] = (self._scale.repeat(width), self._shift.repeat(width))
        scale, shift = self._rows[width]
        out = torch.addcmul(shift, rows, scale, out=rows).view(batch, height, width, 3).permute(0, 3, 1, 2)
        if boxes is not None:
            # On the CPU a slice per image touches only the rectangles, where a mask over the batch
            # costs more than the normalisation; elsewhere the mask keeps the boxes on the device
            # (reading them back to the host would synchronise every batch).
            (_erase_by_slices if out.device.type == "cpu" else _erase_by_mask)(out, boxes)
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """`apply(images, sample_erasing(B, H, W))`, skipping the draws when erase_p is 0."""
        check_tensor("images", images, 4, "[B, 3, H, W]")
        if self.erase_p == 0.0:
            return self.apply(images, None)
        batch, _, height, width = images.shape
        return self.apply(images, self.sample_erasing(batch, height, width))

    def state_dict(self) -> dict:
        """{"generator": ByteTensor}: what a checkpoint needs to continue the draws exactly."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(erase_p={self.erase_p}, erase_area={self.erase_area}, erase_aspect="
                f"{self.erase_aspect}, device={self.device}, seed={self.seed})")


def _erase_by_slices(images: torch.Tensor, boxes: torch.Tensor) -> None:
    """Sets the rectangles `boxes` (LongTensor[B, 4]: top, left, h, w) of `images` [B, C, H, W] to 0, in place."""
    for image, (top, left, h, w) in zip(images, boxes.tolist()):
        image[:, top : top + h, left : left + w] = 0.0


def _erase_by_mask(images: torch.Tensor, boxes: torch.Tensor) -> None:
    """The same as `_erase_by_slices`, as one mask over the batch, without reading `boxes`."""
    top, left, h, w = (column.view(-1, 1, 1, 1) for column in boxes.unbind(1))
    rows = torch.arange(images.shape[2], device=images.device).view(1, 1, -1, 1)
    cols = torch.arange(images.shape[3], device=images.device).view(1, 1, 1, -1)
    images.masked_fill_((rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w), 0.0)


def _check_erase_shape(erase_area, erase_aspect) -> None:
    if not isinstance(erase_area, (tuple, list)) or len(erase_area) != 2:
        raise TypeError(f"erase_area must be (low, high), got {erase_area!r}")
    for value in erase_area:
        check_float("erase_area", value)
    if not 0.0 < erase_area[0] <= erase_area[1] <= 1.0:
        raise ValueError(f"erase_area must satisfy 0 < low <= high <= 1, got {tuple(erase_area)}")
    check_float("erase_aspect", erase_aspect, positive=True)
    if erase_aspect > 1.0:
        raise ValueError(f"erase_aspect must be in (0, 1] (aspects are drawn from [r, 1/r]), got {erase_aspect}")


@dataclasses.dataclass(frozen=True)
class TransformRecipe:
    """A method's transforms as data, so that a config can name a method and override any field.

    Training: resize to round(scale * height) x round(scale * width), flip with probability
    `flip_p`, pad by `pad`, random crop to height x width, normalise with `mean` / `std`, random
    erasing with probability `erase_p` over `erase_area` and aspects [erase_aspect,
    1 / erase_aspect]. Test: resize to height x width and normalise.
    """

    height: int
    width: int
    flip_p: float = 0.5
    scale: float = 1.0
    pad: int = 0
    erase_p: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: float = 0.3
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        check_int("height", self.height, minimum=1)
        check_int("width", self.width, minimum=1)
        _check_probability("flip_p", self.flip_p)
        check_float("scale", self.scale, positive=True)
        check_int("pad", self.pad, minimum=0)
        _check_probability("erase_p", self.erase_p)
        _check_erase_shape(self.erase_area, self.erase_aspect)
        _check_triple("mean", self.mean, positive=False)
        _check_triple("std", self.std, positive=True)
        # Tuples, whatever sequence a config gave, so that recipes compare and hash.
        for name in ("erase_area", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        room = 2 * self.pad
        if round(self.scale * self.height) + room < self.height or round(self.scale * self.width) + room < self.width:
            raise ValueError(
                f"scale={self.scale} with pad={self.pad} leaves no room for a {self.height}x{self.width} crop"
            )

    def sample_transform(self, train: bool = True) -> SampleTransform:
        """The per-sample uint8 stage: random resize-flip-pad-crop for training, resize for testing."""
        check_bool("train", train)
        if not train:
            return SampleTransform(self.height, self.width, self.height, self.width)
        return SampleTransform(self.height, self.width, round(self.scale * self.height),
                               round(self.scale * self.width), self.pad, self.flip_p)

    def batch_transform(self, train: bool = True, device: torch.device | str = "cpu", seed: int = 0) -> BatchTransform:
        """The batched float stage on `device`: normalisation, and random erasing for training."""
        check_bool("train", train)
        return BatchTransform(self.mean, self.std, self.erase_p if train else 0.0, self.erase_area,
                              self.erase_aspect, device=device, seed=seed)


# Each method's recipe as its paper gives it; docs/methods.md section 9 says where a paper is silent.
RECIPES: dict[str, TransformRecipe] = {
    # Pyramid: 384x128 "as PCB"; no augmentation named: PCB's horizontal flip.
    "pyramid": TransformRecipe(384, 128),
    # PLA: 256x128, enlarged by 1.125 and randomly cropped back, flip, random erasing p = 0.5.
    "pla": TransformRecipe(256, 128, scale=1.125, erase_p=0.5),
    # MGN: 384x128, "only random horizontal flipping".
    "mgn": TransformRecipe(384, 128),
    # Adaptive margin: 230x80 input; no augmentation named: torchreid's default, the flip.
    "adaptive_margin": TransformRecipe(230, 80),
    # PLR-OSNet: 256x128, flip, random erasing (p = 0.5, the authors' torchreid-based code).
    "plr_osnet": TransformRecipe(256, 128, erase_p=0.5),
    # PCB: 384x128, horizontal flip.
    "pcb": TransformRecipe(384, 128),
}


def recipe_for(method: str, **overrides) -> TransformRecipe:
    """The recipe of `method` ("pyramid", "pla", "mgn", "adaptive_margin", "plr_osnet", "pcb")
    with `overrides` (any TransformRecipe field, e.g. height=256, erase_p=0.0) applied."""
    if method not in RECIPES:
        raise ValueError(f"method must be one of {sorted(RECIPES)}, got {method!r}")
    fields = {field.name for field in dataclasses.fields(TransformRecipe)}
    for key in overrides:
        if key not in fields:
            raise TypeError(f"unknown transform option {key!r}; the options are {sorted(fields)}")
    return dataclasses.replace(RECIPES[method], **overrides)


class Transforms(NamedTuple):
    """The two stages of one recipe: `sample` for the dataset, `batch` for the device."""

    sample: SampleTransform
    batch: BatchTransform


def transforms_for(method: str, train: bool = True, device: torch.device | str = "cpu", seed: int = 0,
                   **overrides) -> Transforms:
    """`method`'s training (or test) transforms: `recipe_for(method, **overrides)` made into its
    per-sample stage and its batched stage on `device` (erasing draws seeded with `seed`).

    Example: `sample, batch = transforms_for("mgn", height=256, device="cuda", seed=rank)`, the
    dataset built with `transform=sample`, and each collated batch `batch(images.cuda())`.
    """
    recipe = recipe_for(method, **overrides)
    return Transforms(recipe.sample_transform(train), recipe.batch_transform(train, device, seed))


def flip_average(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """(embed(images) + embed(mirrored images)) / 2, the flip-averaged test feature of MGN
    (Wang et al., arXiv:1804.01438, Sec. 4.1): `images` Tensor[B, 3, H, W] (normalised floats),
    `embed` a model in eval mode or any function returning Tensor[B, D]. Returns Tensor[B, D]."""
    check_tensor("images", images, 4, "[B, 3, H, W]")
    return (embed(images) + embed(images.flip(-1))) / 2
