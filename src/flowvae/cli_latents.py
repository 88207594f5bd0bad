"""The after-training subcommands (``encode``, ``interpolate``, ``traverse``, ``layers``,
``reconstruct``): each parses its flags and calls :mod:`flowvae.latents`; ``cli.py`` registers
them (:data:`PARSERS`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Run, load_run
from .cliargs import NON_NEGATIVE, POSITIVE, common_flags, image_out, number, run_dir, save_new
from .config import ConfigError
from .data import EvaluationSet, evaluation_images, load_data
from .files import writing
from .images import load_images, make_grid, save_array
from .latents import PATHS, SPACES, encode, interpolate, latent_shapes, reconstruct, reconstruct_by_layers
from .latents import traverse as traverse_images

RUN_DIR_HELP = "the run folder (written by `flowvae train`)"


def _at_least_two(text: str) -> int:
    value = POSITIVE(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} must be >= 2")
    return value


def dims(text: str) -> list[int]:
    """``0-9``, ``3`` or ``0,4,7``: latent dimensions (checked against the model once it is loaded)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            out += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a range 0-9, a number, or a list 0,4,7") from None
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: an empty range")
    return out


def npz_out(text: str) -> str:
    """An ``.npz`` file in an existing folder."""
    path = Path(text)
    if path.suffix != ".npz":
        raise argparse.ArgumentTypeError(f"{text}: give a name ending in .npz")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {path.parent} does not exist")
    return text


def _loaded(args: argparse.Namespace) -> Run:
    torch.manual_seed(args.seed)  # an autoregressive decoder draws its pixels from torch's generator
    return load_run(args.run_dir, args.checkpoint)


def _examples(run: Run, args: argparse.Namespace, n: int) -> EvaluationSet:
    """A fixed seeded random subset of n examples of ``--split`` (all if n is 0)."""
    return evaluation_images(load_data(run.config.data), args.split, n, args.seed)


def _write(args: argparse.Namespace, images: torch.Tensor, nrow: int, stem: str, what: str) -> int:
    """Save the grid to ``--out`` (default: a new RUN_DIR/STEM-N.png) and say so (``--json``: the file)."""
    grid = make_grid(images.reshape(-1, *images.shape[-3:]), nrow)
    if args.out:
        out = Path(args.out)
        save_array(grid, out)
    else:
        out = save_new(grid, Path(args.run_dir), stem, ".png")
    print(json.dumps({"file": str(out)}) if args.json else f"wrote {what} to {out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    run = _loaded(args)
    examples = _examples(run, args, args.limit or 0)
    latents = encode(
        run.model, examples.images, args.samples, seed=args.seed, indices=examples.indices.tolist()
    )
    arrays = {
        "z": latents.z.numpy(), "index": examples.indices.numpy(),
        "layer_sizes": np.array([math.prod(s) for s in latent_shapes(run.model)]),
    }  # fmt: skip
    if latents.log_q is not None:
        arrays["log_q"] = latents.log_q.double().numpy()
    with writing(args.out), open(args.out, "wb") as f:
        np.savez(f, **arrays)
    what = "the posterior means" if args.samples is None else f"{args.samples} draws each"
    if args.json:
        print(json.dumps({"file": args.out, "n": len(examples.indices), "latent_dim": run.model.latent_dim}))
    else:
        print(f"wrote latents of {examples.description} ({what}, D = {run.model.latent_dim}) to {args.out}")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    run = _loaded(args)
    x = _examples(run, args, 2 * args.pairs).images
    if len(x) < 2 * args.pairs:
        raise ConfigError(
            f"--pairs {args.pairs} needs {2 * args.pairs} images; --split {args.split} has {len(x)}"
        )
    x0, x1 = x[: args.pairs], x[args.pairs :]
    path = interpolate(run.model, x0, x1, args.steps, space=args.space, path=args.path)  # (B, T, C, H, W)
    rows = torch.cat([x0[:, None], path, x1[:, None]], dim=1)  # each row: x0, the path, x1
    return _write(args, rows, args.steps + 2, "interpolate", f"{args.pairs} interpolations")


def _traverse(args: argparse.Namespace) -> int:
    run = _loaded(args)
    d = run.model.latent_dim
    chosen = args.dims if args.dims is not None else list(range(min(10, d)))
    if max(chosen) >= d or min(chosen) < 0:
        bad = max(chosen) if max(chosen) >= d else min(chosen)
        raise ConfigError(
            f"--dims: latent dimension {bad} is out of range: this model has {d} (0 to {d - 1})"
        )
    images = _examples(run, args, 0).images
    if args.index >= len(images):
        raise ConfigError(
            f"--index {args.index} is out of range: --split {args.split} has {len(images)} images"
        )
    x = images[args.index : args.index + 1]
    values = torch.linspace(-args.span, args.span, args.steps)
    rows = torch.cat([traverse_images(run.model, x, dim, values) for dim in chosen])  # (dims, V, C, H, W)
    return _write(args, rows, args.steps, "traverse", f"traversals of {len(chosen)} latent dimensions")


def _layers(args: argparse.Namespace) -> int:
    run = _loaded(args)
    x = _examples(run, args, args.n).images
    rows = reconstruct_by_layers(run.model, x, temperature=args.temperature, seed=args.seed)
    grid = torch.cat([x[None].to(rows), rows])  # row 0: the images; row 1 + k: the top k layers kept
    return _write(args, grid, len(x), "layers", f"{len(rows)} rows (keep 0 to {len(rows) - 1} layers)")


def _reconstruct(args: argparse.Namespace) -> int:
    run = _loaded(args)
    x = load_images(args.images, run.model.shape, run.checkpoint["binary"])
    rec = reconstruct(run.model, x)
    pairs = torch.stack([x.to(rec), rec], 1)  # x, x̂ side by side
    return _write(args, pairs, 2 * min(4, len(x)), "reconstruct", f"reconstructions of {len(x)} images")


def _command(sub, name: str, help: str, fn, seeded: str, split: bool = True) -> argparse.ArgumentParser:
    """A subcommand that writes a grid: RUN_DIR, ``--split``, ``--seed``, ``--out``,
    ``--checkpoint``, ``--json``; the caller adds its own flags."""
    p = sub.add_parser(name, help=help)
    p.add_argument("run_dir", type=run_dir, help=RUN_DIR_HELP)
    if split:
        common_flags(p, "split")
    common_flags(p, "seed", seed=0, what=seeded)
    p.add_argument(
        "--out", type=image_out, help=f"PNG path in an existing folder (default: a new RUN_DIR/{name}-N.png)"
    )
    common_flags(p, "checkpoint", "json")
    p.set_defaults(fn=fn)
    return p


def _encode_parser(sub) -> None:
    p = sub.add_parser("encode", help="write the latents of a split's images to an .npz")
    p.add_argument("run_dir", type=run_dir, help=RUN_DIR_HELP)
    p.add_argument(
        "--out", type=npz_out, required=True, help="the .npz to write: z, index, layer_sizes, log_q"
    )
    p.add_argument(
        "--limit", type=POSITIVE, metavar="N", help="a fixed seeded random subset of N (default: all)"
    )
    p.add_argument(
        "--samples",
        type=POSITIVE,
        metavar="K",
        help="K draws of q(z|x) per image, with log q (default: the posterior's mean)",
    )
    common_flags(p, "split", "checkpoint", "json")
    common_flags(p, "seed", seed=0, what="the subset and the draws")
    p.set_defaults(fn=_encode)


def _interpolate_parser(sub) -> None:
    p = _command(
        sub,
        "interpolate",
        "a grid of paths between pairs of images, through the latents",
        _interpolate,
        "the pairs",
    )
    p.add_argument("--pairs", type=POSITIVE, default=8, help="pairs of images, a row each (default: 8)")
    p.add_argument(
        "--steps", type=_at_least_two, default=10, help="images per path, ends included (default: 10)"
    )
    p.add_argument(
        "--space",
        choices=SPACES,
        default="latent",
        help="latent: z; base: the prior's standard-normal base of z (default: latent)",
    )
    p.add_argument("--path", choices=PATHS, default="linear", help="linear or slerp (default: linear)")


def _traverse_parser(sub) -> None:
    p = _command(
        sub,
        "traverse",
        "a grid of one image with single latents set to a range of values",
        _traverse,
        "a training split's binarization",
    )
    p.add_argument(
        "--dims", type=dims, help="latent dimensions, a row each: 0-9, 3 or 0,4,7 (default: the first 10)"
    )
    p.add_argument("--index", type=NON_NEGATIVE, default=0, help="which image of --split (default: 0)")
    p.add_argument("--span", type=number(0.0), default=3.0, help="values from -span to span (default: 3)")
    p.add_argument("--steps", type=_at_least_two, default=9, help="values per row (default: 9)")


def _layers_parser(sub) -> None:
    p = _command(
        sub,
        "layers",
        "what each stochastic layer holds: keep the top k, resample the rest",
        _layers,
        "the images and the prior draws",
    )
    p.add_argument("--n", type=POSITIVE, default=8, help="images, a column each (default: 8)")
    p.add_argument(
        "--temperature",
        type=number(0.0, open_low=False),
        default=1.0,
        help="scale of the resampled layers' prior std (default: 1)",
    )


def _reconstruct_parser(sub) -> None:
    p = _command(
        sub,
        "reconstruct",
        "reconstruct your own images (a folder of PNGs or an .npz)",
        _reconstruct,
        "an autoregressive decoder's pixels",
        split=False,
    )
    p.add_argument(
        "--images",
        required=True,
        metavar="DIR_OR_NPZ",
        help="a folder of image files or an .npz of one uint8 array (N, H, W[, C]), as the run's data",
    )


PARSERS = (_encode_parser, _interpolate_parser, _traverse_parser, _layers_parser, _reconstruct_parser)

__all__ = ["PARSERS", "dims", "npz_out"]
