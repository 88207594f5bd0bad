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
from .layers import GaussianLinear
from .made import IAFStep, alternating_order


class FlowHead(nn.Module):
    """Maps encoder features (B, F) to a :class:`~flowvae.core.FlowPosterior`.

    Arguments:
        features: F, the size of the encoder's output (0: a non-amortized head whose Gaussian
            parameters are its biases, as in local optimisation).
        latent: D, the size of z.
        context: C, the size of the context vector h given to the flow steps.
        steps: the flow steps (empty for ``diag``).
        log_var_bounds: [] or [low, high] (``model.log_var_bounds``): the base Gaussian's
            log-variance clamped (:class:`~flowvae.layers.GaussianLinear`).
    """

    def __init__(
        self, features: int, latent: int, context: int = 0, steps: Sequence[nn.Module] = (),
        log_var_bounds: Sequence[float] = (),
    ):  # fmt: skip
        super().__init__()
        self.latent_dim = latent
        self.gaussian = GaussianLinear(features, latent, log_var_bounds)
        self.context = nn.Linear(features, context) if steps else None
        self.steps = nn.ModuleList(steps)

    def base_gaussian(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std), each (B, D): the diagonal Gaussian the flow starts from."""
        return self.gaussian(features)

    def forward(self, features: Tensor) -> FlowPosterior:
        mean, log_std = self.base_gaussian(features)
        context = self.context(features) if self.context is not None else None
        return FlowPosterior(mean, log_std, context, list(self.steps))


class Diagonal(FlowHead):
    """``diag``: the factorised Gaussian N(mean(x), diag std(x)^2) (Kingma & Welling 2014)."""

    options: tuple[str, ...] = ()

    def __init__(self, features: int, latent: int, log_var_bounds: Sequence[float] = ()):
        super().__init__(features, latent, log_var_bounds=log_var_bounds)


def flow_size(head: type, size: dict[str, int]) -> FlowSize:
    """``size`` as a :class:`~flowvae.config.FlowSize`; a ``TypeError`` for a key ``head`` does not
    take (its ``options``)."""
    unknown = set(size) - set(head.options)
    if unknown:
        takes = ", ".join(head.options) or "no size"
        raise TypeError(f"{head.__name__} takes {takes}; got {sorted(unknown)[0]}")
    return FlowSize(**size)


class StepsHead(FlowHead):
    """A diagonal Gaussian followed by ``flow_steps`` steps, each made by :meth:`make_step`.

    Every head of this kind takes ``(features, latent, **size)``: ``size`` holds the keys of
    its :attr:`options`, a subset of :class:`~flowvae.config.FlowSize` (the ``model.*`` names;
    unset ones take FlowSize's defaults); another key is a ``TypeError``.
    """

    options: tuple[str, ...] = ("flow_steps", "context_dim")

    def __init__(self, features: int, latent: int, log_var_bounds: Sequence[float] = (), **size: int):
        s = flow_size(type(self), size)
        steps = [self.make_step(latent, s, k) for k in range(s.flow_steps)]
        super().__init__(features, latent, s.context_dim, steps, log_var_bounds)

    def make_step(self, latent: int, size: FlowSize, k: int) -> nn.Module:
        """Step ``k`` (0-based) of the flow over ``latent`` variables."""
        raise NotImplementedError


_NETS = ("flow_steps", "flow_hidden", "flow_layers", "context_dim")  # steps with an MLP or MADE


def net_size(size: FlowSize) -> dict[str, int]:
    """The size of a step's MLP or MADE, as :class:`~flowvae.made.MADE`'s keywords."""
    return {"hidden_features": size.flow_hidden, "num_layers": size.flow_layers}


class IAF(StepsHead):
    """``iaf``: inverse autoregressive flow (Kingma et al. 2016, arXiv 1606.04934): MADE steps
    with the gated update, variable order reversed between steps, each MADE with ``flow_layers``
    hidden layers of ``flow_hidden`` units taking the context h (size ``context_dim``)."""

    options = _NETS
    mean_only = False

    def make_step(self, latent: int, size: FlowSize, k: int) -> nn.Module:
        order = alternating_order(latent, k)
        return IAFStep(latent, size.context_dim, order, mean_only=self.mean_only, **net_size(size))


class IAFMean(IAF):
    """``iaf-mean``: IAF whose steps only shift (z' = z + m(z, h)); log|det| = 0."""

    mean_only = True


class Planar(StepsHead):
    """``planar``: amortized planar flow steps (Rezende & Mohamed 2015, arXiv 1505.05770)."""

    def make_step(self, latent: int, size: FlowSize, k: int) -> nn.Module:
        return PlanarStep(latent, size.context_dim)


class SylvesterOrthogonal(StepsHead):
    """``sylvester-orthogonal``: Q with ``num_ortho_vecs`` orthonormal columns (van den Berg et
    al. 2018, arXiv 1803.05649), orthogonalised by Björck iterations."""

    options = ("flow_steps", "num_ortho_vecs", "context_dim")

    def make_step(self, latent: int, size: FlowSize, k: int) -> nn.Module:
        return OrthogonalSylvesterStep(latent, size.context_dim, min(size.num_ortho_vecs, latent))


class SylvesterHouseholder(StepsHead):
    """``sylvester-householder``: Q a product of ``num_householder`` reflections (arXiv 1803.05649)."""

    options = ("flow_steps", "num_householder", "context_dim")

    def make_step(self, latent: int, size: FlowSize, k: int) -> nn.Module:
        return HouseholderSylvesterStep(latent, size.context_dim, size.num_householder)


class SylvesterTriangular(StepsHead):
    """``sylvester-triangular``: Q the identity or the reversal permutation, alternating."""

    def make_step(self, latent: int, size: FlowSize, k: int) -> nn.Module:
        return TriangularSylvesterStep(latent, size.context_dim, reverse=k % 2 == 1)


class RealNVP(StepsHead):
    """``realnvp``: affine couplings with alternating masks (Dinh et al. 2017, arXiv 1605.08803)."""

    options = _NETS

    def make_step(self, latent: int, size: FlowSize, k: int) -> nn.Module:
        return AffineCoupling(latent, size.context_dim, alternating_mask(latent, k), **net_size(size))


class RealNVPAux(AuxiliaryHead):
    """``realnvp-aux``: couplings over (z, v) with an auxiliary variable v of size ``aux_dim``
    (0: ``latent``) and a learned reverse model r(v|x,z) (Cremer et al. 2018, arXiv 1801.03558)."""

    options = (*_NETS, "aux_dim")

    def __init__(self, features: int, latent: int, log_var_bounds: Sequence[float] = (), **size: int):
        s = flow_size(type(self), size)
        aux = s.aux_dim or latent
        super().__init__(
            features, latent, aux, s.context_dim, s.flow_hidden, s.flow_layers, s.flow_steps, log_var_bounds
        )


@dataclass(frozen=True)
class PosteriorRecord:
    """A named posterior family.

    Attributes:
        name: its ``model.posterior`` value.
        head: the head class, built as ``head(features, latent, **options)``.
        family: ``gaussian`` (factorised Gaussian), ``flow`` or ``auxiliary``: q*'s family in
            the inference-gap analysis is the record's own.
    The head's keyword options are its class's ``options``: a subset of
    :data:`~flowvae.config.FLOW_SIZE_KEYS`, the ``model.*`` keys of the same names; every head
    also takes ``log_var_bounds``.
    """

    name: str
    head: type[nn.Module]
    family: str

    @property
    def options(self) -> tuple[str, ...]:
        return self.head.options

    def build(self, features: int, latent: int, **options) -> nn.Module:
        taken = {k: v for k, v in options.items() if k in self.options or k == "log_var_bounds"}
        return self.head(features, latent, **taken)


POSTERIORS: dict[str, PosteriorRecord] = {
    r.name: r
    for r in [
        PosteriorRecord("diag", Diagonal, "gaussian"),
        PosteriorRecord("iaf", IAF, "flow"),
        PosteriorRecord("iaf-mean", IAFMean, "flow"),
        PosteriorRecord("planar", Planar, "flow"),
        PosteriorRecord("sylvester-orthogonal", SylvesterOrthogonal, "flow"),
        PosteriorRecord("sylvester-householder", SylvesterHouseholder, "flow"),
        PosteriorRecord("sylvester-triangular", SylvesterTriangular, "flow"),
        PosteriorRecord("realnvp", RealNVP, "flow"),
        PosteriorRecord("realnvp-aux", RealNVPAux, "auxiliary"),
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
    "StepsHead", "RealNVPAux", "SylvesterHouseholder", "SylvesterOrthogonal", "SylvesterTriangular",
    "build_posterior", "posterior_record",
]  # fmt: skip
