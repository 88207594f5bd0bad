"""Posterior heads: modules that map encoder features to a q(z|x), built from plain numbers.

Every head maps features (B, F) to a :class:`~flowvae.core.Posterior`: a reparametrised map of
a standard-normal base (see :mod:`flowvae.core`). A flow head is a diagonal Gaussian followed by
flow steps (:mod:`flowvae.flows`) conditioned on a context vector h computed from the features;
all of them share the composition loop of :class:`~flowvae.core.FlowPosterior`. ELBO, IWAE,
AIS and local optimisation use only the Posterior interface; they never look at a head's name.

Put a flowvae posterior on your own features::

    >>> import torch
    >>> from flowvae import posteriors
    >>> q = posteriors.IAF(features=16, latent=4, flow_steps=2, flow_hidden=32)
    >>> z, log_q = q(torch.randn(8, 16)).rsample_and_log_prob((3,))
    >>> tuple(z.shape), tuple(log_q.shape)
    ((3, 8, 4), (3, 8))

:data:`POSTERIORS` names every head for configs and the CLI (``model.posterior``); each record
knows its family, which is what the inference-gap analysis needs (q*'s family is q's own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .config import FlowSize
from .core import FlowPosterior
from .flows import (
    AffineCoupling,
    AuxiliaryHead,
    HouseholderSylvesterStep,
    OrthogonalSylvesterStep,
    PlanarStep,
    TriangularSylvesterStep,
    alternating_mask,
)
from .made import IAFMeanStep, IAFStep, alternating_order

SIZE = FlowSize()  # the heads' defaults


class FlowHead(nn.Module):
    """Maps encoder features (B, F) to a :class:`~flowvae.core.FlowPosterior`.

    Arguments:
        features: F, the size of the encoder's output (0: a non-amortized head whose Gaussian
            parameters are its biases, as in local optimisation).
        latent: D, the size of z.
        context: C, the size of the context vector h given to the flow steps.
        steps: the flow steps (empty for ``diag``).
    """

    def __init__(self, features: int, latent: int, context: int = 0, steps: Sequence[nn.Module] = ()):
        super().__init__()
        self.latent_dim = latent
        self.gaussian = nn.Linear(features, 2 * latent)
        self.context = nn.Linear(features, context) if steps else None
        self.steps = nn.ModuleList(steps)

    def base_gaussian(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std), each (B, D): the diagonal Gaussian the flow starts from."""
        mean, log_std = self.gaussian(features).chunk(2, dim=-1)
        return mean, log_std

    def forward(self, features: Tensor) -> FlowPosterior:
        mean, log_std = self.base_gaussian(features)
        context = self.context(features) if self.context is not None else None
        return FlowPosterior(mean, log_std, context, list(self.steps))


class Diagonal(FlowHead):
    """``diag``: the factorised Gaussian N(mean(x), diag std(x)^2) (Kingma & Welling 2014)."""

    def __init__(self, features: int, latent: int):
        super().__init__(features, latent)


class IAF(FlowHead):
    """``iaf``: inverse autoregressive flow (Kingma et al. 2016, arXiv 1606.04934).

    ``flow_steps`` MADE steps with the gated update, variable order reversed between steps, each
    MADE with ``flow_layers`` hidden layers of ``flow_hidden`` units taking the context h (size
    ``context_dim``). ``mean_only`` gives ``iaf-mean`` (a shift-only, volume-preserving update).
    """

    def __init__(
        self,
        features: int,
        latent: int,
        flow_steps: int = SIZE.flow_steps,
        flow_hidden: int = SIZE.flow_hidden,
        flow_layers: int = SIZE.flow_layers,
        context_dim: int = SIZE.context_dim,
        mean_only: bool = False,
    ):
        step = IAFMeanStep if mean_only else IAFStep
        flow = [
            step(latent, context_dim, flow_hidden, flow_layers, alternating_order(latent, k))
            for k in range(flow_steps)
        ]
        super().__init__(features, latent, context_dim, flow)


class IAFMean(IAF):
    """``iaf-mean``: IAF whose steps only shift (z' = z + m(z, h)); log|det| = 0."""

    def __init__(
        self,
        features: int,
        latent: int,
        flow_steps: int = SIZE.flow_steps,
        flow_hidden: int = SIZE.flow_hidden,
        flow_layers: int = SIZE.flow_layers,
        context_dim: int = SIZE.context_dim,
    ):
        super().__init__(features, latent, flow_steps, flow_hidden, flow_layers, context_dim, mean_only=True)


class Planar(FlowHead):
    """``planar``: amortized planar flow steps (Rezende & Mohamed 2015, arXiv 1505.05770)."""

    def __init__(
        self, features: int, latent: int, flow_steps: int = SIZE.flow_steps,
        context_dim: int = SIZE.context_dim,
    ):  # fmt: skip
        flow = [PlanarStep(latent, context_dim) for _ in range(flow_steps)]
        super().__init__(features, latent, context_dim, flow)


class SylvesterOrthogonal(FlowHead):
    """``sylvester-orthogonal``: Q with ``num_ortho_vecs`` orthonormal columns (van den Berg et
    al. 2018, arXiv 1803.05649), orthogonalised by Björck iterations."""

    def __init__(
        self,
        features: int,
        latent: int,
        flow_steps: int = SIZE.flow_steps,
        num_ortho_vecs: int = SIZE.num_ortho_vecs,
        context_dim: int = SIZE.context_dim,
    ):
        m = min(num_ortho_vecs, latent)
        flow = [OrthogonalSylvesterStep(latent, context_dim, m) for _ in range(flow_steps)]
        super().__init__(features, latent, context_dim, flow)


class SylvesterHouseholder(FlowHead):
    """``sylvester-householder``: Q a product of ``num_householder`` reflections (arXiv 1803.05649)."""

    def __init__(
        self,
        features: int,
        latent: int,
        flow_steps: int = SIZE.flow_steps,
        num_householder: int = SIZE.num_householder,
        context_dim: int = SIZE.context_dim,
    ):
        flow = [HouseholderSylvesterStep(latent, context_dim, num_householder) for _ in range(flow_steps)]
        super().__init__(features, latent, context_dim, flow)


class SylvesterTriangular(FlowHead):
    """``sylvester-triangular``: Q the identity or the reversal permutation, alternating."""

    def __init__(
        self, features: int, latent: int, flow_steps: int = SIZE.flow_steps,
        context_dim: int = SIZE.context_dim,
    ):  # fmt: skip
        flow = [TriangularSylvesterStep(latent, context_dim, reverse=k % 2 == 1) for k in range(flow_steps)]
        super().__init__(features, latent, context_dim, flow)


class RealNVP(FlowHead):
    """``realnvp``: affine couplings with alternating masks (Dinh et al. 2017, arXiv 1605.08803)."""

    def __init__(
        self,
        features: int,
        latent: int,
        flow_steps: int = SIZE.flow_steps,
        flow_hidden: int = SIZE.flow_hidden,
        flow_layers: int = SIZE.flow_layers,
        context_dim: int = SIZE.context_dim,
    ):
        flow = [
            AffineCoupling(latent, context_dim, flow_hidden, flow_layers, alternating_mask(latent, k))
            for k in range(flow_steps)
        ]
        super().__init__(features, latent, context_dim, flow)


class RealNVPAux(AuxiliaryHead):
    """``realnvp-aux``: couplings over (z, v) with an auxiliary variable v of size ``aux_dim``
    (0: ``latent``) and a learned reverse model r(v|x,z) (Cremer et al. 2018, arXiv 1801.03558)."""

    def __init__(
        self,
        features: int,
        latent: int,
        flow_steps: int = SIZE.flow_steps,
        flow_hidden: int = SIZE.flow_hidden,
        flow_layers: int = SIZE.flow_layers,
        context_dim: int = SIZE.context_dim,
        aux_dim: int = SIZE.aux_dim,
    ):
        aux = aux_dim or latent
        super().__init__(features, latent, aux, context_dim, flow_hidden, flow_layers, flow_steps)


@dataclass(frozen=True)
class PosteriorRecord:
    """A named posterior family.

    Attributes:
        name: its ``model.posterior`` value.
        head: the head class, built as ``head(features, latent, **options)``.
        family: ``gaussian`` (factorised Gaussian), ``flow`` or ``auxiliary``: q*'s family in
            the inference-gap analysis is the record's own.
        options: the head's keyword options: a subset of :data:`~flowvae.config.FLOW_SIZE_KEYS`,
            the ``model.*`` keys of the same names.
    """

    name: str
    head: type[nn.Module]
    family: str
    options: tuple[str, ...] = ()

    def build(self, features: int, latent: int, **options) -> nn.Module:
        return self.head(features, latent, **{k: v for k, v in options.items() if k in self.options})


_FLOW = ("flow_steps", "flow_hidden", "flow_layers", "context_dim")
POSTERIORS: dict[str, PosteriorRecord] = {
    r.name: r
    for r in [
        PosteriorRecord("diag", Diagonal, "gaussian"),
        PosteriorRecord("iaf", IAF, "flow", _FLOW),
        PosteriorRecord("iaf-mean", IAFMean, "flow", _FLOW),
        PosteriorRecord("planar", Planar, "flow", ("flow_steps", "context_dim")),
        PosteriorRecord(
            "sylvester-orthogonal", SylvesterOrthogonal, "flow",
            ("flow_steps", "num_ortho_vecs", "context_dim"),
        ),  # fmt: skip
        PosteriorRecord(
            "sylvester-householder", SylvesterHouseholder, "flow",
            ("flow_steps", "num_householder", "context_dim"),
        ),  # fmt: skip
        PosteriorRecord("sylvester-triangular", SylvesterTriangular, "flow", ("flow_steps", "context_dim")),
        PosteriorRecord("realnvp", RealNVP, "flow", _FLOW),
        PosteriorRecord("realnvp-aux", RealNVPAux, "auxiliary", (*_FLOW, "aux_dim")),
    ]
}


def posterior_record(name: str) -> PosteriorRecord:
    """The record of ``name``; a one-line ``ValueError`` listing the names otherwise."""
    if name not in POSTERIORS:
        raise ValueError(f"unknown posterior {name!r}; available: {', '.join(sorted(POSTERIORS))}")
    return POSTERIORS[name]


def build_posterior(name: str, features: int, latent: int, **options) -> nn.Module:
    """The head named ``name`` on ``features`` inputs; options it does not take are ignored."""
    return posterior_record(name).build(features, latent, **options)


__all__ = [
    "IAF", "POSTERIORS", "Diagonal", "FlowHead", "IAFMean", "Planar", "PosteriorRecord", "RealNVP",
    "RealNVPAux", "SylvesterHouseholder", "SylvesterOrthogonal", "SylvesterTriangular",
    "build_posterior", "posterior_record",
]  # fmt: skip
