"""A run directory and its files: creating one (never over another run), ``config.yaml``,
``metrics.csv``, ``invocations.jsonl``, TensorBoard events and image grids (:class:`RunLog`), the
run's persistent :class:`TrainState`, and the lines a run prints. :mod:`flowvae.train` runs the
loop that fills it.

A run directory holds ``config.yaml`` (fully resolved), ``metrics.csv`` (a row per evaluation),
TensorBoard event files, ``checkpoint.pt`` (latest), ``best.pt`` (best valid ELBO),
``samples.png``, ``reconstructions.png`` and ``invocations.jsonl`` (one line per invocation).
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import GROUP_FILE, CheckpointError, load_checkpoint
from .config import Config, ConfigError, TrainConfig, from_dict, unfinished_schedule
from .data import ImageData
from .files import writing
from .images import make_grid, save_grid
from .latents import reconstruct, sample
from .numerics import bits_per_dim
from .tracking import MlflowTracker

METRICS = ["epoch", "step", "seconds", "train_elbo", "valid_elbo", "kl", "lr", "kl_weight", "skipped"]


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, bad run directory). One-line message, in the terms of the
    Python API (``fit(..., overwrite=True)``); ``cli`` is the same advice in the command line's
    (``--overwrite``), which ``flowvae`` prints instead."""

    def __init__(self, message: str, cli: str = ""):
        super().__init__(message)
        self.cli = cli or message


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done inside the current epoch
    step: int = 0
    seconds: float = 0.0
    best_valid: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    skipped: int = 0
    consecutive_skips: int = 0
    epoch_skipped: int = 0  # skipped updates of the current epoch
    epoch_elbo_sum: float = 0.0  # running sums of the current epoch's train ELBO and KL
    epoch_kl_sum: float = 0.0
    epoch_count: int = 0
    lr: float = 0.0  # of the last step
    horizon: float = 0.0  # cosine-budget: the epoch its cosine ends (0: train.epochs)
    kl_weight: float = 0.0
    stopped: str = ""
    # of the invocation that wrote the checkpoint: its budget left (0: none given, or none left);
    # a resume after Ctrl-C or a kill keeps it (prepare_run), unless told otherwise
    minutes_left: float = 0.0
    steps_left: int = 0
    origin: dict[str, str] = field(default_factory=dict)  # the preset and --config file it started from
    history: list[dict[str, Any]] = field(default_factory=list)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` whole, through a temp file: a failed write leaves the old file."""
    tmp = run_dir / ".metrics.csv.tmp"
    with writing(run_dir / "metrics.csv"):
        try:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRICS)
                writer.writeheader()
                writer.writerows(rows)
            tmp.replace(run_dir / "metrics.csv")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


RESUMABLE_OVERRIDES = {"train.epochs", "train.max_minutes", "train.max_steps", "train.early_stopping"}


BUDGETS = ("max_minutes", "max_steps")  # per invocation; a resume keeps what an interrupted one left
BUDGET_LEFT = {"max_minutes": "minutes_left", "max_steps": "steps_left"}  # TrainState's fields


RUN_FILES = (
    "config.yaml", "metrics.csv", "checkpoint.pt", "best.pt", "samples.png", "reconstructions.png",
    "invocations.jsonl",
)  # fmt: skip


def run_files(run_dir: Path) -> list[Path]:
    """The run artifacts in ``run_dir``: what starting a new run there would overwrite."""
    if not run_dir.is_dir():
        return []
    names = [p for p in run_dir.iterdir() if p.name in RUN_FILES or p.name.startswith("events.out.tfevents")]
    return sorted(names)


def check_new_run_dir(run_dir: Path, overwrite: bool = False) -> None:
    """A new run goes to a missing or empty folder; one holding run files only with ``overwrite``."""
    if run_dir.exists() and not run_dir.is_dir():
        problem = f"{run_dir}: exists and is not a directory; choose another"
        raise TrainingError(f"{problem} run_dir", cli=f"{problem} --run-dir")
    found = run_files(run_dir)
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise TrainingError(
            f"{run_dir} already holds a run ({names}); fit(cfg, {str(run_dir)!r}, resume=True) continues "
            "it, fit(..., overwrite=True) replaces it, or choose another run_dir",
            cli=f"{run_dir} already holds a run ({names}); use --resume {run_dir} to continue it, "
            "--overwrite to replace it, or another --run-dir",
        )  # fmt: skip


def new_run_dir(parent: Path, stem: str) -> Path:
    """Create ``parent/STEM-YYYYmmdd-HHMMSS`` atomically (``mkdir`` fails if it exists), with
    ``-2``, ``-3``... when taken: two runs started in the same second never share a folder."""
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in itertools.count(1):
        path = parent / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def resume_checkpoint(run_dir: Path) -> Path:
    """What a resume continues from: ``checkpoint.pt``, or ``best.pt`` where there is none (the
    run was killed while it wrote its first checkpoint.pt, just after its first best.pt): a
    best.pt holds everything a resume needs, as of its evaluation. Neither: ``checkpoint.pt``
    (whose absence the loader reports)."""
    latest, best = run_dir / "checkpoint.pt", run_dir / "best.pt"
    held = sorted(p.parent.name for p in run_dir.glob("*/checkpoint.pt")) if run_dir.is_dir() else []
    if not latest.exists() and not best.exists() and held and not (run_dir / GROUP_FILE).exists():
        raise CheckpointError(
            f"{run_dir} holds no run of its own but {', '.join(held[:3])}{', ...' if len(held) > 3 else ''} "
            f"do, and no {GROUP_FILE} (so it is not a group): resume each of them, e.g. {run_dir / held[0]}"
        )
    return best if best.is_file() and not latest.exists() else latest


def prepare_run(
    cfg: Config | None, run_dir: Path, resume: bool, overrides: list[str], overwrite: bool = False
) -> Config:
    """Check the run directory before anything is written.

    A new run: ``cfg``, if ``run_dir`` holds no run files (or ``overwrite``). A resume: the saved
    config with the budgets (``train.max_minutes``, ``train.max_steps``, which count per
    invocation) set to what the last invocation left of them (:func:`budget_left`), then
    ``overrides`` (only :data:`RESUMABLE_OVERRIDES`; ``train.max_minutes=0``: no budget).
    """
    from .config import apply_overrides, parse_override

    if resume:
        ckpt = load_checkpoint(resume_checkpoint(run_dir))
        cfg = from_dict(ckpt["config"])
        for name, left in budget_left(ckpt.get("state") or {}, cfg.train.epochs).items():
            setattr(cfg.train, name, left)
        for text in overrides:
            key, _ = parse_override(text)
            if key not in RESUMABLE_OVERRIDES:
                raise ConfigError(
                    f"cannot change {key} when resuming; allowed: {', '.join(sorted(RESUMABLE_OVERRIDES))}"
                )
        return apply_overrides(cfg, overrides)
    check_new_run_dir(run_dir, overwrite)
    assert cfg is not None
    return cfg


def budget_left(state: dict[str, Any], epochs: int) -> dict[str, float]:
    """What a resume's budgets start from, by key (``max_minutes``, ``max_steps``; 0: none): the
    budget left by the invocation that wrote the checkpoint if it did not end by itself (Ctrl-C,
    a kill), so that ``--resume`` after Ctrl-C finishes the run it interrupted; none after a
    budget stop, early stopping or its ``epochs`` (a resume then runs on to ``train.epochs``)."""
    default = TrainConfig()
    stopped = str(state.get("stopped", ""))
    if stopped.startswith((*BUDGETS, "early stopping")) or state.get("epoch", 0) >= epochs:  # it ended
        return {name: getattr(default, name) for name in BUDGETS}
    return {name: type(getattr(default, name))(state.get(left) or 0) for name, left in BUDGET_LEFT.items()}


def budget_note(t: TrainConfig, state: TrainState) -> str:
    """`` (a resume keeps the 2.4 minutes left of train.max_minutes=4 ...)``: what a resume of an interrupted
    invocation carries over (:func:`budget_left`), or ``""`` when it had no budget."""
    minutes = f"{state.minutes_left:.3g} minutes left of train.max_minutes={t.max_minutes:g}"
    left = [minutes] * bool(t.max_minutes)
    left += [f"{state.steps_left} steps left of train.max_steps={t.max_steps}"] * bool(t.max_steps)
    return f" (a resume keeps the {' and the '.join(left)}; a budget override replaces it)" if left else ""


def origin_comment(origin: dict[str, str]) -> str:
    """The first lines of ``config.yaml``: where its values came from (the preset, the config file)."""
    parts = [f"preset {origin['preset']}"] if origin.get("preset") else []
    if origin.get("config_file"):
        parts.append(f"config file {origin['config_file']} (sha256 {origin.get('config_sha256', '?')[:16]})")
    source = f"started from {' and '.join(parts)}, then overrides (invocations.jsonl)" if parts else ""
    return "\n".join(filter(None, [source, "every key, resolved: the run's whole configuration"]))


def record_invocation(
    run_dir: Path, resume: bool, overrides: list[str], state: TrainState, precision: str, cfg: Config
) -> None:
    """Append this invocation (time, resume or not, its overrides, where it starts, its budgets,
    the training precision it used; a new run: the preset and config file it started from) to
    ``invocations.jsonl``: a resume's budgets hold for that invocation only, and a resume on
    another machine may resolve ``train.amp=auto`` differently."""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resume": resume,
        "overrides": list(overrides), "epoch": state.epoch, "step": state.step, "precision": precision,
        **{name: getattr(cfg.train, name) for name in BUDGETS}, **({} if resume else state.origin),
    }  # fmt: skip
    with writing(run_dir / "invocations.jsonl"), open(run_dir / "invocations.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def _quiet_writer_threads(args: Any, previous: Any) -> None:
    """``threading.excepthook``: TensorBoard's writer thread dies on a failed write (full disk)
    and the writer raises that error again at its next call, where RunLog names the file; the
    thread's own traceback on stderr is left out. Any other thread: the previous hook."""
    if not (type(args.thread).__module__.startswith("tensorboard.") and issubclass(args.exc_type, OSError)):
        previous(args)


Say = Callable[[str, "dict[str, float] | None"], None]  # a run's printed line, with where it is


def say_on_stderr(text: str, where: dict[str, float] | None = None) -> None:
    """How a run prints its lines (the start-up lines, one per evaluation): on stderr, above the
    bar on a terminal. A group's member hands them to the group's process instead (``say``)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


class RunLog:
    """Rank 0's record of each evaluation row: ``metrics.csv`` (rewritten whole), TensorBoard
    (scalars, valid bits/dim for non-binary data, the sample and reconstruction grids), the PNGs,
    and one evaluation line (:func:`evaluation_line`) through ``say``, with the step, the
    projected end step and the ETA (default: on stderr, above the bar on a terminal, and what a
    log file gets instead of the bar)."""

    def __init__(
        self, run_dir: Path, cfg: Config, data: ImageData, purge_step: int | None, say: Say = say_on_stderr
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.cfg, self.data, self.say = run_dir, cfg, data, say
        # TensorBoard writes in a thread of its own: its errors surface at a later call, unnamed
        self.events = run_dir / "events.out.tfevents.*"
        if getattr(threading.excepthook, "func", None) is not _quiet_writer_threads:
            threading.excepthook = functools.partial(_quiet_writer_threads, previous=threading.excepthook)
        with writing(self.events):
            # purge_step: TensorBoard drops what a killed invocation logged after the checkpoint
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        mlflow = cfg.train.track == "mlflow"
        self.tracker = MlflowTracker.open(run_dir, cfg, purge_step is not None) if mlflow else None

    def add(self, row: dict[str, Any], state: TrainState, model: nn.Module, eta: float, end: int = 0) -> None:
        """Log ``row``, the last of ``state.history``; ``model`` draws the images; ``eta``:
        seconds this invocation is expected to go on (NaN: unknown), ``end``: the step it is
        expected to stop at."""
        write_metrics(self.run_dir, state.history)
        step = row["step"]
        with writing(self.events):
            for key in ("train_elbo", "valid_elbo", "kl", "lr", "kl_weight"):
                self.writer.add_scalar(key, row[key], step)
            if not self.data.binary:
                bpd = bits_per_dim(-row["valid_elbo"], math.prod(self.data.shape))
                self.writer.add_scalar("valid_bits_per_dim", bpd, step)
        for name, grid in save_images(model, self.data, self.run_dir, self.cfg.eval.seed).items():
            with writing(self.events):
                self.writer.add_image(name, grid, step, dataformats="HWC")
        if self.tracker is not None:
            numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)}
            self.tracker.log_metrics(numbers, step)
            self.tracker.log_artifacts([self.run_dir / f"{n}.png" for n in ("samples", "reconstructions")])
        where = {"step": row["step"], "end": end, "eta": eta}
        self.say(evaluation_line(row, state, self.cfg.train.epochs, eta), where)

    def close(self, status: str = "FINISHED") -> None:
        """``status``: the MLflow run's (FINISHED, or KILLED after Ctrl-C: a resume continues it)."""
        with writing(self.events):
            self.writer.close()
        if self.tracker is not None:
            self.tracker.close(status)


@torch.no_grad()
def save_images(
    model: nn.Module, data: ImageData, run_dir: Path, seed: int, n: int = 64
) -> dict[str, np.ndarray]:
    """samples.png (means of p(x|z), z from the prior: :func:`~flowvae.latents.sample`) and
    reconstructions.png (pairs x, x̂ of the first valid images at q(z|x)'s mean:
    :func:`~flowvae.latents.reconstruct`, what ``flowvae.encode`` then ``flowvae.decode`` give).

    Returns both grids as uint8 ``(H, W, C)`` arrays (for TensorBoard), keyed by name.
    """
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # an autoregressive decoder draws its pixels from torch's generator
        samples = sample(model, n, seed=seed).cpu()
        x = (data.valid if len(data.valid) else data.train)[: n // 2].to(device)
        rec = reconstruct(model, x)
        pairs = torch.stack([x.view_as(rec), rec], 1).view(-1, *rec.shape[1:]).cpu()  # x, x̂ side by side
    grids = {}
    for name, images in {"samples": samples, "reconstructions": pairs}.items():
        save_grid(images, run_dir / f"{name}.png", nrow=8)
        grids[name] = make_grid(images, nrow=8)
    return grids


def clock(seconds: float) -> str:
    """``h:mm:ss``; ``?`` when unknown (NaN)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def evaluation_line(row: dict[str, Any], state: TrainState, epochs: int, eta: float = math.nan) -> str:
    """``epoch 3/30  step 1170  train ELBO -98.12  valid ELBO -97.50  KL 25.31  best -97.50 (epoch 3)
    elapsed 0:01:02  ETA 0:09:18``: one line per evaluation, no carriage return (a log file reads
    it as it is); ``eta`` in seconds (NaN: ``?``)."""
    return (
        f"epoch {row['epoch']}/{epochs}  step {row['step']}  train ELBO {row['train_elbo']:.2f}  valid ELBO "
        f"{row['valid_elbo']:.2f}  KL {row['kl']:.2f}  best {state.best_valid:.2f} (epoch {state.best_epoch})"
        f"  elapsed {clock(row['seconds'])}  ETA {clock(eta)}"
    )


def schedule_warning(state: TrainState, t: TrainConfig) -> str:
    """What a run that ended before its schedule did says at the end of training (``""`` if
    nothing is unfinished): which parts (:func:`~flowvae.config.unfinished_schedule`) and why."""
    parts = unfinished_schedule(t, state.kl_weight, state.lr)
    if not parts:
        return ""
    why = f"stopped ({state.stopped})" if state.stopped else "ended"
    return (
        f"training {why} at step {state.step} before the end of its {' and its '.join(parts)}: its "
        "numbers are of a model that far into its schedule, not comparable with runs that finished theirs"
    )


def summary_line(state: TrainState, run_dir: Path, binary: bool, dims: int) -> str:
    if state.best_epoch < 0:
        best = "no evaluation yet"
    elif math.isnan(state.best_valid):
        best = f"no validation split: best.pt holds the weights of epoch {state.best_epoch}"
    elif binary:
        best = f"best valid ELBO {state.best_valid:.2f} nats (epoch {state.best_epoch})"
    else:
        best = (
            f"best valid ELBO {state.best_valid:.2f} nats = "
            f"{bits_per_dim(-state.best_valid, dims):.3f} bits/dim (epoch {state.best_epoch})"
        )
    stop = f"; stopped: {state.stopped}" if state.stopped else ""
    return f"{best}; {state.step} steps, {state.skipped} skipped{stop}; run dir: {run_dir}"
