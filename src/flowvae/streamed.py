"""Datasets too large for memory, streamed from a uint8 cache on disk: downsampled ImageNet and
CelebA 64x64. Each is read from its published files once into a ``.npy`` in
``data.root/flowvae-cache/`` (or ``$FLOWVAE_CACHE``), which is then memory-mapped; the splits
are ``DiskImages``, which read the images a batch indexes.

Downsampled ImageNet 32x32 and 64x64 (Chrabaszcz, Loshchilov & Hutter 2017, arXiv 1707.08819),
from the official npz batches.

``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz`` hold ``data``:
N x (3 r r) uint8 rows, channel-major (the R plane, then G, then B; r x r row-major each), as
CIFAR-10's batches do. 1,281,167 training and 50,000 validation images. Nothing here is ever
held in memory whole: the batch files are copied into the cache one at a time.

Split: the validation file is the test split (bits/dim on it is the number these tables report);
``data.valid_size`` (default 5,000, as vdvae holds out) training images, chosen by a shuffle
seeded by ``data.seed``, are the validation split.

CelebA 64x64 (Liu et al. 2015): ``img_align_celeba/*.jpg`` (the aligned 178x218 images) and
``list_eval_partition.txt``, the official partition (162,770 / 19,867 / 19,962). Each image is
centre-cropped to 148x148 and resized to 64x64 with PIL's bilinear filter (antialiased), the
common preprocessing of the VAE literature (e.g. torchvision's ``CenterCrop(148)`` then
``Resize(64)``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import DataConfig
from .datafiles import (
    SPLIT,
    Arrays,
    DataError,
    Dataset,
    DiskImages,
    first_line,
    generator,
    missing_file,
    valid_size,
)

log = logging.getLogger(__name__)

TRAIN_BATCHES = 10
SOURCE = "https://image-net.org/download-images (Downsampled ImageNet; an account is needed)"


def _find(root: Path, name: str, folder: str) -> Path:
    """``root/name``, or ``root/folder/name`` (where the official zip unpacks)."""
    for path in (root / name, root / folder / name):
        if path.is_file():
            return path
    raise missing_file(root, name)


def _header(path: Path, columns: int) -> int:
    """The number of images in the batch file ``path``, from the header of its ``data`` array
    only; checks that it is uint8 (N, columns)."""
    try:
        with zipfile.ZipFile(path) as z:
            if "data.npy" not in z.namelist():
                found = ", ".join(n.removesuffix(".npy") for n in z.namelist()) or "none"
                raise DataError(f"{path.name}: no array 'data' (arrays: {found})")
            with z.open("data.npy") as f:
                fmt = np.lib.format
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read(f)
    except DataError:
        raise
    except Exception as e:  # a truncated or foreign file can raise nearly anything
        raise DataError(f"{path.name}: not a readable .npz file ({first_line(e)})") from None
    if dtype != np.uint8 or len(shape) != 2 or fortran:
        raise DataError(f"{path.name}: 'data' is {dtype} {shape}, expected uint8 (N, {columns})")
    if shape[1] != columns:
        side = round((shape[1] / 3) ** 0.5)
        raise DataError(
            f"{path.name}: rows of {shape[1]} values ({side}x{side} RGB?), expected {columns} "
            f"({round((columns / 3) ** 0.5)}x{round((columns / 3) ** 0.5)} RGB, channel-major)"
        )
    return shape[0]


def _read(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["data"]
    except Exception as e:
        raise DataError(f"{path.name}: not a readable .npz file ({first_line(e)})") from None


def cached(
    root: Path, name: str, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]
) -> np.ndarray:
    """A memory-mapped uint8 ``.npy`` of ``shape`` in ``data.root/flowvae-cache/`` (or
    ``$FLOWVAE_CACHE``), written once by ``fill(array)`` (through a temporary file, renamed when
    complete); ``key`` names what it was made from, so changed files make a new cache."""
    folder = Path(os.environ.get("FLOWVAE_CACHE") or root / "flowvae-cache")
    cache = folder / f"{name}-{key[:16]}.npy"
    if not cache.is_file():
        tmp = cache.with_suffix(".part")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            out = np.lib.format.open_memmap(tmp, "w+", np.uint8, shape)
        except OSError as e:
            raise DataError(
                f"{folder}: cannot write the image cache ({e.strerror or e}); set $FLOWVAE_CACHE to a "
                "writable folder"
            ) from None
        try:
            log.info("%s: writing the image cache %s (once)", name, cache)
            fill(out)
            out.flush()
            del out
            os.replace(tmp, cache)
        finally:
            tmp.unlink(missing_ok=True)
    return np.load(cache, mmap_mode="r")


def _batches(root: Path, paths: list[Path], side: int, name: str) -> np.ndarray:
    """The images of the batch files ``paths``, cached (batch file by batch file)."""
    columns = 3 * side * side
    counts = [_header(p, columns) for p in paths]
    key = hashlib.sha256(repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]).encode())

    def fill(out: np.ndarray) -> None:
        start = 0
        for path, n in zip(paths, counts, strict=True):
            data = _read(path)
            if data.shape != (n, columns):
                raise DataError(f"{path.name}: 'data' is {data.shape}, its header said {(n, columns)}")
            out[start : start + n] = data.reshape(n, 3, side, side)
            start += n

    return cached(root, name, key.hexdigest(), (sum(counts), 3, side, side), fill)


def _loader(side: int):
    def load(cfg: DataConfig, root: Path) -> Arrays:
        train_folder, val_folder = f"Imagenet{side}_train_npz", f"Imagenet{side}_val_npz"
        train_files = [
            _find(root, f"train_data_batch_{i}.npz", train_folder) for i in range(1, TRAIN_BATCHES + 1)
        ]
        val_file = _find(root, "val_data.npz", val_folder)
        train = _batches(root, train_files, side, f"{cfg.name}-train")
        test = _batches(root, [val_file], side, f"{cfg.name}-val")
        n = len(train)
        v = valid_size(cfg, 5000, n)
        perm = torch.randperm(n, generator=generator(SPLIT, cfg.seed)).numpy()
        return (
            DiskImages(train, np.sort(perm[: n - v])),
            DiskImages(train, np.sort(perm[n - v :])),
            DiskImages(test),
        )

    return load


_FILES = "train_data_batch_1..10.npz and val_data.npz"
DATASETS: dict[str, Dataset] = {
    f"imagenet{side}": Dataset(
        _loader(side),
        "none",
        files=f"Imagenet{side} {_FILES}",
        sizes=(1_276_167, 5000, 50_000),
        source=SOURCE,
    )
    for side in (32, 64)
}


# ---------------------------------------------------------------------------------------------
# CelebA 64x64

CELEBA_SOURCE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive; no stable direct URL)"
CELEBA_ALIGNED = (178, 218)  # width, height of img_align_celeba's images
CELEBA_CROP, CELEBA_SIDE = 148, 64


def celeba_partition(path: Path) -> list[tuple[str, int]]:
    """``list_eval_partition.txt``: one ``NAME.jpg SPLIT`` line per image, SPLIT 0/1/2 for
    train/valid/test."""
    if not path.is_file():
        raise missing_file(path.parent, path.name)
    entries = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2") or not parts[0].lower().endswith(".jpg"):
            raise DataError(f"{path.name}: line {number} is {line.strip()[:60]!r}, expected 'NAME.jpg 0|1|2'")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DataError(f"{path.name}: no images listed")
    return entries


def celeba_image(path: Path) -> np.ndarray:
    """One aligned CelebA image -> uint8 (3, 64, 64): the centre 148x148, resized bilinearly."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path.name}: not a readable image ({first_line(e)})") from None
    if im.size != CELEBA_ALIGNED:
        w, h = CELEBA_ALIGNED
        raise DataError(
            f"{path.name}: {im.size[0]}x{im.size[1]}, expected the aligned {w}x{h} (img_align_celeba)"
        )
    # torchvision's CenterCrop: offsets rounded from half the margins
    left = int(round((im.size[0] - CELEBA_CROP) / 2))
    top = int(round((im.size[1] - CELEBA_CROP) / 2))
    im = im.crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
    im = im.resize((CELEBA_SIDE, CELEBA_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(im, np.uint8).transpose(2, 0, 1)


def _load_celeba(cfg: DataConfig, root: Path) -> Arrays:
    """The official partition (``data.valid_size`` does not apply); 8-bit."""
    part = root / "list_eval_partition.txt"
    entries = celeba_partition(part)
    folder = root / "img_align_celeba"
    if not folder.is_dir():
        raise missing_file(root, f"img_align_celeba/{entries[0][0]}")
    recipe = f"crop {CELEBA_CROP} resize {CELEBA_SIDE} bilinear"  # a new recipe: a new cache
    key = hashlib.sha256(part.read_bytes() + recipe.encode()).hexdigest()

    def fill(out: np.ndarray) -> None:
        for i, (name, _) in enumerate(entries):
            path = folder / name
            if not path.is_file():
                raise missing_file(folder, name)
            out[i] = celeba_image(path)

    x = cached(root, cfg.name, key, (len(entries), 3, CELEBA_SIDE, CELEBA_SIDE), fill)
    split = np.array([s for _, s in entries])
    train, valid, test = (DiskImages(x, np.flatnonzero(split == k)) for k in range(3))
    return train, valid, test


DATASETS["celeba64"] = Dataset(
    _load_celeba, "none", files="img_align_celeba/*.jpg and list_eval_partition.txt",
    sizes=(162_770, 19_867, 19_962), source=CELEBA_SOURCE,
)  # fmt: skip
