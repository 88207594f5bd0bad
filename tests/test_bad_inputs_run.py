"""The checkable list of bad inputs and faults for runs, checkpoints and resume (issue 12, part A).

Each row: (case, argv, expected exit code, expected fragment of the one-line message). ``{run}``
is a fresh copy of a trained run, ``{tmp}`` the test's folder; PREPARE puts the fault in place.
Every case must fail with one line on stderr, no traceback, and leave no new folder behind.
"""

import pathlib
import shutil

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
]  # fmt: skip


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
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad") / "run"
    run_cli("train", "--run-dir", str(d), *TINY)
    return d


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
    lines = [s for s in proc.stderr.strip().splitlines() if not s.startswith("training precision: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr  # (a run that started said so first)
    after = _snapshot(tmp_path)
    if case != "diverging lr":  # it ran, and keeps its logs (but no checkpoint) for inspection
        assert after == before, "a bad input changed or created files"
        assert {p.name for p in tmp_path.iterdir()} == entries, "a bad input left a folder behind"
    else:
        assert not (tmp_path / "new" / "checkpoint.pt").exists()
    assert not (tmp_path / "pwned").exists()
