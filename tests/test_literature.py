"""Omniglot, Caltech 101 Silhouettes and Frey faces, read from small files written here in the
published formats (MATLAB column-major images, 784 x N layouts, uint8 and float, Python 2
pickles), with the published sizes scaled down."""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from flowvae.config import DataConfig
from flowvae.data import DATASETS, DataError, load_data, read_arrays

RNG = np.random.default_rng(0)


def scaled(monkeypatch: pytest.MonkeyPatch, name: str, sizes: tuple[int, int, int]) -> None:
    """The dataset's published sizes, scaled down to the test's files."""
    monkeypatch.setitem(DATASETS, name, replace(DATASETS[name], sizes=sizes))


def one_line_error(cfg: DataConfig, *words: str) -> str:
    with pytest.raises(DataError) as e:
        load_data(cfg)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


# ---------------------------------------------------------------------------------------------
# writers of the published formats


def write_omniglot(root: Path, n_train: int = 20, n_test: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """chardata.mat: ``data`` / ``testdata`` 784 x N float64 in [0, 1], columns column-major 28x28
    (as Burda et al. saved them from MATLAB), plus the label arrays the file also holds."""
    root.mkdir(parents=True, exist_ok=True)
    data, test = RNG.random((784, n_train)), RNG.random((784, n_test))
    data[RNG.random(data.shape) < 0.7] = 0.0
    scipy.io.savemat(
        root / "chardata.mat",
        {
            "data": data,
            "testdata": test,
            "target": np.eye(50)[:, :n_train],
            "testtarget": np.eye(50)[:, :n_test],
        },
    )
    return data, test


def write_caltech(root: Path, sizes=(12, 5, 6), dtype=np.float64) -> dict[str, np.ndarray]:
    """caltech101_silhouettes_28_split1.mat: N x 784 binary rows (column-major 28x28), labels and
    class names as in Marlin's file."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        k: (RNG.random((n, 784)) < 0.6).astype(dtype)
        for k, n in zip(("train", "val", "test"), sizes, strict=True)
    }
    contents = {f"{k}_data": a for k, a in arrays.items()}
    contents.update({f"{k}_labels": np.ones((len(a), 1)) for k, a in arrays.items()})
    contents["classnames"] = np.array(["a", "b"], dtype=object)
    scipy.io.savemat(root / "caltech101_silhouettes_28_split1.mat", contents)
    return arrays


def write_frey_mat(root: Path, n: int = 25) -> np.ndarray:
    """frey_rawface.mat: ``ff`` 560 x N uint8, each column a row-major 28x20 face."""
    root.mkdir(parents=True, exist_ok=True)
    ff = RNG.integers(0, 256, (560, n), dtype=np.uint8)
    scipy.io.savemat(root / "frey_rawface.mat", {"ff": ff})
    return ff


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the published freyfaces.pkl holds its
    array data; Python 3 reads them back through ``encoding``."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def python2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Omniglot


def test_omniglot_reads_columns_in_matlab_order_and_splits_like_the_papers(tmp_path, monkeypatch):
    data, test = write_omniglot(tmp_path)
    data[:, 0] = 0
    data[5 * 28 + 2, 0] = 1.0  # column-major: row 2, column 5 of image 0
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": data, "testdata": test})
    scaled(monkeypatch, "omniglot", (17, 3, 6))
    cfg = DataConfig(name="omniglot", root=str(tmp_path), valid_size=3)
    train, valid, raw_test = read_arrays(cfg)
    assert (
        train.shape == (17, 1, 28, 28) and valid.shape == (3, 1, 28, 28) and raw_test.shape == (6, 1, 28, 28)
    )
    assert train.dtype == np.float32 and 0 <= train.min() and train.max() <= 1

    # the papers' code: data.T.reshape((-1, 28, 28)).reshape((-1, 784), order='F'), read row-major
    def reference(a: np.ndarray) -> np.ndarray:
        return (
            a.T.astype(np.float32).reshape((-1, 28, 28)).reshape((-1, 784), order="F").reshape(-1, 1, 28, 28)
        )

    np.testing.assert_array_equal(raw_test, reference(test))
    ours = {x.tobytes() for x in np.concatenate([train, valid])}
    assert ours == {x.tobytes() for x in reference(data)} and len(ours) == 20
    marked = [x for x in np.concatenate([train, valid]) if x.sum() == 1]
    assert len(marked) == 1 and marked[0][0, 2, 5] == 1

    d = load_data(cfg)
    assert d.dynamic and d.binary and d.shape == (1, 28, 28)
    assert set(np.unique(d.valid.numpy())) <= {0.0, 1.0} and set(np.unique(d.test.numpy())) <= {0.0, 1.0}
    assert not set(np.unique(d.train.numpy())) <= {0.0, 1.0}  # intensities: binarized per batch
    again = load_data(cfg)
    assert (again.valid == d.valid).all() and (again.test == d.test).all()  # sampled once, seeded
    other = read_arrays(replace(cfg, seed=1))[1]
    assert {x.tobytes() for x in other} != {x.tobytes() for x in valid}  # the shuffle follows data.seed


def test_omniglot_default_split_and_published_sizes(tmp_path, monkeypatch):
    write_omniglot(tmp_path, n_train=1350, n_test=4)
    scaled(monkeypatch, "omniglot", (5, 1345, 4))
    d = load_data(DataConfig(name="omniglot", root=str(tmp_path)))
    assert (len(d.train), len(d.valid), len(d.test)) == (5, 1345, 4)  # the last 1345 for validation
    monkeypatch.undo()  # the real sizes: 24,345 + 8,070
    one_line_error(DataConfig(name="omniglot", root=str(tmp_path)), "chardata.mat", "1354 images", "32415")


# ---------------------------------------------------------------------------------------------
# Caltech 101 Silhouettes


@pytest.mark.parametrize("dtype", [np.float64, np.uint8])
def test_caltech_keeps_the_files_split_inverted_like_the_papers(tmp_path, monkeypatch, dtype):
    arrays = write_caltech(tmp_path, dtype=dtype)
    scaled(monkeypatch, "caltech101_silhouettes", (12, 5, 6))
    d = load_data(
        DataConfig(name="caltech101_silhouettes", root=str(tmp_path), valid_size=1)
    )  # the file's split
    assert d.binary and not d.dynamic and d.shape == (1, 28, 28)
    for ours, (key, a) in zip((d.train, d.valid, d.test), arrays.items(), strict=True):
        # the papers' code: 1 - a.reshape((-1, 28, 28)).reshape((-1, 784), order='F')
        reference = 1.0 - a.astype(np.float32).reshape((-1, 28, 28)).reshape((-1, 784), order="F")
        np.testing.assert_array_equal(ours.numpy().reshape(len(a), 784), reference, err_msg=key)


def test_caltech_rejects_non_binary_and_transposed_arrays(tmp_path, monkeypatch):
    arrays = write_caltech(tmp_path)
    path = tmp_path / "caltech101_silhouettes_28_split1.mat"
    cfg = DataConfig(name="caltech101_silhouettes", root=str(tmp_path))
    scipy.io.savemat(
        path, {"train_data": arrays["train"] * 0.5, "val_data": arrays["val"], "test_data": arrays["test"]}
    )
    one_line_error(cfg, path.name, "train_data", "0 and 1")
    scipy.io.savemat(
        path, {"train_data": arrays["train"].T, "val_data": arrays["val"], "test_data": arrays["test"]}
    )
    one_line_error(cfg, path.name, "784 x 12", "N x 784")
    write_caltech(tmp_path)
    one_line_error(cfg, path.name, "23 images", "8671")  # the published 4100 + 2264 + 2307


# ---------------------------------------------------------------------------------------------
# Frey faces


def sylvester_split(images: np.ndarray, seed: int, sizes=(15, 5, 5)) -> tuple[np.ndarray, ...]:
    """riannevdberg/sylvester-flows: np.random.seed(freyseed); np.random.shuffle(data); slices."""
    data = images.copy()
    np.random.RandomState(seed).shuffle(data)
    a, b, _ = sizes
    return data[:a], data[a : a + b], data[a + b :]


def test_frey_mat_rows_and_the_sylvester_split(tmp_path, monkeypatch):
    ff = write_frey_mat(tmp_path)
    scaled(monkeypatch, "frey_faces", (15, 5, 5))
    d = load_data(DataConfig(name="frey_faces", root=str(tmp_path), valid_size=5, test_size=5, seed=123))
    assert not d.binary and d.shape == (1, 28, 20)
    faces = ff.T.reshape(-1, 1, 28, 20)  # the usual reading: ff.T.reshape((-1, 28, 20))
    for ours, theirs in zip((d.train, d.valid, d.test), sylvester_split(faces, 123), strict=True):
        np.testing.assert_array_equal(np.round(ours.numpy() * 255).astype(np.uint8), theirs)


@pytest.mark.parametrize("layout", ["tuple-uint8", "array-float", "array-3d"])
def test_frey_pickle_as_the_papers_load_it(tmp_path, monkeypatch, layout):
    faces = RNG.integers(0, 256, (25, 560)).astype(np.uint8)
    obj = {
        "tuple-uint8": (faces, np.zeros(25)),  # the papers' code reads pickle.load(f)[0]
        "array-float": faces / 255.0,
        "array-3d": faces.reshape(25, 28, 20).astype(np.float64),
    }[layout]
    (tmp_path / "freyfaces.pkl").write_bytes(python2_pickle(obj))
    scaled(monkeypatch, "frey_faces", (15, 5, 5))
    d = load_data(DataConfig(name="frey_faces", root=str(tmp_path), valid_size=5, test_size=5, seed=7))
    for ours, theirs in zip(
        (d.train, d.valid, d.test), sylvester_split(faces.reshape(-1, 1, 28, 20), 7), strict=True
    ):
        np.testing.assert_array_equal(np.round(ours.numpy() * 255).astype(np.uint8), theirs)


def test_frey_pickle_with_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "freyfaces.pkl").write_bytes(pickle.dumps((Evil(),)))
    one_line_error(DataConfig(name="frey_faces", root=str(tmp_path)), "freyfaces.pkl", "refusing to unpickle")
    assert not marker.exists()


def test_frey_default_split_is_1565_200_200(tmp_path):
    write_frey_mat(tmp_path, n=1965)
    d = load_data(DataConfig(name="frey_faces", root=str(tmp_path), seed=123))
    assert (len(d.train), len(d.valid), len(d.test)) == (1565, 200, 200)


# ---------------------------------------------------------------------------------------------
# wrong, truncated, foreign and missing files: one line each, naming the file


@pytest.mark.parametrize("name", ["omniglot", "caltech101_silhouettes", "frey_faces"])
def test_bad_files_give_one_line(tmp_path, name):
    writer = {
        "omniglot": write_omniglot,
        "caltech101_silhouettes": write_caltech,
        "frey_faces": write_frey_mat,
    }
    writer[name](tmp_path)
    (path,) = tmp_path.iterdir()
    cfg = DataConfig(name=name, root=str(tmp_path))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # truncated
    one_line_error(cfg, path.name)
    path.write_bytes(b"<html>404: not found</html>" * 20)  # what a failed download often leaves
    one_line_error(cfg, path.name, "not a readable .mat file")
    scipy.io.savemat(path, {"x": np.zeros((3, 3))})  # a .mat of something else
    one_line_error(cfg, path.name, "no variable", "variables: x")
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1024))  # MATLAB v7.3 is HDF5
    one_line_error(cfg, path.name)
    path.unlink()
    message = one_line_error(cfg, path.name, "file not found", str(tmp_path))
    assert f"flowvae data download {name}" in message and "by hand" in message


def test_frey_values_out_of_range(tmp_path):
    scipy.io.savemat(tmp_path / "frey_rawface.mat", {"ff": np.full((560, 4), 300.0)})
    one_line_error(DataConfig(name="frey_faces", root=str(tmp_path)), "frey_rawface.mat", "8-bit")
    (tmp_path / "frey_rawface.mat").unlink()
    (tmp_path / "freyfaces.pkl").write_bytes(pickle.dumps({"a": 1}))
    one_line_error(
        DataConfig(name="frey_faces", root=str(tmp_path)), "freyfaces.pkl", "expected a numeric array"
    )


def test_omniglot_values_out_of_range(tmp_path):
    scipy.io.savemat(
        tmp_path / "chardata.mat", {"data": np.full((784, 3), 255.0), "testdata": np.zeros((784, 2))}
    )
    one_line_error(DataConfig(name="omniglot", root=str(tmp_path)), "chardata.mat", "'data'", "[0, 1]")


# ---------------------------------------------------------------------------------------------
# downloads (no published MD5: verified by loading) from a file:// URL and a local HTTP server


def test_download_from_a_file_url_is_verified_by_loading(tmp_path, monkeypatch):
    from flowvae.data import download

    served = tmp_path / "mirror"
    write_caltech(served)
    scaled(monkeypatch, "caltech101_silhouettes", (12, 5, 6))
    root = tmp_path / "data"
    (path,) = download("caltech101_silhouettes", root, base_url=served.as_uri())
    assert (
        path == root / "caltech101_silhouettes_28_split1.mat"
        and path.read_bytes() == next(served.iterdir()).read_bytes()
    )
    assert len(load_data(DataConfig(name="caltech101_silhouettes", root=str(root))).test) == 6
    assert download("caltech101_silhouettes", root, base_url=(tmp_path / "nowhere").as_uri()) == [
        path
    ]  # present

    write_caltech(served, sizes=(3, 1, 1))  # not the published sizes: refused and removed
    with pytest.raises(DataError) as e:
        download("caltech101_silhouettes", tmp_path / "other", base_url=served.as_uri())
    assert "\n" not in str(e.value) and "5 images" in str(e.value) and "removed" in str(e.value)
    assert list((tmp_path / "other").iterdir()) == []


def test_cli_download_from_a_local_server(tmp_path, monkeypatch):
    from conftest import run_cli
    from test_download import Server

    (tmp_path / "srv" / "files").mkdir(parents=True)
    server = Server(tmp_path / "srv")
    try:
        write_omniglot(tmp_path / "srv" / "files", n_train=8, n_test=2)
        scaled(monkeypatch, "omniglot", (7, 1, 2))
        monkeypatch.setenv("FLOWVAE_DOWNLOAD_URL", server.url)
        out = run_cli("data", "download", "omniglot", "--root", str(tmp_path / "d")).stdout
        assert "1 files" in out and server.requests == ["/files/chardata.mat"]
        (tmp_path / "srv" / "files" / "chardata.mat").write_bytes(b"<html>rate limited</html>")
        proc = run_cli("data", "download", "omniglot", "--root", str(tmp_path / "e"), check=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
        assert "chardata.mat" in proc.stderr and "not a readable .mat file" in proc.stderr
        assert not (tmp_path / "e" / "chardata.mat").exists()
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# ---------------------------------------------------------------------------------------------
# the papers' presets, end to end on the test-written files

TINY = ["train.max_steps=2", "train.epochs=1", "train.batch_size=8", "eval.samples=4"]


@pytest.mark.parametrize(
    "preset, name",
    [
        ("sylvester-omniglot-iaf", "omniglot"),
        ("vampprior-caltech-vae-vamp", "caltech101_silhouettes"),
        ("sylvester-frey-triangular", "frey_faces"),  # 28x20 through the gated-conv networks
        ("vampprior-frey-hvae-vamp", "frey_faces"),
    ],
)
def test_preset_trains_and_evaluates(tmp_path, monkeypatch, preset, name):
    import json

    from conftest import run_cli

    {"omniglot": write_omniglot, "caltech101_silhouettes": write_caltech, "frey_faces": write_frey_mat}[name](
        tmp_path / "data"
    )
    sizes = {"omniglot": (17, 3, 6), "caltech101_silhouettes": (12, 5, 6), "frey_faces": (15, 5, 5)}[name]
    scaled(monkeypatch, name, sizes)
    splits = {"omniglot": ["data.valid_size=3"], "frey_faces": ["data.valid_size=5", "data.test_size=5"]}
    run = tmp_path / "run"
    few = ["model.prior_components=4"] if preset.endswith("-vamp") else []  # not more than the 12 images
    run_cli(
        "train", "--preset", preset, "--run-dir", str(run), "--no-progress", f"data.root={tmp_path / 'data'}",
        *TINY, *splits.get(name, []), *few,
    )  # fmt: skip
    out = json.loads(run_cli("eval", str(run), "--samples", "4", "--limit", "3", "--json").stdout)
    assert np.isfinite(out["nll"]) and out["n"] == 3, out
    assert out["likelihood"] == ("logistic" if name == "frey_faces" else "bernoulli"), out
