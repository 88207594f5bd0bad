"""Approximate posteriors q(z|x) as conditional distributions.

Every posterior in flowvae is a *reparametrised* distribution: a standard-normal base variable
``eps`` (size ``base_dim``) pushed through a map conditioned on the encoder's output,

    z, ladj = posterior.transform(eps)            log q(z|x) = log N(eps; 0, I) - ladj

For a plain flow ``ladj`` is log|det dz/deps|. For a posterior with auxiliary variables
(``realnvp-aux``) the map also produces v, and ``ladj`` additionally holds the reverse model's
log r(v|x, z), so that ``log p(x, z) - log q`` is exactly the auxiliary bound's log-weight.
ELBO, IWAE, AIS (which runs HMC in eps-space when started from q's base) and local optimisation
use only this interface; they never look at a posterior's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Protocol

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .numerics import log_standard_normal


class ConditionalBijection(Protocol):
    """One flow step: ``(z, context) -> (z', log|det dz'/dz|)``; z is (..., D), context (..., C)."""

    def __call__(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]: ...


class Posterior:
    """q(z|x) for a batch of B examples, as a map of a standard-normal base.

    Subclasses implement :meth:`transform`. Shapes: eps is (*S, B, base_dim), z is
    (*S, B, latent_dim), log-densities are (*S, B).
    """

    def __init__(self, base_dim: int, batch_size: int, like: Tensor):
        self.base_dim = base_dim
        self.batch_size = batch_size
        self._like = like  # a tensor whose dtype/device the samples follow

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def sample_base(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = (*sample_shape, self.batch_size, self.base_dim)
        return torch.randn(shape, dtype=self._like.dtype, device=self._like.device)

    @staticmethod
    def base_log_prob(eps: Tensor) -> Tensor:
        return log_standard_normal(eps).sum(-1)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        """Reparametrised samples z (*S, B, D) and log q(z|x) (*S, B)."""
        eps = self.sample_base(sample_shape)
        z, ladj = self.transform(eps)
        return z, self.base_log_prob(eps) - ladj


class FlowPosterior(Posterior):
    """A diagonal Gaussian N(mean, exp(log_std)^2) followed by flow steps conditioned on h.

    With no steps this is the factorised Gaussian ``diag``.
    """

    def __init__(
        self,
        mean: Tensor,
        log_std: Tensor,
        context: Tensor | None = None,
        steps: Sequence[ConditionalBijection] = (),
    ):
        super().__init__(mean.shape[-1], mean.shape[0], mean)
        self.mean, self.log_std, self.context, self.steps = mean, log_std, context, steps

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        z = self.mean + torch.exp(self.log_std) * eps
        ladj = self.log_std.sum(-1).expand(z.shape[:-1])
        for step in self.steps:  # the context (B, C) broadcasts against z (*S, B, D)
            z, step_ladj = step(z, self.context)
            ladj = ladj + step_ladj
        return z, ladj


class FlowHead(nn.Module):
    """Maps encoder features (B, F) to a :class:`FlowPosterior`.

    Arguments:
        feature_dim: size of the encoder's output.
        latent_dim: size of z.
        context_dim: size of the context vector h given to the flow steps.
        steps: the flow steps (empty for ``diag``).
    """

    def __init__(
        self, feature_dim: int, latent_dim: int, context_dim: int = 0, steps: Sequence[nn.Module] = ()
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.gaussian = nn.Linear(feature_dim, 2 * latent_dim)
        self.context = nn.Linear(feature_dim, context_dim) if steps else None
        self.steps = nn.ModuleList(steps)

    def forward(self, features: Tensor) -> FlowPosterior:
        mean, log_std = self.gaussian(features).chunk(2, dim=-1)
        context = self.context(features) if self.context is not None else None
        return FlowPosterior(mean, log_std, context, list(self.steps))


def _flows() -> ModuleType:
    """The module of flow steps, imported on use: it builds on the classes above."""
    from . import flows

    return flows


# name -> builder(cfg, feature_dim) -> posterior head module (features -> Posterior)
POSTERIORS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "diag": lambda cfg, feature_dim: FlowHead(feature_dim, cfg.latent_dim),
    "iaf": lambda cfg, feature_dim: _flows().build_iaf(cfg, feature_dim),
    "iaf-mean": lambda cfg, feature_dim: _flows().build_iaf(cfg, feature_dim, mean_only=True),
    "planar": lambda cfg, feature_dim: _flows().build_planar(cfg, feature_dim),
    "sylvester-orthogonal": lambda cfg, f: _flows().build_sylvester(cfg, f, "orthogonal"),
    "sylvester-householder": lambda cfg, f: _flows().build_sylvester(cfg, f, "householder"),
    "sylvester-triangular": lambda cfg, f: _flows().build_sylvester(cfg, f, "triangular"),
    "realnvp": lambda cfg, feature_dim: _flows().build_realnvp(cfg, feature_dim),
    "realnvp-aux": lambda cfg, feature_dim: _flows().build_realnvp_aux(cfg, feature_dim),
}


def build_posterior(cfg: ModelConfig, feature_dim: int) -> nn.Module:
    if cfg.posterior not in POSTERIORS:
        raise ValueError(
            f"unknown posterior {cfg.posterior!r}; available: {', '.join(sorted(POSTERIORS))}"
        )
    return POSTERIORS[cfg.posterior](cfg, feature_dim)
