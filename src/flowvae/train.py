"""Training: the loop.

``train`` = ``setup`` (data, model, optimizer, EMA, resume, run directory) + ``run_epoch`` (each
``train_step``, in-epoch checkpoints, budgets, Ctrl-C) + ``end_of_epoch`` (``validate``:
``evaluate_elbo``, divergence stop, ``best.pt``, early stopping; ``save_checkpoint``), with a
:class:`~flowvae.rundir.RunLog` that consumes each metrics row. What one update is made of is in
:mod:`flowvae.optim`; the run directory's files in :mod:`flowvae.rundir`.

Resuming restores model, optimizer, EMA, RNG states and the position inside the epoch, so an
interrupted run ends where an uninterrupted one does. Budgets (``train.max_minutes``,
``train.max_steps``) count per invocation; a resume after Ctrl-C or a kill keeps what the
interrupted invocation left of them (:func:`flowvae.rundir.budget_left`), one after a budget stop
has none unless given.
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, remove_temp_files, save_atomic
from .config import Amp, Config, ConfigError, save_yaml
from .data import ImageData, iterate_batches, load_data, num_batches
from .files import writing
from .model import build_model, check_for_data
from .optim import (
    EMA,
    budget_horizon,
    evaluate_elbo,
    freeze,
    init_from,
    kl_weight,
    learning_rate,
    optimizer_for,
    precision_note,
    resolve_device,
    train_step,
    training_loss,
)
from .progress import progress_bar
from .rundir import (
    RunLog,
    Say,
    TrainingError,
    TrainState,
    budget_note,
    check_new_run_dir,
    clock,
    new_run_dir,
    origin_comment,
    prepare_run,
    record_invocation,
    resume_checkpoint,
    run_files,
    say_on_stderr,
    summary_line,
    write_metrics,
)

MAX_CONSECUTIVE_SKIPS = 50


# ----------------------------------------------------------------------------- pieces


# ----------------------------------------------------------------------------- state


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain data (what ``torch.load(weights_only=True)`` reads)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, Tensor) else keys  # an ndarray in older checkpoints
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the loop


INTERRUPTED = "interrupted (Ctrl-C)"
TERMINATED = "interrupted (SIGTERM)"
STOP_SIGNALS = {signal.SIGINT: INTERRUPTED, signal.SIGTERM: TERMINATED}  # handled alike
LR_HINT = " (a smaller train.lr than {:g} may help)"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped training at a safe point, after writing a checkpoint. One-line
    message, with ``cli`` as :class:`TrainingError`'s; ``code`` is the exit status (128 + signal)."""

    def __init__(self, message: str, cli: str = "", code: int = 128 + signal.SIGINT):
        super().__init__(message)
        self.cli = cli or message
        self.code = code


def _install_stop_handlers() -> tuple[dict[str, int], dict[int, Any]]:
    """The first Ctrl-C or SIGTERM (as ``timeout`` and job schedulers send) only records the
    signal (training stops at the next step with a checkpoint: a checkpoint being written is
    finished); a second one acts at once. Returns the record (``{"set": signum}``, 0 while none
    came) and the handlers to restore."""
    flag = {"set": 0}
    if threading.current_thread() is not threading.main_thread():
        return flag, {}
    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        previous[signum] = handler if handler is not None else default

    def handler(signum: int, frame: Any) -> None:
        flag["set"] = flag["set"] or signum
        signal.signal(signum, previous[signum])

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    return flag, previous


# ----------------------------------------------------------------------------- one invocation


@dataclass
class _Run:
    """What one invocation of :func:`train` holds: built by :func:`setup`, passed to each step.

    ``net`` is what the steps call (``model``, or it wrapped in DDP and/or ``torch.compile``);
    ``log`` is rank 0's :class:`RunLog` (``None`` on the other ranks). ``started`` (of the whole
    run: metrics' seconds) and ``invoked`` (of this invocation: the budgets) are
    ``time.perf_counter()`` values; ``last_good`` is the step of the checkpoint.pt on disk (-1: none).
    """

    cfg: Config
    run_dir: Path
    d: distributed.Dist
    device: torch.device
    data: ImageData
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    state: TrainState
    log: RunLog | None
    batch_size: int  # per process
    n_batches: int  # per process and epoch
    started: float
    invoked: float
    first_step: int  # of this invocation (train.max_steps)
    last_good: int
    sigint: dict[str, int] = field(default_factory=lambda: {"set": 0})  # the first Ctrl-C / SIGTERM
    bar: Any = None  # the tqdm progress bar (disabled off rank 0 or without progress)

    @property
    def no_valid(self) -> bool:
        """data.valid_size=0: train on every image, keep the latest weights."""
        return len(self.data.valid) == 0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model


def _build_model(
    cfg: Config, data: ImageData, device: torch.device, batch_size: int, resume: bool
) -> nn.Module:
    """The model with its starting weights: seeded initialisation, then ``train.init_from`` or the
    data-dependent init (skipped on resume: the checkpoint replaces them), then ``train.freeze``."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.shape, data.binary).to(device)
    if cfg.train.init_from and not resume:
        init_from(model, cfg.train.init_from, cfg.train.freeze, device)
    elif cfg.train.freeze:
        raise ConfigError(f"train.freeze={cfg.train.freeze} needs train.init_from=RUN_DIR (trained weights)")
    elif not resume:  # e.g. weight normalisation's data-dependent init (hierarchical model)
        first = next(iterate_batches(data, "train", batch_size, shuffle=True, seed=cfg.train.seed))
        model.data_init(first.to(device))
    freeze(model, cfg.train.freeze)
    return model


# What a resume reads from checkpoint.pt besides what every checkpoint has (checkpoint.REQUIRED):
# these entries (``ema`` too when the run keeps an EMA), every TrainState field but those of
# STATE_DEFAULTED, and for each process its RNG states and the running sums of its part of the
# epoch. STATE_DEFAULTED: fields added after the first checkpoints were written (those resume
# with the defaults) and ``stopped`` (reset by a resume).
RESUME_ENTRIES = ("model", "optimizer", "state", "ranks")
STATE_DEFAULTED = ("horizon", "epoch_skipped", "stopped", "minutes_left", "steps_left", "origin")
RANK_ENTRIES = ("rng", "rng.torch", "rng.numpy", "rng.python", "epoch_sums")


def missing_for_resume(ckpt: dict[str, Any], ema: bool) -> list[str]:
    """The entries resuming needs that ``ckpt`` lacks, as dotted names (``optimizer``,
    ``state.step``, ``ranks[0].rng.torch``; ``ema`` when ``ema``); none inside a missing one."""

    def lacks(entry: Any, dotted: str) -> bool:
        for key in dotted.split("."):
            if not isinstance(entry, dict) or entry.get(key) is None:
                return True
            entry = entry[key]
        return False

    state = [f"state.{f.name}" for f in fields(TrainState) if f.name not in STATE_DEFAULTED]
    missing = [k for k in [*RESUME_ENTRIES, *(["ema"] if ema else []), *state] if lacks(ckpt, k)]
    ranks = ckpt.get("ranks") if isinstance(ckpt.get("ranks"), list) else []
    missing += [f"ranks[{i}].{k}" for i, rank in enumerate(ranks) for k in RANK_ENTRIES if lacks(rank, k)]
    return [k for k in missing if not any(k.startswith(f"{m}.") for m in missing)]


@contextlib.contextmanager
def _resuming(path: Path, entry: str) -> Iterator[None]:
    """An ``entry`` of the checkpoint at ``path`` that is there but does not fit (a wrong type,
    tensors of the wrong shape) is a one-line :class:`CheckpointError` naming it."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
        problem = f"its {entry} does not fit this run ({reason})"
        raise CheckpointError(f"{path}: cannot resume: {problem}") from None


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """``load_state_dict`` takes moments of any shape and type; the first step would fail on them."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if not isinstance(value, Tensor):
                    raise TypeError(f"{key} is a {type(value).__name__}, not a tensor")
                if value.dim() and value.shape != p.shape:
                    raise ValueError(f"{key} has shape {tuple(value.shape)}, its parameter {tuple(p.shape)}")


def _restore(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: bool, d: distributed.Dist,
    device: torch.device,
) -> tuple[TrainState, dict[str, Any]]:  # fmt: skip
    """Resume from checkpoint.pt (or best.pt: :func:`~flowvae.rundir.resume_checkpoint`): weights,
    optimizer, state, and this rank's RNG states and the running sums of its part of the epoch.
    Returns the state and the checkpoint (for the EMA).

    A checkpoint that lacks an entry (:func:`missing_for_resume`) or holds one that does not fit
    fails in one line naming it, before anything is written."""
    path = resume_checkpoint(run_dir)
    ckpt = load_checkpoint(path, map_location=device)
    if path.name == "best.pt" and d.is_main:
        step = ckpt["state"].get("step") if isinstance(ckpt.get("state"), dict) else None
        print(f"flowvae: note: {run_dir} has no checkpoint.pt (it stopped while writing its first one); "
              f"resuming from best.pt (step {step})", file=sys.stderr, flush=True)  # fmt: skip
    missing = missing_for_resume(ckpt, ema)
    if missing:
        raise CheckpointError(f"{path}: cannot resume: incomplete checkpoint (no {', '.join(missing)})")
    if len(ckpt["ranks"]) != d.world:
        raise ConfigError(
            f"{run_dir} was written by {len(ckpt['ranks'])} process(es); resume it with as many "
            f"(this is {d.world})"
        )
    with _resuming(path, "model"):
        model.load_state_dict(ckpt["model"])
    with _resuming(path, "optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
        _check_optimizer_state(optimizer)
    with _resuming(path, "state"):
        state = TrainState(**{**ckpt["state"], "stopped": ""})
    with _resuming(path, f"ranks[{d.rank}]"):
        mine = ckpt["ranks"][d.rank]
        set_rng_state(mine["rng"])
        state.epoch_elbo_sum, state.epoch_kl_sum, state.epoch_count = mine["epoch_sums"]
        if state.batch == 0:  # best.pt keeps the sums of the epoch it closed; checkpoint.pt has none
            state.epoch_elbo_sum, state.epoch_kl_sum, state.epoch_count = 0.0, 0.0, 0
    return state, ckpt


def _open_run_dir(
    cfg: Config, run_dir: Path, resume: bool, overwrite: bool, overrides: list[str], state: TrainState,
    data: ImageData, precision: str, say: Say,
) -> RunLog:  # fmt: skip
    """Rank 0, once everything is built: the run really starts, from here on the folder holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(run_dir)
    if overwrite and not resume:
        for path in run_files(run_dir):
            path.unlink()
    with writing(run_dir / "config.yaml"):
        save_yaml(cfg, run_dir / "config.yaml", origin_comment(state.origin))
    write_metrics(run_dir, state.history)
    record_invocation(run_dir, resume, overrides, state, precision, cfg)
    return RunLog(run_dir, cfg, data, state.step + 1 if resume else None, say)


def setup(
    cfg: Config, run_dir: Path, resume: bool, overwrite: bool, overrides: list[str], d: distributed.Dist,
    origin: dict[str, str] | None = None, say: Say = say_on_stderr,
) -> _Run:  # fmt: skip
    """Build data, model, optimizer and EMA (restored on resume), then (rank 0) open the run
    directory: nothing is written before, so a bad value fails with an untouched (or no) folder.
    ``origin``: a new run's preset and config file (kept in its state, config.yaml, invocations);
    ``say``: how the run prints its lines (:class:`RunLog`)."""
    from torch.nn.parallel import DistributedDataParallel

    t = cfg.train
    device = distributed.local_device(resolve_device(t.device), d)
    if t.batch_size % d.world:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by {d.world} processes")
    batch_size = t.batch_size // d.world  # per process
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    data = load_data(cfg.data)
    check_for_data(cfg.model, data.shape, len(data.train))
    if len(data.valid) == 0 and t.early_stopping:
        raise ConfigError("train.early_stopping needs a validation split; data.valid_size=0 has none")
    model = _build_model(cfg, data, device, batch_size, resume)
    optimizer = optimizer_for(cfg, model)
    learning_rate(cfg, 0.0)  # an unknown schedule fails here, before anything is written
    state, ckpt = (TrainState(origin=dict(origin or {})), None)
    if resume:
        state, ckpt = _restore(run_dir, model, optimizer, t.ema > 0, d, device)
    # DDP broadcasts rank 0's weights at construction: all ranks start identical
    net = DistributedDataParallel(model) if d.enabled else model
    if t.amp not in typing.get_args(Amp):
        raise ConfigError(f"unknown train.amp {t.amp!r}; use {', '.join(typing.get_args(Amp))}")
    if t.compile:
        net = torch.compile(net)
    ema = EMA(model, t.ema) if t.ema > 0 else None
    if ema is not None and ckpt is not None:
        with _resuming(run_dir / "checkpoint.pt", "ema"):
            ema.model.load_state_dict(ckpt["ema"])
    log = None
    if d.is_main:
        precision = precision_note(t.amp, device.type)
        log = _open_run_dir(cfg, run_dir, resume, overwrite, overrides, state, data, precision, say)
        say(f"training precision: {precision}", None)
        if d.enabled:
            print(
                f"DDP: {d.world} processes x {batch_size} examples = effective batch {t.batch_size}",
                flush=True,
            )
    now = time.perf_counter()
    return _Run(
        cfg, run_dir, d, device, data, model, net, optimizer, ema, state, log, batch_size,
        n_batches=num_batches(math.ceil(data.train.shape[0] / d.world), batch_size),
        started=now - state.seconds, invoked=now, first_step=state.step,
        last_good=state.step if resume else -1,
    )  # fmt: skip


def _finite_weights(run: _Run) -> bool:
    nets = [run.model] + ([run.ema.model] if run.ema is not None else [])
    return all(bool(torch.isfinite(p).all()) for net in nets for p in net.parameters())


def save_checkpoint(run: _Run, path: str = "checkpoint.pt", periodic: bool = False) -> None:
    """Collective (every rank's RNG state and running sums are kept); rank 0 writes ``path``.

    Never with non-finite weights, nor (``periodic``, inside an epoch) in a run of skipped
    updates: a diverging model does not replace a good checkpoint. Every rank decides alike.
    """
    state, d = run.state, run.d
    if not _finite_weights(run) or (periodic and state.consecutive_skips):
        return
    state.seconds = time.perf_counter() - run.started
    t, used = run.cfg.train, (time.perf_counter() - run.invoked) / 60
    state.minutes_left = max(t.max_minutes - used, 0.0) if t.max_minutes else 0.0
    state.steps_left = max(t.max_steps - (state.step - run.first_step), 0) if t.max_steps else 0
    sums = (state.epoch_elbo_sum, state.epoch_kl_sum, state.epoch_count)
    ranks = distributed.all_gather({"rng": rng_state(), "epoch_sums": sums}, d)
    if path == "checkpoint.pt":
        run.last_good = state.step
    if not d.is_main:
        return
    save_atomic(
        {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "ema": run.ema.model.state_dict() if run.ema is not None else None,
            "config": run.cfg.to_dict(), "state": asdict(state), "ranks": ranks,
            "image_shape": list(run.data.shape), "binary": run.data.binary, "world": d.world,
        },
        run.run_dir / path,
    )  # fmt: skip


def _kept(run: _Run) -> str:
    if run.last_good < 0:
        return "no checkpoint was written"
    return f"the last good checkpoint is {run.run_dir / 'checkpoint.pt'} (step {run.last_good})"


def _stop_reason(run: _Run) -> str:
    """Why this invocation stops after the current step (a budget, Ctrl-C), or ``""``."""
    t, state = run.cfg.train, run.state
    if t.max_steps and state.step - run.first_step >= t.max_steps:
        return f"max_steps={t.max_steps}"
    late = bool(t.max_minutes) and time.perf_counter() - run.invoked >= 60 * t.max_minutes
    signum = run.sigint["set"]
    # clocks and signals differ between processes: every rank must take the same decision
    late, ctrl_c, term = distributed.all_reduce_sum(
        [float(late), float(signum == signal.SIGINT), float(signum == signal.SIGTERM)], run.d, run.device
    )
    if ctrl_c or term:
        return INTERRUPTED if ctrl_c else TERMINATED
    return f"max_minutes={t.max_minutes:g}" if late else ""


def _step(run: _Run, x: Tensor) -> dict[str, float]:
    """One update at the current position (lr and KL weight from it), then its bookkeeping:
    counters, the stop after too many consecutive skipped updates, EMA, the epoch's sums."""
    state, cfg = run.state, run.cfg
    p = state.epoch + state.batch / run.n_batches
    state.lr, state.kl_weight = learning_rate(cfg, p, state.horizon), kl_weight(cfg, p)
    out = train_step(run.net, run.optimizer, x.to(run.device), cfg, state.kl_weight, state.lr)
    state.step += 1
    state.batch += 1
    if out["skipped"]:
        state.skipped += 1
        state.epoch_skipped += 1
        state.consecutive_skips += 1
        if state.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingError(
                f"training diverged: {state.consecutive_skips} consecutive non-finite updates "
                f"at step {state.step}; {_kept(run)}"
            )
    else:
        state.consecutive_skips = 0
        if run.ema is not None:
            run.ema.update(run.model, state.step)
    if math.isfinite(out["elbo"]):
        state.epoch_elbo_sum += out["elbo"] * x.shape[0]
        state.epoch_kl_sum += out["kl"] * x.shape[0]
        state.epoch_count += x.shape[0]
    return out


def run_epoch(run: _Run) -> bool:
    """The steps of the current epoch from ``state.batch`` on, with in-epoch checkpoints and the
    budget and Ctrl-C checks after each step. True when the epoch is complete; False when it
    stopped inside (or, by Ctrl-C, at the end of) the epoch: a resume continues there."""
    state, cfg, n = run.state, run.cfg, run.n_batches
    run.bar.set_description(f"epoch {state.epoch + 1}/{cfg.train.epochs}", refresh=False)
    batches = iterate_batches(
        run.data, "train", run.batch_size, shuffle=True, seed=cfg.train.seed,
        epoch=state.epoch, start=state.batch, rank=run.d.rank, world=run.d.world,
    )  # fmt: skip
    for x in batches:
        out = _step(run, x)
        if not run.bar.disable:  # total and ETA: the steps that fit in the budget, at the pace so far
            run.bar.total, eta = _projected_end(run)
            run.bar.set_postfix(elbo=f"{out['elbo']:.2f}", ETA=clock(eta), refresh=False)
            run.bar.update(1)
        every = cfg.train.checkpoint_every_steps
        if every and state.step % every == 0:
            save_checkpoint(run, periodic=True)
        state.stopped = _stop_reason(run)
        if state.stopped in STOP_SIGNALS.values() or (state.stopped and state.batch < n):
            break
    if state.batch < n or state.stopped in STOP_SIGNALS.values():
        return False
    if 2 * state.epoch_skipped > n:  # e.g. one huge step left |w| ~ 1e6: all NaN since
        raise TrainingError(
            f"training diverged: {state.epoch_skipped} of {n} updates of epoch {state.epoch + 1} "
            f"were skipped (non-finite loss or gradient); {_kept(run)}{LR_HINT.format(cfg.train.lr)}"
        )
    return True


def _metrics_row(run: _Run, valid: float) -> dict[str, Any]:
    """The row of :data:`METRICS` after an epoch, or at a budget stop inside one (its epoch then
    fractional: epochs done); the train ELBO and KL are summed over ranks."""
    state = run.state
    epoch = round(state.epoch + state.batch / run.n_batches, 3) if state.batch else state.epoch
    elbo_sum, kl_sum, count = distributed.all_reduce_sum(
        [state.epoch_elbo_sum, state.epoch_kl_sum, float(state.epoch_count)], run.d, run.device
    )
    return {
        "epoch": epoch, "step": state.step, "seconds": round(time.perf_counter() - run.started, 3),
        "train_elbo": elbo_sum / max(count, 1), "valid_elbo": valid, "kl": kl_sum / max(count, 1),
        "lr": state.lr, "kl_weight": state.kl_weight, "skipped": state.skipped,
    }  # fmt: skip


def validate(run: _Run) -> None:
    """The valid ELBO, the divergence stop, the metrics row (logged on rank 0), best.pt, early stopping.

    Every rank evaluates the same weights with the same seed: identical decisions.
    """
    state, cfg = run.state, run.cfg
    valid = evaluate_elbo(run.eval_model, run.data, "valid", cfg)
    if not math.isfinite(valid) and not run.no_valid:
        raise TrainingError(
            f"training diverged: the valid ELBO after epoch {state.epoch} is {valid}; "
            f"{_kept(run)}{LR_HINT.format(cfg.train.lr)}"
        )
    state.history.append(_metrics_row(run, valid))
    improved = valid > state.best_valid or run.no_valid
    if improved:
        state.best_valid, state.best_epoch, state.bad_evals = valid, state.epoch, 0
    elif state.kl_weight >= 1.0:  # not while the KL warms up (as the VampPrior/Sylvester code)
        state.bad_evals += 1
        if cfg.train.early_stopping and state.bad_evals >= cfg.train.early_stopping:
            state.stopped = f"early stopping after {state.bad_evals} evaluations"
    if run.log is not None:
        end, eta = _projected_end(run)
        run.log.add(state.history[-1], state, run.eval_model, eta, end)
    if improved:
        save_checkpoint(run, "best.pt")


def end_of_epoch(run: _Run) -> None:
    """Close a complete epoch: evaluate when due (every ``train.eval_every`` epochs, the last one,
    or before a stop), reset the epoch's running sums, write checkpoint.pt."""
    state, t = run.state, run.cfg.train
    state.epoch, state.batch = state.epoch + 1, 0
    if t.lr_schedule == "cosine-budget":  # this invocation's pace, the same on every rank
        timed = (state.step - run.first_step) / run.n_batches
        seconds = time.perf_counter() - run.invoked
        (seconds,) = distributed.all_reduce_sum([seconds / run.d.world], run.d, run.device)
        state.horizon = budget_horizon(run.cfg, state.epoch, timed, seconds)
    if state.epoch % t.eval_every == 0 or state.epoch == t.epochs or state.stopped:
        validate(run)
    state.epoch_elbo_sum = state.epoch_kl_sum = 0.0
    state.epoch_count = state.epoch_skipped = 0
    save_checkpoint(run)


def _projected_end(run: _Run) -> tuple[int, float]:
    """Where this invocation is expected to stop, in steps of the whole run, and in how many
    seconds: at ``train.epochs``, sooner at ``train.max_steps``, or at the step that the time
    left of ``train.max_minutes`` reaches at this invocation's pace (evaluations included).
    Seconds are NaN before the first step of this invocation."""
    state, t = run.state, run.cfg.train
    position = state.epoch * run.n_batches + state.batch
    end = t.epochs * run.n_batches
    done = state.step - run.first_step
    if t.max_steps:
        end = min(end, position + t.max_steps - done)
    elapsed = time.perf_counter() - run.invoked
    if done <= 0 or elapsed <= 0:
        return end, math.nan
    rate = done / elapsed  # steps per second
    if t.max_minutes:
        end = min(end, position + int(rate * max(60 * t.max_minutes - elapsed, 0.0)))
    return end, (end - position) / rate


def _progress_bar(run: _Run, progress: bool) -> Any:
    """A bar over this invocation's steps on a terminal (its total: :func:`_projected_end`); into a
    log file (stderr not a terminal) or with ``progress`` off, none: the evaluation lines tell."""
    state = run.state
    enabled = progress and run.d.is_main and sys.stderr.isatty()
    position = state.epoch * run.n_batches + state.batch
    return progress_bar(_projected_end(run)[0], "", enabled, unit="steps", initial=position, eta=False)


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    origin: dict[str, str] | None = None,
    say: Say = say_on_stderr,
) -> TrainState:
    """Train (or resume) the run in ``run_dir``; returns the final state.

    Nothing is written before the data and model are built, so a bad value fails with an
    untouched (or no) folder. ``overwrite`` replaces a folder's run files; ``overrides`` are only
    recorded in ``invocations.jsonl``; so is ``origin`` (``{"preset": NAME, "config_file": PATH,
    ...}``: where a new run's config came from), in ``config.yaml`` too. Rank 0 prints the
    start-up lines and one line per evaluation through ``say`` (default: on stderr); ``progress``
    adds a bar where stderr is a terminal. Ctrl-C writes a checkpoint and raises
    :class:`Interrupted`. A checkpoint is never written with non-finite weights, nor after a
    non-finite valid ELBO.

    Under torchrun every process runs this function: ``train.batch_size`` is the effective
    (global) batch, split evenly over the processes; rank 0 alone writes the run directory.
    The process group is destroyed however training ends: a process that exits with it alive
    can abort in gloo's destructors ("terminate called without an active exception").
    """
    run_dir = Path(run_dir)
    if not resume:
        check_new_run_dir(run_dir, overwrite)
    d = distributed.setup(resolve_device(cfg.train.device))
    try:
        state = _train_in_group(cfg, run_dir, resume, progress, overwrite, overrides, d, origin, say)
        # every rank done with the group's traffic before any tears it down: a rank that
        # destroyed the group while another still wrote its last checkpoint aborted in gloo
        distributed.barrier(d)
        return state
    finally:
        distributed.cleanup(d)


def _train_in_group(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    progress: bool,
    overwrite: bool,
    overrides: list[str] | None,
    d: distributed.Dist,
    origin: dict[str, str] | None = None,
    say: Say = say_on_stderr,
) -> TrainState:
    """Set up, run epochs (each closed by :func:`end_of_epoch`) until done or stopped, then, for a
    budget stop inside an epoch, an evaluation (best.pt and the last metrics row describe the
    weights the run ends with) and a checkpoint; raises :class:`Interrupted` after Ctrl-C."""
    run = setup(cfg, run_dir, resume, overwrite, overrides or [], d, origin, say)
    state = run.state
    run.bar = _progress_bar(run, progress)
    run.sigint, previous_handlers = _install_stop_handlers()
    try:
        while state.epoch < cfg.train.epochs and not state.stopped and run_epoch(run):
            end_of_epoch(run)
        if state.batch:  # a budget stop or Ctrl-C inside an epoch
            if state.stopped not in STOP_SIGNALS.values():  # a budget: evaluate the final weights
                validate(run)
            save_checkpoint(run)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        run.bar.close()
        if run.log is not None:
            run.log.close("KILLED" if state.stopped in STOP_SIGNALS.values() else "FINISHED")
    if state.stopped in STOP_SIGNALS.values():
        saved = f"wrote {run_dir / 'checkpoint.pt'}" if run.last_good == state.step else _kept(run)
        kept = budget_note(cfg.train, state)
        signum = next(k for k, v in STOP_SIGNALS.items() if v == state.stopped)
        by = "" if signum == signal.SIGINT else " by SIGTERM"
        stopped = f"stopped{by} at step {state.step}; {saved}; continue with"
        raise Interrupted(
            f"{stopped} fit(cfg, {str(run_dir)!r}, resume=True){kept}",
            cli=f"{stopped} --resume {run_dir}{kept}",
            code=128 + signum,
        )
    return state


__all__ = [
    "EMA", "Interrupted", "TrainState", "TrainingError", "check_new_run_dir", "evaluate_elbo", "kl_weight",
    "learning_rate", "new_run_dir", "prepare_run", "summary_line", "train", "train_step", "training_loss",
]  # fmt: skip
