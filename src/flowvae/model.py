"""The flat VAE: encoder -> posterior q(z|x) -> decoder -> likelihood p(x|z), prior N(0, I).

The model exposes what every estimator needs and nothing more (see ARCHITECTURE.md):

- ``encode(x)``: the posterior q(z|x) as a :class:`~flowvae.posteriors.Posterior`,
- ``log_prior(z)``, ``log_likelihood(x, z)``, ``log_joint(x, z)``: densities of the model,
- ``sample_prior(n)`` and ``decode_mean(z)`` / ``decode_sample(z)`` for images.

Latents are flat vectors (*S, B, D); the hierarchical model offers the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .estimators import ElboTerms
from .likelihoods import build_likelihood
from .nets import build_decoder, build_encoder
from .numerics import log_standard_normal
from .posteriors import Posterior, build_posterior


class VAE(nn.Module):
    """A VAE with one stochastic layer.

    Arguments:
        cfg: the model section of the config.
        shape: image shape (C, H, W).
        binary: whether pixels are binary (else 8-bit, values k/255, or continuous).
    """

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int], binary: bool):
        super().__init__()
        self.shape = tuple(shape)
        self.latent_dim = cfg.latent_dim
        self.likelihood = build_likelihood(cfg.likelihood, binary, self.shape, cfg.mixtures)
        self.encoder = build_encoder(cfg, self.shape)
        self.posterior = build_posterior(cfg, self.encoder.out_features)
        self.decoder = build_decoder(cfg, self.shape, self.likelihood.params)

    def forward(self, x: Tensor, samples: int = 1) -> ElboTerms:
        """The ELBO's terms for ``samples`` draws of z per example (what training differentiates)."""
        z, log_q = self.encode(x).rsample_and_log_prob((samples,))
        return ElboTerms(self.log_likelihood(x, z), self.log_prior(z), log_q)

    def data_init(self, x: Tensor) -> None:
        """Data-dependent initialisation from a first batch: none for the flat VAE."""

    def encode(self, x: Tensor) -> Posterior:
        return self.posterior(self.encoder(x))

    def log_prior(self, z: Tensor) -> Tensor:
        return log_standard_normal(z).sum(-1)

    def _decode(self, z: Tensor) -> Tensor:
        out = self.decoder(z.reshape(-1, z.shape[-1]))  # (N, P, C, H, W)
        return out.view(*z.shape[:-1], *out.shape[1:])

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z): x (B, C, H, W), z (*S, B, D) -> (*S, B)."""
        return self.likelihood.log_prob(x, self._decode(z))

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.log_prior(z) + self.log_likelihood(x, z)

    def sample_prior(
        self, sample_shape: Sequence[int], like: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """z ~ N(0, temperature^2 I), (*sample_shape, D)."""
        p = next(self.parameters()) if like is None else like
        return temperature * torch.randn(*sample_shape, self.latent_dim, dtype=p.dtype, device=p.device)

    def decode_mean(self, z: Tensor) -> Tensor:
        return self.likelihood.mean(self._decode(z))

    def decode_sample(self, z: Tensor) -> Tensor:
        return self.likelihood.sample(self._decode(z))


def build_model(cfg: ModelConfig, shape: tuple[int, int, int], binary: bool) -> nn.Module:
    """The model named by ``cfg.type``."""
    if cfg.type == "flat":
        return VAE(cfg, shape, binary)
    if cfg.type == "hierarchical":
        from .hierarchical import HierarchicalVAE

        return HierarchicalVAE(cfg, shape, binary)
    raise ValueError(f"unknown model.type {cfg.type!r}; available: flat, hierarchical")
