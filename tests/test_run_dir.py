"""Runs never collide or overwrite: unique default folders, refused non-empty --run-dir, no
empty folders after a failure, `sample` never overwrites."""

import shutil

import pytest
from conftest import run_cli

from flowvae import rundir as rundir_module
from flowvae.checkpoint import load_checkpoint
from flowvae.rundir import new_run_dir

TINY = ["--no-progress", "model.hidden=[16]", "model.latent_dim=2", "train.epochs=1", "eval.samples=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("rundir") / "run"
    run_cli("train", "--run-dir", str(d), *TINY)
    return d


def test_new_run_dirs_started_in_the_same_second_differ(tmp_path):
    first, second = new_run_dir(tmp_path, "x"), new_run_dir(tmp_path, "x")
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == f"{first.name}-2"


def test_two_default_runs_in_the_same_second_keep_both_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir_module.time, "strftime", lambda fmt, *a: "20260101-000000")
    run_cli("train", *TINY, "model.posterior=iaf", "model.flow_steps=1")
    run_cli("train", *TINY, "model.posterior=iaf", "model.flow_steps=1")
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["digits-iaf-20260101-000000", "digits-iaf-20260101-000000-2"]
    for name in runs:
        assert load_checkpoint(tmp_path / "runs" / name / "best.pt")["state"]["epoch"] == 1


def test_default_folder_names_preset_data_and_posterior(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli("train", "--preset", "digits", *TINY, "model.posterior=planar", "model.flow_steps=1")
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("digits-planar-")


@pytest.mark.parametrize("name", ["config.yaml", "metrics.csv", "best.pt", "events.out.tfevents.1.host.2.0"])
def test_a_run_dir_holding_any_run_file_is_refused_unless_overwrite(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_bytes(b"an earlier run's file")
    proc = run_cli("train", "--run-dir", str(run), *TINY, check=False)
    assert proc.returncode == 1 and "already holds a run" in proc.stderr and "--overwrite" in proc.stderr
    assert [p.name for p in run.iterdir()] == [name]
    assert (run / name).read_bytes() == b"an earlier run's file"
    run_cli("train", "--run-dir", str(run), "--overwrite", *TINY)
    assert load_checkpoint(run / "best.pt")["state"]["epoch"] == 1
    if name.startswith("events"):
        assert not (run / name).exists()  # replaced, not mixed with the new run's events
    else:
        assert (run / name).read_bytes() != b"an earlier run's file"


def test_an_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "run").mkdir()
    run_cli("train", "--run-dir", str(tmp_path / "run"), *TINY)


@pytest.mark.parametrize(
    "bad", [["data.name=binarized_mnist", "data.root=missing"], ["train.lr_schedule=cosin"]]
)
def test_a_failed_train_leaves_no_folder(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", *TINY, *bad, check=False).returncode != 0
    assert run_cli("train", "--run-dir", "explicit/run", *TINY, *bad, check=False).returncode != 0
    assert not (tmp_path / "explicit").exists()
    assert not (tmp_path / "runs").exists()


def test_sample_without_out_writes_a_new_file(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "samples.png").read_bytes()
    first = run_cli("sample", str(run), "--n", "4").stdout
    second = run_cli("sample", str(run), "--n", "4", "--seed", "1").stdout
    assert str(run / "samples-1.png") in first and str(run / "samples-2.png") in second
    assert (run / "samples.png").read_bytes() == before
    assert (run / "samples-1.png").read_bytes() != (run / "samples-2.png").read_bytes()


def test_a_run_and_a_group_record_their_preset_and_config_file(tmp_path):
    """The preset name and the --config file were recorded nowhere; a --seeds run without
    --run-dir got a name that did not say it is a group."""
    import hashlib
    import json

    import yaml

    (tmp_path / "my.yaml").write_text("model:\n  hidden: [16]\n  latent_dim: 2\n")
    digest = hashlib.sha256((tmp_path / "my.yaml").read_bytes()).hexdigest()
    args = ["--preset", "digits", "--config", "my.yaml", "--no-progress", "train.epochs=1", "eval.samples=4"]
    run_cli("train", "--run-dir", "one", *args)
    head = (tmp_path / "one" / "config.yaml").read_text().splitlines()[0]
    assert head.startswith("# started from preset digits and config file my.yaml") and digest[:16] in head
    assert yaml.safe_load((tmp_path / "one" / "config.yaml").read_text())["model"]["hidden"] == [16]
    (first,) = map(json.loads, (tmp_path / "one" / "invocations.jsonl").read_text().splitlines())
    assert (first["preset"], first["config_file"], first["config_sha256"]) == ("digits", "my.yaml", digest)
    run_cli("train", "--seeds", "2", *args)
    (group,) = (tmp_path / "runs").iterdir()
    assert group.name.startswith("digits-diag-2seeds-")
    on_disk = json.loads((group / "group.json").read_text())
    assert on_disk["origin"] == {"preset": "digits", "config_file": "my.yaml", "config_sha256": digest}
    member = json.loads((group / "seed-1" / "invocations.jsonl").read_text().splitlines()[0])
    assert member["preset"] == "digits" and member["config_sha256"] == digest


def test_sample_refuses_an_n_whose_grid_is_too_big_for_one_image(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = sorted(p.name for p in run.iterdir())
    proc = run_cli("sample", str(run), "--n", "10000000", "--no-progress", check=False)  # killed for memory
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith("flowvae: error: --n 10000000: 10000000 images of 1x8x8")
    assert "at most" in line and sorted(p.name for p in run.iterdir()) == before
    from flowvae.images import max_grid_images

    most = max_grid_images((1, 8, 8))
    assert 1000 < most < 10000000
    assert run_cli("sample", str(run), "--n", str(most + 1), check=False).returncode == 2


def test_a_sample_that_fails_to_encode_leaves_no_empty_file(trained, tmp_path, monkeypatch):
    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = sorted(p.name for p in run.iterdir())

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(Image.Image, "save", out_of_memory)
    with pytest.raises(MemoryError):
        run_cli("sample", str(run), "--n", "4", check=False)
    assert sorted(p.name for p in run.iterdir()) == before  # no empty samples-1.png
