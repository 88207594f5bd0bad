"""Downsampled ImageNet from small files in the official npz batch format (``data``: N x 3 r r
uint8, channel-major; ``labels``; ``mean`` in the training batches) and CelebA from aligned
178x218 JPEGs and an official-format partition file, streamed from disk."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flowvae.config import DataConfig
from flowvae.data import DATASETS, DataError, iterate_batches, load_data
from flowvae.datafiles import DiskImages

RNG = np.random.default_rng(0)
CELEBA_SPLITS = (5, 2, 3)
PER_BATCH, N_VAL = 3, 4  # 10 training batches of 3 images, 4 validation images


def write_imagenet(root: Path, side: int = 32, folders: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The official files: train_data_batch_1..10.npz (uncompressed and compressed, both seen in
    the wild) and val_data.npz; optionally in the folders the official zips unpack to."""
    train_dir = root / f"Imagenet{side}_train_npz" if folders else root
    val_dir = root / f"Imagenet{side}_val_npz" if folders else root
    for d in (train_dir, val_dir):
        d.mkdir(parents=True, exist_ok=True)
    columns = 3 * side * side
    batches = []
    for i in range(1, 11):
        data = RNG.integers(0, 256, (PER_BATCH, columns), dtype=np.uint8)
        save = np.savez_compressed if i % 2 else np.savez
        save(train_dir / f"train_data_batch_{i}.npz", data=data, labels=RNG.integers(1, 1001, PER_BATCH),
             mean=data.mean(0))  # fmt: skip
        batches.append(data)
    val = RNG.integers(0, 256, (N_VAL, columns), dtype=np.uint8)
    np.savez(val_dir / "val_data.npz", data=val, labels=RNG.integers(1, 1001, N_VAL))
    return np.concatenate(batches), val


@pytest.fixture(autouse=True)
def scaled(monkeypatch):
    for name in ("imagenet32", "imagenet64"):
        monkeypatch.setitem(DATASETS, name, replace(DATASETS[name], sizes=(28, 2, N_VAL)))
    monkeypatch.setitem(DATASETS, "celeba64", replace(DATASETS["celeba64"], sizes=CELEBA_SPLITS))


def as_uint8(x) -> np.ndarray:
    return np.round(x.numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize("folders", [False, True])
def test_reads_channel_major_rows_streamed_from_a_cache(tmp_path, folders):
    train_rows, val_rows = write_imagenet(tmp_path, folders=folders)
    cfg = DataConfig(name="imagenet32", root=str(tmp_path), valid_size=2)
    d = load_data(cfg)
    assert not d.binary and d.shape == (3, 32, 32)
    assert (len(d.train), len(d.valid), len(d.test)) == (28, 2, 4)
    for split in (d.train, d.valid, d.test):  # left on disk, memory-mapped
        assert isinstance(split, DiskImages) and isinstance(split.array, np.memmap)
    # rows are the R plane, then G, then B, each 32x32 row-major (as in CIFAR-10's batches)
    np.testing.assert_array_equal(as_uint8(d.test[:]), val_rows.reshape(-1, 3, 32, 32))
    assert as_uint8(d.test[1])[2, 0, 5] == val_rows[1, 2 * 1024 + 5]
    ours = {x.tobytes() for x in np.concatenate([as_uint8(d.train[:]), as_uint8(d.valid[:])])}
    assert ours == {x.tobytes() for x in train_rows.reshape(-1, 3, 32, 32)}
    batch = next(iterate_batches(d, "train", 8, shuffle=True, seed=0))
    assert batch.dtype.is_floating_point and batch.shape == (8, 3, 32, 32) and float(batch.max()) <= 1

    caches = sorted((tmp_path / "flowvae-cache").iterdir())
    assert [p.name.split("-")[1] for p in caches] == ["train", "val"] and {p.suffix for p in caches} == {
        ".npy"
    }
    before = [p.stat().st_mtime_ns for p in caches]
    load_data(cfg)
    assert [p.stat().st_mtime_ns for p in caches] == before  # written once
    write_imagenet(tmp_path, folders=folders)  # new files: a new cache
    load_data(cfg)
    assert len(list((tmp_path / "flowvae-cache").iterdir())) == 4


def test_cache_folder_from_the_environment_and_a_read_only_root(tmp_path, monkeypatch):
    write_imagenet(tmp_path / "data", side=64)
    monkeypatch.setenv("FLOWVAE_CACHE", str(tmp_path / "cache"))
    d = load_data(DataConfig(name="imagenet64", root=str(tmp_path / "data"), valid_size=2))
    assert d.shape == (3, 64, 64) and len(list((tmp_path / "cache").iterdir())) == 2
    monkeypatch.setenv("FLOWVAE_CACHE", "/proc/flowvae-cannot-write-here")
    with pytest.raises(DataError, match="FLOWVAE_CACHE") as e:
        load_data(DataConfig(name="imagenet64", root=str(tmp_path / "data"), valid_size=2))
    assert "\n" not in str(e.value)


def one_line(cfg: DataConfig, *words: str) -> None:
    with pytest.raises(DataError) as e:
        load_data(cfg)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_wrong_truncated_foreign_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWVAE_CACHE", str(tmp_path / "cache"))
    write_imagenet(tmp_path, side=64)
    cfg = DataConfig(name="imagenet32", root=str(tmp_path), valid_size=2)
    one_line(cfg, "train_data_batch_1.npz", "12288", "64x64", "expected 3072")  # the other resolution
    write_imagenet(tmp_path)
    path = tmp_path / "train_data_batch_7.npz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    one_line(cfg, path.name, "not a readable .npz file")
    np.savez(path, x=np.zeros(3))
    one_line(cfg, path.name, "no array 'data'", "arrays: x")
    np.savez(path, data=np.zeros((3, 3072), np.float32))
    one_line(cfg, path.name, "float32", "uint8")
    path.unlink()
    one_line(cfg, path.name, "file not found", "there is no download", "image-net.org", str(tmp_path))
    np.savez(path, data=np.zeros((1, 3072), np.uint8))  # a short batch: not the published sizes
    one_line(cfg, "Imagenet32", "32 images", "published 34")  # (scaled down by the fixture)
    np.savez(path, data=np.zeros((PER_BATCH, 3072), np.uint8))
    one_line(replace(cfg, binarize="dynamic"), "data.binarize=dynamic", "8-bit")


def test_download_says_where_to_get_the_files(tmp_path):
    from conftest import run_cli

    proc = run_cli("data", "download", "imagenet32", "--root", str(tmp_path), check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "no download" in proc.stderr and "image-net.org" in proc.stderr


@pytest.mark.parametrize("name", ["imagenet32", "celeba64"])
def test_trains_and_evaluates_end_to_end(tmp_path, monkeypatch, name):
    """imagenet32: its preset, iaf-imagenet32; celeba64 (no preset of its own): the preset a run
    of data.name=celeba64 starts from, iaf-cifar10."""
    from conftest import run_cli

    monkeypatch.setenv("FLOWVAE_CACHE", str(tmp_path / "cache"))
    (write_imagenet if name == "imagenet32" else write_celeba)(tmp_path / "data")
    run = tmp_path / "run"
    start = ["data.name=celeba64"]
    if name == "imagenet32":
        start = ["--preset", "iaf-imagenet32", "data.valid_size=2"]
    run_cli(
        "train", "--run-dir", str(run), "--no-progress", *start,
        f"data.root={tmp_path / 'data'}", "train.max_steps=2", "train.epochs=1",
        "train.batch_size=4", "eval.samples=2",
        # the preset's own network (depths [10,10], n_h 160) takes ~90 s here on one CPU thread
        "model.depths=[1,1]", "model.n_h=8", "model.n_z=2",
    )  # fmt: skip
    out = json.loads(run_cli("eval", str(run), "--samples", "2", "--limit", "2", "--json").stdout)
    assert np.isfinite(out["nll"]) and out["n"] == 2 and out["bits_per_dim"] is not None


# ---------------------------------------------------------------------------------------------
# CelebA 64x64


def write_celeba(root: Path) -> list[np.ndarray]:
    """img_align_celeba/000001.jpg.. (178x218 RGB JPEGs) and list_eval_partition.txt, whose
    splits interleave as the official one's do not (to check the split follows the file)."""
    from PIL import Image

    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    splits = [0, 0, 1, 0, 2, 0, 1, 2, 0, 2]
    pixels = []
    for i in range(len(splits)):
        x = RNG.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        x[35:183, 15:163] //= 2  # the centre 148x148
        Image.fromarray(x).save(root / "img_align_celeba" / f"{i + 1:06d}.jpg", quality=95)
        pixels.append(x)
    lines = [f"{i + 1:06d}.jpg {s}" for i, s in enumerate(splits)]
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return splits


def test_celeba_centre_crop_resize_and_the_official_partition(tmp_path):
    from PIL import Image

    splits = write_celeba(tmp_path)
    d = load_data(DataConfig(name="celeba64", root=str(tmp_path), valid_size=7))  # valid_size: not used
    assert not d.binary and d.shape == (3, 64, 64)
    assert (len(d.train), len(d.valid), len(d.test)) == CELEBA_SPLITS
    assert all(isinstance(x, DiskImages) for x in (d.train, d.valid, d.test))
    names = [f"{i + 1:06d}.jpg" for i in range(len(splits))]
    for k, split in enumerate((d.train, d.valid, d.test)):
        wanted = [n for n, s in zip(names, splits, strict=True) if s == k]
        for got, name in zip(as_uint8(split[:]), wanted, strict=True):
            # the stated recipe, by hand: the decoded JPEG, centre 148x148 at (15, 35), bilinear to 64
            with Image.open(tmp_path / "img_align_celeba" / name) as im:
                ref = np.asarray(im.convert("RGB").crop((15, 35, 163, 183)).resize((64, 64), Image.BILINEAR))
            np.testing.assert_array_equal(got, ref.transpose(2, 0, 1))
    cache = next((tmp_path / "flowvae-cache").iterdir())
    before = cache.stat().st_mtime_ns
    load_data(DataConfig(name="celeba64", root=str(tmp_path)))
    assert cache.stat().st_mtime_ns == before  # cached once


def test_celeba_bad_files(tmp_path):
    write_celeba(tmp_path)
    cfg = DataConfig(name="celeba64", root=str(tmp_path))
    folder = tmp_path / "img_align_celeba"
    (folder / "000004.jpg").write_bytes(b"not a jpeg")
    one_line(cfg, "000004.jpg", "not a readable image")
    assert not (tmp_path / "flowvae-cache").exists() or not list((tmp_path / "flowvae-cache").glob("*.part"))
    from PIL import Image

    Image.new("RGB", (64, 64)).save(folder / "000004.jpg")  # already resized: not the aligned images
    one_line(cfg, "000004.jpg", "64x64", "178x218")
    (folder / "000004.jpg").unlink()
    one_line(cfg, "000004.jpg", "file not found", "there is no download", "CelebA")
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("000001.jpg 0\n000002.jpg train\n")
    one_line(cfg, part.name, "line 2", "NAME.jpg 0|1|2")
    part.unlink()
    one_line(cfg, part.name, "file not found")
    write_celeba(tmp_path)
    part.write_text("\n".join(part.read_text().splitlines()[:-1]))  # a line short
    one_line(cfg, "9 images", "published 10")
