"""Estimators of log p(x), written once against the model/posterior interface.

An estimator is ``fn(model, x, **options) -> Tensor (B,)``: a per-example estimate of log p(x)
(a lower bound in expectation for ELBO/IWAE/AIS). ``ESTIMATORS`` names them for the CLI;
:func:`evaluate` runs one over a data split and reports nats (and bits/dim).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from .ais import CHAINS, AISOptions, ais_estimate
from .config import EVAL_SEED, EvalConfig
from .core import ElboTerms
from .data import subset_indices
from .diagnostics import khat_note, khat_warning, weight_diagnostics
from .distributed import Dist, all_gather
from .linear_gaussian import exact
from .noise import ExampleStreams, example_streams
from .numerics import bits_per_dim, log_mean_exp

IWAE_SAMPLES = EvalConfig.samples  # K of the paper protocol (Burda et al.; IAF paper), written once


@dataclass(frozen=True)
class IWAEOptions:
    """The settings of the estimator ``iwae``: samples are drawn ``chunk`` at a time (bounds the
    model's memory at B x chunk rows; the values do not depend on it)."""

    chunk: int = field(
        default=EvalConfig.chunk, metadata={"help": "samples per chunk: bounds memory to batch size x chunk"}
    )

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ValueError(f"iwae needs chunk >= 1, got {self.chunk}")


def elbo_terms(model: nn.Module, x: Tensor, samples: int = 1) -> ElboTerms:
    """The model's forward pass: one pass computes z ~ q, log q, log p(z) and log p(x|z)."""
    return model(x, samples)


def elbo(model: nn.Module, x: Tensor, samples: int = 1) -> Tensor:
    """Monte Carlo ELBO, averaged over ``samples`` draws: (B,)."""
    return elbo_terms(model, x, samples).log_weight.mean(0)


def elbo_estimate(model: nn.Module, x: Tensor, samples: int = 1) -> tuple[Tensor, dict[str, Tensor]]:
    """The estimator ``elbo``: the Monte Carlo ELBO (B,) and its two terms as diagnostics, the
    reconstruction ``log_likelihood`` E_q[log p(x|z)] and the true ``kl`` E_q[log q - log p(z)]."""
    terms = elbo_terms(model, x, samples)
    diagnostics = {"log_likelihood": terms.log_likelihood.mean(0), "kl": terms.kl.mean(0)}
    return terms.log_weight.mean(0), diagnostics


def importance_log_weights(
    model: nn.Module, x: Tensor, samples: int = IWAE_SAMPLES, chunk: int = IWAEOptions.chunk
) -> Tensor:
    """K = ``samples`` log-weights log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x): (K, B).

    Drawn ``chunk`` at a time, so the model's memory is bounded by B * chunk whatever K; only
    the K x B weights themselves are kept.
    """
    parts = [elbo_terms(model, x, min(chunk, samples - s)).log_weight for s in range(0, samples, chunk)]
    return torch.cat(parts)


def iwae(model: nn.Module, x: Tensor, samples: int = IWAE_SAMPLES, chunk: int = IWAEOptions.chunk) -> Tensor:
    """Importance-sampled log p(x) with q as proposal (the IWAE bound, Burda et al. 2015): (B,).

    log p̂(x) = log (1/K) Σ_k p(x, z_k) / q(z_k|x), the log-mean-exp of
    :func:`importance_log_weights`, reduced and returned in float64.
    """
    return log_mean_exp(importance_log_weights(model, x, samples, chunk).double(), dim=0)


def iwae_estimate(
    model: nn.Module, x: Tensor, samples: int = IWAE_SAMPLES, chunk: int = IWAEOptions.chunk
) -> tuple[Tensor, dict[str, Tensor]]:
    """The estimator ``iwae``: log p̂(x) (B,) and the weights' diagnostics (ESS, Pareto k̂)."""
    log_weights = importance_log_weights(model, x, samples, chunk)
    return log_mean_exp(log_weights.double(), dim=0), weight_diagnostics(log_weights)  # as iwae()


@dataclass(frozen=True)
class EstimatorRecord:
    """A named estimator of log p(x).

    Attributes:
        name: its ``--estimator`` value.
        estimate: ``(model, x, samples, **options) -> (log_p (B,), diagnostics {name: (B,)})``.
        default_samples: the ``samples`` used when none is given.
        samples_are: what ``samples`` counts (for help texts and reports).
        options: the dataclass of its own settings (None: it has none).
        run_samples: whether a run's ``eval.samples`` sets its default ``samples`` (the K of
            the paper protocol) instead of ``default_samples``.
        samples_flag: a second command-line name for ``samples`` (``--chains`` for ais), or "".
    """

    name: str
    estimate: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    default_samples: int
    samples_are: str
    options: type | None = None
    run_samples: bool = False
    samples_flag: str = ""

    def settings(self, **options) -> dict:
        """Its full settings with ``options`` applied; a one-line ``ValueError`` for a bad key."""
        if self.options is None:
            if options:
                raise ValueError(f"estimator {self.name!r} takes no options, got {', '.join(options)}")
            return {}
        try:
            return vars(self.options(**options))
        except TypeError:
            valid = ", ".join(f.name for f in fields(self.options))
            raise ValueError(f"unknown option for estimator {self.name!r}; valid: {valid}") from None

    def __call__(self, model: nn.Module, x: Tensor, samples: int | None = None, **options) -> Tensor:
        """Per-example log p̂(x) (B,)."""
        samples, settings = resolve_estimator(self.name, samples, options)
        return self.estimate(model, x, samples, **settings)[0]


def _without_diagnostics(fn: Callable[..., Tensor]) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    return lambda model, x, samples, **options: (fn(model, x, samples, **options), {})


ESTIMATORS: dict[str, EstimatorRecord] = {
    r.name: r
    for r in [
        EstimatorRecord("elbo", elbo_estimate, 1, "draws of z per example"),
        EstimatorRecord("iwae", iwae_estimate, IWAE_SAMPLES, "importance samples K", IWAEOptions, True),
        EstimatorRecord(
            "ais", ais_estimate, CHAINS, "AIS chains per example", AISOptions, samples_flag="--chains"
        ),
        EstimatorRecord("exact", _without_diagnostics(exact), 1, "unused (exact value)"),
    ]
}


def estimator_record(name: str) -> EstimatorRecord:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; available: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def resolve_estimator(
    name: str, samples: int | None = None, options: dict[str, Any] | None = None,
    eval_config: EvalConfig | None = None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Estimator ``name``'s samples and full settings: each from what is given (``None``: not
    given), else a run's ``eval_config`` (``eval.samples`` where the record takes the paper
    protocol's K, ``run_samples``; an option from the ``eval.*`` key of its name), else the
    estimator's default. The one rule by which ``flowvae eval``, ``compare``, ``gaps`` and
    :func:`evaluate` pick K and the options; a one-line ``ValueError`` for a bad option."""
    record = estimator_record(name)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if eval_config is not None:
        for key in record.settings():
            if key not in given and hasattr(eval_config, key):
                given[key] = getattr(eval_config, key)
    if not samples:
        from_run = eval_config is not None and record.run_samples
        samples = eval_config.samples if from_run else record.default_samples
    return samples, record.settings(**given)


@dataclass
class Estimate:
    """A dataset-level estimate: mean -log p̂(x) per example (nats) and its standard error.

    ``bits_per_dim`` is None for data that is not discrete (a Gaussian likelihood).
    ``diagnostics`` summarises each per-example diagnostic (``per_example_diagnostics``: ESS
    and Pareto k̂ for ``iwae``, HMC acceptance for ``ais``) over examples, non-finite values left
    out; a summary's ``note``, if any, says why some values are missing (k̂ needs K ≥ 21);
    ``warnings`` says when they make the estimate unreliable; ``settings`` are the estimator's
    own options.
    """

    estimator: str
    split: str
    n: int
    samples: int
    nll: float
    stderr: float
    bits_per_dim: float | None  # None for a density on continuous data (Gaussian likelihood)
    seconds: float
    per_example: Tensor  # (n,) log p̂(x)
    settings: dict = field(default_factory=dict)
    diagnostics: dict[str, dict[str, float | str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    per_example_diagnostics: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        skip = ("per_example", "per_example_diagnostics")
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def summarise(values: Tensor) -> dict[str, float]:
    """Mean, median, min and max over examples of a per-example diagnostic (NaNs and infinities
    left out; all NaN when none is finite)."""
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return dict.fromkeys(("mean", "median", "min", "max"), float("nan"))
    return {"mean": v.mean().item(), "median": v.median().item(), "min": v.min().item(),
            "max": v.max().item()}  # fmt: skip


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Tensor | Iterable[Tensor],
    estimator: str = "iwae",
    samples: int | None = None,
    *,
    split: str = "test",
    dims: int | None = None,
    seed: int = EVAL_SEED,
    limit: int = 0,
    indices: Sequence[int] | Tensor | None = None,
    batch_size: int = 100,
    dist: Dist | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> Estimate:
    """Estimate log p(x) of every example with ``estimator``; the standard error is over examples.

    Arguments:
        model: a :class:`~flowvae.core.LatentVariableModel` (e.g. ``flowvae.load_run(...).model``).
        data: images (N, C, H, W), evaluated ``batch_size`` at a time, or an iterable of batches.
        estimator: a name in :data:`ESTIMATORS` (``elbo``, ``iwae``, ``ais``, ``exact``).
        samples: K for ``iwae``, chains for ``ais``, draws for ``elbo``; default: the
            estimator's own (:attr:`EstimatorRecord.default_samples`).
        dims: pixels per image for bits/dim (default: the model's image size).
        seed, indices: every example draws its random numbers from its own stream, seeded by
            ``seed`` and its index (``indices[n]`` for the n-th example, default n; pass each
            example's index in its split): its value depends on neither the batch size, nor
            the other examples scored with it, nor the process that scores it (under torchrun,
            ``dist``, batches are dealt round-robin to the ranks and the values gathered), nor
            the device. See :mod:`flowvae.noise`. The default seed is ``flowvae eval``'s.
        limit: score a fixed random subset of ``limit`` examples of ``data`` (a tensor), seeded
            by ``seed``: the subset ``flowvae eval --limit`` scores (default 0: all).
        progress: called with each finished batch's size (e.g. a progress bar's ``update``).
        options: the estimator's own settings (e.g. ``chunk`` for iwae, ``steps`` for ais).

    Returns:
        :class:`Estimate` with the per-example values and the estimator's diagnostics.

    Example:
        >>> import flowvae
        >>> from flowvae.testing import random_linear_gaussian_vae
        >>> model = random_linear_gaussian_vae()
        >>> x = model.decode_sample(model.sample_prior((64,)))
        >>> lower = flowvae.evaluate(model, x, "iwae", samples=100)
        >>> exact = flowvae.evaluate(model, x, "exact")
        >>> gap = lower.per_example - exact.per_example  # IWAE <= log p(x) in expectation, not per draw
        >>> bool(gap.mean() <= 3 * gap.std() / len(gap) ** 0.5)
        True
    """
    record = estimator_record(estimator)
    samples, settings = resolve_estimator(estimator, samples, options)
    if limit > 0:
        data, indices = _subset(data, limit, seed, indices)
    batches = data.split(batch_size) if isinstance(data, Tensor) else data
    d = dist or Dist()
    device = next(model.parameters()).device
    start = time.perf_counter()
    mine, first = {}, 0
    for i, x in enumerate(batches):
        index = range(first, first + len(x)) if indices is None else indices[first : first + len(x)]
        if len(index) != len(x):
            raise ValueError(f"evaluate: {len(indices)} indices for more examples than that")
        first += len(x)
        if i % d.world == d.rank:
            with example_streams(ExampleStreams.seeded(seed, [int(j) for j in index])):
                log_p, diagnostics = record.estimate(model, x.to(device), samples, **settings)
            mine[i] = (log_p.double().cpu(), {k: v.double().cpu() for k, v in diagnostics.items()})
            if progress is not None:
                progress(x.shape[0])
    values = {i: v for part in all_gather(mine, d) for i, v in part.items()}
    order = sorted(values)
    log_p = torch.cat([values[i][0] for i in order])
    diagnostics = {k: torch.cat([values[i][1][k] for i in order]) for k in values[order[0]][1]}
    return summarise_estimate(
        estimator, split, samples, log_p, diagnostics, settings, dims or math.prod(model.shape),
        model.likelihood.discrete, time.perf_counter() - start,
    )  # fmt: skip


def _subset(
    data: Tensor | Iterable[Tensor], limit: int, seed: int, indices: Sequence[int] | Tensor | None
) -> tuple[Tensor, Tensor]:
    """The seeded random subset of ``limit`` examples that ``flowvae eval --limit`` scores, and
    their indices (in ``indices``, if given)."""
    if not isinstance(data, Tensor):
        raise ValueError("evaluate: limit needs the images as one tensor, not an iterable of batches")
    chosen = subset_indices(len(data), limit, seed)
    return data[chosen], chosen if indices is None else torch.as_tensor(indices)[chosen]


def summarise_estimate(
    estimator: str,
    split: str,
    samples: int,
    log_p: Tensor,
    diagnostics: dict[str, Tensor],
    settings: dict,
    dims: int,
    discrete: bool,
    seconds: float,
) -> Estimate:
    """An :class:`Estimate` from per-example values: mean, standard error over examples,
    bits/dim (for discrete data), summaries and warnings of the diagnostics."""
    n = log_p.numel()
    nll = -log_p.mean().item()
    stderr = (log_p.std().item() / math.sqrt(n)) if n > 1 else float("nan")
    summaries: dict[str, dict[str, float | str]] = {k: summarise(v) for k, v in diagnostics.items()}
    warnings = []
    if "khat" in diagnostics:
        warnings.append(khat_warning(diagnostics["khat"], samples))
        note = khat_note(diagnostics["khat"], samples)
        if note:
            summaries["khat"]["note"] = note
    return Estimate(
        estimator=estimator, split=split, n=n, samples=samples, nll=nll, stderr=stderr,
        bits_per_dim=float(bits_per_dim(nll, dims)) if discrete else None, seconds=seconds,
        per_example=log_p, settings=settings,
        diagnostics=summaries,
        warnings=[w for w in warnings if w], per_example_diagnostics=diagnostics,
    )  # fmt: skip
