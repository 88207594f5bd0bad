"""Checkpoints are data, never code: torn, foreign and incomplete files are refused in one line."""


import pytest
import torch

from flowvae.checkpoint import CheckpointError, load_checkpoint, remove_temp_files, save_atomic
from flowvae.config import apply_overrides
from flowvae.presets import preset
from flowvae.train import train

TINY = ["model.hidden=[16]", "model.latent_dim=2", "train.epochs=1", "eval.samples=4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "run"
    train(apply_overrides(preset("digits"), TINY), d, progress=False)
    return d


# a checkpoint that would run code on eval, sample, gaps or resume: rows "code in ..." of
# tests/test_bad_inputs_run.py (refused in one line, nothing created)


def test_incomplete_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    path = tmp_path / "x.pt"
    save_atomic({"model": {}}, path)
    with pytest.raises(CheckpointError, match="incomplete checkpoint .no config, image_shape, binary"):
        load_checkpoint(path)
    save_atomic([1, 2], path)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="not a flowvae checkpoint .a list, not a dict"):
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


def test_checkpoints_with_numpy_rng_states_still_load_and_resume(tmp_path):
    """Runs written before RNG states were tensors: numpy's array reconstruction is allowed."""
    import numpy as np

    from flowvae.rundir import prepare_run

    run = tmp_path / "old"
    train(apply_overrides(preset("digits"), TINY), run, progress=False)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    ckpt["ranks"][0]["rng"]["numpy"] = np.random.get_state()  # as the old code stored it
    torch.save(ckpt, run / "checkpoint.pt")
    cfg = prepare_run(None, run, True, ["train.epochs=2"])
    assert train(cfg, run, resume=True, progress=False).epoch == 2


def test_checkpoints_get_the_mode_of_the_runs_other_files(run_dir):
    """Written through a temp file, yet not mkstemp's 0600: the mode open() gives config.yaml."""
    mode = (run_dir / "config.yaml").stat().st_mode & 0o777
    assert (run_dir / "checkpoint.pt").stat().st_mode & 0o777 == mode
    assert (run_dir / "best.pt").stat().st_mode & 0o777 == mode
