"""benchmarks/vampprior_reference_run.py: the VampPrior paper's code trained resumably. A run stopped
after an epoch and continued ends where the uninterrupted run ends, bitwise (same process layout,
one thread); the early-stopping rule is the reference's; ``score`` puts the reference's weights into
our preset. On small random static-MNIST files, so that an epoch is a few steps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_data import write_binarized_mnist

SCRIPT = ROOT / "benchmarks" / "vampprior_reference_run.py"
PEER = ROOT.parent / "shared" / "peers" / "vae_vampprior"
pytestmark = pytest.mark.skipif(not PEER.is_dir(), reason="the reference code (../shared/peers) is not here")


def reference_run(work, out, *flags: str) -> list[dict]:
    cmd = [sys.executable, str(SCRIPT), "train", "--row", "vae-vamp", "--seed", "3", "--out", str(out),
           "--work", str(work), *flags]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    folder = work / "datasets" / "MNIST_static"
    folder.mkdir(parents=True)
    write_binarized_mnist(folder, sizes=(300, 100, 20))  # 3 training steps of 100 an epoch
    return work


def test_a_resumed_reference_run_equals_the_uninterrupted_one(work, tmp_path):
    straight = reference_run(work, tmp_path / "A", "--epochs", "3")
    first = reference_run(work, tmp_path / "B", "--epochs", "3", "--stop-after", "1")
    rest = reference_run(work, tmp_path / "B", "--epochs", "3")
    assert [e["epoch"] for e in first + rest] == [1, 2, 3]
    strip = lambda lines: [{k: v for k, v in e.items() if k != "seconds"} for e in lines]  # noqa: E731
    assert strip(first + rest) == strip(straight)  # the same losses to the last digit
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in "AB")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"], b["rng"])
    best_a, best_b = (torch.load(tmp_path / d / "best.pt", weights_only=True) for d in "AB")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    # another setting in the same folder is refused, not mixed in
    cmd = [sys.executable, str(SCRIPT), "train", "--row", "vae", "--seed", "3", "--out", str(tmp_path / "B"),
           "--work", str(work)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "holds a run of other settings" in r.stderr


def test_the_reference_rule_stops_after_more_than_patience_epochs_without_a_better_valid_loss():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from vampprior_reference_run import early_stopping_step
    finally:
        sys.path.remove(str(SCRIPT.parent))
    state = {"best_loss": 100000.0, "e": 0, "best_epoch": 0, "done": False}
    losses = [10.0, 9.0, 9.5, 9.5, 9.5, 9.5]  # warm-up of 4 epochs, patience 2
    improved = [early_stopping_step(state, epoch, loss, warmup=4, patience=2)
                for epoch, loss in enumerate(losses, start=1)]  # fmt: skip
    assert improved == [True, True, False, False, False, False]
    # epoch 3 < warmup: the counter is reset; epochs 4, 5, 6 count 1, 2, 3, and 3 > 2 stops the run
    assert state["best_epoch"] == 2 and state["done"] and state["e"] == 3
    state = {"best_loss": 100000.0, "e": 0, "best_epoch": 0, "done": False}
    flat = [early_stopping_step(state, epoch, 9.0, warmup=4, patience=2) for epoch in range(1, 7)]
    assert flat == [True] + [False] * 5  # an equal loss is not better
    assert state["done"] and state["e"] == 3  # epochs 2, 3 reset (warm-up); 4, 5, 6 count
    early_stopping_step(
        nan := {"best_loss": 1.0, "e": 0, "best_epoch": 1, "done": False}, 2, float("nan"), 4, 2
    )
    assert nan["done"]


def test_score_puts_the_reference_weights_into_our_preset(work, tmp_path):
    reference_run(work, tmp_path / "A", "--epochs", "1")
    cmd = [sys.executable, str(SCRIPT), "score", "--out", str(tmp_path / "A"), "--data",
           str(work / "datasets" / "MNIST_static"), "--samples", "10"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["n"] == 20 and result["epochs"] == 1 and 0 < result["test_nll"] < float("inf")
