"""Two stochastic layers for the flat VAE (``model.stochastic_layers=2``): Tomczak & Welling's HVAE.

The model (arXiv 1705.07120, Sec. 4 and their ``HVAE_2level``) is

    q(z2|x) q(z1|x, z2),        p(z2) p(z1|z2) p(x|z1, z2),

and it is a :class:`~flowvae.vae.VAE` built from the two pieces here, so every estimator sees
the usual flat latents z = (z2, z1), (*S, B, D2 + D1), top layer first:

- :class:`TwoLayerHead` (the posterior head): q(z2|x) is any posterior head (diagonal, any flow,
  auxiliary) on the encoder's features h; q(z1|x, z2) is a diagonal Gaussian from an MLP of
  (z2, h). Its :class:`TwoLayerPosterior` keeps the :class:`~flowvae.core.Posterior` contract:
  the base is eps = (eps2, eps1), ``transform`` draws z2 from eps2 through the top head, then
  z1 = mean(z2, h) + std(z2, h) * eps1, and log|det| adds the two, so log q = log q(z2|x) +
  log q(z1|x, z2) exactly.
- :class:`TwoLayerPrior`: p(z2) any prior of :mod:`flowvae.priors` (a VampPrior's components are
  the top head's Gaussians at the pseudo-inputs), p(z1|z2) a diagonal Gaussian from an MLP of z2.

The decoder takes the concatenation (z2, z1). Where the paper uses separate gated layers for x
and z2 (and z1 and z2) before a joint layer, these are ELU MLPs on the concatenations (a first
linear layer on a concatenation is the sum of one per input); q(z1|x, z2) reads the shared
encoder's features h rather than a network of its own on x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import noise
from .core import Posterior
from .flows import concat_context
from .nets import MLP
from .numerics import log_normal


class GaussianNet(nn.Module):
    """inputs (..., I) -> (mean, log_std), each (..., D): an ELU MLP of ``hidden`` widths (none:
    a linear map), then a linear layer."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        self.net = MLP(in_features, list(hidden))
        self.out = nn.Linear(self.net.out_features, 2 * out_features)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.out(self.net(inputs)).chunk(2, dim=-1)
        return mean, log_std


class TwoLayerPosterior(Posterior):
    """q(z2|x) q(z1|x, z2) over z = (z2, z1), as a map of eps = (eps2, eps1) (see the module).

    Arguments:
        top: q(z2|x), a :class:`~flowvae.core.Posterior` over D2 (base of its own size).
        features: the encoder's features h (B, F).
        conditional: (z2, h) (..., D2 + F) -> (mean, log_std) of z1, each (..., D1).
        bottom_dim: D1.
    """

    def __init__(self, top: Posterior, features: Tensor, conditional: GaussianNet, bottom_dim: int):
        super().__init__(top.base_dim + bottom_dim, top.batch_size, features)
        self.top, self.features, self.conditional, self.bottom_dim = top, features, conditional, bottom_dim

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        eps_top, eps_bottom = eps.split([self.top.base_dim, self.bottom_dim], dim=-1)
        z2, ladj = self.top.transform(eps_top)
        mean, log_std = self.conditional(concat_context(z2, self.features))
        z1 = mean + torch.exp(log_std) * eps_bottom
        return torch.cat([z2, z1], dim=-1), ladj + log_std.sum(-1)


class TwoLayerHead(nn.Module):
    """Encoder features (B, F) -> :class:`TwoLayerPosterior`.

    Arguments:
        top: the head of q(z2|x) (any of :mod:`flowvae.posteriors`), with ``latent_dim`` D2.
        features: F.
        bottom_dim: D1.
        hidden: widths of the MLP of q(z1|x, z2).
    """

    def __init__(self, top: nn.Module, features: int, bottom_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.top, self.bottom_dim = top, bottom_dim
        self.latent_dim = top.latent_dim + bottom_dim
        self.conditional = GaussianNet(top.latent_dim + features, hidden, bottom_dim)

    def base_gaussian(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The top head's base Gaussian (what a VampPrior on z2 mixes)."""
        return self.top.base_gaussian(features)

    def forward(self, features: Tensor) -> TwoLayerPosterior:
        return TwoLayerPosterior(self.top(features), features, self.conditional, self.bottom_dim)


class TwoLayerPrior(nn.Module):
    """p(z2) p(z1|z2) over z = (z2, z1).

    Arguments:
        top: p(z2), a prior of :mod:`flowvae.priors` with ``latent_dim`` D2.
        bottom_dim: D1.
        hidden: widths of the MLP of p(z1|z2).
    """

    def __init__(self, top: nn.Module, bottom_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.top, self.bottom_dim = top, bottom_dim
        self.latent_dim = top.latent_dim + bottom_dim
        self.layer_sizes = [top.latent_dim, bottom_dim]  # z = (z2, z1), top first
        self.conditional = GaussianNet(top.latent_dim, hidden, bottom_dim)

    def log_prob(self, z: Tensor, model: nn.Module) -> Tensor:
        z2, z1 = z.split([self.top.latent_dim, self.bottom_dim], dim=-1)
        mean, log_std = self.conditional(z2)
        return self.top.log_prob(z2, model) + log_normal(z1, mean, log_std).sum(-1)

    @torch.no_grad()
    def sample(
        self, sample_shape: Sequence[int], model: nn.Module, like: Tensor | None = None,
        temperature: float = 1.0, top: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """Ancestral: z2 ~ p(z2) (or ``top``, (examples, D2), when given), then z1 ~ p(z1|z2),
        each std scaled by ``temperature``."""
        z2 = self.top.sample(sample_shape, model, like, temperature)
        if top is not None:  # drawn all the same: z1's draws do not depend on whether z2 is given
            z2 = top.expand_as(z2)
        mean, log_std = self.conditional(z2)
        eps = noise.randn(mean.shape, batch_dim=-2, dtype=mean.dtype, device=mean.device)
        z1 = mean + temperature * torch.exp(log_std) * eps
        return torch.cat([z2, z1], dim=-1)

    def base(self, z: Tensor, model: nn.Module) -> Tensor:
        """The standard-normal base (u2, u1) of z = (z2, z1): z2's under p(z2), and
        (z1 - mean(z2)) / std(z2)."""
        z2, z1 = z.split(self.layer_sizes, dim=-1)
        mean, log_std = self.conditional(z2)
        return torch.cat([self.top.base(z2, model), (z1 - mean) * torch.exp(-log_std)], dim=-1)

    def from_base(self, u: Tensor, model: nn.Module) -> Tensor:
        u2, u1 = u.split(self.layer_sizes, dim=-1)
        z2 = self.top.from_base(u2, model)
        mean, log_std = self.conditional(z2)
        return torch.cat([z2, mean + torch.exp(log_std) * u1], dim=-1)

    def moments(self, model: nn.Module) -> tuple[Tensor, Tensor] | None:
        """The joint Gaussian of (z2, z1) when p(z2) is Gaussian and p(z1|z2) = N(A z2 + a, S)
        with a constant S (no hidden layers, log_std weights all zero); else ``None``."""
        top = self.top.moments(model)
        out = self.conditional.out
        d1 = self.bottom_dim
        if top is None or len(self.conditional.net.layers) or bool((out.weight[d1:] != 0).any()):
            return None
        m2, cov2 = top
        a_mat, a_vec = out.weight[:d1].detach().double(), out.bias[:d1].detach().double()
        var1 = torch.exp(2 * out.bias[d1:].detach().double())
        mean = torch.cat([m2, a_mat @ m2 + a_vec])
        cross = a_mat @ cov2  # Cov(z1, z2)
        cov = torch.cat(
            [torch.cat([cov2, cross.T], dim=1), torch.cat([cross, cross @ a_mat.T + torch.diag(var1)], dim=1)]
        )
        return mean, cov


__all__ = ["GaussianNet", "TwoLayerHead", "TwoLayerPosterior", "TwoLayerPrior"]
