"""Dataset loaders on small files written here, binarization and deterministic batching."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flowvae.config import DataConfig
from flowvae.data import (
    DataError,
    ImageData,
    data_root,
    evaluation_images,
    iterate_batches,
    load_data,
    num_batches,
    subset_indices,
)

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
rng = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# writers of the real file formats


def write_amat(path: Path, x: np.ndarray) -> None:
    text = "".join(" ".join(map(str, row)) + "\n" for row in x.reshape(len(x), -1))
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_binarized_mnist(root: Path, sizes=(6, 3, 2), suffix: str = "") -> dict[str, np.ndarray]:
    splits = {}
    for split, n in zip(("train", "valid", "test"), sizes, strict=True):
        splits[split] = rng.integers(0, 2, (n, 784), dtype=np.uint8)
        write_amat(root / f"binarized_mnist_{split}.amat{suffix}", splits[split])
    return splits


def idx_bytes(x: np.ndarray, magic: int = 2051) -> bytes:
    return struct.pack(">4i", magic, *x.shape) + x.tobytes()


def write_idx(root: Path, n_train: int = 30, n_test: int = 10, gz: bool = True):
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    for name, x in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test)):
        data = idx_bytes(x)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return train, test


def cifar_batch(n: int) -> dict[bytes, object]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {b"batch_label": b"x", b"labels": [0] * n, b"data": data}


def write_cifar(root: Path, n: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = cifar_batch(n)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[name] = batch[b"data"]
    return out


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


# ---------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_binarized_mnist_amat(tmp_path: Path, suffix: str) -> None:
    splits = write_binarized_mnist(tmp_path, suffix=suffix)
    for binarize in ("auto", "none", "threshold", "dynamic"):  # all no-ops on binary files
        d = load_data(DataConfig(name="binarized_mnist", root=str(tmp_path), binarize=binarize))
        assert (d.binary, d.dynamic, d.shape) == (True, False, (1, 28, 28))
        for split, x in splits.items():
            assert d.split(split).dtype == torch.float32
            assert torch.equal(d.split(split).reshape(len(x), -1), torch.from_numpy(x).float())


def test_amat_tolerates_crlf_and_extra_spaces(tmp_path: Path) -> None:
    splits = write_binarized_mnist(tmp_path)
    path = tmp_path / "binarized_mnist_test.amat"
    path.write_bytes(path.read_bytes().replace(b"\n", b" \r\n").replace(b"0 ", b"0  "))
    d = load_data(DataConfig(name="binarized_mnist", root=str(tmp_path)))
    assert torch.equal(d.test.reshape(2, -1), torch.from_numpy(splits["test"]).float())


@pytest.mark.parametrize("gz", [True, False])
def test_idx(tmp_path: Path, gz: bool) -> None:
    train, test = write_idx(tmp_path, gz=gz)
    cfg = DataConfig(name="mnist", root=str(tmp_path), valid_size=5, binarize="none")
    d = load_data(cfg)
    assert (d.binary, d.dynamic, d.shape) == (False, False, (1, 28, 28))
    assert [len(d.train), len(d.valid), len(d.test)] == [25, 5, 10]
    # valid is the last valid_size of train; values are exactly k/255
    assert torch.equal(d.valid[:, 0], torch.from_numpy(train[25:]).float() / 255)
    assert torch.equal(d.test[:, 0], torch.from_numpy(test).float() / 255)

    d = load_data(DataConfig(name="fashion_mnist", root=str(tmp_path), valid_size=5))
    assert (d.binary, d.dynamic) == (True, True)  # auto -> dynamic
    assert torch.equal(d.train[:, 0], torch.from_numpy(train[:25]).float() / 255)
    assert set(d.test.unique().tolist()) <= {0.0, 1.0}

    cfg_threshold = DataConfig(name="mnist", root=str(tmp_path), valid_size=5, binarize="threshold")
    d = load_data(cfg_threshold)
    assert torch.equal(d.test[:, 0], torch.from_numpy(test >= 128).float())


def test_cifar10(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path)
    d = load_data(DataConfig(name="cifar10", root=str(tmp_path), valid_size=3))
    assert (d.binary, d.dynamic, d.shape) == (False, False, (3, 32, 32))
    assert [len(d.train), len(d.valid), len(d.test)] == [17, 3, 4]
    # rows are R, G, B planes: the first 1024 bytes are the red channel
    assert torch.equal(
        d.train[0, 0].flatten() * 255, torch.from_numpy(batches["data_batch_1"][0, :1024]).float()
    )
    assert torch.equal(
        d.valid[-1, 2].flatten() * 255, torch.from_numpy(batches["data_batch_5"][-1, 2048:]).float()
    )


@pytest.mark.parametrize("shape", [(20, 5, 6), (20, 5, 6, 3)])
def test_npz(tmp_path: Path, shape: tuple[int, ...]) -> None:
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "set.npz", labels=np.arange(20), x=x)  # first uint8 array is picked
    cfg = DataConfig(name="npz", root=str(tmp_path), file="set.npz")
    d = load_data(cfg)
    channels = shape[3] if len(shape) == 4 else 1
    assert (d.binary, d.shape) == (False, (channels, 5, 6))
    assert [len(d.train), len(d.valid), len(d.test)] == [16, 2, 2]  # 10% / 10% / rest
    # the splits partition the file's images
    rows = {tuple(r) for r in torch.cat([d.train, d.valid, d.test]).flatten(1).mul(255).round().tolist()}
    expected = x.reshape(20, 5, 6, channels).transpose(0, 3, 1, 2).reshape(20, -1)
    assert rows == {tuple(float(v) for v in r) for r in expected}
    # fixed for a seed, different for another; absolute path and valid_size work
    cfg.file, cfg.root, cfg.valid_size = str(tmp_path / "set.npz"), "", 5
    d2 = load_data(cfg)
    assert [len(d2.train), len(d2.valid), len(d2.test)] == [10, 5, 5]
    assert torch.equal(load_data(cfg).valid, d2.valid)
    cfg.seed = 1
    assert not torch.equal(load_data(cfg).valid, d2.valid)
    # an empty validation split is allowed (an empty test split is not: test_bad_inputs.py), and
    # so is holding out all but one example
    for (valid, test), sizes in {(0, 3): [17, 0, 3], (10, 9): [1, 10, 9]}.items():
        cfg.valid_size, cfg.test_size = valid, test
        d = load_data(cfg)
        assert [len(d.train), len(d.valid), len(d.test)] == sizes


def test_digits_split() -> None:
    d = load_data(DataConfig(name="digits"))
    assert (d.shape, d.binary, d.dynamic) == ((1, 8, 8), True, True)
    assert [len(d.train), len(d.valid), len(d.test)] == [1297, 250, 250]
    # the split is part of the dataset: independent of cfg.seed
    a = load_data(DataConfig(name="digits", binarize="none", seed=0))
    b = load_data(DataConfig(name="digits", binarize="none", seed=5))
    assert torch.equal(a.test, b.test) and torch.equal(a.train, b.train)
    assert torch.equal(a.test * 255, (a.test * 255).round())  # 8-bit grid


# ---------------------------------------------------------------------------------------------
# bad input


def _truncated_idx(root: Path) -> str:
    write_idx(root, gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    return path.name


def _wrong_magic(root: Path) -> str:
    write_idx(root, gz=False)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), magic=2049))
    return path.name


def _truncated_gzip(root: Path) -> str:
    write_idx(root)
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    return path.name


def _amat_line(root: Path, line: int, value: str, count: int = 784) -> str:
    write_binarized_mnist(root)
    path = root / "binarized_mnist_valid.amat"
    lines = path.read_text().splitlines()
    lines[line - 1] = " ".join(["0"] * (count - 1) + [value])
    path.write_text("\n".join(lines) + "\n")
    return path.name


def _idx_files(root: Path) -> str:
    write_idx(root)
    return "mnist"


def _npz(root: Path, x: np.ndarray) -> str:
    np.savez(root / "bad.npz", x=x)
    return "bad.npz"


@pytest.mark.parametrize("protocol", [4, 5])
def test_cifar10_batches_of_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    batches = write_cifar(tmp_path, protocol=protocol)
    d = load_data(DataConfig(name="cifar10", root=str(tmp_path), valid_size=3))
    assert torch.equal(d.test.flatten(1) * 255, torch.from_numpy(batches["test_batch"]).float())


def _corrupt_pickle(root: Path) -> str:
    write_cifar(root)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    return path.name


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _evil_pickle(root: Path) -> str:
    write_cifar(root)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil()}))
    return path.name


BAD_INPUTS = {
    "missing amat": ("binarized_mnist", {}, lambda r: "binarized_mnist_train.amat", "download"),
    "truncated idx": ("mnist", {}, _truncated_idx, "truncated"),
    "wrong magic": ("mnist", {}, _wrong_magic, "2051"),
    "truncated gzip": ("mnist", {}, _truncated_gzip, "gzip"),
    "amat count": ("binarized_mnist", {}, lambda r: _amat_line(r, 2, "1", 783), "line 2 has 783"),
    "amat value": ("binarized_mnist", {}, lambda r: _amat_line(r, 3, "2"), "line 3 has value '2'"),
    "amat float": ("binarized_mnist", {}, lambda r: _amat_line(r, 1, "0.5"), "'0.5'"),
    "npz dtype": ("npz", {"file": "bad.npz"}, lambda r: _npz(r, np.zeros((4, 5, 5))), "float64"),
    "npz key": (
        "npz",
        {"file": "bad.npz", "key": "y"},
        lambda r: _npz(r, np.zeros((4, 5, 5), np.uint8)),
        "'y'",
    ),
    "npz shape": (
        "npz",
        {"file": "bad.npz", "key": "x"},
        lambda r: _npz(r, np.zeros((4, 5, 5, 7), np.uint8)),
        "(4, 5, 5, 7)",
    ),
    "npz 2d": (
        "npz",
        {"file": "bad.npz", "key": "x"},
        lambda r: _npz(r, np.zeros((4, 25), np.uint8)),
        "(4, 25)",
    ),
    "corrupt pickle": ("cifar10", {}, _corrupt_pickle, "not a CIFAR-10"),
    "unsafe pickle": ("cifar10", {}, _evil_pickle, "refusing"),
    "missing cifar": ("cifar10", {}, lambda r: "data_batch_1", "download"),
    "valid too big": ("mnist", {"valid_size": 30}, _idx_files, "valid_size=30"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input(tmp_path: Path, case: str) -> None:
    name, fields, make, needle = BAD_INPUTS[case]
    filename = make(tmp_path)
    with pytest.raises(DataError) as excinfo:
        load_data(DataConfig(name=name, root=str(tmp_path), **fields))
    assert_one_line_error(excinfo, filename, needle)


def test_unknown_name_and_binarize() -> None:
    with pytest.raises(DataError) as excinfo:
        load_data(DataConfig(name="imagenet"))
    assert_one_line_error(excinfo, "'imagenet'", "binarized_mnist")
    with pytest.raises(DataError) as excinfo:
        load_data(DataConfig(binarize="stochastic"))
    assert_one_line_error(excinfo, "'stochastic'", "auto, dynamic, threshold, none")
    with pytest.raises(DataError):
        load_data(DataConfig(name="digits")).split("training")


# ---------------------------------------------------------------------------------------------
# dynamic binarization and batching


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_data(DataConfig(name="digits"))


def epoch(data: ImageData, **kw) -> list[torch.Tensor]:
    kw = {"shuffle": True, "seed": 3, **kw}
    return list(iterate_batches(data, "train", 100, **kw))


def test_dynamic_batches_are_deterministic_and_resampled(digits: ImageData) -> None:
    a, b = epoch(digits, epoch=2), epoch(digits, epoch=2)
    assert len(a) == num_batches(1297, 100) == 13 and len(a[-1]) == 97
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert set(torch.cat(a).unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(torch.cat(a), torch.cat(epoch(digits, epoch=3)))
    assert not torch.equal(torch.cat(a), torch.cat(epoch(digits, epoch=2, seed=4)))
    # the same examples in the same order are resampled each epoch: fix the order to see it
    x1 = epoch(digits, shuffle=False, epoch=0)[0]
    x2 = epoch(digits, shuffle=False, epoch=1)[0]
    assert not torch.equal(x1, x2) and (x1 - x2).abs().mean() < 0.3


def test_resume_equals_tail_of_uninterrupted_epoch(digits: ImageData) -> None:
    full = epoch(digits, epoch=1)
    resumed = epoch(digits, epoch=1, start=5)
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(x, y) for x, y in zip(full[5:], resumed, strict=True))


def test_shards_partition_the_epoch() -> None:
    n = 103  # not a multiple of world: padded
    ids = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    data = ImageData("ids", ids, ids, ids, binary=False, dynamic=False)
    full = torch.cat(list(iterate_batches(data, "train", 10, shuffle=True, seed=0)))
    shards = [
        list(iterate_batches(data, "train", 10, shuffle=True, seed=0, rank=r, world=4)) for r in range(4)
    ]
    assert len({len(s) for s in shards}) == 1  # same number of batches on every rank
    seen = torch.cat([torch.cat(s) for s in shards]).flatten()
    assert len(seen) == 104 and set(seen.tolist()) == set(range(n))
    # rank r takes every world-th example of the same permutation
    padded = torch.cat([full.flatten(), full.flatten()[:1]])
    for r, s in enumerate(shards):
        assert torch.equal(torch.cat(s).flatten(), padded[r::4])


def test_non_train_splits_and_static_data_are_fixed(digits: ImageData) -> None:
    batches = list(iterate_batches(digits, "test", 100, shuffle=False, seed=0, epoch=7))
    assert torch.equal(torch.cat(batches), digits.test)


def test_test_split_is_bernoulli_sampled_like_train(digits: ImageData) -> None:
    intensities = load_data(DataConfig(name="digits", binarize="none"))
    p = intensities.test
    x = digits.test
    # stable across loads; another seed gives another sample
    assert torch.equal(x, load_data(DataConfig(name="digits")).test)
    assert not torch.equal(x, load_data(DataConfig(name="digits", seed=1)).test)
    # sampled, not thresholded: grey pixels land on both sides of 0.5
    grey = (p > 0.1) & (p < 0.9)
    assert x[grey].mean() > 0.2 and x[grey].mean() < 0.8
    assert not torch.equal(x, (p >= 0.5).float())
    assert torch.all(x[p == 0] == 0) and torch.all(x[p == 1] == 1)
    # matching statistics: test sample mean ~ test intensity mean ~ train batch mean
    assert abs(x.mean() - p.mean()) < 0.01
    train = torch.cat(epoch(digits, epoch=0))
    assert abs(train.mean() - x.mean()) < 0.02


def test_subset_indices() -> None:
    a = subset_indices(1000, 100, seed=1)
    assert torch.equal(a, subset_indices(1000, 100, seed=1))
    assert not torch.equal(a, subset_indices(1000, 100, seed=2))
    assert len(a) == 100 and torch.equal(a, a.sort().values) and len(a.unique()) == 100
    assert not torch.equal(a, torch.arange(100)) and a.max() > 500
    assert torch.equal(subset_indices(50, 0, seed=1), torch.arange(50))
    assert torch.equal(subset_indices(50, 80, seed=1), torch.arange(50))


def test_num_batches_and_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [num_batches(n, 10) for n in (0, 1, 10, 11)] == [0, 1, 1, 2]
    monkeypatch.delenv("FLOWVAE_DATA", raising=False)
    assert data_root(DataConfig()) == Path("data")
    monkeypatch.setenv("FLOWVAE_DATA", "/elsewhere")
    assert data_root(DataConfig()) == Path("/elsewhere")
    assert data_root(DataConfig(root="mine")) == Path("mine")


# ---------------------------------------------------------------------------------------------
# real data (a sibling ../shared/data folder of the repository, when present)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data not present")
def test_real_binarized_mnist_and_mnist() -> None:
    d = load_data(DataConfig(name="binarized_mnist", root=str(REAL_DATA / "binarized_mnist")))
    assert [len(d.train), len(d.valid), len(d.test)] == [50000, 10000, 10000]
    means = [round(float(x.mean()), 4) for x in (d.train, d.valid, d.test)]
    assert means == pytest.approx([0.1306, 0.1311, 0.1325], abs=1e-3)
    d = load_data(DataConfig(name="mnist", root=str(REAL_DATA / "mnist")))
    assert [len(d.train), len(d.valid), len(d.test)] == [50000, 10000, 10000]
    assert (d.binary, d.dynamic) == (True, True)


def test_missing_files_suggest_the_data_root_that_holds_them(tmp_path: Path, monkeypatch) -> None:
    """data.root one level too high (or too low) names the folder that holds the files; every
    path in the message is absolute; otherwise the hint says the download needs the internet and
    where to put the files by hand."""
    (tmp_path / "binarized_mnist").mkdir()
    (tmp_path / "binarized_mnist" / "binarized_mnist_train.amat").write_text("")
    monkeypatch.chdir(tmp_path)
    for root in (".", "binarized_mnist/deeper"):
        with pytest.raises(DataError) as e:
            load_data(DataConfig(name="binarized_mnist", root=root))
        assert f"did you mean data.root={tmp_path / 'binarized_mnist'}?" in str(e.value)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="mnist", root="elsewhere"))
    message = str(e.value)
    assert f"in {tmp_path / 'elsewhere'};" in message and f"--root {tmp_path / 'elsewhere'}" in message
    assert "internet" in message and "by hand" in message and "\n" not in message
    with pytest.raises(DataError) as e:  # data.file: relative to data.root, and the message says so
        load_data(DataConfig(name="npz", root="elsewhere", file="x.npz"))
    assert f"{tmp_path / 'elsewhere' / 'x.npz'}: file not found" in str(e.value)
    assert "relative to data.root" in str(e.value)


def test_a_limit_above_the_split_size_says_it_was_capped() -> None:
    data = load_data(DataConfig(name="digits"))
    capped = evaluation_images(data, "test", limit=10**6)
    assert len(capped.images) == len(data.test) and "capped" in capped.description
    assert "capped" not in evaluation_images(data, "test", limit=len(data.test)).description
