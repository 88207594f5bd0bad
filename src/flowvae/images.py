"""Image grids of samples and reconstructions (numpy + pillow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 0.5
) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in ``[0, 1]`` (C = 1 or 3) into a uint8 ``(H, W, C)`` array.

    ``nrow`` images per row (default: a near-square grid); ``padding`` pixels of ``pad_value``
    (gray: visible against both black and white backgrounds) around every image.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected images (N, C, H, W) with N >= 1, C 1 or 3; got {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
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


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> None:
    """Save :func:`make_grid` of ``images`` as an image file (format from the suffix, e.g. PNG)."""
    grid = make_grid(images, nrow, padding)
    Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(path)
