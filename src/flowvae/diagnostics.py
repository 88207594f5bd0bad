"""How far an importance-sampled estimate can be trusted: ESS and the Pareto k̂ of the weights.

For K importance log-weights log w_k of one example (IWAE with q as proposal):

- the effective sample size of the normalised weights, ESS = (Σ w)² / Σ w², between 1 (one
  weight dominates) and K (all equal, e.g. the exact posterior as proposal);
- the Pareto k̂ of their upper tail (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry 2024,
  arXiv 1507.02646): a generalized Pareto distribution is fitted to the M = min(K/5, 3√K)
  largest weights; k̂ estimates its shape. The weights have finite variance for k < 1/2; above
  k̂ ≈ 0.7 the estimate of log p(x) is unreliable at any practical K (its error decreases too
  slowly), so a report warns when more than a few percent of examples exceed it.

Everything is batched over examples: log-weights (K, B) -> (B,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KHAT_THRESHOLD = 0.7  # Vehtari et al.: above it, importance sampling is unreliable
KHAT_WARN_FRACTION = 0.05  # warn when more than this fraction of examples exceed the threshold


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """ESS = (Σ w)² / Σ w² of K log-weights (K, B) -> (B,), computed in log space."""
    lw = log_weights.double()
    return torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))


def _gpd_shape(x: Tensor) -> Tensor:
    """Shape k of a generalized Pareto fitted to exceedances x (B, M), sorted ascending, > 0.

    The empirical-Bayes estimate of Zhang & Stephens (2009) as used by PSIS, with k's sign
    flipped so that k > 0 is a heavy tail, and its weakly informative prior toward 0.5
    (Vehtari et al. 2024, Appendix C).
    """
    _, n = x.shape
    m = 30 + int(math.sqrt(n))
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    quartile = x[:, max(int(n / 4 + 0.5) - 1, 0)].unsqueeze(1)  # (B, 1)
    b = 1 / x[:, -1:] + (1 - torch.sqrt(m / (j - 0.5))) / (3 * quartile)  # (B, m) candidates
    k = torch.log1p(-b.unsqueeze(-1) * x.unsqueeze(1)).mean(-1)  # (B, m)
    profile = n * (torch.log(-b / k) - k - 1)  # profile log-likelihood of each candidate
    b_post = (torch.softmax(profile, dim=1) * b).sum(1, keepdim=True)  # posterior mean of b
    k_post = torch.log1p(-b_post * x).mean(1)
    return (n * k_post + 10 * 0.5) / (n + 10)


def pareto_khat(log_weights: Tensor) -> Tensor:
    """PSIS k̂ of the upper tail of K log-weights (K, B) -> (B,); NaN when K < 25 (a tail of
    fewer than 5 weights says nothing)."""
    lw = log_weights.double()
    k_total, batch = lw.shape
    tail = min(k_total // 5, math.ceil(3 * math.sqrt(k_total)))
    if tail < 5:
        return torch.full((batch,), float("nan"), dtype=torch.float64, device=lw.device)
    top = torch.topk(lw, tail + 1, dim=0).values  # (M + 1, B), descending
    shift = top[0]  # the largest log-weight: k̂ does not depend on the weights' scale
    cutoff = torch.exp(top[tail] - shift)  # the (M+1)-th largest weight is the threshold
    x = (torch.exp(top[:tail] - shift) - cutoff).T.flip(1)  # (B, M) exceedances, ascending
    x = x.clamp_min(torch.finfo(x.dtype).tiny)  # ties at the threshold
    return _gpd_shape(x)


def weight_diagnostics(log_weights: Tensor) -> dict[str, Tensor]:
    """``{"ess": (B,), "khat": (B,)}`` of K log-weights (K, B)."""
    return {"ess": effective_sample_size(log_weights), "khat": pareto_khat(log_weights)}


def khat_warning(khat: Tensor) -> str | None:
    """A one-line warning when more than 5 % of examples have k̂ > 0.7 (None otherwise)."""
    finite = khat[torch.isfinite(khat)]
    if finite.numel() == 0:
        return None
    bad = (finite > KHAT_THRESHOLD).sum().item()
    if bad > KHAT_WARN_FRACTION * finite.numel():
        return (
            f"Pareto k̂ > {KHAT_THRESHOLD} for {bad} of {finite.numel()} examples "
            f"({100 * bad / finite.numel():.0f} %): the importance weights are too heavy-tailed for a "
            "reliable estimate at this K (use more samples, AIS, or a better posterior)"
        )
    return None


__all__ = ["effective_sample_size", "khat_warning", "pareto_khat", "weight_diagnostics"]
