"""Image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowvae.images import make_grid, save_grid, upscale_factor


def test_grid_layout_and_values() -> None:
    x = torch.rand(5, 3, 4, 6)
    grid = make_grid(x, nrow=3, padding=1, min_size=0)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    # image 4 sits in row 1, column 1; values are round(255 x)
    expected = (x[4] * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(grid[6:10, 8:14], expected)
    assert np.all(grid[0] == 128)  # padding
    assert make_grid(torch.rand(10, 1, 2, 2), padding=0, min_size=0).shape == (6, 8, 1)  # 3 rows of 4


@pytest.mark.parametrize("channels", [1, 3])
def test_save_grid(tmp_path: Path, channels: int) -> None:
    x = torch.rand(4, channels, 5, 5) * 1.5 - 0.2  # out of range: clamped
    save_grid(x, tmp_path / "g.png", nrow=2)
    with Image.open(tmp_path / "g.png") as image:
        saved = np.asarray(image)
    grid = make_grid(x, nrow=2)
    assert np.array_equal(saved, grid[..., 0] if channels == 1 else grid)


def test_bad_shape() -> None:
    with pytest.raises(ValueError, match="C 1 or 3"):
        make_grid(torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError):
        make_grid(torch.rand(4, 4))


@pytest.mark.parametrize("size, factor", [(8, 8), (28, 3), (32, 2), (64, 1), (100, 1)])
def test_small_images_are_enlarged_to_read_at_a_glance(size: int, factor: int) -> None:
    assert upscale_factor(size, size) == factor and factor * size >= 64
    x = torch.rand(4, 1, size, size)
    grid = make_grid(x, nrow=2, padding=2)
    s = size * factor
    assert grid.shape == (2 * (s + 2) + 2, 2 * (s + 2) + 2, 1)
    # image 3 (row 1, column 1), every pixel a factor x factor square of one value
    block = grid[4 + s : 4 + 2 * s, 4 + s : 4 + 2 * s, 0]
    expected = (x[3, 0] * 255).round().byte().numpy()
    assert np.array_equal(block[::factor, ::factor], expected)
    assert np.array_equal(block, expected.repeat(factor, 0).repeat(factor, 1))


def test_digit_grid_png_is_readable_size(tmp_path: Path) -> None:
    save_grid(torch.rand(64, 1, 8, 8), tmp_path / "g.png", nrow=8)
    with Image.open(tmp_path / "g.png") as image:
        assert min(image.size) >= 8 * 64  # was 82 px for 8 x 8 digits
