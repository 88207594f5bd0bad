"""Checkpoints: one dict per file, written atomically; loading a trained run back.

A checkpoint holds only tensors and plain Python data (dicts, lists, tuples, str, numbers), so
it is read with ``torch.load(weights_only=True)``: a crafted file cannot run code, it is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import secrets
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .config import Config, ConfigError, from_dict
from .files import writing
from .model import build_model


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint / run directory. One-line message."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write with torch.save to a temp file in the same folder, fsync, then rename.

    A kill at any moment leaves either the old file or the new one, never a torn file; a failed
    write (full disk) leaves the old file and no temp file, and raises an ``OSError`` naming ``path``.
    """
    path = Path(path)
    with writing(path, torch_save=True):
        # not mkstemp (mode 0600): the file gets the mode of the run's other files
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


TEMP_PREFIXES = (".checkpoint.pt.", ".best.pt.", ".metrics.csv.")


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the temp files a kill during :func:`save_atomic` (or a metrics write) left behind."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.iterdir() if p.is_file() and p.name.startswith(TEMP_PREFIXES)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


REQUIRED = ("model", "config", "image_shape", "binary")


def _numpy_array_globals() -> list[Any]:
    """What unpickling a numpy array needs, nothing more: checkpoints written before RNG states
    were stored as tensors hold numpy's RNG key array (uint32)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(np.uint32))] if hasattr(np, "dtypes") else []
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict; only tensors and plain data are accepted (never code).

    Raises :class:`CheckpointError` (one line) for a missing, torn, foreign or unsafe file, or one
    that lacks the keys every checkpoint has.
    """
    return read_checkpoint(path, map_location)[0]


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], str]:
    """:func:`load_checkpoint` and the SHA-256 of the very bytes it was loaded from (the file is
    read once: a training process replacing it meanwhile cannot pair new bytes with old weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refused: it holds objects other than tensors and plain data "
                "(a checkpoint is never allowed to run code)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (UnpicklingError)") from None
    except Exception as e:  # torch raises several types for torn or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a flowvae checkpoint (a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    return ckpt, digest


GROUP_FILE = "group.json"  # marks a folder of runs that differ only in train.seed (flowvae.groups)


CHECKPOINT_FILES = {"best": "best.pt", "latest": "checkpoint.pt"}  # which checkpoint -> its file


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    names = CHECKPOINT_FILES
    if which not in names:
        raise CheckpointError(f"unknown checkpoint {which!r}; use best or latest")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    if (run_dir / GROUP_FILE).is_file() and not (run_dir / names[which]).exists():
        raise CheckpointError(
            f"{run_dir}: a group of runs (one per training seed), not one run; give a member, e.g. "
            f"{run_dir / 'seed-0'}"
        )
    if which == "best" and not (run_dir / names[which]).exists() and (run_dir / names["latest"]).exists():
        raise CheckpointError(
            f"{run_dir}: no best.pt yet (the run stopped before its first evaluation); "
            "use the latest checkpoint"
        )
    return run_dir / names[which]


class Run(NamedTuple):
    """A trained run, loaded: its resolved config, its model (in eval mode), the raw checkpoint
    and the SHA-256 of the checkpoint file's bytes that were loaded."""

    config: Config
    model: nn.Module
    checkpoint: dict[str, Any]
    digest: str


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run; its EMA weights when the run kept them (those are evaluated).

    Arguments:
        run_dir: a folder written by ``flowvae train``.
        which: ``best`` (best validation ELBO) or ``latest``.
        device: where the model goes.

    Returns:
        :class:`Run` ``(config, model, checkpoint, digest)``; ``run.config.data`` says which data and
        split the run was trained on (``flowvae.load_data(run.config.data)`` loads it).
    """
    path = checkpoint_path(run_dir, which)
    ckpt, digest = read_checkpoint(path, map_location=device)
    try:
        cfg = from_dict(ckpt["config"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{run_dir}: checkpoint has no valid config ({e})") from None
    model = build_model(cfg.model, tuple(ckpt["image_shape"]), ckpt["binary"]).to(device)
    try:
        model.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:  # missing / mis-shaped tensors
        raise CheckpointError(f"{path}: incomplete checkpoint (weights do not fit its config: "
                              f"{str(e).splitlines()[0][:120]})") from None
    except ValueError as e:  # tensors that fit but contradict the config (an autoregressive mask)
        raise CheckpointError(f"{path}: {e}") from None
    model.eval()
    return Run(cfg, model, ckpt, digest)


class TrainedTo(NamedTuple):
    """Which weights a result scored and how far their run had got: the file, the epoch (fractional
    after a stop inside one) and the step it was written at, and ``unfinished``: ``""`` when the
    run has ended (its ``train.epochs``, early stopping or a budget), else why not (interrupted;
    no end recorded: still training, or killed)."""

    file: str
    epoch: float
    step: int
    unfinished: str

    def describe(self) -> str:
        """``best.pt of epoch 12 (step 4680)``, and the run's state when it is unfinished."""
        epoch = f"{self.epoch:g}" if self.epoch >= 0 else "?"
        return f"{self.file} of epoch {epoch} (step {self.step})" + (
            f"; the run is unfinished: {self.unfinished}" if self.unfinished else ""
        )

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "epoch": self.epoch, "step": self.step,
                "unfinished": self.unfinished or None}  # fmt: skip


def _state_of(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state`` without reading its weights (memory-mapped); ``{}`` if unreadable."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, torn or being replaced: nothing to say about the run's end
        return {}
    return ckpt.get("state") or {} if isinstance(ckpt, dict) else {}


def trained_to(run_dir: str | Path, run: Run, which: str = "best") -> TrainedTo:
    """How far the weights of ``run`` (loaded from ``run_dir``'s ``which`` checkpoint) were
    trained, and whether the run has ended (read from its latest ``checkpoint.pt``, which a
    running training keeps replacing)."""
    state = run.checkpoint.get("state") or {}
    rows = [r for r in state.get("history") or [] if r.get("step") == state.get("step")]
    epoch = float(rows[-1]["epoch"]) if rows else float(state.get("epoch", -1))
    latest = _state_of(Path(run_dir) / CHECKPOINT_FILES["latest"]) or state
    stopped, done, epochs = str(latest.get("stopped", "")), latest.get("epoch", 0), run.config.train.epochs
    at = f"at step {latest.get('step', '?')}, epoch {done} of {epochs}"
    if done >= epochs or stopped.startswith(("early stopping", "max_minutes", "max_steps")):
        unfinished = ""
    elif stopped:
        unfinished = f"{stopped} {at}; resume it to finish"
    else:
        unfinished = f"no end recorded {at} (still training, or killed)"
    return TrainedTo(CHECKPOINT_FILES[which], epoch, int(state.get("step", -1)), unfinished)
