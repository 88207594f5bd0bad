"""Posterior heads: modules that map encoder features to a q(z|x), built from plain numbers.

Every head maps features (B, F) to a :class:`~flowvae.core.Posterior`: a reparametrised map of
a standard-normal base (see :mod:`flowvae.core`). A flow head is a diagonal Gaussian followed by
flow steps (:mod:`flowvae.flows`) conditioned on a context vector h computed from the features;
all of them share the composition loop of :class:`~flowvae.core.FlowPosterior`. ELBO, IWAE,
AIS and local optimisation use only the Posterior interface; they never look at a head's name.

Put a flowvae posterior on your own features::

    >>> import torch
    >>> from flowvae import posteriors
    >>> q = posteriors.IAF(features=16, latent=4, steps=2, hidden=32)
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

from .core import FlowPosterior
from .flows import (
    AffineCoupling,
    AuxiliaryHead,
    HouseholderSylvesterStep,
    IAFMeanStep,
    IAFStep,
    OrthogonalSylvesterStep,
    PlanarStep,
    TriangularSylvesterStep,
    alternating_mask,
    alternating_order,
)


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

    ``steps`` MADE steps with the gated update, variable order reversed between steps, each
    MADE with ``layers`` hidden layers of ``hidden`` units taking the context h (size
    ``context``). ``mean_only`` gives ``iaf-mean`` (a shift-only, volume-preserving update).
    """

    def __init__(
        self,
        features: int,
        latent: int,
        steps: int = 4,
        hidden: int = 320,
        layers: int = 1,
        context: int = 64,
        mean_only: bool = False,
    ):
        step = IAFMeanStep if mean_only else IAFStep
        flow = [step(latent, context, hidden, layers, alternating_order(latent, k)) for k in range(steps)]
        super().__init__(features, latent, context, flow)


class IAFMean(IAF):
    """``iaf-mean``: IAF whose steps only shift (z' = z + m(z, h)); log|det| = 0."""

    def __init__(
        self,
        features: int,
        latent: int,
        steps: int = 4,
        hidden: int = 320,
        layers: int = 1,
        context: int = 64,
    ):
        super().__init__(features, latent, steps, hidden, layers, context, mean_only=True)


class Planar(FlowHead):
    """``planar``: amortized planar flow steps (Rezende & Mohamed 2015, arXiv 1505.05770)."""

    def __init__(self, features: int, latent: int, steps: int = 4, context: int = 64):
        super().__init__(features, latent, context, [PlanarStep(latent, context) for _ in range(steps)])


class SylvesterOrthogonal(FlowHead):
    """``sylvester-orthogonal``: Q with ``ortho_vecs`` orthonormal columns (van den Berg et al.
    2018, arXiv 1803.05649), orthogonalised by Björck iterations."""

    def __init__(self, features: int, latent: int, steps: int = 4, ortho_vecs: int = 8, context: int = 64):
        m = min(ortho_vecs, latent)
        super().__init__(
            features, latent, context, [OrthogonalSylvesterStep(latent, context, m) for _ in range(steps)]
        )


class SylvesterHouseholder(FlowHead):
    """``sylvester-householder``: Q a product of ``householder`` reflections (arXiv 1803.05649)."""

    def __init__(self, features: int, latent: int, steps: int = 4, householder: int = 8, context: int = 64):
        flow = [HouseholderSylvesterStep(latent, context, householder) for _ in range(steps)]
        super().__init__(features, latent, context, flow)


class SylvesterTriangular(FlowHead):
    """``sylvester-triangular``: Q the identity or the reversal permutation, alternating."""

    def __init__(self, features: int, latent: int, steps: int = 4, context: int = 64):
        flow = [TriangularSylvesterStep(latent, context, reverse=k % 2 == 1) for k in range(steps)]
        super().__init__(features, latent, context, flow)


class RealNVP(FlowHead):
    """``realnvp``: affine couplings with alternating masks (Dinh et al. 2017, arXiv 1605.08803)."""

    def __init__(
        self,
        features: int,
        latent: int,
        steps: int = 4,
        hidden: int = 320,
        layers: int = 1,
        context: int = 64,
    ):
        flow = [
            AffineCoupling(latent, context, hidden, layers, alternating_mask(latent, k)) for k in range(steps)
        ]
        super().__init__(features, latent, context, flow)


class RealNVPAux(AuxiliaryHead):
    """``realnvp-aux``: couplings over (z, v) with an auxiliary variable v of size ``aux``
    (0: ``latent``) and a learned reverse model r(v|x,z) (Cremer et al. 2018, arXiv 1801.03558)."""

    def __init__(
        self,
        features: int,
        latent: int,
        steps: int = 4,
        hidden: int = 320,
        layers: int = 1,
        context: int = 64,
        aux: int = 0,
    ):
        super().__init__(features, latent, aux or latent, context, hidden, layers, steps)


@dataclass(frozen=True)
class PosteriorRecord:
    """A named posterior family.

    Attributes:
        name: its ``model.posterior`` value.
        head: the head class, built as ``head(features, latent, **options)``.
        family: ``gaussian`` (factorised Gaussian), ``flow`` or ``auxiliary``: q*'s family in
            the inference-gap analysis is the record's own.
        options: the head's keyword options (a subset of steps, hidden, layers, context,
            ortho_vecs, householder, aux), each filled from the config by
            :mod:`flowvae.model`.
    """

    name: str
    head: type[nn.Module]
    family: str
    options: tuple[str, ...] = ()

    def build(self, features: int, latent: int, **options) -> nn.Module:
        return self.head(features, latent, **{k: v for k, v in options.items() if k in self.options})


_FLOW = ("steps", "hidden", "layers", "context")
POSTERIORS: dict[str, PosteriorRecord] = {
    r.name: r
    for r in [
        PosteriorRecord("diag", Diagonal, "gaussian"),
        PosteriorRecord("iaf", IAF, "flow", _FLOW),
        PosteriorRecord("iaf-mean", IAFMean, "flow", _FLOW),
        PosteriorRecord("planar", Planar, "flow", ("steps", "context")),
        PosteriorRecord(
            "sylvester-orthogonal", SylvesterOrthogonal, "flow", ("steps", "ortho_vecs", "context")
        ),
        PosteriorRecord(
            "sylvester-householder", SylvesterHouseholder, "flow", ("steps", "householder", "context")
        ),
        PosteriorRecord("sylvester-triangular", SylvesterTriangular, "flow", ("steps", "context")),
        PosteriorRecord("realnvp", RealNVP, "flow", _FLOW),
        PosteriorRecord("realnvp-aux", RealNVPAux, "auxiliary", (*_FLOW, "aux")),
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
