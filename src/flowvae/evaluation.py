"""Scoring a run: :func:`evaluate_run` and its per-example cache.

:func:`evaluate_run` is how ``flowvae eval`` and ``flowvae compare`` score a run: the examples
come from :func:`~flowvae.data.evaluation_images` (a fixed seeded subset), each example draws
from its own random stream (seeded by ``seed`` and its index in the split, so its value does not
depend on batching), and the per-example log p̂(x) (with the estimator's diagnostics) is cached
in ``RUN/eval-cache/`` under a key made of what was scored and how: the SHA-256 of the
checkpoint bytes that were loaded, the SHA-256 of the images scored and their indices, a hash of
the package's code, the device type, the estimator, K, its settings and the seed. A hit is
checked before it is used: the stored image digest, indices and request, one finite value per
example; an entry that is torn, unreadable or does not check out is recomputed (and rewritten),
with a warning naming it. A second evaluation with the same settings costs nothing; new
weights, other data, other code or any changed setting miss the cache. Cache files are ``.npz``
read with ``allow_pickle=False``: data, never code; a failed write (a full disk) leaves no temp
file and is a warning, not an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import Run, TrainedTo, load_run, trained_to
from .data import EvaluationSet, evaluation_images, load_data
from .distributed import Dist
from .estimators import Estimate, evaluate, resolve_estimator, summarise_estimate

CACHE_DIR = "eval-cache"
CACHE_VERSION = 3  # 3: an entry holds its request, checked when read


def source_digest() -> str:
    """SHA-256 of the package's source files as they are now, and torch's version."""
    h = hashlib.sha256(torch.__version__.encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# What computes a cached number: the code this process imported, hashed at import (the modules
# an evaluation runs are imported above, before this line). Hashed later, a file edited in between
# (a checkout while runs load) would file the old code's numbers under the new code's digest.
CODE_DIGEST = source_digest()


@dataclass
class RunEvaluation:
    """One run scored on one set of examples."""

    run: Run
    estimate: Estimate
    examples: EvaluationSet
    cached: bool  # read from the cache rather than computed
    trained: TrainedTo | None = None  # the weights scored (file, epoch, step) and whether the run ended


def _cache_key(request: dict[str, Any]) -> str:
    material = json.dumps({"version": CACHE_VERSION, **request}, sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


CACHE_ARRAYS = ("log_p", "indices", "images", "request", "seconds")  # every entry holds these


def _read_cache(
    path: Path, examples: EvaluationSet, request: str
) -> tuple[dict[str, np.ndarray] | None, str]:
    """The cached arrays of ``path`` if they are an entry for exactly ``examples`` (their digest
    and indices) and ``request`` (what was scored and how), whole and of the right shapes, with
    finite values; else ``None`` and, for a file that is there but does not check out, why."""
    if not path.is_file():
        return None, ""
    try:
        with np.load(path, allow_pickle=False) as f:
            hit = {k: f[k] for k in f.files}
    except Exception as e:  # torn (EOFError, BadZipFile), flipped bytes (Bad CRC-32), not an npz
        return None, f"unreadable ({type(e).__name__})"
    n = len(examples.indices)
    missing = [k for k in CACHE_ARRAYS if k not in hit]
    if missing:
        return None, f"incomplete (no {', '.join(missing)})"
    if str(hit["images"]) != examples.digest or not np.array_equal(hit["indices"], examples.indices.numpy()):
        return None, "for other images"
    if str(hit["request"]) != request:
        return None, "for other settings"
    for name, values in hit.items():
        per_example = name == "log_p" or name.startswith("diag_")
        if per_example and (values.shape != (n,) or values.dtype.kind != "f"):
            return None, f"{name} holds {values.shape} {values.dtype} values, not {n} numbers"
    if hit["seconds"].shape != () or hit["seconds"].dtype.kind != "f":
        return None, f"seconds holds {hit['seconds'].shape} {hit['seconds'].dtype} values, not a number"
    if not np.isfinite(hit["log_p"]).all():
        return None, "non-finite log_p values"  # a NaN is never written
    return hit, ""


def _write_cache(
    path: Path, estimate: Estimate, examples: EvaluationSet, request: str, trained: TrainedTo
) -> str:
    """The per-example values, diagnostics and what they are for (the examples, the request; the
    weights' file, epoch and step), written atomically (temp file + rename; a failed write removes
    its temp file). A cache that cannot be written is skipped, not fatal: returns why (``""`` when
    written)."""
    arrays = {
        "log_p": estimate.per_example.numpy(), "indices": examples.indices.numpy(),
        "images": np.array(examples.digest), "request": np.array(request),
        "seconds": np.array(estimate.seconds),
        "trained_file": np.array(trained.file), "trained_epoch": np.array(trained.epoch),
        "trained_step": np.array(trained.step),
    }  # fmt: skip
    arrays.update({f"diag_{k}": v.numpy() for k, v in estimate.per_example_diagnostics.items()})
    tmp = None
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return ""
    except OSError as e:
        return f"{path}: cannot write the cache entry ({e.strerror or e}); not cached"
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@torch.no_grad()
def evaluate_run(
    run_dir: str | Path,
    estimator: str = "iwae",
    samples: int | None = None,
    *,
    split: str = "test",
    limit: int = 0,
    seed: int = 1234,
    batch_size: int | None = None,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
    dist: Dist | None = None,
    cache: bool = True,
    progress: Callable[[int], Any] | None = None,
    examples: EvaluationSet | None = None,
    run: Run | None = None,
    **options,
) -> RunEvaluation:
    """Score a trained run with ``estimator`` on ``split`` (a seeded subset of ``limit``).

    Defaults come from the run (:func:`~flowvae.estimators.resolve_estimator`): ``samples`` from
    ``eval.samples`` where the estimator takes the paper protocol's K (iwae), else the
    estimator's own; options (e.g. ``chunk``) from the run's ``eval.*`` key of the same name;
    the batch size from ``eval.batch_size`` (it changes the speed, not the per-example values).
    ``examples``: the images to score, if already loaded (else the run's data, ``split``,
    ``limit`` and ``seed`` pick them); ``run``: the run, if already loaded (its digest is that of
    the bytes it was loaded from).
    ``progress``, if given, is called with the number of examples this process scores and
    returns a context manager with ``update(n)`` (e.g. :func:`flowvae.progress.progress_bar`).
    The result names the weights it scored (``trained``: file, epoch, step; an unfinished run).
    """
    run = run or load_run(run_dir, checkpoint, device)
    trained = trained_to(run_dir, run, checkpoint)
    samples, settings = resolve_estimator(estimator, samples, options, run.config.eval)
    if examples is None:
        examples = evaluation_images(load_data(run.config.data), split, limit, seed)
    request = {
        "checkpoint": run.digest, "images": examples.digest, "code": CODE_DIGEST,
        "device": torch.device(device).type, "estimator": estimator, "samples": samples,
        "settings": settings, "split": split, "seed": seed,
    }  # fmt: skip
    entry = Path(run_dir) / CACHE_DIR / f"{_cache_key(request)}.npz" if cache else None
    material = json.dumps(request, sort_keys=True, default=str)
    hit, damage = _read_cache(entry, examples, material) if entry is not None else (None, "")
    if hit is not None:
        diagnostics = {k[5:]: torch.from_numpy(v) for k, v in hit.items() if k.startswith("diag_")}
        estimate = summarise_estimate(
            estimator, split, samples, torch.from_numpy(hit["log_p"]), diagnostics, settings,
            math.prod(examples.images.shape[1:]), run.model.likelihood.discrete, float(hit["seconds"]),
        )  # fmt: skip
        return RunEvaluation(run, estimate, examples, cached=True, trained=trained)
    d = dist or Dist()
    batches = examples.images.split(batch_size or run.config.eval.batch_size)
    mine = sum(len(b) for i, b in enumerate(batches) if i % d.world == d.rank)  # this rank's examples
    with progress(mine) if progress is not None else contextlib.nullcontext() as bar:
        estimate = evaluate(
            run.model, batches, estimator, samples, split=split, seed=seed, indices=examples.indices,
            dist=d, progress=bar.update if bar is not None else None, **settings,
        )  # fmt: skip
    if damage:
        estimate.warnings.append(f"{entry}: damaged cache entry ({damage}); recomputed")
    if entry is not None and d.is_main and math.isfinite(estimate.nll):  # a NaN is never cached
        failed = _write_cache(entry, estimate, examples, material, trained)
        estimate.warnings += [failed] if failed else []
    return RunEvaluation(run, estimate, examples, cached=False, trained=trained)


__all__ = ["CACHE_DIR", "CODE_DIGEST", "RunEvaluation", "evaluate_run", "source_digest"]
