"""Image grids of samples and reconstructions (numpy + pillow)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import writing

MIN_IMAGE_SIZE = 64  # pixels: 8x8 digits are drawn 8x larger, 28x28 MNIST 3x, 32x32 CIFAR 2x


def upscale_factor(height: int, width: int, min_size: int = MIN_IMAGE_SIZE) -> int:
    """The smallest integer factor that makes an image's longer side at least ``min_size``."""
    return max(1, math.ceil(min_size / max(height, width)))


def make_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 0.5,
    min_size: int = MIN_IMAGE_SIZE,
) -> np.ndarray:  # fmt: skip
    """Tile ``(N, C, H, W)`` images in ``[0, 1]`` (C = 1 or 3) into a uint8 ``(H', W', C)`` array.

    ``nrow`` images per row (default: a near-square grid); ``padding`` pixels of ``pad_value``
    (gray: visible against both black and white backgrounds) around every image. Small images
    are enlarged by an integer factor (nearest neighbour: every pixel becomes a sharp square)
    until their longer side is at least ``min_size`` pixels, so a grid reads at a glance;
    ``min_size=0`` keeps the original size.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected images (N, C, H, W) with N >= 1, C 1 or 3; got {tuple(images.shape)}")
    scale = upscale_factor(*images.shape[2:], min_size)
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    x = x.repeat(scale, axis=2).repeat(scale, axis=3)
    n, c, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, c),
        round(pad_value * 255),
        np.uint8,
    )
    for i, image in enumerate(x):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = image.transpose(1, 2, 0)
    return grid


def save_grid(
    images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2,
    min_size: int = MIN_IMAGE_SIZE,
) -> None:  # fmt: skip
    """Save :func:`make_grid` of ``images`` as an image file (format from the suffix, e.g. PNG)."""
    grid = make_grid(images, nrow, padding, min_size=min_size)
    with writing(path):  # pillow's write errors (disk full) do not name the file
        Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(path)


@torch.no_grad()
def sample_images(
    model: torch.nn.Module, n: int, temperature: float = 1.0, batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:  # fmt: skip
    """``n`` images ``(n, C, H, W)``: the decoder's mean at z from the prior (std scaled by
    ``temperature``), drawn ``batch_size`` at a time; ``progress`` gets each batch's size."""
    parts = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        parts.append(model.decode_mean(model.sample_prior((k,), temperature=temperature)))
        if progress is not None:
            progress(k)
    return torch.cat(parts)
