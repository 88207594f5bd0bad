"""The contract between models, posteriors and estimators: the lowest model-facing layer.

Three things meet here, and everything above is written against them:

- :class:`Posterior`: q(z|x) for a batch, as a reparametrised map of a standard-normal base,
  ``z, ladj = q.transform(eps)`` with ``log q(z|x) = log N(eps; 0, I) - ladj``.
  :class:`FlowPosterior` is a diagonal Gaussian followed by conditional bijections
  (:class:`ConditionalBijection`), composed by :func:`compose`, the one composition loop of
  every flow (the flow prior's too).
- :class:`Prior`: p(z) of the flat model, exact ``log_prob``, ``sample`` and ``moments``.
- :class:`ElboTerms`: the per-sample terms a model's forward pass returns; its
  :func:`log_weight` is the one importance log-weight formula of the package.
- :class:`LatentVariableModel`: what ELBO, IWAE, AIS, BDMC, local optimisation and training
  use of a model, and nothing more. The flat :class:`~flowvae.vae.VAE` and the
  :class:`~flowvae.hierarchical.HierarchicalVAE` both satisfy it.

Latents are flat vectors: z is (*S, B, D), log-densities are (*S, B).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from . import noise
from .numerics import log_standard_normal


def log_weight(log_joint: Tensor, log_q: Tensor) -> Tensor:
    """The importance log-weight log p(x, z) - log q(z|x); (*S, B).

    For an auxiliary posterior ``log_q`` already holds log q(z,v|x) - log r(v|x,z), so this is
    the auxiliary bound's weight. ELBO (its mean), IWAE (its log-mean-exp), local optimisation
    and AIS from q's base all use this one formula.
    """
    return log_joint - log_q


class ConditionalBijection(Protocol):
    """One flow step: ``(z, context) -> (z', log|det dz'/dz|)``; z is (..., D), context (..., C)."""

    def __call__(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]: ...


def compose(
    steps: Sequence[ConditionalBijection], z: Tensor, context: Tensor, ladj: Tensor
) -> tuple[Tensor, Tensor]:
    """z through ``steps`` in order, each step's log|det| added to ``ladj``: the one composition
    loop of every flow (the context broadcasts against z)."""
    for step in steps:
        z, step_ladj = step(z, context)
        ladj = ladj + step_ladj
    return z, ladj


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
        """eps (*S, B, base_dim) -> z (*S, B, D) and ladj (*S, B)."""
        raise NotImplementedError

    def sample_base(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = (*sample_shape, self.batch_size, self.base_dim)
        return noise.randn(shape, batch_dim=-2, dtype=self._like.dtype, device=self._like.device)

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

    Arguments:
        mean, log_std: (B, D) parameters of the base Gaussian.
        context: (B, C) the encoder's context h given to every step (None without steps).
        steps: the flow steps, applied in order.
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
        return compose(self.steps, z, self.context, ladj)  # the context (B, C) broadcasts against z


@dataclass
class ElboTerms:
    """Per-sample terms of the ELBO, each (*S, B)."""

    log_likelihood: Tensor  # log p(x|z)
    log_prior: Tensor  # log p(z)
    log_q: Tensor  # log q(z|x) (for auxiliary posteriors: log q(z,v|x) - log r(v|x,z))
    kl_groups: Tensor | None = None  # (*S, B, G) per-group KL for free bits (hierarchical model)

    @property
    def log_weight(self) -> Tensor:
        return log_weight(self.log_likelihood + self.log_prior, self.log_q)

    @property
    def kl(self) -> Tensor:
        """Single-sample estimate of KL(q(z|x) || p(z))."""
        return self.log_q - self.log_prior


@runtime_checkable
class Prior(Protocol):
    """p(z) of the flat model over flat latents z (*S, B, D): what the model's ``log_prior`` and
    ``sample_prior`` use (a :class:`~flowvae.priors.PriorRecord` names one for ``model.prior``).

    ``model`` is the model the prior belongs to (a VampPrior's components are its encoder at
    learned pseudo-inputs); priors that do not need it ignore it.
    """

    latent_dim: int

    def log_prob(self, z: Tensor, model: Any = None) -> Tensor:
        """Exact, normalised log p(z): (*S, B)."""
        ...

    def sample(
        self, sample_shape: Sequence[int], model: Any = None, like: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:  # fmt: skip
        """z (*sample_shape, D), its std scaled by ``temperature``; every draw through
        :mod:`flowvae.noise` (the last sample dim indexes examples)."""
        ...

    def moments(self, model: Any = None) -> tuple[Tensor, Tensor] | None:
        """Mean (D,) and covariance (D, D) in float64 when p(z) is exactly Gaussian, else None
        (the closed forms of :mod:`flowvae.linear_gaussian` need them)."""
        ...


def map_rows(
    n: int, step: int, fn: Callable[[Tensor], tuple[Tensor, ...]], *, device=None, dim: int = 0
) -> list[Tensor]:
    """``fn`` over rows 0..n-1 in passes of at most ``step`` rows (``fn`` gets each pass's
    index tensor), its outputs concatenated along ``dim`` (autograd flows through). The one way
    the models bound an evaluation pass's memory: the flat VAE over blocks of samples, the
    hierarchical one over images and (sample, image) rows."""
    step = max(1, step)
    parts = [fn(torch.arange(start, min(start + step, n), device=device)) for start in range(0, n, step)]
    return [torch.cat(p, dim=dim) for p in zip(*parts, strict=True)]


@runtime_checkable
class LatentVariableModel(Protocol):
    """What every estimator, local optimisation and the training loop use of a model.

    ``x`` is a batch of images (B, C, H, W); ``z`` flat latents (*S, B, D).
    """

    latent_dim: int
    shape: tuple[int, ...]
    likelihood: Any  # p(x|z)'s family (``flowvae.likelihoods``): ``discrete`` says if bits/dim mean anything

    def __call__(self, x: Tensor, samples: int = 1) -> ElboTerms:
        """One pass: z ~ q(z|x) (``samples`` draws per example) and the ELBO's terms."""
        ...

    def encode(self, x: Tensor) -> Posterior: ...

    def log_prior(self, z: Tensor) -> Tensor: ...

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor: ...

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor: ...

    def sample_prior(
        self, sample_shape: Sequence[int], like: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor: ...

    def decode_mean(self, z: Tensor) -> Tensor: ...

    def decode_sample(self, z: Tensor) -> Tensor:
        """x ~ p(x|z) at z (N, D) (BDMC simulates data with it)."""
        ...

    def data_init(self, x: Tensor) -> None:
        """Data-dependent initialisation from the first training batch (may do nothing)."""
        ...


__all__ = [
    "ConditionalBijection", "ElboTerms", "FlowPosterior", "LatentVariableModel", "Posterior", "Prior",
    "compose", "log_weight", "map_rows",
]  # fmt: skip
