"""After training: encode images, decode latents, interpolate, sample at a temperature, traverse
one latent, and see what each stochastic layer holds.

Every function takes a trained model (the flat :class:`~flowvae.vae.VAE`, with one or two
stochastic layers, or the :class:`~flowvae.hierarchical.HierarchicalVAE`; eval mode) and works
on flat latents z (B, D), as the estimators do; :attr:`Latents.layers` splits them into the
model's stochastic layers, top first (the hierarchical model: one (n_z, h, w) map per block).

"The mean" of q(z|x) is its base's mean through the flow: z = T(0) for ``z, _ = q.transform(eps)``
(the posterior's mode for ``diag``; for a flow, the image of the base Gaussian's mode; for the
hierarchical model, each block's at eps = 0 given the blocks above). Reconstructions decode it,
as ``reconstructions.png`` does during training.

Random draws go through the per-example streams of :mod:`flowvae.noise`, seeded by ``seed`` and
the example's position: an image depends only on (seed, its position), not on the batch size, and
two calls with the same seed draw the same noise (the same sample at every temperature, the same
lower-layer noise for every ``keep_layers``).

References:
    Vahdat & Kautz, NVAE: a deep hierarchical variational autoencoder, arXiv 2007.03898
    (temperature per layer, section 5).
    Child, Very deep VAEs generalize autoregressive models..., arXiv 2011.10650 (vdvae: what
    each layer holds, by resampling the layers below a cut).
    White, Sampling generative networks, arXiv 1609.04468 (slerp).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from . import noise
from .config import ConfigError
from .images import grid_for

SPACES = ("latent", "base")
PATHS = ("linear", "slerp")


@dataclass
class Latents:
    """What :func:`encode` returns.

    Attributes:
        z: flat latents, (B, D) at the mean, (K, B, D) when sampled.
        log_q: log q(z|x), (K, B), when sampled; None at the mean.
        layers: z split into the model's stochastic layers, top first, each (..., *layer shape).
    """

    z: Tensor
    log_q: Tensor | None
    layers: list[Tensor]


@dataclass
class Decoded:
    """What :func:`decode` returns: the likelihood's parameters (*, P, C, H, W) (None for an
    autoregressive decoder, whose parameters depend on the image) and the expected image
    (*, C, H, W) (autoregressive: each pixel's mean given the pixels drawn before it)."""

    params: Tensor | None
    mean: Tensor


def latent_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """The model's stochastic layers' shapes, top first (a model without ``latent_shapes``: one
    layer of ``latent_dim``)."""
    return [tuple(s) for s in getattr(model, "latent_shapes", [(model.latent_dim,)])]


def split_layers(model: nn.Module, z: Tensor) -> list[Tensor]:
    """Flat z (..., D) -> one tensor per stochastic layer, top first, (..., *layer shape)."""
    shapes = latent_shapes(model)
    parts = z.split([math.prod(s) for s in shapes], dim=-1)
    return [p.reshape(*z.shape[:-1], *s) for p, s in zip(parts, shapes, strict=True)]


def _streams(seed: int, indices: Sequence[int]):
    return noise.example_streams(noise.ExampleStreams.seeded(seed, indices))


def _like(model: nn.Module) -> Tensor:
    return next(model.parameters())


@torch.no_grad()
def encode(
    model: nn.Module, x: Tensor, samples: int | None = None, *, seed: int = 0,
    indices: Sequence[int] | None = None, batch_size: int = 256,
) -> Latents:  # fmt: skip
    """The latents of images x (B, C, H, W): q(z|x)'s mean, or ``samples`` draws with log q.

    Arguments:
        samples: None: the mean (z = T(0), see the module); K: K draws per image.
        seed, indices: the draws' streams, per example (``indices``: the images' positions in
            their split; default 0..B-1).
        batch_size: images encoded at a time (memory only).

    Example:
        >>> import torch, flowvae
        >>> from flowvae.testing import random_linear_gaussian_vae
        >>> model = random_linear_gaussian_vae(shape=(1, 2, 4), latent_dim=3)
        >>> z = flowvae.encode(model, torch.rand(5, 1, 2, 4)).z
        >>> tuple(z.shape), tuple(flowvae.decode(model, z).mean.shape)
        ((5, 3), (5, 1, 2, 4))
    """
    if samples is not None and samples < 1:
        raise ConfigError(f"samples must be >= 1 (or None for the mean), got {samples}")
    like = _like(model)
    x = x.to(device=like.device, dtype=like.dtype)
    indices = list(range(len(x))) if indices is None else [int(i) for i in indices]
    zs, log_qs = [], []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        q = model.encode(batch)
        if samples is None:
            z, _ = q.transform(batch.new_zeros(len(batch), q.base_dim))
        else:
            with _streams(seed, indices[start : start + len(batch)]):
                z, log_q = q.rsample_and_log_prob((samples,))
            log_qs.append(log_q)
        zs.append(z)
    z = torch.cat(zs, dim=-2)
    log_q = torch.cat(log_qs, dim=-1) if log_qs else None
    return Latents(z, log_q, split_layers(model, z))


@torch.no_grad()
def decode(model: nn.Module, z: Tensor) -> Decoded:
    """Flat latents z (*, D) -> the likelihood's parameters and the expected image (:class:`Decoded`)."""
    if getattr(getattr(model, "decoder", None), "autoregressive", False):
        return Decoded(None, model.decode_mean(z.reshape(-1, z.shape[-1])).view(*z.shape[:-1], *model.shape))
    params = model.decode_params(z)
    return Decoded(params, model.likelihood.mean(params))


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature}")


@torch.no_grad()
def sample(
    model: nn.Module, n: int, *, temperature: float = 1.0, seed: int = 0, batch_size: int = 256,
    progress: Callable[[int], None] | None = None, first: int = 0,
) -> Tensor:  # fmt: skip
    """``n`` images (n, C, H, W): the decoder's mean at z from the prior, each prior standard
    deviation scaled by ``temperature`` (0: the mode of each conditional in turn; a VampPrior: of
    the drawn component; the hierarchical model: every block's, as NVAE does). Image i draws from
    the stream (seed, first + i): the same noise at every temperature and batch size. ``progress``
    gets each batch's size."""
    _check_temperature(temperature)
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    parts = []
    for start in range(first, first + n, batch_size):
        k = min(batch_size, first + n - start)
        with _streams(seed, range(start, start + k)):
            parts.append(model.decode_mean(model.sample_prior((k,), temperature=temperature)))
        if progress is not None:
            progress(k)
    return torch.cat(parts)


def sample_grid(
    model: nn.Module, n: int, shape: tuple[int, int, int], *, temperature: float = 1.0, seed: int = 0,
    batch_size: int = 256, progress: Callable[[int], None] | None = None,
) -> np.ndarray:  # fmt: skip
    """:func:`sample`'s ``n`` images as one near-square grid (uint8), drawn and placed
    ``batch_size`` at a time: memory is the grid's, bounded by
    :data:`~flowvae.images.MAX_GRID_PIXELS` (``ValueError`` beyond it, before anything is drawn)."""
    layout = grid_for(n, shape)
    grid = layout.empty()
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        images = sample(model, k, temperature=temperature, seed=seed, batch_size=batch_size, first=start)
        layout.place(grid, images, start)
        if progress is not None:
            progress(k)
    return grid


def _path(a: Tensor, b: Tensor, t: Tensor, path: str) -> Tensor:
    """Points from a to b (B, D) at fractions t (T,): (T, B, D); exactly a at t = 0 and b at t = 1."""
    t = t.to(a)[:, None]  # (T, 1)
    wa, wb = 1 - t, t
    if path == "slerp":
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
        theta = torch.acos(cos.clamp(-1, 1))  # (B,)
        sin = torch.sin(theta)
        arc = sin > 1e-6  # (nearly) parallel vectors: the straight line
        wa = torch.where(arc, torch.sin(wa * theta) / sin.clamp_min(1e-6), wa)
        wb = torch.where(arc, torch.sin(wb * theta) / sin.clamp_min(1e-6), wb)
    return wa[..., None] * a + wb[..., None] * b


@torch.no_grad()
def interpolate(
    model: nn.Module, x0: Tensor, x1: Tensor, steps: int = 10, *, space: str = "latent", path: str = "linear"
) -> Tensor:
    """Images along a path between the means of q(z|x0) and q(z|x1): (B, steps, C, H, W); the
    first and last are x0's and x1's reconstructions.

    Arguments:
        space: ``latent`` (z itself) or ``base`` (the prior's standard-normal base u of z, where
            a straight or great-circle path stays in the prior's typical set; the hierarchical
            model: each block's noise given the blocks above; not for a VampPrior).
        path: ``linear`` or ``slerp`` (spherical, White 2016).
    """
    if space not in SPACES or path not in PATHS:
        raise ConfigError(f"space must be one of {', '.join(SPACES)} and path one of {', '.join(PATHS)}; "
                          f"got space={space!r}, path={path!r}")  # fmt: skip
    if steps < 2:
        raise ConfigError(f"steps must be >= 2 (the two endpoints), got {steps}")
    if x0.shape != x1.shape:
        raise ConfigError(f"x0 and x1 differ in shape: {tuple(x0.shape)} and {tuple(x1.shape)}")
    z0, z1 = encode(model, x0).z, encode(model, x1).z
    t = torch.arange(steps) / (steps - 1)
    if space == "base":
        z = model.prior_from_base(_path(model.prior_base(z0), model.prior_base(z1), t, path))
    else:
        z = _path(z0, z1, t, path)
    return decode(model, z).mean.transpose(0, 1)


@torch.no_grad()
def traverse(model: nn.Module, x: Tensor, dim: int, values: Sequence[float] | Tensor) -> Tensor:
    """Images (B, V, C, H, W): x's mean latents with latent ``dim`` (of the flat z, 0..D-1) set to
    each of the V ``values`` in turn."""
    if not 0 <= dim < model.latent_dim:
        raise ConfigError(f"latent dimension {dim} is out of range: this model has {model.latent_dim} "
                          f"(0 to {model.latent_dim - 1})")  # fmt: skip
    z = encode(model, x).z  # (B, D)
    values = torch.as_tensor(values, dtype=z.dtype, device=z.device).reshape(-1)
    z = z.expand(len(values), *z.shape).clone()  # (V, B, D)
    z[..., dim] = values[:, None]
    return decode(model, z).mean.transpose(0, 1)


def stochastic_layers(model: nn.Module) -> int:
    """How many stochastic layers the model has (flat 1, two-layer 2, hierarchical: its blocks)."""
    return len(latent_shapes(model))


@torch.no_grad()
def reconstruct(
    model: nn.Module, x: Tensor, *, keep_layers: int | None = None, temperature: float = 1.0, seed: int = 0
) -> Tensor:
    """Reconstructions (B, C, H, W) of x: the decoder's mean at q(z|x)'s mean.

    ``keep_layers=k`` keeps the top k stochastic layers at the posterior mean of x and draws the
    layers below from the prior given them (std times ``temperature``; example b from the
    stream (seed, b)), as vdvae and NVAE show what each layer holds: ``None`` (all layers) is
    the plain reconstruction, 0 a prior sample (:func:`sample` with the same seed).
    """
    _check_temperature(temperature)
    layers = stochastic_layers(model)
    k = layers if keep_layers is None else keep_layers
    if not 0 <= k <= layers:
        raise ConfigError(f"keep_layers={k} is out of range: this model has {layers} stochastic "
                          f"layer{'s' if layers > 1 else ''} (0 to {layers})")  # fmt: skip
    kept = encode(model, x).layers[:k]
    with _streams(seed, range(len(x))):
        z = model.sample_prior((len(x),), temperature=temperature, given=kept)
        return decode(model, z).mean


def reconstruct_by_layers(model: nn.Module, x: Tensor, *, temperature: float = 1.0, seed: int = 0) -> Tensor:
    """:func:`reconstruct` of x at every ``keep_layers`` k = 0 .. L: (L + 1, B, C, H, W), row k
    keeping the top k layers (``flowvae layers``' grid)."""
    return torch.stack(
        [reconstruct(model, x, keep_layers=k, temperature=temperature, seed=seed)
         for k in range(stochastic_layers(model) + 1)]
    )  # fmt: skip


__all__ = [
    "PATHS", "SPACES", "Decoded", "Latents", "decode", "encode", "interpolate", "latent_shapes",
    "reconstruct", "reconstruct_by_layers", "sample", "split_layers", "stochastic_layers", "traverse",
]  # fmt: skip
