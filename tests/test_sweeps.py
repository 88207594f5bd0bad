"""flowvae sweep: the spec's checks, the table, status, dry-run; a sweep interrupted by Ctrl-C
(local launcher) or by scancel (a real Slurm cluster) that, rerun, gives the uninterrupted table.

The Slurm test needs a running cluster (``.ci/slurm-up`` starts one as root) and submitit: under
``CI=true`` it fails without them, elsewhere it skips, saying why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPORT, ROOT, run_cli

from flowvae import sweeps
from flowvae.compare import read_metrics

# two rows x two seeds of tiny digits runs; one thread each so that every launcher trains the same
# numbers; in-epoch checkpoints so that an interruption has something to resume from
TINY = ["train.max_steps=150", "train.checkpoint_every_steps=10", "train.threads=1"]
SPEC = {
    "caption": "diag vs IAF on digits",
    "seeds": 2,
    "rows": {
        "diag": {"preset": "digits", "overrides": ["model.posterior=diag", *TINY]},
        "iaf": {"preset": "digits", "overrides": ["model.posterior=iaf", *TINY]},
    },
    "eval": {"estimator": "iwae", "samples": 10, "limit": 20, "split": "test"},
    "reference": {"diag": 30.0},
    "more_references": {"authors' code": {"diag": [30.5, 30.7]}, "pythae": {"iaf": 29}},
}


def write_spec(folder: Path, spec: dict = SPEC, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


def table(run_dir: Path) -> list[tuple[str, list[float]]]:
    """The table's numbers (row, per-seed −log p̂), without the wall times."""
    rows = json.loads((run_dir / "table" / "sweep.json").read_text())["rows"]
    return [(r["row"], r["seeds"]) for r in rows]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """An uninterrupted sweep of SPEC, through the CLI."""
    folder = tmp_path_factory.mktemp("sweep")
    spec = write_spec(folder)
    r = run_cli("sweep", str(spec), "--run-dir", str(folder / "R"), "--no-progress", subprocess_=True)
    assert r.returncode == 0, r.stderr
    (folder / "sweep.err").write_text(r.stderr)
    return folder / "R"


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"row": {}}, "unknown key 'row'; did you mean 'rows'?"),
        ({"eval": {"estimater": "iwae"}}, "eval: unknown key 'estimater'; did you mean 'estimator'?"),
        ({"eval": {"estimator": "iwea"}}, "eval.estimator: unknown key 'iwea'; did you mean 'iwae'?"),
        ({"rows": {"a": {"preset": "digits", "overides": []}}}, "row a: unknown key 'overides'; did you"),
        ({"rows": {"a": {"preset": "digts"}}}, "row a: unknown preset 'digts'"),
        ({"rows": {"a": {"preset": "digits", "overrides": ["model.posteror=iaf"]}}},
         "row a: unknown config key 'model.posteror'; did you mean model.posterior?"),
        ({"rows": {"a/b": {"preset": "digits"}}}, "row name 'a/b' is not a folder name"),
        ({"seeds": 0}, "seeds must be an integer >= 1"),
        ({"reference": {"difag": 1.0}}, "reference: unknown key 'difag'; did you mean 'diag'?"),
        ({"more_references": {"code": {"difag": 1.0}}}, "more_references code: unknown key 'difag'"),
        ({"more_references": {"code": {"diag": [30, "x"]}}}, "diag: [30, 'x'] is not a number or a list"),
        ({"more_references": {"code": {"diag": []}}}, "diag: [] is not a number or a list of numbers"),
        ({"more_references": [30.0]}, "more_references must map a column's name to {row: number}"),
    ],
)  # fmt: skip
def test_a_bad_spec_fails_in_one_line_naming_the_problem(tmp_path, change, message):
    fresh = {"reference": {}, "more_references": {}} if "rows" in change else {}  # they name SPEC's rows
    path = write_spec(tmp_path, {**SPEC, **fresh, **change})
    with pytest.raises(sweeps.SweepError) as e:
        sweeps.load_spec(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    r = run_cli("sweep", str(path), "--run-dir", str(tmp_path / "R"), check=False)
    assert r.returncode != 0 and message in r.stderr and not (tmp_path / "R").exists()


def test_the_shipped_vampprior_spec_is_the_papers_table_and_takes_the_data_folder(tmp_path):
    spec = sweeps.load_spec("vampprior-static-mnist", ["data.root=/elsewhere/static-mnist"])
    assert {n: r.preset for n, r in spec.rows.items()} == {
        "vae": "vampprior-mnist-vae", "vae-vamp": "vampprior-mnist-vae-vamp",
        "hvae": "vampprior-mnist-hvae", "hvae-vamp": "vampprior-mnist-hvae-vamp",
    }  # fmt: skip
    assert spec.reference == {"vae": 88.56, "vae-vamp": 85.57, "hvae": 85.89, "hvae-vamp": 83.19}
    assert spec.seeds >= 2 and (spec.eval.estimator, spec.eval.samples, spec.eval.limit) == ("iwae", 5000, 0)
    assert all(sweeps.row_config(spec, n).data.root == "/elsewhere/static-mnist" for n in spec.rows)
    r = run_cli("sweep", "vampprior-static-mnist", "--run-dir", str(tmp_path / "R"), "--dry-run",
                "data.root=/elsewhere/static-mnist")  # fmt: skip
    assert r.stdout.count(": trained (vampprior-mnist-") == 8 and "K=5000" in r.stdout
    assert not (tmp_path / "R").exists()  # a dry run writes nothing
    near = run_cli("sweep", "vampprior-static-mnst", "--run-dir", str(tmp_path / "R"), check=False)
    assert "did you mean 'vampprior-static-mnist'?" in near.stderr


# ----------------------------------------------------------------------------- a sweep


def test_a_sweep_writes_the_table_with_the_reference_column(swept):
    files = {p.name for p in (swept / "table").iterdir()}
    assert {"sweep.md", "sweep.tex", "sweep.csv", "sweep.json", "comparison.md", "curves.png"} <= files
    rows = json.loads((swept / "table" / "sweep.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["diag", "iaf"] and all(len(r["seeds"]) == 2 for r in rows)
    assert rows[0]["reference"] == 30.0
    assert rows[0]["diff_reference"] == pytest.approx(rows[0]["nll_mean"] - 30)
    assert rows[1]["reference"] is None and rows[1]["diff_reference"] is None
    # further reference columns (the authors' code's seeds, another reproduction), no difference to them
    assert rows[0]["more_references"] == {"authors' code": [30.5, 30.7]}
    assert rows[1]["more_references"] == {"pythae": [29.0]}
    md = (swept / "table" / "sweep.md").read_text()
    assert md.startswith("diag vs IAF on digits.")
    assert "| row | reference | authors' code | pythae | −log p̂ (nats) | Δ vs reference |" in md
    assert "| diag | 30.00 | 30.60 ± 0.14 (2) | — |" in md and "| iaf | — | — | 29.00 |" in md
    said = (swept.parent / "sweep.err").read_text()  # members print into one log: each line named
    assert all(f"{m}: epoch 1/" in said for m in ("diag/seed-0", "diag/seed-1", "iaf/seed-0", "iaf/seed-1"))
    for row in ("diag", "iaf"):  # every row is a seed group: flowvae compare/eval work on it as before
        assert json.loads((swept / row / "group.json").read_text())["members"] == ["seed-0", "seed-1"]


def test_training_progress_reads_the_counters_training_keeps():
    state = {"epoch": 6, "best_valid": -105.0, "best_epoch": 4, "bad_evals": 2}
    best = "best valid ELBO -105.00 at epoch 4"
    assert sweeps.training_progress(state, 5) == f"epoch 6; {best}, 2/5 evaluations without a better one"
    assert sweeps.training_progress(state) == f"epoch 6; {best}"  # no early stopping: no count
    assert sweeps.training_progress({"epoch": 0, "best_valid": float("-inf")}) == ""  # nothing evaluated
    # a budget that stops inside the first epoch: no complete epoch to name
    assert (
        sweeps.training_progress({"epoch": 0, "best_valid": -31.5, "best_epoch": 0})
        == "best valid ELBO -31.50"
    )


def test_status_shows_every_member_and_a_rerun_retrains_and_recomputes_nothing(swept, tmp_path):
    r = run_cli("status", str(swept))
    assert "4 members: 4 done" in r.stdout and r.stdout.count("  done ") == 4
    for line in r.stdout.splitlines()[1:]:  # each member's best valid ELBO: the best row of its metrics
        best = max(read_metrics(swept / line.split()[0]), key=lambda row: row["valid_elbo"])
        assert f"best valid ELBO {best['valid_elbo']:.2f}" in line, line
        if best["epoch"] >= 1:
            assert f"at epoch {int(best['epoch'])}" in line, line
    before = {p: p.stat().st_mtime_ns for p in swept.rglob("*") if p.suffix in (".pt", ".npz")}
    spec = write_spec(tmp_path)
    dry = run_cli("sweep", str(spec), "--run-dir", str(swept), "--dry-run")
    assert dry.stdout.count("done: scored from the eval cache") == 4
    again = run_cli("sweep", str(spec), "--run-dir", str(swept), "--no-progress")
    after = {p: p.stat().st_mtime_ns for p in swept.rglob("*") if p.suffix in (".pt", ".npz")}
    assert after == before  # no checkpoint rewritten, no evaluation recomputed (cache hits only)
    assert "| diag | 30.00 |" in again.stdout


def test_a_trained_member_still_being_scored_shows_as_running(swept, tmp_path):
    run_dir = tmp_path / "R"
    shutil.copytree(swept, run_dir)
    record = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(), "job": "", "time": 0}
    (run_dir / "status" / "iaf.seed-1.json").write_text(json.dumps(record))  # a live process: this one
    lines = {line.split()[0]: line for line in run_cli("status", str(run_dir)).stdout.splitlines()[1:]}
    assert "3 done, 1 running" in run_cli("status", str(run_dir)).stdout
    assert "trained, now being scored" in lines["iaf/seed-1"] and f"pid {os.getpid()}" in lines["iaf/seed-1"]
    assert all(" done " in line for name, line in lines.items() if name != "iaf/seed-1")


def test_a_changed_spec_is_refused_naming_the_rows_that_differ(swept, tmp_path):
    changed = json.loads(json.dumps(SPEC))
    changed["rows"]["iaf"]["overrides"][0] = "model.posterior=planar"
    changed["rows"]["realnvp"] = {"preset": "digits"}
    r = run_cli("sweep", str(write_spec(tmp_path, changed)), "--run-dir", str(swept), check=False)
    assert r.returncode != 0
    assert "holds a sweep of another spec (changed rows: iaf; new rows: realnvp)" in r.stderr
    more_seeds = run_cli("sweep", str(write_spec(tmp_path, {**SPEC, "seeds": 3})), "--run-dir", str(swept),
                         check=False)  # fmt: skip
    assert "seeds 2 -> 3" in more_seeds.stderr
    # the caption, the evaluation and the reference change only the table: allowed (dry run here)
    captioned = write_spec(tmp_path, {**SPEC, "caption": "new"})
    run_cli("sweep", str(captioned), "--run-dir", str(swept), "--dry-run")


def test_ctrl_c_stops_the_sweep_and_a_rerun_gives_the_uninterrupted_table(swept, tmp_path):
    spec = write_spec(tmp_path)
    run_dir = tmp_path / "R"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flowvae", "sweep", str(spec), "--run-dir", str(run_dir), "--no-progress"]
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list(run_dir.glob("*/seed-*/checkpoint.pt")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the sweep and its members
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0, err.decode()
    status = run_cli("status", str(run_dir)).stdout
    assert "done" not in status.splitlines()[0] or "unfinished" in status or "not started" in status, status
    run_cli("sweep", str(spec), "--run-dir", str(run_dir), "--no-progress")
    resumed = [f for f in run_dir.glob("*/seed-*/invocations.jsonl") if len(f.read_text().splitlines()) > 1]
    assert resumed, "no member was interrupted after its first checkpoint"
    assert table(run_dir) == table(swept)


def test_the_python_api_is_one_call(swept, tmp_path):
    import flowvae

    paths = flowvae.sweep(SPEC, swept, launcher="local", progress=False)  # the folder's own spec: continues
    assert paths["sweep_json"] == swept / "table" / "sweep.json"
    with pytest.raises(sweeps.SweepError, match="unknown launcher 'slrum'"):
        flowvae.sweep(SPEC, tmp_path / "other", launcher="slrum")


# ----------------------------------------------------------------------------- the Slurm launcher


def slurm_missing() -> str:
    """Why the Slurm tests cannot run here ("" when they can)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return 'submitit is not installed (pip install "flowvae[slurm]")'
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (no sinfo/sbatch; .ci/slurm-up installs and starts one as root)"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not {"idle", "mixed", "allocated"} & set(out.stdout.split()):
        said = (out.stdout + out.stderr).strip() or "nothing"
        return f"no Slurm node is up (sinfo: {said}; see .ci/slurm-up)"
    return ""


@pytest.fixture
def slurm() -> None:
    reason = slurm_missing()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    if reason:
        pytest.skip(reason)


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "status").glob("*.json")}


def test_slurm_sweep_cancelled_mid_run_then_rerun_gives_the_uninterrupted_table(slurm, swept, tmp_path):
    spec = write_spec(tmp_path)
    run_dir = tmp_path / "R"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flowvae", "sweep", str(spec), "--run-dir", str(run_dir),
           "--launcher", "slurm", "--time-minutes", "20", "--no-progress"]  # fmt: skip
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cancelled, deadline = "", time.time() + 400
    while not cancelled and p.poll() is None and time.time() < deadline:
        for name, record in _records(run_dir).items():  # a task running past its first checkpoint
            row, seed = name.split(".")
            if record.get("state") == "running" and (run_dir / row / seed / "checkpoint.pt").is_file():
                subprocess.run(["scancel", record["job"]], check=True)
                cancelled = record["job"]
                break
        time.sleep(0.05)
    _, err = p.communicate(timeout=600)
    first = json.loads((run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()[0])["members"]
    REPORT.append(f"slurm: job array of the sweep: {first}; scancel {cancelled} mid-run")
    assert cancelled, f"no task was seen running past a checkpoint: {err.decode()}"
    assert p.returncode != 0 and "did not finish" in err.decode(), err.decode()
    status = run_cli("status", str(run_dir)).stdout
    REPORT.extend(f"slurm: {line}" for line in status.splitlines())
    member = next(m for m, job in first.items() if job == cancelled)
    assert any(line.split()[:2] == [member, "unfinished"] for line in status.splitlines()), status
    run_cli("sweep", str(spec), "--run-dir", str(run_dir), "--launcher", "slurm", "--no-progress")
    second = json.loads((run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()[1])["members"]
    REPORT.append(f"slurm: the rerun submitted {second}")
    assert list(second) == [member]  # only the cancelled member ran again
    assert len((run_dir / member / "invocations.jsonl").read_text().splitlines()) == 2  # resumed
    assert table(run_dir) == table(swept)
    REPORT.append(f"slurm: the rerun's table equals the uninterrupted (local) sweep's: {table(run_dir)}")
