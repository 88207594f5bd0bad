"""torchrun with 2 gloo processes on CPU: training, resume and sharded evaluation."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from conftest import ROOT, run_cli

from flowvae import distributed
from flowvae.checkpoint import load_run
from flowvae.config import ConfigError, apply_overrides
from flowvae.presets import preset
from flowvae.train import train

SMALL = ["model.hidden=[32]", "model.latent_dim=4", "train.batch_size=100", "train.threads=1"]
SMALL += ["train.ema=0.9"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "flowvae"]
    # generous: two processes on a loaded 2-core machine can take minutes
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp") / "full"
    proc = torchrun("train", "--run-dir", str(d), "--no-progress", *SMALL, "train.epochs=2")
    assert "effective batch 100" in proc.stdout
    assert proc.stdout.count("best valid ELBO") == 1  # rank 0 alone reports
    return d


def test_ddp_training_writes_one_loadable_run(ddp_run):
    files = sorted(p.name for p in ddp_run.iterdir())
    assert files.count("metrics.csv") == 1 and sum(f.startswith("events.") for f in files) == 1
    assert len(rows(ddp_run)) == 2
    cfg, model, ckpt = load_run(ddp_run, "latest")[:3]
    assert ckpt["world"] == 2 and len(ckpt["ranks"]) == 2 and ckpt["state"]["step"] == 2 * 13
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ddp_resume_matches_uninterrupted(ddp_run, tmp_path):
    b = tmp_path / "b"
    torchrun("train", "--run-dir", str(b), "--no-progress", *SMALL, "train.epochs=2", "train.max_steps=17")
    assert [r["epoch"] for r in rows(b)] == ["1", str(round(1 + 4 / 13, 3))]  # evaluated at the stop too
    torchrun("train", "--resume", str(b), "--no-progress", "train.max_steps=0")
    assert [r for r in rows(b) if "." not in r["epoch"]] == rows(ddp_run)


def test_sharded_eval_equals_single_process_whatever_the_batch_size(ddp_run):
    """Each example draws from its own seeded streams: 2 ranks with batches of 16 and one process
    with batches of 50 score the same numbers (up to float32 rounding of the other batching)."""
    args = ["eval", str(ddp_run), "--samples", "30", "--json", "--no-cache"]
    sharded = json.loads(torchrun(*args, "--batch-size", "16").stdout.strip())
    single = json.loads(run_cli(*args, "--batch-size", "50").stdout)
    assert sharded["n"] == single["n"] == 250
    assert sharded["nll"] == pytest.approx(single["nll"], abs=1e-4)
    assert sharded["stderr"] == pytest.approx(single["stderr"], abs=1e-4)
    khat = [r["diagnostics"]["khat"]["median"] for r in (sharded, single)]
    assert khat[0] == pytest.approx(khat[1], abs=1e-3)


def test_training_destroys_its_process_group_even_when_it_fails(tmp_path, monkeypatch):
    """A live group at exit can abort a rank in gloo's destructors: train() must tear it down."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed, "setup", lambda device: distributed.Dist(0, 2, 0))
        cfg = apply_overrides(preset("digits"), ["train.batch_size=99"])  # not divisible by 2
        with pytest.raises(ConfigError, match="not divisible by 2"):
            train(cfg, tmp_path / "run", progress=False)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
