"""Numerical primitives: log-densities, KL divergences, log-mean-exp, unit conversions.

Pure functions of tensors, elementwise unless stated. Every estimator and model in flowvae
computes its densities through this module, so each formula exists once and is tested once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def log_normal(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(log_std)^2)."""
    return -0.5 * (((x - mean) * torch.exp(-log_std)) ** 2 + LOG_2PI) - log_std


def log_standard_normal(x: Tensor) -> Tensor:
    """Elementwise log N(x; 0, 1)."""
    return -0.5 * (x**2 + LOG_2PI)


def kl_normal(mean_q: Tensor, log_std_q: Tensor, mean_p: Tensor, log_std_p: Tensor) -> Tensor:
    """Elementwise KL(N(mean_q, std_q^2) || N(mean_p, std_p^2))."""
    var_ratio = torch.exp(2 * (log_std_q - log_std_p))
    t = ((mean_q - mean_p) * torch.exp(-log_std_p)) ** 2
    return 0.5 * (var_ratio + t - 1) - (log_std_q - log_std_p)


def log_gaussian_mixture(z: Tensor, means: Tensor, log_stds: Tensor) -> Tensor:
    """log (1/K) Σ_k N(z; means_k, diag exp(log_stds_k)^2): z (..., D), means and log_stds (K, D)
    -> (...), in z's dtype (float32 at least).

    Each component's quadratic form Σ_d (z_d - m_kd)^2 / s_kd^2 is expanded into matrix products
    (z^2 · 1/s^2 - 2 z · m/s^2 + Σ m^2/s^2), so memory is (..., K), never (..., K, D); the
    expansion cancels (terms of order (|z| / s)^2 leave a difference of order 1), so it runs in
    float64, which autocast leaves alone.
    """
    lead, d = z.shape[:-1], z.shape[-1]
    z64 = z.reshape(-1, d).double()
    means, log_stds = means.double(), log_stds.double()
    precision = torch.exp(-2 * log_stds)  # (K, D)
    quad = (z64**2) @ precision.T - 2 * z64 @ (means * precision).T + (means**2 * precision).sum(-1)
    log_components = -0.5 * (quad + d * LOG_2PI) - log_stds.sum(-1)  # (N, K)
    out = torch.logsumexp(log_components, dim=-1) - math.log(means.shape[0])
    return out.view(lead).to(torch.promote_types(z.dtype, torch.float32))


def log_bernoulli(x: Tensor, logits: Tensor) -> Tensor:
    """Elementwise log Bernoulli(x; sigmoid(logits)) for x in {0, 1}, stable for large |logits|."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")


def log_bernoulli_linear(
    features: Tensor, weight: Tensor, bias: Tensor, x_weight: Tensor, x_bias: Tensor
) -> Tensor:
    """Σ_j log Bernoulli(x_j; sigmoid(l_j)) for the logits of a linear layer, l = h Wᵀ + b.

    Σ_j log Bernoulli(x_j; sigmoid(l_j)) = Σ_j x_j l_j - Σ_j softplus(l_j), and
    Σ_j x_j l_j = h · (Wᵀ x) + b · x: with Wᵀx and b·x computed once per image, the logits are
    only formed for the softplus sum, never multiplied by an expanded copy of x.

    Arguments:
        features: h (*S, B, F), the layer's input.
        weight, bias: W (P, F) and b, (P,) or per image (B, P).
        x_weight, x_bias: Wᵀx (B, F) and b·x (B,) of the binary data x (B, P).

    Returns:
        (*S, B), equal to ``log_bernoulli(x, h @ W.T + b).sum(-1)`` up to float rounding.
    """
    lead = features.shape[:-1]
    if bias.dim() == 1:
        logits = torch.addmm(bias, features.reshape(-1, features.shape[-1]), weight.t())  # (S*B, P)
    else:  # (B, P): broadcast over the samples
        logits = torch.matmul(features, weight.t()).add_(bias)
    # above the threshold softplus(l) = l to the dtype's precision (torch's default, 20, is
    # exact only in float32)
    threshold = -math.log(torch.finfo(logits.dtype).eps)
    softplus_sum = F.softplus(logits, threshold=threshold).sum(-1).view(lead)
    return (features * x_weight).sum(-1) + x_bias - softplus_sum


def log_sigmoid_difference(plus: Tensor, minus: Tensor) -> Tensor:
    """Elementwise log(sigmoid(plus) - sigmoid(minus)) for plus > minus, without cancellation:
    log sigmoid(plus) + log(1 - exp(minus - plus)) + log sigmoid(-minus)."""
    return (plus - F.softplus(plus)) + torch.log(-torch.expm1(minus - plus)) + (-minus - F.softplus(-minus))


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """Elementwise log-probability of 8-bit values under a discretized logistic.

    ``x`` holds k/(bins-1) for k in 0..bins-1; internally it is mapped to [-1, 1] with bins of
    width 2/(bins-1). The outermost bins take the logistic's tails, so the probabilities of the
    ``bins`` values sum to one (Salimans et al. 2017, PixelCNN++, arXiv 1701.05517).
    """
    x = 2 * x - 1
    half = 1.0 / (bins - 1)
    centered = x - mean
    inv_scale = torch.exp(-log_scale)
    plus = inv_scale * (centered + half)
    minus = inv_scale * (centered - half)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the k=0 bin
    log_sf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the k=bins-1 bin
    log_delta = log_sigmoid_difference(plus, minus)
    mid = torch.where(x > 1 - half, log_sf_minus, log_delta)
    return torch.where(x < -1 + half, log_cdf_plus, mid)


def discretized_logistic_mixture_log_prob(
    x: Tensor, logit_weights: Tensor, means: Tensor, log_scales: Tensor, bins: int = 256
) -> Tensor:
    """Elementwise log-probability under a mixture of discretized logistics.

    ``logit_weights``, ``means`` and ``log_scales`` carry the mixture components in their last
    dimension; ``x`` does not (it is broadcast against them).
    """
    comp = discretized_logistic_log_prob(x.unsqueeze(-1), means, log_scales, bins)
    return torch.logsumexp(comp + torch.log_softmax(logit_weights, dim=-1), dim=-1)


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """log(mean(exp(x))) along ``dim``, stable: the importance-sampling average of weights."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def bits_per_dim(nats: float | Tensor, dims: int) -> float | Tensor:
    """Convert a negative log-likelihood in nats per example to bits per dimension."""
    return nats / (dims * math.log(2))
