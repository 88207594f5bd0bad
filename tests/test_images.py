"""Image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowvae.images import make_grid, save_grid


def test_grid_layout_and_values() -> None:
    x = torch.rand(5, 3, 4, 6)
    grid = make_grid(x, nrow=3, padding=1)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    # image 4 sits in row 1, column 1; values are round(255 x)
    expected = (x[4] * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(grid[6:10, 8:14], expected)
    assert np.all(grid[0] == 128)  # padding
    assert make_grid(torch.rand(10, 1, 2, 2), padding=0).shape == (6, 8, 1)  # 3 rows of 4


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
