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
from .linear_gaussian import linear_gaussian_params
from .model import build_model
from .posteriors import FlowHead


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
    Other options (e.g. ``flow_steps``) go to :class:`~flowvae.config.ModelConfig`.
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
    own = torch.randn(n, latent_dim, generator=g, dtype=dtype)
    weight = math.sqrt(correlation) * shared + math.sqrt(1 - correlation) * own
    with torch.no_grad():
        model.decoder.out.weight.copy_(weight)
        model.decoder.out.bias.copy_(torch.randn(n, generator=g, dtype=dtype))
        log_std = math.log(noise_std) + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        model.likelihood.log_std.copy_(log_std)
        if isinstance(model.posterior, FlowHead):
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


__all__ = ["random_linear_gaussian_vae"]
