"""What every dataset loader is written with: the one-line data error, finding files, safe
unpickling, seeded streams and fixed splits.

``data.py`` (the registry, MNIST and CIFAR-10) and ``literature.py`` (Omniglot, Caltech 101
Silhouettes, Frey faces) read their files through these.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig


class DataError(Exception):
    """A missing, malformed or unverifiable data file; the message is one line naming it."""


class MissingFile(DataError):
    """A dataset file is not where it should be. ``load_data`` adds where to get it (the download
    command, or the dataset's source) when the message has no better hint (``hint_ok``)."""

    def __init__(self, message: str, folder: Path, hint_ok: bool = True) -> None:
        super().__init__(message)
        self.folder, self.hint_ok = folder, hint_ok


# ---------------------------------------------------------------------------------------------
# the record of a dataset (the registry, ``data.DATASETS``, holds one per dataset)

class DiskImages:
    """uint8 images ``(N, C, H, W)`` left on disk (a memory-mapped ``.npy``), optionally a subset
    of its rows, read when indexed: ``x[index]`` (int, slice, or index array/tensor) reads those
    images only and returns them as a float32 tensor in [0, 1]. Datasets too large for memory
    (downsampled ImageNet) hand these to ``ImageData`` instead of tensors."""

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.array = array
        self.rows = np.arange(len(array)) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.array.shape[1:]))

    def __getitem__(self, index: int | slice | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.rows[index]
        if np.ndim(rows) == 0:
            x = self.array[int(rows)]
        else:  # read in file order (sequential on disk), then put back in the asked order
            order = np.argsort(rows, kind="stable")
            x = np.empty((len(rows), *self.array.shape[1:]), np.uint8)
            x[order] = self.array[rows[order]]
        return torch.from_numpy(np.asarray(x, np.float32)).div_(255)


# a loader: (cfg, root) -> (train, valid, test) numpy arrays (N, C, H, W), uint8 or float in [0, 1]
# (or DiskImages of uint8 images left on disk)
Arrays = tuple[np.ndarray | DiskImages, np.ndarray | DiskImages, np.ndarray | DiskImages]


@dataclass(frozen=True)
class Remote:
    """Where a dataset's files are published, with the MD5 of each file as served (``None``: no
    checksum is published; the download is then verified by loading it: the loader's format
    checks and the dataset's published sizes)."""

    url: str  # folder URL, ending in "/"
    md5: dict[str, str | None]  # file name -> MD5
    extract: str = ""  # a .tar.gz to unpack into root after download ("" = none)


@dataclass(frozen=True)
class Dataset:
    """One dataset: how to read it, what binarize "auto" means for it, its published sizes and
    where its files come from."""

    load: Callable[[DataConfig, Path], Arrays]
    auto: str  # the binarize mode "auto" stands for
    binary: bool = False  # the files hold binary images already: binarization is a no-op
    files: str = ""  # the files, as messages name them
    sizes: tuple[int, int, int] | None = None  # published train/valid/test counts; their sum is checked
    remote: Remote | None = None  # what `flowvae data download NAME` fetches
    source: str = ""  # where to get the files by hand when there is no download


# ---------------------------------------------------------------------------------------------
# seeding


def generator(*parts: int) -> torch.Generator:
    """A generator seeded from a tuple of ints, so related streams (epochs, batches) are
    statistically independent rather than consecutive seeds of one stream."""
    state = np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# first element of every seed tuple: keeps the streams of different purposes apart
PERMUTE, SAMPLE, FIXED, SPLIT, SUBSET = range(5)


# ---------------------------------------------------------------------------------------------
# files


def find_file(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``, preferring the uncompressed file (faster to read)."""
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    raise missing_file(root, name, f" (nor {name}.gz)")


def missing_file(root: Path, name: str, also: str = "") -> MissingFile:
    """File ``root/name`` (``name`` may hold a folder) is missing: the error names the absolute
    folder and suggests the fix: ``data.root=`` a subfolder or the parent that holds it (the
    usual slip: one level too high or too low); else ``load_data`` adds where to get it."""
    root = root.absolute()
    nearby = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    for folder in [*sorted(nearby), root.parent]:
        if any((folder / n).is_file() for n in (name, f"{name}.gz")):
            message = f"{name}: file not found{also} in {root}; did you mean data.root={folder}?"
            return MissingFile(message, root, hint_ok=False)
    where = root / Path(name).parent if Path(name).parent != Path(".") else root
    return MissingFile(f"{Path(name).name}: file not found{also} in {where}", where)


def read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path.name}: corrupt gzip file ({e})") from None


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a pickle can otherwise run code.

    Arrays come back through ``_reconstruct`` (protocols 0-4) or ``_frombuffer`` (protocol 5,
    which numpy uses when a batch is re-saved with ``pickle.HIGHEST_PROTOCOL``).
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def first_line(e: BaseException) -> str:
    """An exception's message, one line (its type name if it has none)."""
    msg = str(e).strip()
    return msg.splitlines()[0] if msg else type(e).__name__


# ---------------------------------------------------------------------------------------------
# fixed splits


def valid_size(cfg: DataConfig, default: int, n: int) -> int:
    """Resolved ``valid_size`` for datasets whose test split is a file of its own."""
    v = default if cfg.valid_size < 0 else cfg.valid_size
    if n - v < 1:
        raise DataError(
            f"{cfg.name}: data.valid_size={v} leaves no training examples: at most {n - 1} of the "
            f"{n} training images can be held out for validation"
        )
    return v


def held_out_sizes(cfg: DataConfig, default: int, n: int, source: str, test: int = -1) -> tuple[int, int]:
    """Resolved (valid, test) sizes for datasets split from one array of ``n`` examples (named
    ``source``); test defaults to ``test``, else valid's. Valid may be 0 (no validation); test
    needs >= 1 example (there is no test file), and train too."""
    v = default if cfg.valid_size < 0 else cfg.valid_size
    t = cfg.test_size if cfg.test_size >= 0 else test if test >= 0 else v
    if t < 1:
        setting = f"data.test_size={cfg.test_size}"
        setting += f" (as data.valid_size={v})" if cfg.test_size < 0 and test < 0 else ""
        raise DataError(
            f"{cfg.name}: {setting}: the test split needs at least 1 example (there is no test file: it is "
            f"held out of the {n} examples of {source}); set data.test_size=N (data.valid_size=0, no "
            "validation split, is allowed)"
        )
    if v + t > n - 1:
        raise DataError(
            f"{cfg.name}: data.valid_size={v} + data.test_size={t} leave no training examples: at most "
            f"{n - 1} of the {n} examples of {source} can be held out in all"
        )
    return v, t


def hold_out_last(x: np.ndarray, v: int) -> tuple[np.ndarray, np.ndarray]:
    return x[: len(x) - v], x[len(x) - v :]


def permuted_split(x: np.ndarray, sizes: tuple[int, int], seed: int) -> tuple[np.ndarray, ...]:
    """A fixed seeded split into train / valid (``sizes[0]``) / test (``sizes[1]``)."""
    v, t = sizes
    perm = torch.randperm(len(x), generator=generator(SPLIT, seed)).numpy()
    return x[perm[v + t :]], x[perm[:v]], x[perm[v : v + t]]
