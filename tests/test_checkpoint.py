"""Checkpoints are data, never code: unsafe, torn and incomplete files are refused in one line."""

import pathlib
import shutil

import pytest
import torch
from conftest import run_cli

from flowvae.checkpoint import CheckpointError, load_checkpoint, remove_temp_files, save_atomic
from flowvae.config import apply_overrides, preset
from flowvae.train import train

TINY = ["model.hidden=[16]", "model.latent_dim=2", "train.epochs=1", "eval.samples=4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "run"
    train(apply_overrides(preset("digits"), TINY), d, progress=False)
    return d


class _Touch:
    """Unpickling this would create ``path``: the test's witness of code execution."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def _evil_copy(run_dir: pathlib.Path, dest: pathlib.Path, witness: pathlib.Path) -> pathlib.Path:
    shutil.copytree(run_dir, dest)
    for name in ("best.pt", "checkpoint.pt"):
        ckpt = load_checkpoint(dest / name)
        ckpt["state"] = {"payload": _Touch(witness)}
        torch.save(ckpt, dest / name)
    return dest


@pytest.mark.parametrize(
    "command",
    [["eval", "{run}", "--samples", "2"], ["sample", "{run}", "--n", "4"], ["gaps", "{run}", "--n", "2"],
     ["train", "--resume", "{run}", "--no-progress"]],
    ids=["eval", "sample", "gaps", "resume"],
)  # fmt: skip
def test_a_checkpoint_that_would_run_code_is_refused(run_dir, tmp_path, command):
    witness = tmp_path / "pwned"
    evil = _evil_copy(run_dir, tmp_path / "evil", witness)
    before = sorted(p.name for p in evil.iterdir())
    proc = run_cli(*[a.format(run=evil) for a in command], check=False)
    assert proc.returncode == 1
    assert "refused" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not witness.exists()
    assert sorted(p.name for p in evil.iterdir()) == before  # nothing written either


def test_incomplete_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    path = tmp_path / "x.pt"
    save_atomic({"model": {}}, path)
    with pytest.raises(CheckpointError, match="incomplete checkpoint .no config, image_shape, binary"):
        load_checkpoint(path)
    save_atomic([1, 2], path)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_round_trips_through_the_safe_loader(run_dir):
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert {"model", "optimizer", "config", "state", "ranks"} <= set(ckpt)
    rng = ckpt["ranks"][0]["rng"]
    assert isinstance(rng["numpy"][1], torch.Tensor) and rng["numpy"][1].shape == (624,)


def test_temp_files_of_a_killed_write_are_removed(tmp_path):
    for name in (".checkpoint.pt.abc123", ".best.pt.x", ".metrics.csv.tmp", "keep.pt", ".hidden"):
        (tmp_path / name).write_bytes(b"")
    removed = {p.name for p in remove_temp_files(tmp_path)}
    assert removed == {".checkpoint.pt.abc123", ".best.pt.x", ".metrics.csv.tmp"}
    assert {p.name for p in tmp_path.iterdir()} == {"keep.pt", ".hidden"}
