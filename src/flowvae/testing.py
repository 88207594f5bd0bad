"""Models with known answers, for checking estimators and local optimisation.

:func:`random_linear_gaussian_vae` builds a small linear-Gaussian VAE (probabilistic PCA), whose
log p(x), exact posterior and best factorised-Gaussian ELBO are known in closed form
(:mod:`flowvae.linear_gaussian`). Researchers can use it to test their own estimators.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .linear_gaussian import is_linear_gaussian, linear_gaussian_params
from .model import build_model
from .posteriors import FlowHead
from .two_layer import TwoLayerPrior


def random_linear_gaussian_vae(
    shape: tuple[int, int, int] = (1, 2, 4),
    latent_dim: int = 3,
    noise_std: float = 0.5,
    correlation: float = 0.9,
    encoder_error: float = 0.5,
    posterior: str = "diag",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    **model_options,
) -> nn.Module:
    """A small linear-Gaussian VAE with a known answer, for checking estimators.

    The columns of W share a common direction (``correlation`` in [0, 1)), so the posterior is
    strongly correlated and a factorised q cannot fit it. If the posterior head is a plain
    :class:`~flowvae.posteriors.FlowHead`, its Gaussian layer is set to a deliberately imperfect
    q: the exact posterior mean shifted by about ``encoder_error`` marginal standard deviations,
    and standard deviations ``1 + encoder_error`` times the geometric mean of the conditional
    and marginal posterior widths (so the importance weights have moderate tails).
    Other options (e.g. ``flow_steps``, ``prior``) go to :class:`~flowvae.config.ModelConfig`.
    With ``stochastic_layers=2, hidden=[]`` the model has two linear-Gaussian layers: p(z1|z2) =
    N(A z2 + a, s^2 I) with random A, a and s, and x reads the concatenation (z2, z1).
    """
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(
        encoder="linear", decoder="linear", likelihood="gaussian", latent_dim=latent_dim,
        posterior=posterior, **model_options,
    )  # fmt: skip
    torch.manual_seed(seed)  # the remaining (flow) parameters
    model = build_model(cfg, shape, binary=False).to(dtype)
    n = shape[0] * shape[1] * shape[2]
    shared = torch.randn(n, 1, generator=g, dtype=dtype)
    own = torch.randn(n, model.latent_dim, generator=g, dtype=dtype)  # every layer's units
    weight = math.sqrt(correlation) * shared + math.sqrt(1 - correlation) * own
    with torch.no_grad():
        model.decoder.out.weight.copy_(weight)
        model.decoder.out.bias.copy_(torch.randn(n, generator=g, dtype=dtype))
        log_std = math.log(noise_std) + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        model.likelihood.log_std.copy_(log_std)
        if isinstance(model.prior, TwoLayerPrior):  # p(z1|z2) linear with a constant variance
            out = model.prior.conditional.out
            out.weight.zero_()
            out.weight[:latent_dim] = torch.randn(latent_dim, latent_dim, generator=g, dtype=dtype)
            out.bias[:latent_dim] = torch.randn(latent_dim, generator=g, dtype=dtype)
            out.bias[latent_dim:] = math.log(0.7)
        if isinstance(model.posterior, FlowHead) and is_linear_gaussian(model):
            head = model.posterior.gaussian  # features (= flattened x) -> (mean, log_std)
            p = linear_gaussian_params(model)
            post_precision = torch.eye(latent_dim, dtype=dtype) + p.weight.T @ (
                p.weight * torch.exp(-2 * p.log_std).unsqueeze(-1)
            )
            covariance = torch.linalg.inv(post_precision)
            gain = covariance @ (p.weight * torch.exp(-2 * p.log_std).unsqueeze(-1)).T  # (d, n)
            shift = encoder_error * torch.randn(latent_dim, generator=g, dtype=dtype)
            marginal_std = torch.sqrt(torch.diagonal(covariance))
            head.weight.zero_()
            head.weight[:latent_dim] = gain
            head.bias[:latent_dim] = -gain @ p.bias + shift * marginal_std
            # between the conditional (1/sqrt(Lambda_ii)) and the marginal posterior widths
            conditional_std = torch.rsqrt(torch.diagonal(post_precision))
            head.bias[latent_dim:] = math.log(1 + encoder_error) + 0.5 * torch.log(
                marginal_std * conditional_std
            )
    return model


# ---------------------------------------------------------------------------------------------
# rounding bounds (Higham & Mary 2019, SIAM J. Sci. Comput. 41(5), Thm. 2.4): a sum or dot product
# of n terms with independent rounding errors is within gamma_n(lambda) ~ lambda sqrt(n) u times the
# sum of the terms' absolute values of its exact value, with probability >= 1 - 2n exp(-lambda^2/2)


def gamma(n: int, dtype: torch.dtype, confidence: float = 7.0) -> float:
    """γ̃_n(λ) = exp(λ √n u + n u² / (1 - u)) - 1 for ``dtype``'s unit roundoff u."""
    u = torch.finfo(dtype).eps / 2
    return math.expm1(confidence * math.sqrt(n) * u + n * u * u / (1 - u))


def rounding_bound(
    x: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Bound (*S, B) on |computed - exact| of Σ_j log Bernoulli(x_j; sigmoid(l_j)), l = h Wᵀ + b,
    for either formula: every term passes through at most F + P + 2 roundings (the logit's dot
    product, its softplus, the sum over pixels; or Wᵀx, its dot product with h, the sum), and
    softplus and x·l are 1-Lipschitz in l."""
    f, p = weight.shape[1], weight.shape[0]
    h, weight, bias = h.double().abs(), weight.double().abs(), bias.double().abs()
    x = x.double()
    products = ((h @ weight.t() + bias) * (1 + x)).sum(-1)  # Σ_j (|h||W_j| + |b_j|)(1 + x_j)
    logits = h @ weight.t() + bias  # a bound on |l|, so softplus(l) <= |l| + log 2
    softplus = (logits + 0.7).sum(-1)
    return gamma(f + p + 2, dtype) * (products + 4 * softplus)


__all__ = ["random_linear_gaussian_vae", "rounding_bound", "gamma"]
