"""Where a sweep's members run: ``local`` (processes on this machine) or ``slurm`` (a job array).

A launcher runs a *target* (the sweep's :func:`flowvae.sweeps.run_member`) once per member: it
trains or resumes the member, scores it, and records in ``R/status`` what it is doing, so a
sweep's status reads the same whichever launcher ran it. ``start`` returns the Slurm job of each
member it submitted (the local launcher returns when its members have ended); ``alive`` says
which of a folder's jobs are still queued or running, so that none is started twice.

The Slurm launcher submits through submitit (the library Hydra's Slurm launcher uses): one job
array per invocation, with the venv's Python (``sys.executable``, an absolute path); its files
(pickles, logs) in ``R/slurm``, the job ids in ``R/slurm/jobs.jsonl`` and in each member's status.
A task that reaches its time limit or is preempted gets submitit's signal, is requeued and
resumes from its last checkpoint (``train.checkpoint_every_steps`` bounds what it loses); a task
cancelled by ``scancel`` stops at its next step with a checkpoint, and the next sweep resumes it.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .group_training import cores

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.jsonl"

Target = Callable[[str, str, int, int], str]  # (run dir, row, seed index, threads) -> outcome
Task = tuple[str, str, int]  # (member name, row, seed index)


class SweepError(ValueError):
    """A bad spec, a folder holding another spec, or members that did not finish (one line)."""


def _run_quietly(target: Target, run_dir: str, row: str, index: int, threads: int) -> str:
    """``target`` in a local worker: its outcome as text (the target records its errors)."""
    try:
        return target(run_dir, row, index, threads)
    except KeyboardInterrupt:
        return "interrupted"
    except BaseException as e:  # noqa: BLE001  (recorded in R/status by run_member)
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@dataclass
class LocalLauncher:
    """Members as processes sharing this machine's cores, ``workers`` at a time (default: all at
    once), each with ``max(1, cores // workers)`` intra-op threads unless ``train.threads`` says."""

    workers: int | None = None
    name: str = "local"

    def describe(self) -> str:
        return f"the local launcher ({self.workers or 'all'} at a time, {cores()} cores)"

    def alive(self, run_dir: Path) -> set[str]:
        return slurm_alive(run_dir)

    def start(self, run_dir: Path, todo: list[Task], target: Target) -> dict[str, str]:
        workers = min(self.workers or len(todo), len(todo))
        threads = max(1, cores() // workers)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_run_quietly, target, str(run_dir), row, i, threads): name
                       for name, row, i in todo}  # fmt: skip
            try:
                for done in concurrent.futures.as_completed(futures):
                    print(f"{futures[done]}: {_outcome(done)}", file=sys.stderr, flush=True)
            except KeyboardInterrupt:  # each member got the Ctrl-C too: it stops with a checkpoint
                for f in futures:
                    f.cancel()
                concurrent.futures.wait(futures)
                raise SweepError("interrupted: every running member stopped with a checkpoint; "
                                 "rerun the same sweep to continue") from None  # fmt: skip
        return {}


def _outcome(future: concurrent.futures.Future) -> str:
    try:
        return future.result()
    except BaseException as e:  # noqa: BLE001  a worker that died (e.g. killed)
        return f"failed: {type(e).__name__}"


# ----------------------------------------------------------------------------- Slurm


def slurm_alive(run_dir: Path) -> set[str]:
    """The folder's Slurm jobs (``ARRAY_TASK`` ids) still pending or running, by ``squeue``."""
    jobs = _submitted(run_dir)
    if not jobs or shutil.which("squeue") is None:
        return set()
    arrays = sorted({j.split("_")[0] for j in jobs})
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise SweepError(
            f"squeue failed: {out.stderr.strip().splitlines()[0] if out.stderr.strip() else out.returncode}"
        )
    return {line.strip() for line in out.stdout.splitlines() if line.strip()} & set(jobs)


def _submitted(run_dir: Path) -> set[str]:
    path = Path(run_dir) / SLURM_DIR / JOBS_FILE
    if not path.is_file():
        return set()
    return {
        job for line in path.read_text().splitlines() if line for job in json.loads(line)["members"].values()
    }


@dataclass
class MemberTask:
    """What a Slurm task runs: the target; on submitit's time-limit or preemption signal it is
    requeued as it is (the member resumes from its last checkpoint)."""

    target: Target

    def __call__(self, run_dir: str, row: str, index: int, threads: int) -> str:
        # scancel sends SIGTERM (SIGKILL after the cluster's KillWait), which submitit lets pass:
        # the member stops at its next step with a checkpoint, as after Ctrl-C
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        return self.target(run_dir, row, index, threads)

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(MemberTask(self.target), *args)


@dataclass
class SlurmLauncher:
    """One job array per invocation of the members to run. ``time_minutes``: each task's limit;
    ``gpus_per_task`` GPUs on the task's node; ``mem_gb``: 0 leaves it to the cluster;
    ``parallel``: tasks running at once (0: no limit); ``setup``: shell lines run before each task."""

    partition: str = ""
    time_minutes: int = 60
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem_gb: float = 0
    parallel: int = 0
    poll_seconds: float = 3.0
    setup: tuple[str, ...] = ()
    name: str = "slurm"

    def describe(self) -> str:
        where = f"partition {self.partition}" if self.partition else "the default partition"
        return (f"Slurm ({where}, {self.time_minutes} min, {self.cpus_per_task} CPUs"
                f"{f', {self.gpus_per_task} GPUs' if self.gpus_per_task else ''} per task)")  # fmt: skip

    def alive(self, run_dir: Path) -> set[str]:
        return slurm_alive(run_dir)

    def executor(self, run_dir: Path) -> Any:
        try:
            import submitit
        except ImportError:
            raise SweepError('the slurm launcher needs submitit: pip install "flowvae[slurm]"') from None
        if shutil.which("sbatch") is None:
            raise SweepError("the slurm launcher needs Slurm's sbatch on PATH (none found)")
        ex = submitit.SlurmExecutor(
            folder=run_dir / SLURM_DIR / "%j", max_num_timeout=3, python=sys.executable
        )
        params: dict[str, Any] = {"time": self.time_minutes, "cpus_per_task": self.cpus_per_task,
                                  "ntasks_per_node": 1, "job_name": f"flowvae-{run_dir.name}"}  # fmt: skip
        params.update({"partition": self.partition} if self.partition else {})
        params.update({"gpus_per_node": self.gpus_per_task} if self.gpus_per_task else {})
        params.update({"mem": f"{int(self.mem_gb * 1024)}M"} if self.mem_gb else {})
        params.update({"array_parallelism": self.parallel} if self.parallel else {})
        params.update({"setup": list(self.setup)} if self.setup else {})
        ex.update_parameters(**params)
        return ex

    def start(self, run_dir: Path, todo: list[Task], target: Target) -> dict[str, str]:
        ex = self.executor(run_dir)
        n = len(todo)
        jobs = ex.map_array(MemberTask(target), [str(run_dir)] * n, [row for _, row, _ in todo],
                            [i for _, _, i in todo], [self.cpus_per_task] * n)  # fmt: skip
        ids = {name: job.job_id for (name, _, _), job in zip(todo, jobs, strict=True)}
        with open(run_dir / SLURM_DIR / JOBS_FILE, "a") as f:
            f.write(json.dumps({"time": time.time(), "members": ids}) + "\n")
        array = jobs[0].job_id.split("_")[0]
        each = ", ".join(f"{k} {v}" for k, v in ids.items())
        print(f"submitted to Slurm (job {array}, {len(ids)} task(s)): {each}", file=sys.stderr, flush=True)
        return ids


LAUNCHERS = {"local": LocalLauncher, "slurm": SlurmLauncher}


def make_launcher(name: str, **options: Any) -> Any:
    if name not in LAUNCHERS:
        raise SweepError(f"unknown launcher {name!r}; available: {', '.join(LAUNCHERS)}")
    try:
        return LAUNCHERS[name](**{k: v for k, v in options.items() if v is not None})
    except TypeError as e:
        raise SweepError(f"launcher {name}: {e}") from None


__all__ = [
    "LAUNCHERS",
    "LocalLauncher",
    "MemberTask",
    "SlurmLauncher",
    "SweepError",
    "make_launcher",
    "slurm_alive",
]
