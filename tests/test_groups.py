"""Groups of seeds: `train --seeds N` trains, resumes after a kill, evaluates and compares; the
across-seed statistics against a direct computation; one seed gives no across-seed SE."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cli

from flowvae.checkpoint import load_checkpoint
from flowvae.groups import (
    compare_groups,
    difference_across_seeds,
    latex_table,
    markdown_table,
    read_group,
    seed_mean_sd,
)

TINY = ["--no-progress", "model.hidden=[16]", "model.latent_dim=2", "train.epochs=1", "eval.samples=4"]
IAF = ["model.posterior=iaf", "model.flow_steps=1", "model.flow_hidden=8", "model.context_dim=4"]


def _state(run):
    return load_checkpoint(run / "checkpoint.pt")["state"]


def _invocations(run):
    return [json.loads(line) for line in (run / "invocations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """Group ``diag`` killed after 3 steps (train.max_steps) and resumed; ``iaf`` in one go."""
    root = tmp_path_factory.mktemp("groups")
    killed = run_cli("train", "--seeds", "2", "--run-dir", str(root / "diag"), *TINY, "train.max_steps=3")
    resumed = run_cli("train", "--resume", str(root / "diag"), "--no-progress")
    run_cli("train", "--seeds", "2", "--run-dir", str(root / "iaf"), *TINY, *IAF, "train.seed=10")
    return root, killed, resumed


def test_a_group_trains_its_seeds_into_ordinary_runs_and_resumes_after_a_kill(groups):
    root, killed, resumed = groups
    group = read_group(root / "diag")
    assert group.members == ["seed-0", "seed-1"] and group.seeds == [0, 1]
    assert read_group(root / "iaf").seeds == [10, 11]
    assert "seed-0: " in killed.stdout and "seed-1: " in killed.stdout and "max_steps=3" in killed.stdout
    steps = None
    for member, seed in zip(group.members, group.seeds, strict=True):
        run = root / "diag" / member
        ckpt = load_checkpoint(run / "checkpoint.pt")
        assert ckpt["config"]["train"]["seed"] == seed and ckpt["state"]["epoch"] == 1
        steps = steps or ckpt["state"]["step"]
        assert ckpt["state"]["step"] == steps > 3  # all of epoch 1: 3 steps, then the rest after the resume
        assert [i["resume"] for i in _invocations(run)] == [False, True]
        assert _invocations(run)[1]["step"] == 3  # the resume started where the kill left it
        assert f"{member}: " in resumed.stdout
    # the seeds differ: other initial weights, other results
    a, b = (load_checkpoint(root / "diag" / m / "best.pt")["model"] for m in group.members)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_group_skips_finished_members_and_restarts_one_that_never_checkpointed(groups, tmp_path):
    import shutil

    root, _, _ = groups
    group = tmp_path / "g"
    shutil.copytree(root / "iaf", group)
    shutil.rmtree(group / "seed-1")  # killed before its first checkpoint
    run_cli("train", "--resume", str(group), "--no-progress")
    assert len(_invocations(group / "seed-0")) == 1  # finished: left alone
    assert [i["resume"] for i in _invocations(group / "seed-1")] == [False]  # started afresh
    assert load_checkpoint(group / "seed-1" / "checkpoint.pt")["config"]["train"]["seed"] == 11
    assert _state(group / "seed-1")["epoch"] == 1


def test_eval_of_a_group_scores_every_member_and_reports_mean_and_sd(groups):
    root, _, _ = groups
    args = ["--samples", "5", "--limit", "20", "--no-progress"]
    out = json.loads(run_cli("eval", str(root / "diag"), *args, "--json").stdout)
    single = [json.loads(run_cli("eval", str(root / "diag" / m), *args, "--json").stdout)["nll"]
              for m in ("seed-0", "seed-1")]  # fmt: skip
    assert out["seeds"] == pytest.approx(single, abs=1e-9)  # each member as `eval` scores it alone
    assert out["nll_mean"] == pytest.approx(statistics.fmean(single), abs=1e-9)
    assert out["nll_sd"] == pytest.approx(statistics.stdev(single), abs=1e-9)
    text = run_cli("eval", str(root / "diag"), *args).stdout
    assert "seed-0: iwae" in text and "seed-1: iwae" in text and "across seeds" in text


def test_compare_groups_reports_per_seed_values_and_the_differences_standard_errors(groups, tmp_path):
    root, _, _ = groups
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(root / "diag"), str(root / "iaf"), "--samples", "5", "--limit", "20",
                   "--no-progress", "--json", "--out", str(out))  # fmt: skip
    result = json.loads(proc.stdout)
    diag, iaf = result["groups"]
    runs = {r["run"]: r for r in result["runs"]}
    assert sorted(runs) == ["diag/seed-0", "diag/seed-1", "iaf/seed-0", "iaf/seed-1"]
    assert diag["seeds"] == [runs["diag/seed-0"]["nll"], runs["diag/seed-1"]["nll"]]
    assert iaf["seeds"] == [runs["iaf/seed-0"]["nll"], runs["iaf/seed-1"]["nll"]]
    assert iaf["nll_mean"] == pytest.approx(statistics.fmean(iaf["seeds"]), abs=1e-12)
    assert iaf["nll_sd"] == pytest.approx(statistics.stdev(iaf["seeds"]), abs=1e-12)
    assert iaf["diff_mean"] == pytest.approx(iaf["nll_mean"] - diag["nll_mean"], abs=1e-12)
    welch = math.sqrt(statistics.variance(iaf["seeds"]) / 2 + statistics.variance(diag["seeds"]) / 2)
    assert iaf["diff_se_seeds"] == pytest.approx(welch, rel=1e-12)
    assert diag["diff_mean"] is None and diag["diff_se_seeds"] is None and iaf["train_seeds"] == [10, 11]
    on_disk = json.loads((out / "comparison.json").read_text())
    assert on_disk["groups"][1]["diff_se_seeds"] == pytest.approx(welch, rel=1e-12)
    assert "± 0." in (out / "comparison.md").read_text()
    assert "\\toprule" in (out / "comparison.tex").read_text()


def test_paired_se_of_a_group_is_over_examples_of_the_seed_mean_difference(groups):
    from flowvae.evaluation import evaluate_run

    root, _, _ = groups
    c = compare_groups([root / "diag", root / "iaf"], samples=5, limit=20, cache=False)

    def nll(group):  # per example, mean over the group's seeds
        per = [evaluate_run(root / group / m, "iwae", 5, limit=20, cache=False).estimate.per_example
               for m in ("seed-0", "seed-1")]  # fmt: skip
        return -torch.stack(per).double().mean(0)

    d = nll("iaf") - nll("diag")
    assert c.groups[1].diff_se_paired == pytest.approx(d.std().item() / math.sqrt(20), rel=1e-9)
    assert c.groups[1].diff_mean == pytest.approx(d.mean().item(), abs=1e-9)


def test_one_seed_gives_no_across_seed_standard_error(groups):
    root, _, _ = groups
    c = compare_groups([root / "diag" / "seed-0", root / "iaf"], samples=5, limit=20)
    one, two = c.groups
    assert one.group == "diag/seed-0" and one.nll_sd is None and len(one.seeds) == 1
    assert two.diff_se_seeds is None and two.diff_se_paired is not None and two.diff_se_paired > 0
    table = markdown_table(c)
    assert "n/a (1 seed)" in table and "± 0.00 " not in table
    assert "n/a (1 seed)" in latex_table(c)


def test_statistics_against_a_direct_computation_on_hand_made_values():
    base, other = [80.0, 81.0, 82.5], [79.0, 79.5, 80.5, 81.0]
    mean, sd = seed_mean_sd(other)
    assert mean == pytest.approx(80.0) and sd == pytest.approx(math.sqrt((1 + 0.25 + 0.25 + 1) / 3))
    diff, se = difference_across_seeds(base, other)
    sd_base = math.sqrt(((80 - 81.1666667) ** 2 + (81 - 81.1666667) ** 2 + (82.5 - 81.1666667) ** 2) / 2)
    assert diff == pytest.approx(80.0 - 243.5 / 3)
    assert se == pytest.approx(math.sqrt(sd**2 / 4 + sd_base**2 / 3), rel=1e-6)
    assert seed_mean_sd([81.0]) == (81.0, None)
    assert difference_across_seeds([81.0], other) == (pytest.approx(-1.0), None)
    assert difference_across_seeds(base, [80.0])[1] is None


def test_a_failing_member_fails_the_command_in_one_line_naming_it(tmp_path):
    group = tmp_path / "g"
    no_run = f"train.init_from={tmp_path}"  # a folder without a trained run: each member fails
    proc = run_cli("train", "--seeds", "2", "--run-dir", str(group), *TINY, no_run, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "seed-0" in lines[0] and "--resume" in lines[0], proc.stderr
    assert not group.exists()  # nothing started: no folder left


def test_train_refuses_a_group_folder_that_holds_a_group(groups):
    root, _, _ = groups
    proc = run_cli("train", "--seeds", "2", "--run-dir", str(root / "diag"), *TINY, check=False)
    assert proc.returncode == 1 and "--resume" in proc.stderr
    proc = run_cli("train", "--resume", str(root / "diag"), "--seeds", "2", check=False)
    assert proc.returncode == 2 and "--seeds" in proc.stderr
    proc = run_cli("sample", str(root / "diag"), check=False)
    assert proc.returncode == 1 and "seed-0" in proc.stderr


def test_ctrl_c_stops_every_member_with_a_checkpoint(tmp_path):
    group = tmp_path / "g"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    args = ["--seeds", "2", "--run-dir", str(group), *TINY, "train.epochs=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "flowvae", "train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not all((group / m / "checkpoint.pt").is_file() for m in ("seed-0", "seed-1")):  # epoch 1 done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    signalled = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"--resume {group}" in err, err
    for m in ("seed-0", "seed-1"):  # each wrote a checkpoint when stopped, and stopped early
        assert (group / m / "checkpoint.pt").stat().st_mtime >= signalled
        assert 1 <= _state(group / m)["epoch"] < 1000
