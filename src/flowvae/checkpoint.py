"""Checkpoints: one dict per file, written atomically; loading a trained run back."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .config import Config, ConfigError, from_dict
from .model import build_model


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint / run directory. One-line message."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write with torch.save to a temp file in the same folder, fsync, then rename.

    A kill at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for torn or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    names = {"best": "best.pt", "latest": "checkpoint.pt"}
    if which not in names:
        raise CheckpointError(f"unknown checkpoint {which!r}; use best or latest")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    if which == "best" and not (run_dir / names[which]).exists() and (run_dir / names["latest"]).exists():
        raise CheckpointError(
            f"{run_dir}: no best.pt yet (the run stopped before its first evaluation); "
            "use --checkpoint latest"
        )
    return run_dir / names[which]


class Run(NamedTuple):
    """A trained run, loaded: its resolved config, its model (in eval mode) and the raw checkpoint."""

    config: Config
    model: nn.Module
    checkpoint: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run; its EMA weights when the run kept them (those are evaluated).

    Arguments:
        run_dir: a folder written by ``flowvae train``.
        which: ``best`` (best validation ELBO) or ``latest``.
        device: where the model goes.

    Returns:
        :class:`Run` ``(config, model, checkpoint)``; ``run.config.data`` says which data and
        split the run was trained on (``flowvae.load_data(run.config.data)`` loads it).
    """
    ckpt = load_checkpoint(checkpoint_path(run_dir, which), map_location=device)
    try:
        cfg = from_dict(ckpt["config"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{run_dir}: checkpoint has no valid config ({e})") from None
    model = build_model(cfg.model, tuple(ckpt["image_shape"]), ckpt["binary"]).to(device)
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
    model.eval()
    return Run(cfg, model, ckpt)
