"""Training: :func:`fit`, one run or a group of seeds (:mod:`flowvae.groups`) run as processes.

The members run as concurrent processes (``spawn``), as many at once as the machine has cores
(or ``workers`` at a time; the others wait their turn: ``--seeds 1000`` never starts 1000
processes), each with ``max(1, cores // workers)`` intra-op threads unless ``train.threads`` says otherwise:
small models do not use many cores well, several of them side by side do; and members that run
at the same time get the same share of the machine, so a time budget (``train.max_minutes``)
buys each about the same number of steps. Ctrl-C reaches the group's process, which passes one
Ctrl-C to every member (each stops at its next step with a checkpoint) and starts no other; a
member that is interrupted by itself stops the group the same way; a member whose group process
dies stops as after Ctrl-C. A member killed outright (SIGKILL, out of memory) keeps its last
checkpoint; the others go on, and the group then fails naming it and how it ended.
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
from dataclasses import asdict, dataclass, field
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .checkpoint import GROUP_FILE, CheckpointError, load_checkpoint
from .config import Config, ConfigError, apply_overrides, from_dict, parse_override
from .data import DataError
from .groups import Group, check_new_group, is_group, member_config, read_group
from .progress import progress_bar
from .rundir import (
    RESUMABLE_OVERRIDES,
    TrainingError,
    TrainState,
    clock,
    prepare_run,
    resume_checkpoint,
    run_files,
    say_on_stderr,
)
from .train import Interrupted, train

POLL_SECONDS = 2.0  # the longest the group's process waits for a member's message or end


@dataclass
class _Job:
    name: str
    run_dir: Path
    cfg: Config
    resume: bool
    overwrite: bool
    overrides: list[str]
    origin: dict[str, str] = field(default_factory=dict)  # a new member's preset and config file


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
    origin: dict[str, str] | None = None,
) -> TrainState | dict[str, TrainState]:
    """Train (or resume) a run, as ``flowvae train``; with ``seeds=N``, or resuming a group, a group.

    A run: :func:`flowvae.train.train` (returns its :class:`TrainState`). A group (``seeds=N``;
    ``resume=True`` on a folder holding ``group.json``, ``cfg`` then unused): N members in
    ``run_dir/seed-i`` trained ``workers`` at a time (default: one per core); returns
    each member's final state by member name. A member that fails raises (after the others end)
    the error of the first one, its message naming the member. ``origin`` (``{"preset": NAME,
    "config_file": PATH, "config_sha256": ...}``): where a new run's config came from, recorded
    in its ``config.yaml``, ``invocations.jsonl`` and (a group) ``group.json``.
    """
    if seeds is None and not (resume and is_group(run_dir)):
        if cfg is None:
            raise ConfigError("fit needs a config (or resume=True)")
        return train(cfg, run_dir, resume, progress, overwrite, overrides, origin)
    return train_group(cfg, run_dir, seeds, resume, progress, overwrite, overrides, workers, origin)


def train_group(
    cfg: Config | None,
    group_dir: str | Path,
    seeds: int | None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    workers: int | None = None,
    origin: dict[str, str] | None = None,
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
            if resume_checkpoint(member).is_file():  # best.pt alone: killed during its first checkpoint
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
                given = [*group.overrides, *overrides]
                jobs.append(_Job(name, member, fresh, False, True, given, group.origin))
    else:
        if cfg is None or seeds is None or seeds < 1:
            raise ConfigError(f"a new group needs a config and seeds >= 1 (got {seeds})")
        check_new_group(group_dir, seeds, overwrite)
        base = cfg.train.seed
        group = Group([f"seed-{i}" for i in range(seeds)], [base + i for i in range(seeds)], cfg.to_dict(),
                      overrides, dict(origin or {}))  # fmt: skip
        jobs = [
            _Job(name, group_dir / name, member_config(group.config, seed), False, overwrite, overrides,
                 group.origin)  # fmt: skip
            for name, seed in zip(group.members, group.seeds, strict=True)
        ]
    try:  # from the group file on: a Ctrl-C (or failure) before any member started leaves nothing
        if not resume:
            group_dir.mkdir(parents=True, exist_ok=True)
            tmp = group_dir / f".{GROUP_FILE}.tmp"
            tmp.write_text(json.dumps(asdict(group), indent=1) + "\n")
            tmp.replace(group_dir / GROUP_FILE)
        done.update(_run_jobs(jobs, group_dir, workers, progress))
    except BaseException as e:
        if not resume and not any(run_files(group_dir / m) for m in group.members):
            (group_dir / f".{GROUP_FILE}.tmp").unlink(missing_ok=True)
            _remove_unstarted(group_dir, group.members, created)  # nothing started: no folder left
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted("stopped before any member started; nothing was written") from None
        raise
    return {name: done[name] for name in group.members}


def _finished(member: Path, cfg: Config) -> TrainState | None:
    """The member's final state if it has nothing left to do: all epochs, or early stopped."""
    state = load_checkpoint(resume_checkpoint(member))["state"]
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
    """Run the members' processes, ``workers`` at a time, printing each member's lines named
    (:class:`_Board`); Ctrl-C is passed on to each once."""
    if not jobs:
        return {}
    workers = min(workers or cores(), len(jobs))  # one member per core at most: the rest wait
    ctx = multiprocessing.get_context("spawn")
    pending, running = list(jobs), {}  # running: process sentinel -> (job, process, connection)
    outcomes: dict[str, tuple] = {}  # member -> ("done",) | ("interrupted", text) | ("error", type, text)
    stopping = False
    board = _Board(group_dir, jobs, workers, progress)
    with _sigint_raises(), board:  # as in a single run, even where Ctrl-C was ignored at start-up
        while pending or running:
            try:
                while pending and len(running) < workers and not stopping:
                    job = pending.pop(0)
                    threads = job.cfg.train.threads or max(1, cores() // workers)
                    with _sigint_ignored_by_the_member():  # a Ctrl-C now is raised once it is listed
                        process, receive = _start(ctx, job, threads)
                        running[process.sentinel] = (job, process, receive)
                pipes = {receive: job for job, _, receive in running.values()}
                ready = multiprocessing.connection.wait([*running, *pipes], timeout=POLL_SECONDS)
                for receive in set(ready) & set(pipes):
                    _drain(pipes[receive], receive, outcomes, board)
                for sentinel in set(ready) & set(running):
                    job, process, receive = running.pop(sentinel)
                    process.join()
                    _drain(job, receive, outcomes, board)
                    receive.close()
                    outcome = outcomes.setdefault(job.name, _killed(process.exitcode))
                    if outcome[0] == "interrupted" and not stopping:  # one member stopped: the group too
                        stopping = _stop(pending, running)
                    board.ended(job.name, outcome[0])
            except KeyboardInterrupt:  # the first stops every member at its next step, a second at once
                stopping = _stop(pending, running)
    _raise_failures(jobs, group_dir, outcomes, stopping)
    return {job.name: TrainState(**load_checkpoint(resume_checkpoint(job.run_dir))["state"]) for job in jobs}


def _raise_failures(jobs: list[_Job], group_dir: Path, outcomes: dict[str, tuple], stopping: bool) -> None:
    """The first member (in the group's order) that failed fails the group with its error, named;
    an interrupted group raises :class:`Interrupted`."""
    failed = [job.name for job in jobs if outcomes.get(job.name, ("",))[0] == "error"]
    failures = [(name, *outcomes[name][1:]) for name in failed]
    if failures:
        name, kind, text = failures[0]
        others = f" ({len(failures) - 1} other member(s) failed too)" if len(failures) > 1 else ""
        error = _ERRORS.get(kind, TrainingError)
        where = f"{group_dir / name}: {text}{others}; {'' if kind == 'Killed' else 'fix it and '}continue"
        cli = f"{where} with --resume {group_dir}"
        if error is TrainingError:
            raise error(f"{where} with fit(cfg, {str(group_dir)!r}, resume=True)", cli=cli)
        raise error(cli)
    if stopping or any(outcome[0] == "interrupted" for outcome in outcomes.values()):
        stopped = "stopped every member with a checkpoint; continue"
        python = f"{stopped} with fit(cfg, {str(group_dir)!r}, resume=True)"
        raise Interrupted(python, cli=f"{stopped} with --resume {group_dir}")


def _drain(job: _Job, receive: Any, outcomes: dict[str, tuple], board: _Board) -> None:
    """Every message a member has sent so far: its lines (to the board) and its outcome (kept)."""
    try:
        while receive.poll():
            message = receive.recv()
            if message[0] == "line":
                board.line(job.name, *message[1:])
            else:
                outcomes[job.name] = message
    except (EOFError, OSError):  # the member is gone; its outcome, if any, was read
        pass


class _Board:
    """What a group prints: one line per member's line (its start-up line, each evaluation),
    named ``seed-i: ...``, with the member's own epoch, step and ETA; on a terminal with
    ``progress``, one bar above them over every member's steps (total: the sum of the steps each
    is expected to stop at; ETA: the latest member's)."""

    def __init__(self, group_dir: Path, jobs: list[_Job], workers: int, progress: bool):
        self.progress, self.at = progress, {}  # member -> {"step", "end", "eta"} of its last evaluation
        if progress:
            print(f"group {group_dir}: {len(jobs)} member(s) to train, {workers} at a time", file=sys.stderr)
        enabled = progress and sys.stderr.isatty()
        self.bar = progress_bar(0, f"group {group_dir.name}", enabled, unit="steps", eta=False)

    def __enter__(self) -> _Board:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def line(self, name: str, text: str, where: dict[str, float] | None = None) -> None:
        say_on_stderr(f"{name}: {text}")
        if where is None or self.bar.disable:
            return
        self.at[name] = where
        self.bar.total = sum(int(w["end"] or w["step"]) for w in self.at.values())
        self.bar.n = sum(int(w["step"]) for w in self.at.values())
        eta = max((w["eta"] for w in self.at.values() if math.isfinite(w["eta"])), default=math.nan)
        self.bar.set_postfix(ETA=clock(eta))

    def ended(self, name: str, outcome: str) -> None:
        if self.progress and outcome == "done":
            say_on_stderr(f"{name}: done")


def _start(ctx: Any, job: _Job, threads: int) -> tuple[Any, Any]:
    """Start a member's process; returns it and the end of the pipe its outcome comes through."""
    receive, send = ctx.Pipe()  # its outcome comes back; a "stop" goes to it (see _stop)
    debug = bool(os.environ.get("FLOWVAE_DEBUG"))
    args = (send, job.cfg.to_dict(), str(job.run_dir), job.resume, job.overwrite, job.overrides, threads,
            os.getpid(), debug, job.origin)  # fmt: skip
    process = ctx.Process(target=_member_main, name=f"flowvae-{job.name}", args=args)
    process.start()
    send.close()
    return process, receive


def _killed(exitcode: int | None) -> tuple:
    """The outcome of a member that sent none (killed by SIGKILL, out of memory): how it ended."""
    if exitcode is not None and exitcode < 0:
        how = f"was killed by {signal.Signals(-exitcode).name}"
    else:
        how = f"ended with exit status {exitcode} before reporting"
    return ("error", "Killed", f"its process {how}; its last checkpoint is kept")


@contextlib.contextmanager
def _sigint_ignored_by_the_member() -> Iterator[None]:
    """A member starts with Ctrl-C ignored and blocked (the disposition and mask a new process
    inherits) until :func:`_member_main` has left the terminal's process group and installed its
    handler: a Ctrl-C can neither kill it while it starts up (a traceback, and the group's
    EOFError) nor cut the start-up data sent to it. The group's process holds a Ctrl-C back
    meanwhile (blocked, so pending: not lost) and gets it on leaving the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    resource_tracker.ensure_running()  # starting it unblocks SIGINT: done before the block below
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
    """Start no other member; pass one Ctrl-C to each running one (after a "stop" on its pipe: a
    member still starting up ignores the signal, and reads that instead)."""
    pending.clear()
    for _, process, connection in running.values():
        with contextlib.suppress(OSError):  # it has ended already
            connection.send("stop")
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    return True


def _watch_parent(parent: int) -> None:
    """A member whose group process died stops as after Ctrl-C: at its next step, with a checkpoint."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)


def _member_main(
    send: Any, cfg: dict[str, Any], run_dir: str, resume: bool, overwrite: bool, overrides: list[str],
    threads: int, parent: int, debug: bool, origin: dict[str, str],
) -> None:  # fmt: skip
    """One member, in its own process: trains, sending each line it prints as ("line", text,
    where), then ("done",), ("interrupted", text) or ("error", type name, one-line message)."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the group's process only, which passes it on once
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing one: a named semaphore that a SIGKILL of this
    # member would leak (the resource tracker's warning at the group's end); a member has no bar
    tqdm.set_lock(threading.RLock())

    def say(text: str, where: dict[str, float] | None = None) -> None:  # printed by the group, named
        send.send(("line", text, where))

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored (and blocked) while it started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C held back is raised now
        if send.poll():  # the group was stopped while this member started (a "stop" waits)
            raise KeyboardInterrupt
        train(
            from_dict(cfg), run_dir, resume=resume, progress=False, overwrite=overwrite, overrides=overrides,
            origin=origin, say=say,
        )  # fmt: skip
        message: tuple = ("done",)
    except Interrupted as e:
        message = ("interrupted", str(e))
    except KeyboardInterrupt:  # a Ctrl-C that came while it started: nothing to keep yet
        message = ("interrupted", "stopped before training started")
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
