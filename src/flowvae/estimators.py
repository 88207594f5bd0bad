"""Estimators of log p(x), written once against the model/posterior interface.

An estimator is ``fn(model, x, **options) -> Tensor (B,)``: a per-example estimate of log p(x)
(a lower bound in expectation for ELBO/IWAE/AIS). ``ESTIMATORS`` names them for the CLI;
:func:`evaluate` runs one over a data split and reports nats (and bits/dim).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .ais import ais_estimator
from .distributed import Dist, all_gather
from .likelihoods import Gaussian
from .linear_gaussian import exact
from .numerics import bits_per_dim


@dataclass
class ElboTerms:
    """Per-sample terms of the ELBO, each (*S, B)."""

    log_likelihood: Tensor  # log p(x|z)
    log_prior: Tensor  # log p(z)
    log_q: Tensor  # log q(z|x) (for auxiliary posteriors: log q(z,v|x) - log r(v|x,z))
    kl_groups: Tensor | None = None  # (*S, B, G) per-group KL for free bits (hierarchical model)

    @property
    def log_weight(self) -> Tensor:
        return self.log_likelihood + self.log_prior - self.log_q

    @property
    def kl(self) -> Tensor:
        """Single-sample estimate of KL(q(z|x) || p(z))."""
        return self.log_q - self.log_prior


def elbo_terms(model: nn.Module, x: Tensor, samples: int = 1) -> ElboTerms:
    """The model's forward pass: one pass computes z ~ q, log q, log p(z) and log p(x|z)."""
    return model(x, samples)


def elbo(model: nn.Module, x: Tensor, samples: int = 1) -> Tensor:
    """Monte Carlo ELBO, averaged over ``samples`` draws: (B,)."""
    return elbo_terms(model, x, samples).log_weight.mean(0)


def iwae(model: nn.Module, x: Tensor, samples: int = 5000, chunk: int = 500) -> Tensor:
    """Importance-sampled log p(x) with q as proposal (the IWAE bound, Burda et al. 2015).

    log p̂(x) = log (1/K) Σ_k p(x, z_k) / q(z_k|x). The K samples are drawn ``chunk`` at a time
    and combined with a running log-sum-exp, so memory is bounded by B * chunk whatever K.
    """
    total = None
    for start in range(0, samples, chunk):
        lse = torch.logsumexp(elbo_terms(model, x, min(chunk, samples - start)).log_weight, dim=0)
        total = lse if total is None else torch.logaddexp(total, lse)
    return total - math.log(samples)


ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "elbo": elbo, "iwae": iwae, "ais": ais_estimator, "exact": exact,
}  # fmt: skip


@dataclass
class Estimate:
    """A dataset-level estimate: mean -log p̂(x) per example (nats) and its standard error."""

    estimator: str
    split: str
    n: int
    samples: int
    nll: float
    stderr: float
    bits_per_dim: float | None  # None for a density on continuous data (Gaussian likelihood)
    seconds: float
    per_example: Tensor  # (n,) log p̂(x)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "per_example"}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Tensor],
    estimator: str = "iwae",
    split: str = "test",
    dims: int = 1,
    samples: int = 1,
    seed: int = 0,
    dist: Dist | None = None,
    **options,
) -> Estimate:
    """Run ``estimator`` over ``batches``; the standard error is over examples.

    Batch ``i`` is estimated after ``torch.manual_seed(seed + i)``, so its samples do not depend
    on which process handles it: under torchrun (``dist``) batches are dealt round-robin to the
    ranks and the per-example values gathered, giving the single-process result exactly.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; available: {', '.join(ESTIMATORS)}")
    fn = ESTIMATORS[estimator]
    d = dist or Dist()
    device = next(model.parameters()).device
    start = time.perf_counter()
    mine = {}
    for i, x in enumerate(batches):
        if i % d.world == d.rank:
            torch.manual_seed(seed + i)
            mine[i] = fn(model, x.to(device), samples=samples, **options).double().cpu()
    values = {i: v for part in all_gather(mine, d) for i, v in part.items()}
    log_p = torch.cat([values[i] for i in sorted(values)])
    n = log_p.numel()
    nll = -log_p.mean().item()
    stderr = (log_p.std().item() / math.sqrt(n)) if n > 1 else float("nan")
    # bits/dim is a code length: meaningful for discrete data, not for a density on continuous x
    discrete = not isinstance(getattr(model, "likelihood", None), Gaussian)
    return Estimate(
        estimator=estimator, split=split, n=n, samples=samples, nll=nll, stderr=stderr,
        bits_per_dim=float(bits_per_dim(nll, dims)) if discrete else None,
        seconds=time.perf_counter() - start,
        per_example=log_p,
    )  # fmt: skip



