"""Image grids of samples and reconstructions, and a user's own images, read as data (numpy + pillow)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import ConfigError
from .files import writing

MIN_IMAGE_SIZE = 64  # pixels: 8x8 digits are drawn 8x larger, 28x28 MNIST 3x, 32x32 CIFAR 2x


def upscale_factor(height: int, width: int, min_size: int = MIN_IMAGE_SIZE) -> int:
    """The smallest integer factor that makes an image's longer side at least ``min_size``."""
    return max(1, math.ceil(min_size / max(height, width)))


class Grid:
    """The layout of ``n`` images of ``(C, H, W)`` in a uint8 ``(H', W', C)`` array: ``nrow`` per row
    (default: a near-square grid), ``padding`` pixels of ``pad_value`` around each, small images
    enlarged by an integer factor (nearest neighbour) until their longer side is ``min_size``."""

    def __init__(
        self, n: int, shape: tuple[int, int, int], nrow: int | None = None, padding: int = 2,
        pad_value: float = 0.5, min_size: int = MIN_IMAGE_SIZE,
    ):  # fmt: skip
        if n < 1 or shape[0] not in (1, 3):
            raise ValueError(f"expected images (N, C, H, W) with N >= 1, C 1 or 3; got {(n, *shape)}")
        self.n, self.channels, self.padding, self.pad_value = n, shape[0], padding, pad_value
        self.scale = upscale_factor(*shape[1:], min_size)
        self.h, self.w = shape[1] * self.scale, shape[2] * self.scale
        self.cols = nrow or math.ceil(math.sqrt(n))
        self.rows = math.ceil(n / self.cols)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        p = self.padding
        return self.rows * (self.h + p) + p, self.cols * (self.w + p) + p

    def empty(self) -> np.ndarray:
        return np.full((*self.size, self.channels), round(self.pad_value * 255), np.uint8)

    def place(self, grid: np.ndarray, images: torch.Tensor, start: int = 0) -> None:
        """Draw ``images`` (B, C, H, W) in [0, 1] into ``grid`` as images ``start … start + B − 1``."""
        x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        x = x.repeat(self.scale, axis=2).repeat(self.scale, axis=3)
        p = self.padding
        for i, image in enumerate(x, start):
            top, left = p + (i // self.cols) * (self.h + p), p + (i % self.cols) * (self.w + p)
            grid[top : top + self.h, left : left + self.w] = image.transpose(1, 2, 0)


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
    layout = Grid(len(images), tuple(images.shape[1:]), nrow, padding, pad_value, min_size)
    grid = layout.empty()
    layout.place(grid, images)
    return grid


def save_array(grid: np.ndarray, path: str | Path, new: bool = False) -> None:
    """Save a uint8 ``(H, W, C)`` array as an image file (format from the suffix, e.g. PNG), encoded
    in memory first: a failed write (full disk) leaves no file that was not there before. ``new``:
    create ``path`` (``FileExistsError`` if it exists) rather than replace it."""
    path = Path(path)
    buffer = io.BytesIO()
    image = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    image.save(buffer, format=Image.registered_extensions()[path.suffix.lower()])
    existed = path.exists() and not new
    with writing(path):  # pillow's and the OS's write errors (disk full) do not name the file
        try:
            with open(path, "xb" if new else "wb") as f:
                f.write(buffer.getvalue())
        except FileExistsError:
            raise
        except BaseException:
            if not existed:
                path.unlink(missing_ok=True)
            raise


def save_grid(
    images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2,
    min_size: int = MIN_IMAGE_SIZE,
) -> None:  # fmt: skip
    """Save :func:`make_grid` of ``images`` as an image file (format from the suffix, e.g. PNG)."""
    save_array(make_grid(images, nrow, padding, min_size=min_size), path)


# the most pixels of one grid: what pillow opens without a decompression-bomb warning
MAX_GRID_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def max_grid_images(shape: tuple[int, int, int]) -> int:
    """The most images of ``shape`` one near-square grid holds within :data:`MAX_GRID_PIXELS`."""
    low, high = 1, MAX_GRID_PIXELS
    while low < high:  # the size grows with n: the largest n that fits, by bisection
        mid = (low + high + 1) // 2
        height, width = Grid(mid, shape).size
        low, high = (mid, high) if height * width <= MAX_GRID_PIXELS else (low, mid - 1)
    return low


def grid_for(n: int, shape: tuple[int, int, int]) -> Grid:
    """The near-square layout of ``n`` images of ``shape``; ``ValueError`` when it would pass
    :data:`MAX_GRID_PIXELS` (said before anything is drawn)."""
    layout = Grid(n, shape)
    height, width = layout.size
    if height * width > MAX_GRID_PIXELS:
        raise ValueError(
            f"{n} images of {'x'.join(map(str, shape))} make a {height}x{width} grid, more than the "
            f"{MAX_GRID_PIXELS} pixels an image viewer opens safely; at most {max_grid_images(shape)} fit"
        )
    return layout


def _folder_arrays(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    """Every image file of ``folder`` (by suffix, sorted by name) as a uint8 (H, W) or (H, W, C) array."""
    known = Image.registered_extensions()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in known)
    if not files:
        raise ConfigError(f"{folder}: no image files (.png, .jpg, ...) in this folder")
    arrays = []
    for path in files:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if image.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
                arrays.append(np.asarray(image))
        except OSError as e:
            raise ConfigError(f"{path}: not a readable image ({e})") from None
    return arrays, [p.name for p in files]


def _npz_array(path: Path) -> np.ndarray:
    """The one array of an .npz file, read as data (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if len(archive.files) != 1:
                raise ConfigError(f"{path}: holds {len(archive.files)} arrays ({', '.join(archive.files)}); "
                                  "save the images as its only array")  # fmt: skip
            return archive[archive.files[0]]
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: not a readable .npz of images ({str(e).splitlines()[0]})") from None


def load_images(path: str | Path, shape: Sequence[int], binary: bool) -> torch.Tensor:
    """A user's images as float32 (N, C, H, W) in [0, 1], checked against a run's data.

    ``path`` is a folder of image files (read with pillow; grayscale or RGB) or an ``.npz``
    holding one array (N, H, W) or (N, H, W, C), uint8 (0..255) or floats in [0, 1]. Their size,
    channels and range must be those of ``shape`` (C, H, W) and ``binary`` data (every pixel 0
    or the maximum); anything else is one :class:`~flowvae.config.ConfigError` saying what.
    """
    path = Path(path)
    c, h, w = shape
    if path.is_dir():
        arrays, names = _folder_arrays(path)
    elif path.suffix == ".npz" and path.is_file():
        array = _npz_array(path)
        arrays, names = list(array), [f"image {i}" for i in range(len(array))]
        if array.ndim not in (3, 4) or len(array) == 0:
            raise ConfigError(f"{path}: expected an array (N, H, W) or (N, H, W, C), got {array.shape}")
    else:
        raise ConfigError(f"{path}: not a folder of images or an .npz file")
    for name, a in zip(names, arrays, strict=True):
        channels = 1 if a.ndim == 2 else a.shape[2]
        if a.shape[:2] != (h, w) or channels != c:
            raise ConfigError(f"{path}: {name} is {a.shape[0]}x{a.shape[1]} with {channels} channel(s); "
                              f"this run's images are {h}x{w} with {c}")  # fmt: skip
    stack = np.stack(arrays)
    if stack.dtype == np.uint8:
        x = torch.from_numpy(stack.astype(np.float32) / 255)
    elif stack.dtype.kind in "fb":
        x = torch.from_numpy(stack.astype(np.float32))
        if not (np.isfinite(stack).all() and 0 <= x.min() and x.max() <= 1):
            span = f"[{x.min():.3g}, {x.max():.3g}]"
            raise ConfigError(f"{path}: float pixels must lie in [0, 1]; these span {span}")
    else:
        raise ConfigError(f"{path}: pixels of type {stack.dtype}; use uint8 (0..255) or floats in [0, 1]")
    if binary and not bool(((x == 0) | (x == 1)).all()):
        levels = len(torch.unique(x))
        raise ConfigError(f"{path}: {levels} gray levels, but this run models binary images (0 or 255): "
                          "threshold them first")  # fmt: skip
    return x.reshape(len(x), h, w, c).permute(0, 3, 1, 2).contiguous()
