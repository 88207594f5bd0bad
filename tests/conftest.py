import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


REPORT: list[str] = []  # lines a test puts in the run's summary (the Slurm test's job ids)


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("reported by tests")
        for line in REPORT:
            terminalreporter.write_line(line)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, check: bool = True, subprocess_: bool = False) -> Result:
    """Run ``flowvae ARGS``: in-process through ``cli.main`` (fast), or as a real subprocess.

    In-process, an uncaught exception propagates and fails the test, which is stricter than
    looking for "Traceback" in stderr.
    """
    if subprocess_:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        p = subprocess.run([sys.executable, "-m", "flowvae", *args], capture_output=True, text=True, env=env)
        result = Result(p.returncode, p.stdout, p.stderr)
    else:
        from flowvae.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse errors
                code = e.code if isinstance(e.code, int) else 1
        result = Result(code, out.getvalue(), err.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"flowvae {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' tensors are tiny: one intra-op thread is fastest, and immune to
    oversubscription when other processes share the cores (up to 10x on a busy 2-core box)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cwd_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own tmp dir, so a default output path (``runs/...``) never
    lands in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli():
    return run_cli
