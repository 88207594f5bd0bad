"""How far an importance-sampled estimate can be trusted: ESS and the Pareto k̂ of the weights.

For K importance log-weights log w_k of one example (IWAE with q as proposal):

- the effective sample size of the normalised weights, ESS = (Σ w)² / Σ w², between 1 (one
  weight dominates) and K (all equal, e.g. the exact posterior as proposal);
- the Pareto k̂ of their upper tail (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry 2024,
  arXiv 1507.02646), computed as the published ``psislw`` of ArviZ does (R's loo uses the same
  tail length): a generalized Pareto distribution is fitted to the weights above the (M+1)-th
  largest, with M = ⌈min(K/5, 3√K)⌉; k̂ estimates its shape. The weights have finite variance for k < 1/2;
  above the sample-size-dependent threshold :func:`khat_threshold` (min(1 − 1/log10 K, 0.7))
  the estimate of log p(x) is unreliable at this K (its error decreases too slowly), so a
  report warns when more than a few percent of examples exceed it.

Everything is batched over examples: log-weights (K, B) -> (B,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KHAT_MIN_TAIL = 5  # PSIS fits no tail of fewer weights (the reference returns k̂ = inf)
KHAT_MIN_SAMPLES = 21  # the smallest K whose tail length ⌈min(K/5, 3√K)⌉ reaches KHAT_MIN_TAIL
KHAT_MAX_THRESHOLD = 0.7  # Vehtari et al.: above it, importance sampling is unreliable at any K
KHAT_WARN_FRACTION = 0.05  # warn when more than this fraction of examples exceed the threshold


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """ESS = (Σ w)² / Σ w² of K log-weights (K, B) -> (B,), computed in log space."""
    lw = log_weights.double()
    return torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))


def _gpd_shape(x: Tensor) -> Tensor:
    """Shape k of a generalized Pareto fitted to exceedances x (B, n), sorted ascending, > 0.

    The empirical-Bayes fit of Zhang & Stephens (2009) as PSIS uses it (``_gpdfit`` of ArviZ's
    ``psislw``): m = 30 + ⌊√n⌋ candidates b_j = 1/x_(n) + (1 − √(m/(j − ½))) / (3 x_(⌊n/4 + ½⌋)),
    each with k_j = mean log(1 − b_j x) and profile log-likelihood n (log(−b_j/k_j) − k_j − 1);
    b̂ is the candidates' mean under the normalised exp(profile), dropping weights below
    10 machine epsilons; the shape is k̂ = mean log(1 − b̂ x). That is the shape ξ of
    F(x) = 1 − (1 + ξx/σ)^(−1/ξ), σ = −k̂/b̂, so k̂ > 0 is a heavy tail (Zhang & Stephens's own k
    is −ξ; nothing is negated here). Returned with the weakly informative prior toward 0.5 of
    Vehtari et al. (2024, Appendix C): (n k̂ + 10 · 0.5) / (n + 10).
    """
    _, n = x.shape
    m = 30 + int(math.sqrt(n))
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    quartile = x[:, int(n / 4 + 0.5) - 1].unsqueeze(1)  # (B, 1); n >= 5, so the index is >= 0
    b = 1 / x[:, -1:] + (1 - torch.sqrt(m / (j - 0.5))) / (3 * quartile)  # (B, m) candidates
    k = torch.log1p(-b.unsqueeze(-1) * x.unsqueeze(1)).mean(-1)  # (B, m)
    profile = n * (torch.log(-b / k) - k - 1)  # profile log-likelihood of each candidate
    weights = torch.softmax(profile, dim=1)
    weights = torch.where(weights >= 10 * torch.finfo(x.dtype).eps, weights, 0)  # negligible ones
    b_post = (weights * b).sum(1, keepdim=True) / weights.sum(1, keepdim=True)  # posterior mean of b
    k_post = torch.log1p(-b_post * x).mean(1)
    return (n * k_post + 10 * 0.5) / (n + 10)


def pareto_tail_length(samples: int) -> int:
    """M = ⌈min(K/5, 3√K)⌉: how many of K weights PSIS fits its Pareto tail to (at most)."""
    return math.ceil(min(samples / 5, 3 * math.sqrt(samples)))


def pareto_khat(log_weights: Tensor) -> Tensor:
    """PSIS k̂ of the upper tail of K log-weights (K, B) -> (B,), as ArviZ's ``psislw`` computes it.

    With the weights scaled so that the largest is 1, the cutoff is the (M+1)-th largest weight
    (M = :func:`pareto_tail_length` of K), or the smallest normal float if that is larger; the
    tail is the weights strictly above the cutoff (M of them, fewer when weights tie at it), and
    k̂ is :func:`_gpd_shape` of their exceedances over the cutoff.

    k̂ is NaN where it says nothing: when fewer than 5 weights lie strictly above the cutoff
    (``psislw`` returns inf there) — always for K < 21 (:data:`KHAT_MIN_SAMPLES`; M < 5), and for
    any K when the weights tie (e.g. all equal, as with the exact posterior as proposal) — or
    when all the tail weights are equal (ArviZ ≥ 1.0 and R's loo refuse to fit such a tail).
    """
    lw = log_weights.double()
    k_total, batch = lw.shape
    khat = torch.full((batch,), float("nan"), dtype=torch.float64, device=lw.device)
    tail = pareto_tail_length(k_total)
    if tail < KHAT_MIN_TAIL:
        return khat
    top = torch.topk(lw, tail + 1, dim=0).values  # (M + 1, B), descending
    shift = top[0]  # the largest log-weight: k̂ does not depend on the weights' scale
    log_cutoff = (top[tail] - shift).clamp_min(math.log(torch.finfo(torch.float64).tiny))
    above = top[:tail] - shift  # (M, B), descending: the tail is a prefix of it
    length = (above > log_cutoff).sum(0)  # (B,) weights strictly above the cutoff
    x = (torch.exp(above) - torch.exp(log_cutoff)).T.flip(1)  # (B, M) exceedances, ascending
    for n in torch.unique(length).tolist():  # usually one length for the whole batch
        if n < KHAT_MIN_TAIL:
            continue
        rows = (length == n).nonzero().squeeze(1)
        ex = x[rows, tail - n :]  # (B', n): the n exceedances above the cutoff
        fit = _gpd_shape(ex)
        khat[rows] = torch.where(ex[:, -1] > ex[:, 0], fit, float("nan"))  # all equal: no tail
    return khat


def weight_diagnostics(log_weights: Tensor) -> dict[str, Tensor]:
    """``{"ess": (B,), "khat": (B,)}`` of K log-weights (K, B)."""
    return {"ess": effective_sample_size(log_weights), "khat": pareto_khat(log_weights)}


def khat_threshold(samples: int) -> float:
    """The k̂ above which K = ``samples`` importance weights give an unreliable estimate:
    min(1 − 1/log10 K, 0.7) (Vehtari et al. 2024): 0.5 at K = 100, 0.667 at K = 1000,
    0.7 from K = 2155 on. Defined for K ≥ 2 (k̂ itself needs K ≥ 21)."""
    if samples < 2:
        raise ValueError(f"the k̂ threshold needs K >= 2 importance samples, got K = {samples}")
    return min(1 - 1 / math.log10(samples), KHAT_MAX_THRESHOLD)


def khat_warning(khat: Tensor, samples: int) -> str | None:
    """A one-line warning when more than 5 % of the examples with a finite k̂ have k̂ above
    :func:`khat_threshold` of K = ``samples`` (None otherwise)."""
    finite = khat[torch.isfinite(khat)]
    if finite.numel() == 0:
        return None
    threshold = khat_threshold(samples)
    bad = (finite > threshold).sum().item()
    if bad > KHAT_WARN_FRACTION * finite.numel():
        return (
            f"Pareto k̂ > {threshold:.3g} (the threshold at K = {samples}, min(1 - 1/log10 K, 0.7)) for "
            f"{bad} of {finite.numel()} examples ({100 * bad / finite.numel():.0f} %): the importance "
            "weights are too heavy-tailed for a reliable estimate at this K (use more samples, AIS, or a "
            "better posterior)"
        )
    return None


def khat_note(khat: Tensor, samples: int) -> str | None:
    """Why k̂ is NaN for some examples (None when it is finite for all): too few samples, or
    weights that tie (see :func:`pareto_khat`)."""
    missing = (~torch.isfinite(khat)).sum().item()
    if missing == 0:
        return None
    if samples < KHAT_MIN_SAMPLES:
        return f"k̂ needs K ≥ {KHAT_MIN_SAMPLES} importance samples (K = {samples})"
    return (
        f"k̂ undefined for {missing} of {khat.numel()} examples: tied weights (fewer than {KHAT_MIN_TAIL} "
        "strictly above the tail cutoff, or all the tail's equal)"
    )


__all__ = [
    "effective_sample_size",
    "khat_note",
    "khat_threshold",
    "khat_warning",
    "pareto_khat",
    "pareto_tail_length",
    "weight_diagnostics",
]
