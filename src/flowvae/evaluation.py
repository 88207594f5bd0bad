"""Scoring a run: :func:`evaluate_run` and its per-example cache.

:func:`evaluate_run` is how ``flowvae eval`` and ``flowvae compare`` score a run: the examples
come from :func:`~flowvae.data.evaluation_images` (a fixed seeded subset), each example draws
from its own random stream (seeded by ``seed`` and its index in the split, so its value does not
depend on batching), and the per-example log p̂(x) (with the estimator's diagnostics) is cached
in ``RUN/eval-cache/`` under a key made of what was scored and how: the SHA-256 of the
checkpoint bytes that were loaded, the SHA-256 of the images scored and their indices, a hash of
the package's code, the device type, the estimator, K, its settings and the seed. A hit is
checked against the stored image digest before it is used. A second evaluation with the same
settings costs nothing; new weights, other data, other code or any changed setting miss the
cache. Cache files are ``.npz`` read with ``allow_pickle=False``: data, never code.
"""

from __future__ import annotations

import contextlib
import functools
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

from .checkpoint import Run, load_run
from .data import EvaluationSet, evaluation_images, load_data
from .distributed import Dist
from .estimators import Estimate, estimator_record, evaluate, summarise_estimate

CACHE_DIR = "eval-cache"
CACHE_VERSION = 2


@functools.cache
def code_digest() -> str:
    """SHA-256 of the package's source files (what computes a cached number) and torch's version."""
    h = hashlib.sha256(torch.__version__.encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass
class RunEvaluation:
    """One run scored on one set of examples."""

    run: Run
    estimate: Estimate
    examples: EvaluationSet
    cached: bool  # read from the cache rather than computed


def _cache_key(request: dict[str, Any]) -> str:
    material = json.dumps({"version": CACHE_VERSION, **request}, sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _read_cache(path: Path, examples: EvaluationSet) -> dict[str, np.ndarray] | None:
    """The cached arrays of ``path`` if they are for exactly ``examples`` (their digest and
    indices), else None (missing, torn, foreign or for other images: recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            hit = {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    indices = hit.get("indices")
    same = str(hit.get("images")) == examples.digest and np.array_equal(indices, examples.indices.numpy())
    return hit if same else None


def _write_cache(path: Path, estimate: Estimate, examples: EvaluationSet) -> None:
    """The per-example values, diagnostics and what they are for, written atomically (temp file +
    rename); a cache that cannot be written is skipped, not fatal."""
    arrays = {
        "log_p": estimate.per_example.numpy(), "indices": examples.indices.numpy(),
        "images": np.array(examples.digest), "seconds": np.array(estimate.seconds),
    }  # fmt: skip
    arrays.update({f"diag_{k}": v.numpy() for k, v in estimate.per_example_diagnostics.items()})
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass


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

    Defaults come from the run: ``samples`` from ``eval.samples`` where the estimator takes
    the paper protocol's K (iwae), else the estimator's own; options (e.g. ``chunk``) from the
    run's ``eval.*`` key of the same name; the batch size from ``eval.batch_size`` (it changes
    the speed, not the per-example values). ``examples``: the images to score, if already
    loaded (else the run's data, ``split``, ``limit`` and ``seed`` pick them); ``run``: the run,
    if already loaded (its digest is that of the bytes it was loaded from).
    ``progress``, if given, is called with the number of examples this process scores and
    returns a context manager with ``update(n)`` (e.g. :func:`flowvae.progress.progress_bar`).
    """
    run = run or load_run(run_dir, checkpoint, device)
    record = estimator_record(estimator)
    for name in record.settings():
        if options.get(name) is None and hasattr(run.config.eval, name):
            options[name] = getattr(run.config.eval, name)
    settings = record.settings(**{k: v for k, v in options.items() if v is not None})
    samples = samples or (run.config.eval.samples if record.run_samples else record.default_samples)
    if examples is None:
        examples = evaluation_images(load_data(run.config.data), split, limit, seed)
    request = {
        "checkpoint": run.digest, "images": examples.digest, "code": code_digest(),
        "device": torch.device(device).type, "estimator": estimator, "samples": samples,
        "settings": settings, "split": split, "seed": seed,
    }  # fmt: skip
    entry = Path(run_dir) / CACHE_DIR / f"{_cache_key(request)}.npz" if cache else None
    hit = _read_cache(entry, examples) if entry is not None else None
    if hit is not None:
        diagnostics = {k[5:]: torch.from_numpy(v) for k, v in hit.items() if k.startswith("diag_")}
        estimate = summarise_estimate(
            estimator, split, samples, torch.from_numpy(hit["log_p"]), diagnostics, settings,
            math.prod(examples.images.shape[1:]), run.model.likelihood.discrete, float(hit["seconds"]),
        )  # fmt: skip
        return RunEvaluation(run, estimate, examples, cached=True)
    d = dist or Dist()
    batches = examples.images.split(batch_size or run.config.eval.batch_size)
    mine = sum(len(b) for i, b in enumerate(batches) if i % d.world == d.rank)  # this rank's examples
    with progress(mine) if progress is not None else contextlib.nullcontext() as bar:
        estimate = evaluate(
            run.model, batches, estimator, samples, split=split, seed=seed, indices=examples.indices,
            dist=d, progress=bar.update if bar is not None else None, **settings,
        )  # fmt: skip
    if entry is not None and d.is_main and math.isfinite(estimate.nll):  # a NaN is never cached
        _write_cache(entry, estimate, examples)
    return RunEvaluation(run, estimate, examples, cached=False)


__all__ = ["CACHE_DIR", "RunEvaluation", "code_digest", "evaluate_run"]
