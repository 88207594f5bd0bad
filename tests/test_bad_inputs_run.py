"""The checkable list of bad inputs and faults for runs, checkpoints and resume (issue 12, part A).

Each row: (case, argv, expected exit code, expected fragment of the one-line message). ``{run}``
is a fresh copy of a trained run, ``{tmp}`` the test's folder; PREPARE puts the fault in place.
Every case must fail with one line on stderr, no traceback, and leave no new folder behind.
"""

import builtins
import errno
import io
import os
import pathlib
import shutil
import threading

import pytest
import torch
from conftest import run_cli

from flowvae.checkpoint import load_checkpoint, save_atomic

TINY = ["--no-progress", "model.hidden=[16]", "model.latent_dim=2", "train.epochs=1", "eval.samples=4"]

CASES = [
    ("resume with --preset", ["train", "--resume", "{run}", "--preset", "digits"], 2, "drop --preset"),
    ("resume with --overwrite", ["train", "--resume", "{run}", "--overwrite"], 2, "drop --preset/--config"),
    ("resume changes the model", ["train", "--resume", "{run}", "model.latent_dim=3"], 2,
     "cannot change model.latent_dim"),
    ("resume a folder without a run", ["train", "--resume", "{tmp}/empty"], 1, "checkpoint not found"),
    ("run dir holds config.yaml", ["train", "--run-dir", "{tmp}/old", *TINY], 1, "already holds a run"),
    ("run dir holds metrics.csv", ["train", "--run-dir", "{tmp}/old", *TINY], 1, "already holds a run"),
    ("run dir holds a lone best.pt", ["train", "--run-dir", "{tmp}/old", *TINY], 1, "already holds a run"),
    ("run dir holds events", ["train", "--run-dir", "{tmp}/old", *TINY], 1, "already holds a run"),
    ("run dir holds a finished run", ["train", "--run-dir", "{run}", *TINY], 1, "--resume"),
    ("run dir is a file", ["train", "--run-dir", "{tmp}/file", *TINY], 2, "exists and is a file"),
    ("unknown lr schedule", ["train", "--run-dir", "{tmp}/new", *TINY, "train.lr_schedule=cosin"], 2,
     "train.lr_schedule"),
    ("missing data, default folder", ["train", *TINY, "data.name=binarized_mnist", "data.root=missing"], 1,
     "binarized_mnist"),
    ("diverging lr", ["train", "--run-dir", "{tmp}/new", *TINY, "train.lr=1e6"], 1, "training diverged"),
    ("code in best.pt: eval", ["eval", "{run}", "--samples", "2"], 1, "refused"),
    ("code in best.pt: sample", ["sample", "{run}", "--n", "4"], 1, "refused"),
    ("code in best.pt: gaps", ["gaps", "{run}", "--n", "2"], 1, "refused"),
    ("code in checkpoint.pt: resume", ["train", "--resume", "{run}"], 1, "refused"),
    ("incomplete checkpoint", ["eval", "{run}", "--samples", "2"], 1, "incomplete checkpoint"),
    ("torn checkpoint", ["eval", "{run}", "--samples", "2"], 1, "not a readable checkpoint"),
    ("nan weights: eval", ["eval", "{run}", "--samples", "2"], 1, "not finite"),
    ("resume: mis-shaped optimizer moments", ["train", "--resume", "{run}"], 1,
     "checkpoint.pt: cannot resume: its optimizer does not fit this run (ValueError: exp_avg has shape (3,)"),
    ("resume: optimizer of another type", ["train", "--resume", "{run}"], 1,
     "checkpoint.pt: cannot resume: its optimizer does not fit this run"),
    ("resume: mis-shaped weights", ["train", "--resume", "{run}"], 1,
     "checkpoint.pt: cannot resume: its model does not fit this run"),
    ("resume: EMA run without its EMA weights", ["train", "--resume", "{run}"], 1,
     "checkpoint.pt: cannot resume: incomplete checkpoint (no ema)"),
]  # fmt: skip

# every entry of checkpoint.pt that resuming needs: without it, one line names it
RESUME_NEEDS = [
    "config", "model", "image_shape", "binary", "optimizer", "state", "ranks",
    "state.epoch", "state.batch", "state.step", "state.seconds", "state.best_valid", "state.best_epoch",
    "state.bad_evals", "state.skipped", "state.consecutive_skips", "state.epoch_elbo_sum",
    "state.epoch_kl_sum", "state.epoch_count", "state.lr", "state.kl_weight", "state.history",
    "ranks[0].rng", "ranks[0].rng.torch", "ranks[0].rng.numpy", "ranks[0].rng.python", "ranks[0].epoch_sums",
]  # fmt: skip
# what resuming does without: written after the first checkpoints were, unused, or per machine
RESUME_OPTIONAL = [
    "world", "state.horizon", "state.epoch_skipped", "state.stopped", "state.minutes_left",
    "state.steps_left", "state.origin", "ranks[0].rng.cuda",
]  # fmt: skip
CASES += [
    (f"resume without {entry}", ["train", "--resume", "{run}"], 1, f"incomplete checkpoint (no {entry})")
    for entry in RESUME_NEEDS
]


class _Touch:
    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def _code(run: pathlib.Path, tmp: pathlib.Path) -> None:
    for name in ("best.pt", "checkpoint.pt"):
        ckpt = load_checkpoint(run / name)
        ckpt["state"] = {"payload": _Touch(tmp / "pwned")}
        torch.save(ckpt, run / name)


def _edit_best(edit):
    def prepare(run: pathlib.Path, tmp: pathlib.Path) -> None:
        ckpt = load_checkpoint(run / "best.pt")
        edit(ckpt)
        save_atomic(ckpt, run / "best.pt")

    return prepare


def _old_file(name: str):
    def prepare(run: pathlib.Path, tmp: pathlib.Path) -> None:
        (tmp / "old").mkdir()
        (tmp / "old" / name).write_bytes(b"an earlier run's file")

    return prepare


def _edit_latest(edit):
    def prepare(run: pathlib.Path, tmp: pathlib.Path) -> None:
        ckpt = load_checkpoint(run / "checkpoint.pt")
        edit(ckpt)
        save_atomic(ckpt, run / "checkpoint.pt")

    return prepare


def _drop(ckpt: dict, entry: str) -> None:
    """Remove a dotted entry (``ranks[0].rng.torch``) of a checkpoint dict."""
    *parents, last = entry.replace("[0]", ".0").split(".")
    for key in parents:
        ckpt = ckpt[int(key) if key.isdigit() else key]
    ckpt.pop(last, None)


def _first_moment(ckpt: dict) -> dict:
    return next(iter(ckpt["optimizer"]["state"].values()))


PREPARE = {
    "resume a folder without a run": lambda run, tmp: (tmp / "empty").mkdir(),
    "run dir holds config.yaml": _old_file("config.yaml"),
    "run dir holds metrics.csv": _old_file("metrics.csv"),
    "run dir holds a lone best.pt": _old_file("best.pt"),
    "run dir holds events": _old_file("events.out.tfevents.1.host.2.0"),
    "run dir is a file": lambda run, tmp: (tmp / "file").write_text(""),
    "code in best.pt: eval": _code,
    "code in best.pt: sample": _code,
    "code in best.pt: gaps": _code,
    "code in checkpoint.pt: resume": _code,
    "incomplete checkpoint": _edit_best(lambda c: c.pop("image_shape")),
    "torn checkpoint": lambda run, tmp: (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:999]),
    "nan weights: eval": _edit_best(lambda c: next(iter(c["model"].values())).fill_(float("nan"))),
    "resume: mis-shaped optimizer moments": _edit_latest(
        lambda c: _first_moment(c).update(exp_avg=torch.zeros(3))
    ),
    "resume: optimizer of another type": _edit_latest(
        lambda c: c.update(optimizer={"state": {}, "param_groups": 1})
    ),
    "resume: mis-shaped weights": _edit_latest(
        lambda c: c["model"].update({next(iter(c["model"])): torch.zeros(3)})
    ),
    "resume: EMA run without its EMA weights": _edit_latest(
        lambda c: (c["config"]["train"].update(ema=0.9), c.pop("ema"))
    ),
    **{f"resume without {entry}": _edit_latest(lambda c, e=entry: _drop(c, e)) for entry in RESUME_NEEDS},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad") / "run"
    run_cli("train", "--run-dir", str(d), *TINY)
    return d


def _errors(stderr: str) -> list[str]:
    """stderr without what a run that started prints before failing (its start-up line and one
    line per evaluation)."""
    return [s for s in stderr.splitlines() if not s.startswith(("training precision: ", "epoch "))]


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, argv, code, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(trained, tmp_path, monkeypatch, case, argv, code, fragment):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    PREPARE.get(case, lambda run, tmp: None)(run, tmp_path)
    before, entries = _snapshot(tmp_path), {p.name for p in tmp_path.iterdir()}
    proc = run_cli(*[a.format(run=run, tmp=tmp_path) for a in argv], check=False)
    assert (proc.returncode, fragment in proc.stderr) == (code, True), proc.stderr
    assert len(_errors(proc.stderr.strip())) == 1 and "Traceback" not in proc.stderr
    after = _snapshot(tmp_path)
    if case != "diverging lr":  # it ran, and keeps its logs (but no checkpoint) for inspection
        assert after == before, "a bad input changed or created files"
        assert {p.name for p in tmp_path.iterdir()} == entries, "a bad input left a folder behind"
    else:
        assert not (tmp_path / "new" / "checkpoint.pt").exists()
    assert not (tmp_path / "pwned").exists()


def _entries(ckpt: dict) -> set[str]:
    """checkpoint.pt's entries as RESUME_NEEDS names them: top level, state fields, process 0's."""
    rank = ckpt["ranks"][0]
    return {
        *ckpt, *(f"state.{k}" for k in ckpt["state"]), *(f"ranks[0].{k}" for k in rank),
        *(f"ranks[0].rng.{k}" for k in rank["rng"]), "ranks[0].rng.cuda",
    }  # fmt: skip


def test_every_entry_of_checkpoint_pt_is_needed_or_done_without(trained):
    """A new entry save_checkpoint writes is either checked on resume (a RESUME_NEEDS case) or
    one resume does without (and that is tested below)."""
    written = _entries(load_checkpoint(trained / "checkpoint.pt"))
    assert written - {"ema"} == set(RESUME_NEEDS) | set(RESUME_OPTIONAL)  # ema: needed with train.ema


def test_resume_does_without_the_optional_entries(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    full = load_checkpoint(run / "checkpoint.pt")
    _edit_latest(lambda c: [_drop(c, entry) for entry in RESUME_OPTIONAL])(run, tmp_path)
    proc = run_cli("train", "--resume", str(run), "--no-progress", "train.epochs=2")
    assert proc.returncode == 0 and _errors(proc.stderr) == []
    assert load_checkpoint(run / "checkpoint.pt")["state"]["step"] == 2 * full["state"]["step"]


# --- a failed write of a run file (a full disk): one line naming the file, exit 1 -------------


class _FullDisk:
    """A file open for writing on a disk with ``room`` bytes (characters) free: a write past them
    stores what fits, then fails as a full disk does (ENOSPC, no file name)."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):  # flush, fileno, seek, tell, close, ...
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _fill_disk(monkeypatch, name: str, room: int = 100) -> list[str]:
    """Files opened for writing whose name contains ``name`` fail after ``room`` bytes: through
    ``open`` (csv, JSON lines, pillow, TensorBoard, pathlib) or, for ``.pt``, ``os.fdopen`` (the
    checkpoints' temp files). Returns the paths opened so (the test checks the fault was met)."""
    opened: list[str] = []
    real_open, real_fdopen = io.open, os.fdopen

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        path = os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else ""  # TensorBoard: bytes
        if name in path and set(mode) & set("wax"):
            opened.append(path)
            return _FullDisk(f, room)
        return f

    def fake_fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if name in path:
            opened.append(path)
            return _FullDisk(f, room)
        return f

    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "fdopen", fake_fdopen)
    return opened


RUN_FILE_WRITES = [  # (what fails, the file the one line names)
    ("config.yaml", "config.yaml"),
    ("metrics.csv", "metrics.csv"),  # written through .metrics.csv.tmp
    ("invocations.jsonl", "invocations.jsonl"),
    ("samples.png", "samples.png"),
    ("reconstructions.png", "reconstructions.png"),
    ("events.out.tfevents", "events.out.tfevents.*"),  # TensorBoard writes in a thread of its own
    ("best.pt", "best.pt"),  # checkpoints: through save_atomic's temp file, the real torch.save
    ("checkpoint.pt", "checkpoint.pt"),
]


def _temp_files(run: pathlib.Path) -> list[str]:
    return [p.name for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not pathlib.Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("name, named", RUN_FILE_WRITES, ids=[w[0] for w in RUN_FILE_WRITES])
def test_a_full_disk_is_one_line_naming_the_run_file(tmp_path, monkeypatch, name, named):
    run = tmp_path / "new"
    thread_errors: list = []  # e.g. TensorBoard's writer thread: its traceback would be a 2nd line
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    opened = _fill_disk(monkeypatch, name)
    proc = run_cli("train", "--run-dir", str(run), *TINY, check=False)
    for thread in threading.enumerate():  # a writer thread that failed has reported it by now
        if type(thread).__module__.startswith("tensorboard."):
            thread.join(timeout=10)
    monkeypatch.undo()
    assert opened, f"no write of {name} was met"
    assert not thread_errors, thread_errors[0].exc_value
    assert proc.returncode == 1, proc.stderr
    assert _errors(proc.stderr) == [f"flowvae: error: {run / named}: No space left on device"]
    assert not _temp_files(run)


def test_torch_save_failing_mid_write_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """torch.save reports a short write as a RuntimeError (disk full at the first checkpoint)."""

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes of a zip")  # a torn temp file is on disk
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 2048 vs 1968")

    monkeypatch.setattr(torch, "save", failing_save)
    run = tmp_path / "new"
    proc = run_cli("train", "--run-dir", str(run), *TINY, check=False)
    assert proc.returncode == 1, proc.stderr
    assert _errors(proc.stderr) == [
        f"flowvae: error: {run / 'best.pt'}: cannot write it (the disk may be full; torch.save: "
        "[enforce fail at inline_container.cc:595] . unexpected pos 2048 vs 1968)"
    ]
    assert not _temp_files(run) and not (run / "best.pt").exists() and not (run / "checkpoint.pt").exists()


@pytest.mark.skipif(not pathlib.Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_full_disk_on_resume_keeps_the_good_checkpoint(trained, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "best.pt")}
    opened = _fill_disk(monkeypatch, ".pt", room=1000)  # part of the new checkpoint reaches the disk
    argv = ["train", "--resume", str(run), "--no-progress", "train.epochs=2", "train.max_steps=1"]
    proc = run_cli(*argv, check=False)
    monkeypatch.undo()
    assert opened, "no checkpoint write was met"
    assert proc.returncode == 1, proc.stderr
    # the budget stop evaluates the final weights first: best.pt may be the first file written
    written = [[f"flowvae: error: {run / n}: No space left on device"] for n in ("best.pt", "checkpoint.pt")]
    assert _errors(proc.stderr) in written
    assert not _temp_files(run)
    assert {name: (run / name).read_bytes() for name in before} == before
    assert load_checkpoint(run / "checkpoint.pt")["state"]["step"] > 0  # still the good one, readable
