"""Priors p(z) of the flat VAE: the standard normal, the VampPrior and a normalizing-flow prior.

A prior satisfies :class:`flowvae.core.Prior`:

    prior.log_prob(z, model) -> (*S, B)       exact log p(z) for z (*S, B, D)
    prior.sample(sample_shape, model, like, temperature) -> (*sample_shape, D)
    prior.moments(model) -> (mean (D,), covariance (D, D)) in float64, or None
    prior.base(z, model), prior.from_base(u, model)   its standard-normal base u of z and back
                                                       (after training; none for a VampPrior)

``model`` is the VAE the prior belongs to: the VampPrior's components are that model's encoder
at learned pseudo-inputs (``model.encoder`` and ``model.posterior.base_gaussian``); the other
priors ignore it. Every estimator reaches a prior only through the model's ``log_prior`` and
``sample_prior``, so ELBO, IWAE, AIS, BDMC and local optimisation work with each of them; no
code path uses a closed-form KL: the reported KL is the Monte Carlo log q(z|x) - log p(z)
(:attr:`~flowvae.core.ElboTerms.kl`). ``moments`` is not None when the prior is exactly
Gaussian (standard normal, a one-component VampPrior): what the closed forms of
:mod:`flowvae.linear_gaussian` need.

Every prior class is built as ``cls(latent, shape, **options)``, its options (``options``) the
:class:`~flowvae.config.PriorOptions` of the same ``model.*`` names and defaults.
:data:`PRIORS` names the priors of ``model.prior`` for the flat model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import noise
from .config import ConfigError, PriorOptions
from .core import compose
from .flows import AffineCoupling, alternating_mask
from .numerics import log_gaussian_mixture, log_standard_normal

# Tomczak & Welling's pseudo-input initialisation N(0.05, 0.01^2), before the hardtanh(0, 1) that
# keeps them in the data's range (their code's default mean, -0.05, puts every pseudo-input below 0,
# where hardtanh passes no gradient: the pseudo-inputs would never move)
PSEUDO_INPUT_MEAN = 0.05
PSEUDO_INPUT_STD = 0.01


def _like(model: nn.Module | None, like: Tensor | None) -> Tensor:
    """The tensor whose dtype and device samples follow."""
    if like is not None:
        return like
    if model is None:
        raise ValueError("sampling a prior needs like= or the model it belongs to")
    return next(model.parameters())


class StandardNormal(nn.Module):
    """``standard``: p(z) = N(0, I), the flat VAE's prior of Kingma & Welling (2014)."""

    options: tuple[str, ...] = ()

    def __init__(self, latent: int, shape: Sequence[int] = ()):
        super().__init__()
        self.latent_dim = latent

    def log_prob(self, z: Tensor, model: nn.Module | None = None) -> Tensor:
        return log_standard_normal(z).sum(-1)

    def sample(
        self, sample_shape: Sequence[int], model: nn.Module | None = None, like: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:  # fmt: skip
        p = _like(model, like)
        shape = (*sample_shape, self.latent_dim)  # the last sample dim indexes examples
        return temperature * noise.randn(shape, batch_dim=-2, dtype=p.dtype, device=p.device)

    def base(self, z: Tensor, model: nn.Module | None = None) -> Tensor:
        """The standard-normal base u of z (..., D) (here z itself; see :class:`FlowPrior`)."""
        return z

    def from_base(self, u: Tensor, model: nn.Module | None = None) -> Tensor:
        """z of the base u (..., D): the inverse of :meth:`base`."""
        return u

    def moments(self, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        d = self.latent_dim
        return torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)


class VampPrior(nn.Module):
    """``vampprior``: p(z) = (1/K) Σ_k q(z|u_k), K learned pseudo-inputs u_k (Tomczak & Welling
    2018, arXiv 1705.07120).

    The pseudo-inputs are ``hardtanh(w_k, 0, 1)`` images with w_k initialised from N(0.05,
    0.01^2), as in the authors' code. Each component is the model's encoder at u_k followed by
    the base diagonal Gaussian of its posterior head (``model.posterior.base_gaussian``): for a
    ``diag`` posterior exactly q(z|u_k); for a flow posterior the Gaussian the flow starts from
    (the flow's own density at z would need its inverse, which most flows lack). Either way
    log p(z) is an exact, normalised mixture density. With a two-layer model the components
    are those of the top layer.

    Arguments:
        latent: D, the size of z (of the top layer).
        shape: the image shape (C, H, W) of the pseudo-inputs.
        prior_components: K.
    """

    options = ("prior_components",)

    def __init__(
        self, latent: int, shape: Sequence[int], prior_components: int = PriorOptions.prior_components
    ):
        super().__init__()
        self.shape, self.latent_dim = tuple(shape), latent
        self.pseudo_inputs = nn.Parameter(
            torch.empty(prior_components, math.prod(self.shape)).normal_(PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD)
        )

    def inputs(self) -> Tensor:
        """The pseudo-inputs u (K, C, H, W), in [0, 1]."""
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0).view(-1, *self.shape)

    def components(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """(mean, log_std), each (K, D): the components' Gaussians."""
        return model.posterior.base_gaussian(model.encoder(self.inputs()))

    def log_prob(self, z: Tensor, model: nn.Module) -> Tensor:
        return log_gaussian_mixture(z, *self.components(model))

    @torch.no_grad()
    def sample(
        self, sample_shape: Sequence[int], model: nn.Module, like: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:  # fmt: skip
        """A component drawn uniformly, then z from it (its std scaled by ``temperature``)."""
        mean, log_std = self.components(model)
        p = _like(model, like)
        count = mean.shape[0]  # a uniform component per draw; the last sample dim indexes examples
        u = noise.rand(tuple(sample_shape), batch_dim=-1, dtype=torch.float64, device=mean.device)
        k = (u * count).long().clamp_max(count - 1)
        shape = (*sample_shape, mean.shape[-1])
        eps = noise.randn(shape, batch_dim=-2, dtype=mean.dtype, device=mean.device)
        return (mean[k] + temperature * torch.exp(log_std[k]) * eps).to(p)

    def base(self, z: Tensor, model: nn.Module | None = None) -> Tensor:
        raise ConfigError(
            "the VampPrior is a mixture with no standard-normal base: interpolate in the latent space"
        )

    from_base = base

    def moments(self, model: nn.Module) -> tuple[Tensor, Tensor] | None:
        if self.pseudo_inputs.shape[0] != 1:
            return None
        with torch.no_grad():
            mean, log_std = (t[0].double() for t in self.components(model))
        return mean, torch.diag(torch.exp(2 * log_std))


class FlowPrior(StandardNormal):
    """``flow``: p(z) a normalizing flow on N(0, I): ``steps`` affine couplings (RealNVP, Dinh et
    al. 2017, arXiv 1605.08803) with alternating masks, in the density direction.

    The couplings map z to the base u (u = f(z), log|det du/dz| summed over the steps), so
    log p(z) = log N(f(z); 0, I) + log|det df/dz| is one pass; a sample inverts each coupling
    exactly (also one pass). Couplings scale both ways (unlike IAF's gate, which only contracts),
    and their output layers start small, so the prior starts at N(0, I).

    Arguments:
        latent: D.
        shape: the images' (unused).
        prior_flow_steps: couplings.
        prior_flow_hidden, prior_flow_layers: width and hidden layers of each coupling's MLP.
    """

    options = ("prior_flow_steps", "prior_flow_hidden", "prior_flow_layers")

    def __init__(
        self, latent: int, shape: Sequence[int] = (), prior_flow_steps: int = PriorOptions.prior_flow_steps,
        prior_flow_hidden: int = PriorOptions.prior_flow_hidden,
        prior_flow_layers: int = PriorOptions.prior_flow_layers,
    ):  # fmt: skip
        super().__init__(latent)
        self.steps = nn.ModuleList(
            AffineCoupling(latent, 0, alternating_mask(latent, k), hidden_features=prior_flow_hidden,
                           num_layers=prior_flow_layers)  # fmt: skip
            for k in range(prior_flow_steps)
        )

    def to_base(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """u = f(z) and log|det du/dz|: (..., D) and (...)."""
        # unconditional: an empty context broadcasts against z
        return compose(self.steps, z, z.new_zeros(0), z.new_zeros(z.shape[:-1]))

    def log_prob(self, z: Tensor, model: nn.Module | None = None) -> Tensor:
        u, ladj = self.to_base(z)
        return super().log_prob(u) + ladj

    @torch.no_grad()
    def sample(
        self, sample_shape: Sequence[int], model: nn.Module | None = None, like: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:  # fmt: skip
        """u ~ N(0, temperature^2 I) (the base's draw) through the inverse couplings, last first."""
        return self.from_base(super().sample(sample_shape, model, like, temperature))

    def base(self, z: Tensor, model: nn.Module | None = None) -> Tensor:
        return self.to_base(z)[0]

    def from_base(self, u: Tensor, model: nn.Module | None = None) -> Tensor:
        context = u.new_zeros(0)
        for step in reversed(self.steps):
            u = step.inverse(u, context)
        return u

    def moments(self, model: nn.Module | None = None) -> None:
        return None


@dataclass(frozen=True)
class PriorRecord:
    """A named prior of the flat model.

    Attributes:
        name: its ``model.prior`` value.
        prior: the class, built as ``prior(latent, shape, **options)``; its ``options`` are a
            subset of :data:`~flowvae.config.PRIOR_OPTION_KEYS`, the ``model.*`` keys of the
            same names.
    """

    name: str
    prior: type[nn.Module]

    @property
    def options(self) -> tuple[str, ...]:
        return self.prior.options

    def build(self, latent: int, shape: Sequence[int], **options) -> nn.Module:
        return self.prior(latent, tuple(shape), **{k: v for k, v in options.items() if k in self.options})


PRIORS: dict[str, PriorRecord] = {
    r.name: r
    for r in [
        PriorRecord("standard", StandardNormal),
        PriorRecord("vampprior", VampPrior),
        PriorRecord("flow", FlowPrior),
    ]
}


def build_prior(name: str, latent: int, shape: Sequence[int], **options) -> nn.Module:
    """The prior ``name`` over D = ``latent`` dimensions (``shape``: the images, for
    pseudo-inputs); options it does not take are ignored."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; available: {', '.join(PRIORS)}")
    return PRIORS[name].build(latent, shape, **options)


__all__ = ["PRIORS", "FlowPrior", "PriorRecord", "StandardNormal", "VampPrior", "build_prior"]
