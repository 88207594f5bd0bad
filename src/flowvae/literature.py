"""The literature's small image datasets, read from the files their usual sources publish:
Omniglot, Caltech 101 Silhouettes and Frey faces, split and binarized as the VampPrior
(Tomczak & Welling 2018, arXiv 1705.07120; jmtomczak/vae_vampprior ``utils/load_data.py``) and
Sylvester-flows (van den Berg et al. 2018, arXiv 1803.05649; riannevdberg/sylvester-flows
``utils/load_data.py``) papers' code.

Each loader returns the three splits as numpy arrays ``(N, C, H, W)``; ``data.load_data``
binarizes them and checks the published sizes of its record in ``DATASETS`` here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .datafiles import (
    SPLIT,
    Arrays,
    ArrayUnpickler,
    DataError,
    Dataset,
    Remote,
    first_line,
    generator,
    held_out_sizes,
    missing_file,
    valid_size,
)


def read_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The variables ``keys`` of a MATLAB v5 ``.mat`` file, each a 2-D numeric array."""
    from scipy.io import loadmat

    if not path.is_file():
        raise missing_file(path.parent, path.name)
    try:
        mat = loadmat(path)
    except NotImplementedError:  # scipy's answer to v7.3 files
        raise DataError(
            f"{path.name}: a MATLAB v7.3 (HDF5) file, expected the v5 .mat as published"
        ) from None
    except Exception as e:  # a truncated or foreign file can raise nearly anything
        raise DataError(f"{path.name}: not a readable .mat file ({first_line(e)})") from None
    found = sorted(k for k in mat if not k.startswith("__"))
    out = {}
    for key in keys:
        if key not in mat:
            raise DataError(f"{path.name}: no variable {key!r} (variables: {', '.join(found) or 'none'})")
        a = mat[key]
        if not (isinstance(a, np.ndarray) and a.ndim == 2 and a.dtype.kind in "uif" and a.size):
            what = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise DataError(f"{path.name}: {key!r} is {what}, expected a 2-D numeric array")
        out[key] = a
    return out


def fortran_images(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rows of ``a`` that are ``height x width`` images stored column by column (MATLAB's
    order) -> (N, 1, height, width). The reference code's
    ``a.reshape((-1, 28, 28)).reshape((-1, 784), order='F')``, read row-major."""
    return np.ascontiguousarray(a.reshape(-1, width, height).transpose(0, 2, 1))[:, None]


def _dims(a: np.ndarray) -> str:
    return " x ".join(map(str, a.shape))


def _check_range(path: Path, key: str, a: np.ndarray, binary: bool) -> None:
    if binary and not np.isin(a, (0, 1)).all():
        raise DataError(f"{path.name}: {key!r} holds values other than 0 and 1 (expected binary silhouettes)")
    if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
        raise DataError(f"{path.name}: {key!r} has values in [{a.min()}, {a.max()}], expected [0, 1]")


# ---------------------------------------------------------------------------------------------
# Omniglot: Burda et al.'s chardata.mat (yburda/iwae), 28x28 grey in [0, 1]


def _load_omniglot(cfg: DataConfig, root: Path) -> Arrays:
    """``data`` and ``testdata``: 784 x N, each column a 28x28 image in column-major order. The
    papers' validation set is the last 1345 training images after a seeded shuffle (here: seeded
    by ``data.seed``); binarization is dynamic, valid/test sampled once (``load_data``)."""
    path = root / "chardata.mat"
    mat = read_mat(path, ("data", "testdata"))
    splits = []
    for key in ("data", "testdata"):
        a = mat[key]
        if a.shape[0] != 784:
            raise DataError(f"{path.name}: {key!r} is {_dims(a)}, expected 784 x N (pixels x images)")
        _check_range(path, key, a, binary=False)
        splits.append(fortran_images(a.T.astype(np.float32), 28, 28))
    train, test = splits
    n = len(train)
    v = valid_size(cfg, 1345, n)
    perm = torch.randperm(n, generator=generator(SPLIT, cfg.seed)).numpy()
    return train[perm[: n - v]], train[perm[n - v :]], test


# ---------------------------------------------------------------------------------------------
# Caltech 101 Silhouettes: Marlin et al.'s caltech101_silhouettes_28_split1.mat, binary 28x28


def _load_caltech(cfg: DataConfig, root: Path) -> Arrays:
    """``train_data``, ``val_data``, ``test_data``: N x 784 binary rows, each a 28x28 image in
    column-major order; the file's own split. Inverted (1 - x) as in both papers' code, so the
    silhouette is 1 and the background 0."""
    name = "caltech101_silhouettes_28_split1.mat"
    path = root / name
    mat = read_mat(path, ("train_data", "val_data", "test_data"))
    splits = []
    for key in ("train_data", "val_data", "test_data"):
        a = mat[key]
        if a.shape[1] != 784:
            raise DataError(f"{name}: {key!r} is {_dims(a)}, expected N x 784 (images x pixels)")
        _check_range(path, key, a, binary=True)
        splits.append(1 - fortran_images(a.astype(np.float32), 28, 28))
    train, valid, test = splits
    return train, valid, test


# ---------------------------------------------------------------------------------------------
# Frey faces: Roweis's frey_rawface.mat, or the freyfaces.pkl array the papers' code loads


FREY_SHAPE = (28, 20)


def _frey_from_mat(path: Path) -> np.ndarray:
    ff = read_mat(path, ("ff",))["ff"]
    if ff.shape[0] != 560:
        raise DataError(f"{path.name}: 'ff' is {_dims(ff)}, expected 560 x N (pixels x images)")
    return _eight_bit(path, ff.T)


def _frey_from_pickle(path: Path) -> np.ndarray:
    """The pickled array (or a tuple/list whose first item is the array: the papers' code reads
    ``[0]`` of what they unpickle), read by an unpickler that builds numpy arrays and nothing else."""
    try:
        with path.open("rb") as f:
            obj = ArrayUnpickler(f, encoding="latin1").load()  # a Python 2 pickle, like the papers'
    except Exception as e:  # a corrupt pickle can raise nearly anything
        raise DataError(f"{path.name}: not a pickled numpy array ({first_line(e)})") from None
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], np.ndarray):
        obj = obj[0]
    if not (isinstance(obj, np.ndarray) and obj.dtype.kind in "uif" and obj.ndim in (2, 3) and obj.size):
        what = f"{obj.dtype} {obj.shape}" if isinstance(obj, np.ndarray) else type(obj).__name__
        raise DataError(f"{path.name}: holds {what}, expected a numeric array of 28x20 faces")
    if obj.shape[1:] not in ((560,), FREY_SHAPE):
        raise DataError(f"{path.name}: array is {obj.shape}, expected (N, 560) or (N, 28, 20)")
    return _eight_bit(path, obj.reshape(len(obj), -1))


def _eight_bit(path: Path, x: np.ndarray) -> np.ndarray:
    """Frey faces as uint8 (N, 1, 28, 20): grey levels 0..255 as stored, or k/255 in [0, 1]."""
    if not np.isfinite(x).all() or x.min() < 0:
        raise DataError(f"{path.name}: values in [{x.min()}, {x.max()}], expected 8-bit grey levels")
    if x.dtype.kind == "f" and x.max() <= 1:
        x = x * 255
    if x.max() > 255 or not (np.abs(x - np.round(x)) < 1e-3).all():
        raise DataError(f"{path.name}: values are not 8-bit grey levels (0..255, or k/255)")
    return np.round(x).astype(np.uint8).reshape(-1, 1, *FREY_SHAPE)


def _load_frey(cfg: DataConfig, root: Path) -> Arrays:
    """1965 faces of 28x20 (row-major), split 1565 / 200 / 200 after shuffling with numpy's
    ``RandomState(data.seed)``: the Sylvester-flows code's split for ``--freyseed`` = data.seed
    (123, 321, 231 in its paper; the VampPrior code shuffles likewise, unseeded). 8-bit."""
    mat, pkl = root / "frey_rawface.mat", root / "freyfaces.pkl"
    if mat.is_file():
        x = _frey_from_mat(mat)
    elif pkl.is_file():
        x = _frey_from_pickle(pkl)
    else:
        raise missing_file(root, mat.name, f" (nor {pkl.name})")
    n = len(x)
    v, t = held_out_sizes(cfg, 200, n, mat.name if mat.is_file() else pkl.name, test=200)
    order = np.arange(n)
    np.random.RandomState(cfg.seed).shuffle(order)  # the same draws as shuffling the array itself
    return x[order[: n - v - t]], x[order[n - v - t : n - t]], x[order[n - t :]]


DATASETS: dict[str, Dataset] = {
    "omniglot": Dataset(
        _load_omniglot, "dynamic", files="chardata.mat", sizes=(23000, 1345, 8070),
        remote=Remote("https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",
                      {"chardata.mat": None}),
    ),
    "caltech101_silhouettes": Dataset(
        _load_caltech, "none", binary=True, files="caltech101_silhouettes_28_split1.mat",
        sizes=(4100, 2264, 2307),
        remote=Remote("https://people.cs.umass.edu/~marlin/data/",
                      {"caltech101_silhouettes_28_split1.mat": None}),
    ),
    "frey_faces": Dataset(
        _load_frey, "none", files="frey_rawface.mat (or freyfaces.pkl)", sizes=(1565, 200, 200),
        remote=Remote("https://cs.nyu.edu/~roweis/data/", {"frey_rawface.mat": None}),
    ),
}  # fmt: skip
