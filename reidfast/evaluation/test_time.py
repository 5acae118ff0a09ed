"""Test-time options of the PLA paper ("Progressive Learning Algorithm for Efficient Person
Re-Identification", Sec. 4.2): 10-crop feature averaging and PCA of the embedding."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from reidfast._checks import check_int

TEN_CROP_SCALE = 1.125  # PLA's training enlargement ("amplify by a factor 1.125, then crop")


def ten_crop_features(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      scale: float = TEN_CROP_SCALE) -> torch.Tensor:
    """The mean of `embed` over 10 crops of each image: the batch enlarged `scale` times
    (bilinear), its four corners and its centre at the input size, and their mirrors.

    Args:
        embed: the model's test forward, Tensor[B, 3, H, W] -> Tensor[B, D].
        images: Tensor[B, 3, H, W], normalised (bilinear resizing commutes with the per-channel
            normalisation, so enlarging after it equals enlarging before).
        scale: the enlargement (> 1).
    Returns: Tensor[B, D], the 10 crops' features averaged (float32).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not scale > 1.0:
        raise ValueError(f"scale must be > 1, got {scale}")
    height, width = images.shape[-2:]
    big_h, big_w = round(height * scale), round(width * scale)
    large = F.interpolate(images, size=(big_h, big_w), mode="bilinear", align_corners=False)
    corners = [(0, 0), (0, big_w - width), (big_h - height, 0), (big_h - height, big_w - width),
               ((big_h - height) // 2, (big_w - width) // 2)]
    total = None
    for top, left in corners:
        crop = large[..., top:top + height, left:left + width]
        for view in (crop, crop.flip(-1)):
            features = embed(view).float()
            total = features if total is None else total + features
    return total / 10


class PCA(NamedTuple):
    """A projection on principal components: `project(x) = (x - mean) @ components`.

    mean: Tensor[D]. components: Tensor[D, d], orthonormal columns in decreasing variance.
    explained: Tensor[d], the fraction of the total variance along each component.
    """

    mean: torch.Tensor
    components: torch.Tensor
    explained: torch.Tensor

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Tensor[N, D] -> Tensor[N, d] (float32)."""
        if features.dim() != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be [N, {self.mean.shape[0]}], got shape {tuple(features.shape)}")
        return ((features.double() - self.mean) @ self.components).float()


def fit_pca(features: torch.Tensor, dim: int) -> PCA:
    """The `dim` principal components of `features` (Tensor[N, D], e.g. the training images'
    embeddings; PLA reduces 2048 to 512), from the eigendecomposition of their covariance in
    float64. Each component's sign is fixed (its largest-magnitude entry positive), so the
    projection is reproducible."""
    if features.dim() != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
    check_int("dim", dim, minimum=1)
    n, d = features.shape
    if dim > min(n - 1, d):
        raise ValueError(f"dim={dim} exceeds what {n} features of {d} dimensions span (at most {min(n - 1, d)})")
    x = features.double()
    mean = x.mean(0)
    centred = x - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred / (n - 1))
    order = torch.argsort(values, descending=True)[:dim]
    components = vectors[:, order]
    signs = torch.sign(components.gather(0, components.abs().argmax(0, keepdim=True)))
    components = components * signs
    return PCA(mean, components, values[order].clamp_min(0) / values.clamp_min(0).sum())
