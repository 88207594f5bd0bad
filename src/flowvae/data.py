"""Datasets, binarization, deterministic batching and downloads.

``DATASETS`` is the one registry of datasets: a ``Dataset`` record each (loader, what "auto"
binarizes to, published sizes, download or source); the records of the papers' small datasets
come from ``literature.py``, those streamed from disk from ``streamed.py``. Every loader reads a
dataset in the file format its source distributes; ``load_data`` returns an :class:`ImageData`
of float32 ``(N, C, H, W)`` in ``[0, 1]`` (tensors, or ``DiskImages`` read batch by batch). Bad
or missing files raise :class:`DataError` with a one-line message naming the file.

Binarization (``DataConfig.binarize``):

* ``dynamic``: ``train`` keeps the intensities and :func:`iterate_batches` draws a fresh
  Bernoulli sample for every batch; ``valid`` and ``test`` are Bernoulli-sampled *once* with
  ``DataConfig.seed`` -- the same stochastic scheme as train (thresholding them instead would
  evaluate on a different distribution than the model was trained on).
* ``threshold``: ``x >= 0.5`` for every split.
* ``none``: 8-bit images, values ``k/255``.
* ``auto``: the dataset's usual choice (see ``DATASETS``). Data that are binary in the files
  (static binarized MNIST) are returned as they are, whatever the mode.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import literature, streamed
from .config import EVAL_SEED, DataConfig
from .datafiles import (
    FIXED,
    PERMUTE,
    SAMPLE,
    SUBSET,
    Arrays,
    ArrayUnpickler,
    DataError,
    Dataset,
    DiskImages,
    MissingFile,
    Remote,
    find_file,
    generator,
    held_out_sizes,
    hold_out_last,
    missing_file,
    permuted_split,
    read_bytes,
    valid_size,
)

log = logging.getLogger(__name__)

BINARIZE_MODES = ("auto", "dynamic", "threshold", "none")
SPLITS = ("train", "valid", "test")


@dataclass
class ImageData:
    """Train/valid/test images, float32 ``(N, C, H, W)`` in ``[0, 1]``: tensors, or
    ``DiskImages`` that read the images indexed (``x[index]`` is a tensor either way)."""

    name: str
    train: torch.Tensor | DiskImages
    valid: torch.Tensor | DiskImages
    test: torch.Tensor | DiskImages
    binary: bool  # binary images (Bernoulli likelihood); False: 8-bit values k/255
    dynamic: bool  # `train` holds intensities; every training batch is a fresh Bernoulli sample

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.shape[1:]
        return c, h, w

    def split(self, name: str) -> torch.Tensor | DiskImages:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name)


# ---------------------------------------------------------------------------------------------
# loaders: (cfg, root) -> (train, valid, test) numpy arrays (N, C, H, W), uint8 or float in [0,1]


def _load_digits(cfg: DataConfig, root: Path) -> Arrays:
    from sklearn.datasets import load_digits

    x = (load_digits().images / 16.0).astype(np.float32)[:, None]
    # seed 0, not cfg.seed: the split is part of the dataset's definition
    return permuted_split(x, held_out_sizes(cfg, 250, len(x), "scikit-learn's digits"), seed=0)


AMAT_PIXELS = 784


def parse_amat(data: bytes, name: str) -> np.ndarray:
    """Binary ``.amat`` text (one image per line, 784 space-separated 0/1) -> uint8 (N, 784).

    Vectorized (np.loadtxt takes a minute on 50k lines). Files in the canonical layout
    (single spaces, newline-terminated lines) take a fast path; anything else is tokenized
    generally, which also finds the first bad line for the error message.
    """
    width = 2 * AMAT_PIXELS  # "d d ... d\n"
    if data and len(data) % width == 0:
        rows = np.frombuffer(data, np.uint8).reshape(-1, width)
        values = rows[:, ::2] - ord("0")  # uint8: characters below "0" wrap around to > 1
        separators = np.full(AMAT_PIXELS, ord(" "), np.uint8)
        separators[-1] = ord("\n")
        if (values <= 1).all() and (rows[:, 1::2] == separators).all():
            return values
    buf = np.frombuffer(data.rstrip() + b"\n", np.uint8)
    space = (buf == ord(" ")) | (buf == ord("\n")) | (buf == ord("\t")) | (buf == ord("\r"))
    start = ~space
    start[1:] &= space[:-1]
    newlines = np.flatnonzero(buf == ord("\n"))
    line_starts = np.concatenate(([0], newlines[:-1] + 1))
    counts = np.add.reduceat(start.view(np.uint8), line_starts, dtype=np.int64)
    bad = np.flatnonzero(counts != AMAT_PIXELS)
    if bad.size:
        line = bad[0]
        raise DataError(f"{name}: line {line + 1} has {counts[line]} values, expected {AMAT_PIXELS}")
    # a valid value is a single '0' or '1' character: any other non-space character is bad
    digit = (buf == ord("0")) | (buf == ord("1"))
    wrong = np.flatnonzero(~space & ~(start & digit))
    if wrong.size:
        first = wrong[0]
        begin = first
        while begin > 0 and not space[begin - 1]:
            begin -= 1
        end = first
        while end < len(buf) and not space[end]:
            end += 1
        token = bytes(buf[begin:end]).decode(errors="replace")
        line = int(np.searchsorted(newlines, first)) + 1
        raise DataError(f"{name}: line {line} has value {token!r}, expected 0 or 1")
    return (buf[start] - ord("0")).reshape(-1, AMAT_PIXELS)


def _load_binarized_mnist(cfg: DataConfig, root: Path) -> Arrays:
    def read(split: str) -> np.ndarray:
        path = find_file(root, f"binarized_mnist_{split}.amat")
        return parse_amat(read_bytes(path), path.name).reshape(-1, 1, 28, 28)

    # the files define the split: valid_size does not apply
    train, valid, test = (read(s) for s in SPLITS)
    return train.astype(np.float32), valid.astype(np.float32), test.astype(np.float32)


IDX_IMAGES_MAGIC = 2051  # IDX header: unsigned byte data, 3 dimensions


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 ``ubyte`` image file (raw or .gz) -> uint8 (N, 1, rows, cols)."""
    raw = read_bytes(path)
    if len(raw) < 16:
        raise DataError(f"{path.name}: truncated IDX file ({len(raw)} bytes, header needs 16)")
    magic, n, rows, cols = struct.unpack(">4i", raw[:16])
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(f"{path.name}: magic number {magic}, expected {IDX_IMAGES_MAGIC} (IDX uint8 images)")
    expected = 16 + n * rows * cols
    if min(n, rows, cols) < 1 or len(raw) != expected:
        raise DataError(
            f"{path.name}: {len(raw)} bytes, expected {expected} for {n} images of "
            f"{rows}x{cols} (truncated or corrupt)"
        )
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, rows, cols)


def _load_idx(cfg: DataConfig, root: Path) -> Arrays:
    train = read_idx_images(find_file(root, "train-images-idx3-ubyte"))
    test_path = find_file(root, "t10k-images-idx3-ubyte")
    test = read_idx_images(test_path)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{test_path.name}: images are {test.shape[2]}x{test.shape[3]}, "
            f"train images are {train.shape[2]}x{train.shape[3]}"
        )
    return *hold_out_last(train, valid_size(cfg, 10000, len(train))), test


def _read_cifar_batch(path: Path) -> np.ndarray:
    if not path.is_file():
        raise missing_file(path.parent.parent, f"{path.parent.name}/{path.name}")
    try:
        with path.open("rb") as f:
            batch = ArrayUnpickler(f, encoding="bytes").load()
        data = batch[b"data"]
    except Exception as e:  # a corrupt pickle can raise nearly anything
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path.name}: not a CIFAR-10 python batch ({msg})") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path.name}: b'data' is {what}, expected uint8 (N, 3072)")
    return data.reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32


def _load_cifar10(cfg: DataConfig, root: Path) -> Arrays:
    folder = root / "cifar-10-batches-py"
    train = np.concatenate([_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)])
    test = _read_cifar_batch(folder / "test_batch")
    return *hold_out_last(train, valid_size(cfg, 5000, len(train))), test


def _load_npz(cfg: DataConfig, root: Path) -> Arrays:
    """``cfg.file``: array ``cfg.key`` (or the first uint8 one), (N, H, W) or (N, H, W, C) uint8
    with C in {1, 3}. Fixed split seeded by ``cfg.seed``: ``valid_size`` examples (default 10%)
    for valid, ``test_size`` (default: as many) for test, the rest for train."""
    if not cfg.file:
        raise DataError("npz: data.file is not set (path of the .npz, relative to data.root, or absolute)")
    path = Path(cfg.file).expanduser()
    if not path.is_absolute() and not (root / path).is_file():
        raise DataError(
            f"{(root / path).absolute()}: file not found (data.file={cfg.file} is read relative to "
            f"data.root={root.absolute()}; or give an absolute path)"
        )
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # zip/format errors of many kinds
        raise DataError(f"{path.name}: not a readable .npz file ({e})") from None
    key = cfg.key or next((k for k, a in arrays.items() if a.dtype == np.uint8), "")
    if key not in arrays:
        wanted = f"no array {key!r}" if key else "no uint8 array"
        found = ", ".join(f"{k} {a.dtype} {a.shape}" for k, a in arrays.items()) or "none"
        raise DataError(f"{path.name}: {wanted}; arrays: {found}")
    x = arrays[key]
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 3) or len(x) == 0:
        raise DataError(
            f"{path.name}: array {key!r} is {x.dtype} {arrays[key].shape}, "
            "expected uint8 (N, H, W) or (N, H, W, C) with C 1 or 3"
        )
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return permuted_split(x, held_out_sizes(cfg, round(0.1 * len(x)), len(x), path.name), cfg.seed)


DATASETS: dict[str, Dataset] = {
    "digits": Dataset(_load_digits, "dynamic"),
    "binarized_mnist": Dataset(
        _load_binarized_mnist, "none", binary=True, files="binarized_mnist_{train,valid,test}.amat",
        remote=Remote(
            "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
            {
                "binarized_mnist_train.amat": "db28b1a6ae0fe70cbd3da91acf46e477",
                "binarized_mnist_valid.amat": "bf37822a04e94123630de6a7dfd9c9ef",
                "binarized_mnist_test.amat": "14e41ae11040adba6ab8cb291eda0dd8",
            },
        ),
    ),
    "mnist": Dataset(
        _load_idx, "dynamic", files="train-images-idx3-ubyte, t10k-images-idx3-ubyte",
        remote=Remote(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            {
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
    ),
    "fashion_mnist": Dataset(
        _load_idx, "dynamic", files="train-images-idx3-ubyte, t10k-images-idx3-ubyte",
        remote=Remote(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            {
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
    ),
    "cifar10": Dataset(
        _load_cifar10, "none", files="cifar-10-batches-py/",
        remote=Remote(
            "https://www.cs.toronto.edu/~kriz/",
            {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
            extract="cifar-10-python.tar.gz",
        ),
    ),
    "npz": Dataset(_load_npz, "none"),
    **literature.DATASETS,
    **streamed.DATASETS,
}


def downloadable() -> list[str]:
    """The datasets ``flowvae data download`` can fetch."""
    return [name for name, d in DATASETS.items() if d.remote]


def data_root(cfg: DataConfig) -> Path:
    """``cfg.root``, else ``$FLOWVAE_DATA``, else ``./data``."""
    return Path(cfg.root or os.environ.get("FLOWVAE_DATA") or "data").expanduser()


def read_arrays(cfg: DataConfig) -> Arrays:
    """The dataset's three splits as its loader reads them, before binarization; a missing file's
    error says where to get it, and the published sizes (``Dataset.sizes``) are checked."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {cfg.name!r}; available: {', '.join(DATASETS)}")
    spec, root = DATASETS[cfg.name], data_root(cfg)
    try:
        arrays = spec.load(cfg, root)
    except MissingFile as e:
        if not e.hint_ok or not (spec.remote or spec.source):
            raise
        if spec.remote:
            hint = (f"`flowvae data download {cfg.name} --root {root.absolute()}` fetches it (needs internet "
                    f"access); offline, copy the file into {e.folder} by hand")  # fmt: skip
        else:
            hint = f"there is no download: get {spec.files} from {spec.source} and put them in {e.folder}"
        raise DataError(f"{e}; {hint}") from None
    n = sum(len(x) for x in arrays)
    if spec.sizes and n != sum(spec.sizes):
        a, b, c = spec.sizes
        raise DataError(
            f"{spec.files} in {root.absolute()}: {n} images, expected the published {sum(spec.sizes)} "
            f"({a} train + {b} valid + {c} test): truncated, or another version of the dataset"
        )
    return arrays


def load_data(cfg: DataConfig) -> ImageData:
    """Load and binarize the dataset described by ``cfg``."""
    if cfg.binarize not in BINARIZE_MODES:
        raise DataError(f"unknown data.binarize {cfg.binarize!r}; valid values: {', '.join(BINARIZE_MODES)}")
    arrays = read_arrays(cfg)
    spec = DATASETS[cfg.name]
    if any(isinstance(x, DiskImages) for x in arrays):  # 8-bit images read batch by batch
        mode = spec.auto if cfg.binarize == "auto" else cfg.binarize
        if mode != "none":
            raise DataError(f"{cfg.name}: data.binarize={cfg.binarize}: streamed from disk: 8-bit only")
        return ImageData(cfg.name, *arrays, binary=False, dynamic=False)  # type: ignore[arg-type]
    train, valid, test = (_to_tensor(x) for x in arrays)  # type: ignore[arg-type]
    if spec.binary:
        return ImageData(cfg.name, train, valid, test, binary=True, dynamic=False)
    mode = spec.auto if cfg.binarize == "auto" else cfg.binarize
    if mode == "dynamic":
        # valid/test: sampled once, each split from its own fixed stream, so they are stable
        # across loads and independent of each other's size
        valid, test = (
            torch.bernoulli(x, generator=generator(FIXED, cfg.seed, i)) for i, x in enumerate((valid, test))
        )
        return ImageData(cfg.name, train, valid, test, binary=True, dynamic=True)
    if mode == "threshold":
        train, valid, test = ((x >= 0.5).float() for x in (train, valid, test))
        return ImageData(cfg.name, train, valid, test, binary=True, dynamic=False)
    # none: 8-bit; rounding puts non-8-bit sources (digits, k/16) on the k/255 grid
    train, valid, test = (torch.round(x * 255) / 255 for x in (train, valid, test))
    return ImageData(cfg.name, train, valid, test, binary=False, dynamic=False)


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    # uint8 arrays (often read-only views of file bytes) are copied by astype; float ones from
    # the loaders are already fresh copies
    t = torch.from_numpy(x.astype(np.float32, copy=False))
    return t.div_(255) if x.dtype == np.uint8 else t


# ---------------------------------------------------------------------------------------------
# batching


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch; the last partial batch is kept."""
    return -(-n // batch_size)


def subset_indices(n: int, limit: int, seed: int) -> torch.Tensor:
    """A fixed, seeded random subset of ``limit`` of ``range(n)`` (sorted); all if ``limit <= 0``
    or ``limit >= n``."""
    if limit <= 0 or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(SUBSET, seed))[:limit].sort().values


class EvaluationSet(NamedTuple):
    """The images an evaluation scores, which examples of the split they are, and in words."""

    images: torch.Tensor  # (n, C, H, W)
    indices: torch.Tensor  # (n,) positions in the split
    description: str

    @property
    def digest(self) -> str:
        """SHA-256 of exactly what is scored: the images' values (dtype, shape, bytes) and which
        examples of the split they are (each example's random stream is seeded by its index)."""
        h = hashlib.sha256()
        for t in (self.images, self.indices):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def evaluation_images(data: ImageData, split: str, limit: int = 0, seed: int = EVAL_SEED) -> EvaluationSet:
    """The images an evaluation scores: a fixed seeded random subset of ``limit`` examples of
    ``split`` (all if ``limit <= 0``), the one way eval, gaps, compare and the benchmarks pick them.

    The training split of dynamically binarized data holds intensities: it is binarized once
    with ``seed``, the same Bernoulli scheme as every other split (never scored as grey levels).
    """
    x = data.split(split)
    total = x.shape[0]
    indices = subset_indices(total, limit, seed)
    what = f"{split}: all {total} examples"
    if limit > total:
        what += f" (limit {limit} capped to the split's size)"
    if len(indices) < total:
        what = f"{split}: random subset of {len(indices)} of {total} (seed {seed})"
    x = x[indices]
    if data.dynamic and split == "train":
        x = torch.bernoulli(x, generator=generator(FIXED, seed, len(SPLITS)))
        what += ", binarized once with the same seed"
    return EvaluationSet(x, indices, what)


def iterate_batches(
    data: ImageData,
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    start: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[torch.Tensor]:
    """Yield the batches of one epoch, a pure function of ``(seed, epoch)``.

    The permutation is seeded from ``(seed, epoch)``. For dynamically binarized training data
    every batch is a Bernoulli sample seeded from ``(seed, epoch, rank, batch)``, so a run
    resumed at batch ``start`` sees exactly the batches an uninterrupted run would.

    Distributed: rank ``r`` of ``world`` takes examples ``r, r + world, ...`` of the permuted
    order. The order is first padded by repeating its beginning up to a multiple of ``world``,
    so every rank gets the same number of batches (DDP needs that) and at most ``world - 1``
    examples are seen twice per epoch.
    """
    if batch_size < 1 or start < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad batching: {batch_size=} {start=} {rank=} {world=}")
    x = data.split(split)
    n = len(x)
    if shuffle:
        order = torch.randperm(n, generator=generator(PERMUTE, seed, epoch))
    else:
        order = torch.arange(n)
    if world > 1 and n > 0:
        total = math.ceil(n / world) * world
        order = order.repeat(math.ceil(total / n))[:total][rank::world]
    sample = data.dynamic and split == "train"
    for b in range(start, num_batches(len(order), batch_size)):
        batch = x[order[b * batch_size : (b + 1) * batch_size]]
        if sample:
            batch = torch.bernoulli(batch, generator=generator(SAMPLE, seed, epoch, rank, b))
        yield batch


# ---------------------------------------------------------------------------------------------
# downloads


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str | None) -> None:
    """Download ``url`` to ``dest`` through a temporary file, renamed only once its MD5 is
    verified (``md5=None``: no checksum to verify)."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        if md5 is not None and h.hexdigest() != md5:
            raise DataError(
                f"{dest.name}: checksum mismatch for {url}: expected MD5 {md5}, got {h.hexdigest()}"
            )
        os.replace(tmp, dest)
    except (OSError, HTTPException) as e:
        if isinstance(e, urllib.error.HTTPError):
            e.close()  # it holds the open response
        reason = " ".join(str(getattr(e, "reason", None) or e).split())
        raise DataError(
            f"{dest.name}: download from {url} failed: {reason} (the download needs internet access; "
            f"offline, copy the file into {dest.parent.absolute()} by hand)"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def download(name: str, root: str | Path, base_url: str | None = None) -> list[Path]:
    """Download the files of dataset ``name`` into ``root`` and verify them: their MD5s, or
    (where no checksum is published) by loading them, which checks their format and sizes.

    Files already present and verified are skipped. ``base_url`` (else ``$FLOWVAE_DOWNLOAD_URL``)
    replaces the folder URL, e.g. for a mirror. Returns the paths of the dataset's files.
    """
    remote = DATASETS[name].remote if name in DATASETS else None
    if remote is None:
        spec = DATASETS.get(name)
        where = f" (get {spec.files} from {spec.source})" if spec and spec.source else ""
        raise DataError(f"no download for dataset {name!r}{where}; available: {', '.join(downloadable())}")
    base = base_url or os.environ.get("FLOWVAE_DOWNLOAD_URL") or remote.url
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    paths, unverified = [], []
    for file, md5 in remote.md5.items():
        dest = root / file
        if dest.is_file() and (md5 is None or _md5(dest) == md5):
            log.info("%s: present%s", dest, ", checksum ok" if md5 else "")
        else:
            log.info("downloading %s", file)
            _fetch(f"{base.rstrip('/')}/{file}", dest, md5)
            if md5 is None:
                unverified.append(dest)
        if file == remote.extract:  # also when skipped: the unpacked files may be gone
            _extract(dest, root)
        paths.append(dest)
    if any(md5 is None for md5 in remote.md5.values()):
        try:
            # valid_size=0: checking the files, not a split of them
            read_arrays(DataConfig(name=name, root=str(root), valid_size=0))  # type: ignore[arg-type]
        except DataError as e:
            for path in unverified:
                path.unlink(missing_ok=True)
            removed = f"; removed the download from {base}" if unverified else ""
            raise DataError(f"{e}{removed}") from None
    return paths


def _extract(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            # the "data" filter refuses absolute paths, links out of root and device files
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive.name}: cannot extract ({e})") from None
