"""Training: :func:`fit`, one run or a group of seeds (:mod:`flowvae.groups`) run as processes.

The members run as concurrent processes (``spawn``), all at once (or ``workers`` at a time),
each with ``max(1, cores // workers)`` intra-op threads unless ``train.threads`` says otherwise:
small models do not use many cores well, several of them side by side do; and members that run
at the same time get the same share of the machine, so a time budget (``train.max_minutes``)
buys each about the same number of steps. Ctrl-C reaches the group's process, which passes one
Ctrl-C to every member (each stops at its next step with a checkpoint) and starts no other; a
member that is interrupted by itself stops the group the same way; a member whose group process
dies stops as after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import GROUP_FILE, CheckpointError, load_checkpoint
from .compare import read_metrics
from .config import Config, ConfigError, apply_overrides, from_dict, parse_override
from .data import DataError
from .groups import Group, check_new_group, is_group, member_config, read_group
from .rundir import RESUMABLE_OVERRIDES, TrainingError, TrainState, evaluation_line, prepare_run, run_files
from .train import Interrupted, train

POLL_SECONDS = 2.0  # how often the group's process looks at its members' metrics


@dataclass
class _Job:
    name: str
    run_dir: Path
    cfg: Config
    resume: bool
    overwrite: bool
    overrides: list[str]


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fit(
    cfg: Config | None,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    *,
    seeds: int | None = None,
    workers: int | None = None,
) -> TrainState | dict[str, TrainState]:
    """Train (or resume) a run, as ``flowvae train``; with ``seeds=N``, or resuming a group, a group.

    A run: :func:`flowvae.train.train` (returns its :class:`TrainState`). A group (``seeds=N``;
    ``resume=True`` on a folder holding ``group.json``, ``cfg`` then unused): N members in
    ``run_dir/seed-i`` trained ``workers`` at a time (default: all N at once); returns
    each member's final state by member name. A member that fails raises (after the others end)
    the error of the first one, its message naming the member.
    """
    if seeds is None and not (resume and is_group(run_dir)):
        if cfg is None:
            raise ConfigError("fit needs a config (or resume=True)")
        return train(cfg, run_dir, resume, progress, overwrite, overrides)
    return train_group(cfg, run_dir, seeds, resume, progress, overwrite, overrides, workers)


def train_group(
    cfg: Config | None,
    group_dir: str | Path,
    seeds: int | None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    workers: int | None = None,
) -> dict[str, TrainState]:
    """Train or resume the members of a group (see :func:`fit`)."""
    group_dir, overrides = Path(group_dir), list(overrides or [])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("a group trains its members in processes of its own; launch it without torchrun")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    done: dict[str, TrainState] = {}
    created = not group_dir.exists()
    if resume:
        if seeds is not None:
            raise ConfigError("a resumed group keeps its own seeds: give no number of seeds")
        group = read_group(group_dir)
        jobs = []
        for name, seed in zip(group.members, group.seeds, strict=True):
            member = group_dir / name
            if (member / "checkpoint.pt").is_file():
                member_cfg = prepare_run(None, member, True, overrides)
                state = _finished(member, member_cfg)
                if state is not None:
                    done[name] = state
                    continue
                jobs.append(_Job(name, member, member_cfg, True, False, overrides))
            else:  # killed (or failed) before its first checkpoint: it starts again, with this
                # invocation's overrides over the group's config (the keys a resume may change)
                fresh = member_config(group.config, seed)
                for text in overrides:
                    if parse_override(text)[0] not in RESUMABLE_OVERRIDES:
                        raise ConfigError(f"cannot change {parse_override(text)[0]} when resuming; allowed: "
                                          f"{', '.join(sorted(RESUMABLE_OVERRIDES))}")  # fmt: skip
                apply_overrides(fresh, overrides)
                jobs.append(_Job(name, member, fresh, False, True, [*group.overrides, *overrides]))
    else:
        if cfg is None or seeds is None or seeds < 1:
            raise ConfigError(f"a new group needs a config and seeds >= 1 (got {seeds})")
        check_new_group(group_dir, seeds, overwrite)
        base = cfg.train.seed
        group = Group([f"seed-{i}" for i in range(seeds)], [base + i for i in range(seeds)], cfg.to_dict(),
                      overrides)  # fmt: skip
        group_dir.mkdir(parents=True, exist_ok=True)
        tmp = group_dir / f".{GROUP_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(group), indent=1) + "\n")
        tmp.replace(group_dir / GROUP_FILE)
        jobs = [
            _Job(name, group_dir / name, member_config(group.config, seed), False, overwrite, overrides)
            for name, seed in zip(group.members, group.seeds, strict=True)
        ]
    try:
        done.update(_run_jobs(jobs, group_dir, workers, progress))
    except BaseException:
        if not resume and not any(run_files(group_dir / m) for m in group.members):
            _remove_unstarted(group_dir, group.members, created)  # nothing started: no folder left
        raise
    return {name: done[name] for name in group.members}


def _finished(member: Path, cfg: Config) -> TrainState | None:
    """The member's final state if it has nothing left to do: all epochs, or early stopped."""
    state = load_checkpoint(member / "checkpoint.pt")["state"]
    if state["epoch"] >= cfg.train.epochs or state.get("stopped", "").startswith("early stopping"):
        return TrainState(**state)
    return None


def _remove_unstarted(group_dir: Path, members: list[str], created: bool) -> None:
    (group_dir / GROUP_FILE).unlink(missing_ok=True)
    for name in members:
        folder = group_dir / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if created and group_dir.is_dir() and not any(group_dir.iterdir()):
        group_dir.rmdir()


_ERRORS: dict[str, type[Exception]] = {
    e.__name__: e for e in (ConfigError, DataError, CheckpointError, TrainingError, ValueError)
}


def _run_jobs(
    jobs: list[_Job], group_dir: Path, workers: int | None, progress: bool
) -> dict[str, TrainState]:
    """Run the members' processes, ``workers`` at a time; Ctrl-C is passed on to each once."""
    if not jobs:
        return {}
    workers = min(workers or len(jobs), len(jobs))
    ctx = multiprocessing.get_context("spawn")
    pending, running = list(jobs), {}  # running: process sentinel -> (job, process, connection)
    failures: list[tuple[str, str, str]] = []  # (member, error type, message)
    interrupted: list[str] = []
    shown: dict[str, int] = {}
    stopping = False
    if progress:
        print(f"group {group_dir}: {len(jobs)} member(s) to train, {workers} at a time", file=sys.stderr)
    with _sigint_raises():  # as in a single run, even where Ctrl-C was ignored at start-up
        while pending or running:
            try:
                while pending and len(running) < workers and not stopping:
                    job = pending.pop(0)
                    threads = job.cfg.train.threads or max(1, cores() // workers)
                    process, receive = _start(ctx, job, threads)
                    running[process.sentinel] = (job, process, receive)
                ready = multiprocessing.connection.wait(list(running), timeout=POLL_SECONDS)
                if progress:
                    _show_progress([job for job, _, _ in running.values()], shown)
                for sentinel in ready:
                    job, process, receive = running.pop(sentinel)
                    process.join()
                    message = (
                        receive.recv()
                        if receive.poll()
                        else ("error", "TrainingError", f"its process ended ({process.exitcode})")
                    )
                    receive.close()
                    if message[0] == "error":
                        failures.append((job.name, message[1], message[2]))
                    elif message[0] == "interrupted":
                        interrupted.append(job.name)
                        if not stopping:  # one member stopped by itself: the group stops with it
                            stopping = _stop(pending, running)
                    if progress and message[0] == "done":
                        _show_progress([job], shown)
                        print(f"{job.name}: done", file=sys.stderr)
            except KeyboardInterrupt:  # the first stops every member at its next step, a second at once
                stopping = _stop(pending, running)
    if failures:  # the first member (in the group's order) that failed
        name, kind, text = min(failures, key=lambda f: [job.name for job in jobs].index(f[0]))
        others = f" ({len(failures) - 1} other member(s) failed too)" if len(failures) > 1 else ""
        error = _ERRORS.get(kind, TrainingError)
        where = f"{group_dir / name}: {text}{others}; fix it and continue"
        cli = f"{where} with --resume {group_dir}"
        if error is TrainingError:
            raise error(f"{where} with fit(cfg, {str(group_dir)!r}, resume=True)", cli=cli)
        raise error(cli)
    if stopping or interrupted:
        stopped = "stopped every member with a checkpoint; continue"
        python = f"{stopped} with fit(cfg, {str(group_dir)!r}, resume=True)"
        raise Interrupted(python, cli=f"{stopped} with --resume {group_dir}")
    return {job.name: TrainState(**load_checkpoint(job.run_dir / "checkpoint.pt")["state"]) for job in jobs}


def _start(ctx: Any, job: _Job, threads: int) -> tuple[Any, Any]:
    """Start a member's process; returns it and the end of the pipe its outcome comes through."""
    receive, send = ctx.Pipe(duplex=False)
    debug = bool(os.environ.get("FLOWVAE_DEBUG"))
    args = (send, job.cfg.to_dict(), str(job.run_dir), job.resume, job.overwrite, job.overrides, threads,
            os.getpid(), debug)  # fmt: skip
    process = ctx.Process(target=_member_main, name=f"flowvae-{job.name}", args=args)
    process.start()
    send.close()
    return process, receive


@contextlib.contextmanager
def _sigint_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in the group's process (as :func:`flowvae.train.train`
    handles it in a run's), also where it was ignored at start-up (e.g. ``nohup ... &``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _stop(pending: list[_Job], running: dict[int, tuple[_Job, Any, Any]]) -> bool:
    """Start no other member; pass one Ctrl-C to each running one."""
    pending.clear()
    for _, process, _ in running.values():
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    return True


def _show_progress(jobs: list[_Job], shown: dict[str, int]) -> None:
    """One line per new evaluation row of each member (read from its metrics.csv), named."""
    for job in jobs:
        rows = read_metrics(job.run_dir)
        for i in range(shown.get(job.name, 0), len(rows)):
            row = {**rows[i], "epoch": int(rows[i]["epoch"])}
            best = max(rows[: i + 1], key=lambda r: r.get("valid_elbo", -math.inf))
            state = TrainState(best_valid=best.get("valid_elbo", math.nan), best_epoch=int(best["epoch"]))
            print(f"{job.name}: {evaluation_line(row, state, job.cfg.train.epochs)}", file=sys.stderr)
        shown[job.name] = len(rows)


def _watch_parent(parent: int) -> None:
    """A member whose group process died stops as after Ctrl-C: at its next step, with a checkpoint."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)


def _member_main(
    send: Any, cfg: dict[str, Any], run_dir: str, resume: bool, overwrite: bool, overrides: list[str],
    threads: int, parent: int, debug: bool,
) -> None:  # fmt: skip
    """One member, in its own process: trains, then sends ("done",), ("interrupted", text) or
    ("error", type name, one-line message)."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the group's process only, which passes it on once
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    try:
        train(
            from_dict(cfg), run_dir, resume=resume, progress=False, overwrite=overwrite, overrides=overrides
        )
        message: tuple = ("done",)
    except Interrupted as e:
        message = ("interrupted", str(e))
    except BaseException as e:
        if debug:
            traceback.print_exc()
        text = str(e).splitlines()[0] if str(e) else ""
        known = type(e).__name__ in _ERRORS
        message = ("error", type(e).__name__, text if known else f"{type(e).__name__}: {text}")
    try:
        send.send(message)
    except OSError:  # the group's process is gone
        pass


__all__ = ["cores", "fit", "train_group"]
