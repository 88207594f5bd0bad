"""Downsampled ImageNet 32x32 and 64x64 (Chrabaszcz, Loshchilov & Hutter 2017, arXiv 1707.08819),
from the official npz batches, streamed from disk.

``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz`` hold ``data``:
N x (3 r r) uint8 rows, channel-major (the R plane, then G, then B; r x r row-major each), as
CIFAR-10's batches do. 1,281,167 training and 50,000 validation images. Nothing here is ever
held in memory whole: each batch file is read once, one at a time, into a uint8 ``.npy`` cache
(``flowvae-cache/`` in ``data.root``, or ``$FLOWVAE_CACHE``), which is then memory-mapped;
``DiskImages`` read the images a training batch indexes.

Split: the validation file is the test split (bits/dim on it is the number these tables report);
``data.valid_size`` (default 5,000, as vdvae holds out) training images, chosen by a shuffle
seeded by ``data.seed``, are the validation split.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

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


def _cached(paths: list[Path], side: int, name: str, root: Path) -> np.ndarray:
    """The images of ``paths`` as one memory-mapped uint8 (N, 3, side, side) ``.npy``, written
    once (batch file by batch file) and named after the files' sizes and times, so that changed
    files make a new cache."""
    columns = 3 * side * side
    counts = [_header(p, columns) for p in paths]
    key = hashlib.sha256(repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]).encode())
    folder = Path(os.environ.get("FLOWVAE_CACHE") or root / "flowvae-cache")
    cache = folder / f"{name}-{key.hexdigest()[:16]}.npy"
    if not cache.is_file():
        tmp = cache.with_suffix(".part")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            out = np.lib.format.open_memmap(tmp, "w+", np.uint8, (sum(counts), 3, side, side))
        except OSError as e:
            raise DataError(
                f"{folder}: cannot write the image cache ({e.strerror or e}); set $FLOWVAE_CACHE to a "
                "writable folder"
            ) from None
        start = 0
        for path, n in zip(paths, counts, strict=True):
            data = _read(path)
            if data.shape != (n, columns):
                raise DataError(f"{path.name}: 'data' is {data.shape}, its header said {(n, columns)}")
            out[start : start + n] = data.reshape(n, 3, side, side)
            start += n
        out.flush()
        del out
        os.replace(tmp, cache)
    return np.load(cache, mmap_mode="r")


def _loader(side: int):
    def load(cfg: DataConfig, root: Path) -> Arrays:
        train_folder, val_folder = f"Imagenet{side}_train_npz", f"Imagenet{side}_val_npz"
        train_files = [
            _find(root, f"train_data_batch_{i}.npz", train_folder) for i in range(1, TRAIN_BATCHES + 1)
        ]
        val_file = _find(root, "val_data.npz", val_folder)
        train = _cached(train_files, side, f"{cfg.name}-train", root)
        test = _cached([val_file], side, f"{cfg.name}-val", root)
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
