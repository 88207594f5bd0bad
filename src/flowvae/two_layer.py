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

The decoder takes the concatenation (z2, z1). How the networks of q(z1|x, z2) and p(x|z1, z2)
take their two inputs is ``model.two_layer_inputs``:

- ``concat`` (default): one MLP on each concatenation, and q(z1|x, z2) reads the encoder's
  features h (the encoder of q(z2|x)) instead of x;
- ``separate`` (the paper's code, ``HVAE_2level``): a first layer per input, concatenated, then
  the joint layers, and q(z1|x, z2) has a network of its own on x (:class:`WithInput` hands it
  the flattened image beside h).

Every network's hidden layers are ``model.mlp_layer`` (ELU or gated) and its Gaussians
:class:`~flowvae.layers.GaussianLinear` (``model.log_var_bounds``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import noise
from .core import Posterior
from .flows import concat_context
from .layers import GaussianLinear
from .nets import MLP
from .numerics import log_normal


class GaussianNet(nn.Module):
    """inputs (..., I) -> (mean, log_std), each (..., D): an :class:`~flowvae.nets.MLP` of
    ``hidden`` widths (none: a linear map; ``mlp``: its keyword options, e.g. ``layer``,
    ``split``), then a :class:`~flowvae.layers.GaussianLinear` with ``log_var_bounds``."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int,
        log_var_bounds: Sequence[float] = (), **mlp,
    ):  # fmt: skip
        super().__init__()
        self.net = MLP(in_features, list(hidden), **mlp)
        self.out = GaussianLinear(self.net.out_features, out_features, log_var_bounds)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.out(self.net(inputs))


class WithInput(nn.Module):
    """An encoder whose features are followed by the flattened image: (B, F + C*H*W), for a
    q(z1|x, z2) with a network of its own on x (``model.two_layer_inputs=separate``)."""

    def __init__(self, encoder: nn.Module, pixels: int):
        super().__init__()
        self.inner, self.pixels = encoder, pixels
        self.out_features = encoder.out_features + pixels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.inner(x), x.flatten(1)], dim=-1)


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
        pixels: 0, or with a :class:`WithInput` encoder the image's size X: the top head reads
            the first F - X features, and q(z1|x, z2) reads (z2, x) with a first layer for each.
        net: the MLP's and the Gaussian's options (``layer``, ``log_var_bounds``).
    """

    def __init__(
        self, top: nn.Module, features: int, bottom_dim: int, hidden: Sequence[int], pixels: int = 0, **net,
    ):  # fmt: skip
        super().__init__()
        self.top, self.bottom_dim, self.pixels = top, bottom_dim, pixels
        self.latent_dim = top.latent_dim + bottom_dim
        d2 = top.latent_dim
        split = (d2, pixels) if pixels else ()
        inputs = d2 + (pixels or features)
        self.conditional = GaussianNet(inputs, hidden, bottom_dim, split=split, **net)

    def _parts(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(what the top head reads, what q(z1|x, z2) reads besides z2)."""
        if not self.pixels:
            return features, features
        return features[..., : -self.pixels], features[..., -self.pixels :]

    def base_gaussian(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The top head's base Gaussian (what a VampPrior on z2 mixes)."""
        return self.top.base_gaussian(self._parts(features)[0])

    def forward(self, features: Tensor) -> TwoLayerPosterior:
        h, own = self._parts(features)
        return TwoLayerPosterior(self.top(h), own, self.conditional, self.bottom_dim)


class TwoLayerPrior(nn.Module):
    """p(z2) p(z1|z2) over z = (z2, z1).

    Arguments:
        top: p(z2), a prior of :mod:`flowvae.priors` with ``latent_dim`` D2.
        bottom_dim: D1.
        hidden: widths of the MLP of p(z1|z2).
        net: the MLP's and the Gaussian's options (``layer``, ``log_var_bounds``).
    """

    def __init__(self, top: nn.Module, bottom_dim: int, hidden: Sequence[int], **net):
        super().__init__()
        self.top, self.bottom_dim = top, bottom_dim
        self.latent_dim = top.latent_dim + bottom_dim
        self.layer_sizes = [top.latent_dim, bottom_dim]  # z = (z2, z1), top first
        self.conditional = GaussianNet(top.latent_dim, hidden, bottom_dim, **net)

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
        with a constant S (no hidden layers, log_std weights all zero, no bounds); else ``None``."""
        top = self.top.moments(model)
        out = self.conditional.out
        d1 = self.bottom_dim
        if top is None or len(self.conditional.net.layers) or bool((out.weight[d1:] != 0).any()):
            return None
        if out.log_var_bounds:
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


__all__ = ["GaussianNet", "TwoLayerHead", "TwoLayerPosterior", "TwoLayerPrior", "WithInput"]
