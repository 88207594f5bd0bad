"""The command line's argument types and flag builders: every flag is checked when parsed, in one
line, before a file is read or written; option dataclasses become flags field by field (their
defaults and help written once, in the dataclass); the flags every subcommand shares are added by
one helper.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import typing
from pathlib import Path

import torch

from .config import EVAL_SEED, ConfigError, check_value
from .data import SPLITS


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one ``--help`` away), exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(low: int) -> typing.Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def number(low: float, high: float = math.inf, open_low: bool = True) -> typing.Callable[[str], float]:
    """A finite float in (low, high) (``open_low=False``: [low, high))."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = math.isfinite(value) and (value > low if open_low else value >= low) and value < high
        if not ok:
            lo = f"({low}" if open_low else f"[{low}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number in {lo}, {high})")
        return value

    return parse


POSITIVE, NON_NEGATIVE = integer(1), integer(0)


def device(text: str) -> str:
    """cpu, cuda, cuda:N or auto; CUDA must be available (said here, not as a checkpoint error)."""
    try:
        check_value("train.device", text)  # the config key's syntax
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda, cuda:N or auto") from None
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            problem = "CUDA is not available on this machine (use --device cpu)"
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
        if int(text.partition(":")[2] or 0) >= torch.cuda.device_count():
            problem = f"this machine has {torch.cuda.device_count()} CUDA devices"
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


def run_dir(text: str) -> str:
    """An existing run folder (eval, sample, gaps, train --resume)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: run directory not found")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file, not a run directory")
    return text


def new_dir(text: str) -> str:
    """A folder to write into: absent (created later) or a folder, never a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is a file, not a folder")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
    return text


def image_out(text: str) -> str:
    """An image file in an existing folder, its format known from the suffix (e.g. .png)."""
    from PIL import Image

    path = Path(text)
    if path.suffix.lower() not in Image.registered_extensions():
        raise argparse.ArgumentTypeError(f"{text}: unknown image format {path.suffix!r}; use a .png name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {path.parent} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name such as samples.png")
    return text


def save_new(grid, folder: Path, stem: str, suffix: str) -> Path:
    """Save the image ``grid`` (uint8 (H, W, C)) as ``folder/STEM-N.SUFFIX`` with the first free N,
    created exclusively once the image is encoded: a default output never overwrites the run's
    own ``samples.png`` nor an earlier one, and a failed draw or write leaves no empty file."""
    from .images import save_array

    for i in itertools.count(1):
        path = folder / f"{stem}-{i}{suffix}"
        try:
            save_array(grid, path, new=True)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: file not found")
    return text


def option_flags(
    group, options: type, *, prefix: str = "", names: dict[str, str] | None = None,
    skip: tuple[str, ...] = (), defaults: bool = False, default_text: str = "",
) -> None:  # fmt: skip
    """One flag per field of the dataclass ``options`` (``--PREFIXNAME``, dest ``PREFIX_NAME``):
    its type (ints >= 1, floats in the field's ``range``, strings in its ``choices``), help and
    default from the field. ``names`` renames flags; ``defaults=False`` leaves unset flags None
    (the library fills them), else the field's default. ``default_text``: what the help says the
    default is, ``{name}`` standing for the field (default: the field's default)."""
    for f in dataclasses.fields(options):
        if f.name in skip:
            continue
        meta = f.metadata
        flag = (names or {}).get(f.name) or f"--{prefix}{f.name.replace('_', '-')}"
        kwargs: dict[str, typing.Any] = {"dest": f"{prefix.replace('-', '_')}{f.name}"}
        if "choices" in meta:
            kwargs["choices"] = list(meta["choices"])
        elif isinstance(f.default, bool):
            raise TypeError(f"{options.__name__}.{f.name}: a bool option needs its own flag")
        elif isinstance(f.default, int):
            kwargs["type"] = POSITIVE
        elif isinstance(f.default, float):
            low, high = meta.get("range", (0.0, None))
            kwargs["type"] = number(low, math.inf if high is None else high)
        kwargs["default"] = f.default if defaults else None
        shown = default_text.format(name=f.name) if default_text else f.default
        kwargs["help"] = f"{meta.get('help', f.name)} (default: {shown})"
        group.add_argument(flag, **kwargs)


def common_flags(p: argparse.ArgumentParser, *names: str, seed: int = EVAL_SEED, what: str = "") -> None:
    """The flags several subcommands share, each written once: ``checkpoint``, ``seed``,
    ``split``, ``device``, ``threads``, ``json``, ``no-progress``, ``no-cache``."""
    specs: dict[str, tuple[str, dict[str, typing.Any]]] = {
        "checkpoint": (
            "--checkpoint",
            {
                "default": "best",
                "choices": ["best", "latest"],
                "help": "best: best valid ELBO (best.pt); latest: last checkpoint (default: best)",
            },
        ),
        "seed": ("--seed", {"type": int, "default": seed, "help": f"seed of {what} (default: {seed})"}),
        "split": (
            "--split",
            {"default": "test", "choices": list(SPLITS), "help": "data split (default: test)"},
        ),
        "device": (
            "--device",
            {"type": device, "default": "cpu", "help": "cpu, cuda, cuda:N or auto (default: cpu)"},
        ),
        "threads": (
            "--threads",
            {
                "type": NON_NEGATIVE,
                "default": 0,
                "help": "torch intra-op threads (default: 0, torch's choice)",
            },
        ),
        "json": (
            "--json",
            {"action": "store_true", "help": "print exactly one JSON object (default: readable text)"},
        ),
        "no-progress": (
            "--no-progress",
            {"action": "store_true", "help": "no progress and ETA on stderr (default: shown)"},
        ),
        "no-cache": (
            "--no-cache",
            {
                "action": "store_true",
                "help": "recompute even if RUN_DIR/eval-cache holds it (default: use it)",
            },
        ),
    }
    for name in names:
        flag, kwargs = specs[name]
        p.add_argument(flag, **kwargs)


def chosen(args: argparse.Namespace, options: type, prefix: str = "") -> dict[str, typing.Any]:
    """The fields of ``options`` that were given as flags (see :func:`option_flags`)."""
    values = {f.name: getattr(args, f"{prefix}{f.name}", None) for f in dataclasses.fields(options)}
    return {k: v for k, v in values.items() if v is not None}
