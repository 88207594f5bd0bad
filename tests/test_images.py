"""Image grids."""

from __future__ import annotations

import re
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


# ----------------------------------------------------------------------------- a user's images


def _pngs(folder: Path, arrays: list[np.ndarray]) -> Path:
    folder.mkdir()
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    return folder


def test_load_images_reads_a_folder_of_pngs_and_an_npz(tmp_path: Path) -> None:
    from flowvae.images import load_images

    g = np.random.default_rng(0)
    binary = (g.random((3, 8, 8)) < 0.5).astype(np.uint8) * 255
    x = load_images(_pngs(tmp_path / "pngs", list(binary)), (1, 8, 8), binary=True)
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(binary / 255).float())
    np.savez(tmp_path / "x.npz", images=binary)
    assert torch.equal(load_images(tmp_path / "x.npz", (1, 8, 8), binary=True), x)
    rgb = g.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)  # 8-bit colour (N, H, W, C)
    np.savez(tmp_path / "rgb.npz", rgb)
    y = load_images(tmp_path / "rgb.npz", (3, 4, 5), binary=False)
    assert torch.equal(y, torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong-size", "00.png is 10x10 with 1 channel(s); this run's images are 8x8 with 1"),
        ("wrong-channels", "00.png is 8x8 with 3 channel(s); this run's images are 8x8 with 1"),
        ("gray", "gray levels, but this run models binary images (0 or 255): threshold them first"),
        ("floats-out-of-range", "float pixels must lie in [0, 1]; these span [-1, 2]"),
        ("two-arrays", "holds 2 arrays (a, b); save the images as its only array"),
        ("pickled", "not a readable .npz of images"),
        ("empty-folder", "no image files"),
        ("text-file", "not a folder of images or an .npz file"),
    ],
)
def test_load_images_says_what_is_wrong_in_one_line(tmp_path: Path, case: str, message: str) -> None:
    from flowvae.config import ConfigError
    from flowvae.images import load_images

    zeros = np.zeros((8, 8), np.uint8)
    paths = {
        "wrong-size": lambda: _pngs(tmp_path / "p", [np.zeros((10, 10), np.uint8)]),
        "wrong-channels": lambda: _pngs(tmp_path / "p", [np.zeros((8, 8, 3), np.uint8)]),
        "gray": lambda: _pngs(tmp_path / "p", [zeros + 7]),
        "empty-folder": lambda: _pngs(tmp_path / "p", []),
    }
    if case == "floats-out-of-range":
        np.savez(tmp_path / "f.npz", np.linspace(-1, 2, 64).reshape(1, 8, 8))
        path = tmp_path / "f.npz"
    elif case == "two-arrays":
        np.savez(tmp_path / "t.npz", a=zeros[None], b=zeros[None])
        path = tmp_path / "t.npz"
    elif case == "pickled":  # an object array: code, never loaded
        np.savez(tmp_path / "o.npz", np.array([{"x": 1}], dtype=object))
        path = tmp_path / "o.npz"
    elif case == "text-file":
        path = tmp_path / "x.txt"
        path.write_text("hello")
    else:
        path = paths[case]()
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_images(path, (1, 8, 8), binary=True)
    assert "\n" not in str(info.value)
