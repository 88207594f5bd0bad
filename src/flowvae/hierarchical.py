"""The hierarchical ResNet VAE of the IAF paper, with bidirectional inference (openai/iaf's CIFAR-10 model).

The model stacks ``sum(depths)`` residual blocks ("IAF layers"), each holding ``n_h`` deterministic
and ``n_z`` stochastic feature maps. Level i operates at resolution H / 2^(i+1): the input
convolution halves the image, and the first block of every later level halves it again.

- **Bottom-up pass** (inference only): for each block, a convolution of the residual stream gives
  the bottom-up posterior parameters (mean, log-std of z_i, and the IAF context h) and a
  deterministic residual update.
- **Top-down pass** (generative model and inference): from a learned top bias, each block computes
  the prior p(z_i | z_>i) and the top-down posterior parameters, samples z_i (the ``down-*``
  posteriors add bottom-up and top-down parameters; ``up-*`` use the bottom-up ones alone),
  refines it with one IAF step for ``*-iaf`` posteriors, and updates the residual stream with
  (z_i, deterministic features). An output deconvolution gives the likelihood's parameters.

Weight normalisation with data-dependent initialisation (Salimans & Kingma 2016) on every
convolution; ELU nonlinearities; residual branches scaled by 0.1 for stability, as in openai/iaf.

The model offers the flat VAE's interface (:class:`~flowvae.core.LatentVariableModel`): latents are flat
vectors (*S, B, D) holding every block's z in top-down order, each flattened as (n_z, h, w); the
posterior's base ``eps`` has the same layout. ``forward`` additionally returns per-layer,
per-feature-map KL terms (``kl_groups``) for free bits (paper Eq. 15).

Images whose size is not a multiple of 2^levels (28x28 MNIST with three levels) are zero-padded
at the input and the decoder's output is cropped back before the likelihood: the model remains a
density over the H x W image (openai/iaf padded MNIST to 32x32 with ``pad_x=2`` the same way).

References:
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, Improving variational inference with
    inverse autoregressive flow, arXiv 1606.04934 (section 6 and appendix C); code: openai/iaf.
    Salimans & Kingma, Weight normalization, arXiv 1602.07868.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import noise
from .arconv import AR_MASKS, AR_SCALE, HEAD_INIT_SCALE, ARConvNet, WNConv2d
from .core import ElboTerms, Posterior, map_rows
from .likelihoods import build_likelihood
from .numerics import log_standard_normal


@dataclass(frozen=True)
class BlockPosterior:
    """A named posterior of the hierarchical model (``model.posterior`` when
    ``model.type=hierarchical``).

    Attributes:
        top_down: ``down-*``: q(z_i|.) is conditioned on the top-down stream too (bidirectional
            inference); ``up-*``: on the bottom-up stream only.
        flow: an IAF step (masked convolutions) follows the Gaussian.
        outputs: 2 for a gated IAF step, 1 for a shift-only one (``down-iaf-mean``).
    """

    name: str
    top_down: bool
    flow: bool
    outputs: int = 2


BLOCK_POSTERIORS: dict[str, BlockPosterior] = {
    r.name: r
    for r in [
        BlockPosterior("up-diag", top_down=False, flow=False),
        BlockPosterior("up-iaf", top_down=False, flow=True),
        BlockPosterior("down-diag", top_down=True, flow=False),
        BlockPosterior("down-iaf", top_down=True, flow=True),
        BlockPosterior("down-iaf-mean", top_down=True, flow=True, outputs=1),
    ]
}
BLOCK_PRIORS = ("diag", "iaf")


@dataclass
class HierarchicalSpec:
    """The hierarchical model's own settings (the ``model.*`` keys of the same names; see the
    README's table of openai/iaf names)."""

    depths: list[int] = field(default_factory=lambda: [2, 2])  # blocks per level (resolution)
    n_h: int = 64  # deterministic feature maps per block
    n_z: int = 32  # stochastic feature maps per block
    posterior: str = "down-iaf"  # a name in BLOCK_POSTERIORS
    prior: str = "diag"  # diag | iaf
    depth_ar: int = 1  # hidden layers of each block's IAF
    ar_mask: str = "channel"  # channel | pixel (openai/iaf: reverse raster order over pixels)
    up_feedback: bool = False  # up-* posteriors: z feeds the bottom-up stream
    likelihood: str = "auto"
    mixtures: int = 5
    row_budget_mb: int = 1024  # evaluation: activation memory of one pass over its rows
RESIDUAL_SCALE = 0.1  # residual branches: stream + 0.1 * branch (openai/iaf)


# ----------------------------------------------------------------------------- one block


@dataclass
class BlockOutput:
    """What one block's top-down step produces; z-shaped tensors are (N, n_z, h, w)."""

    h: Tensor  # the residual stream after the block
    z: Tensor
    log_p: Tensor  # elementwise log p(z | z_above)
    ladj: Tensor | None  # elementwise log|dz/deps| (posterior sampling only)
    base: Tensor  # the prior's standard-normal base of z: (z - mean) / std of p(z | z_above)


class HierarchicalBlock(nn.Module):
    """One ResNet block with n_h deterministic and n_z stochastic feature maps (openai/iaf ``IAFLayer``).

    Posterior (``*-iaf``): z0 = mean + std * eps, then one IAF step z = (z0 - m(z0, h)) / exp(s(z0, h))
    with m, s from an :class:`ARConvNet` scaled by 0.1 (``down-iaf-mean``: z = z0 - m). Prior
    ``diag``: N(mean, std^2) from the top-down stream; ``iaf``: an autoregressive Gaussian over the
    channels (openai/iaf's ``made`` prior), whose mean and log-std get corrections
    m(z, h'), s(z, h') from an :class:`ARConvNet`: its density takes one pass, a sample n_z passes.

    Arguments:
        cfg: the model config (``n_h``, ``n_z``, ``depth_ar``, ``posterior``, ``prior``).
        downsample: the first block of a level after the first: its bottom-up conv has stride 2,
            its top-down output conv is a stride-2 transposed conv, and the residual stream is
            resampled by nearest neighbour.
        top: the last block of the bottom-up pass, whose residual output nothing would use (it
            has none, so that every parameter gets a gradient, as DDP requires).
    """

    def __init__(self, cfg: HierarchicalSpec, downsample: bool, top: bool = False):
        super().__init__()
        n_h, n_z = cfg.n_h, cfg.n_z
        q = BLOCK_POSTERIORS[cfg.posterior]
        self.n_z, self.downsample = n_z, downsample
        self.top_down = q.top_down
        self.feedback = cfg.up_feedback  # z is sampled in the bottom-up pass and feeds its stream
        self.flow = ARConvNet(n_z, n_h, cfg.depth_ar, q.outputs, cfg.ar_mask) if q.flow else None
        self.prior_flow = ARConvNet(n_z, n_h, cfg.depth_ar, 2, cfg.ar_mask) if cfg.prior == "iaf" else None
        self.pixel_ar = cfg.ar_mask == "pixel"
        n_ctx = n_h if self.flow is not None and self.flow.takes_context else 0
        n_prior_ctx = n_h if self.prior_flow is not None and self.prior_flow.takes_context else 0
        stride = 2 if downsample else 1
        # bottom-up conv: q mean, q log-std, IAF context | deterministic features
        self.up_split = [n_z, n_z, n_ctx, 0 if top else n_h]
        self.up_conv1 = WNConv2d(n_h, sum(self.up_split), 3, stride, init_scale=HEAD_INIT_SCALE)
        n_up2 = n_h + (n_z if self.feedback else 0)
        self.up_conv2 = None if top else WNConv2d(n_up2, n_h, 3, init_scale=HEAD_INIT_SCALE)
        # top-down conv: prior mean, log-std, prior-flow context | posterior mean, log-std,
        # context (down-* only) | deterministic features
        n_down = (n_z, n_z, n_ctx) if self.top_down else (0, 0, 0)
        self.down_split = [n_z, n_z, n_prior_ctx, *n_down, n_h]
        self.down_conv1 = WNConv2d(n_h, sum(self.down_split), 3, init_scale=HEAD_INIT_SCALE)
        self.down_conv2 = WNConv2d(
            n_z + n_h, n_h, 3, stride, transpose=downsample, init_scale=HEAD_INIT_SCALE
        )

    def up(
        self, h: Tensor, eps: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor, tuple[Tensor, Tensor] | None]:
        """Bottom-up step: (next residual stream (None for the top block), bottom-up posterior
        parameters (N, 2 n_z + n_ctx, h, w), and for ``up_feedback`` blocks the posterior sample
        (z, elementwise log|dz/deps|) drawn here from ``eps``, which joins the stream's update)."""
        a = self.up_conv1(F.elu(h))
        n_q = sum(self.up_split[:3])
        sample = None
        if self.feedback:
            if eps is None:
                raise ValueError("an up_feedback block's bottom-up pass needs the posterior's noise")
            sample = self._posterior_sample(eps, *a[:, :n_q].split(self.up_split[:3], dim=1))
        if self.up_conv2 is None:
            return None, a[:, :n_q], sample
        if self.downsample:
            h = h[:, :, ::2, ::2]
        features = a[:, n_q:] if sample is None else torch.cat([a[:, n_q:], sample[0]], dim=1)
        return h + RESIDUAL_SCALE * self.up_conv2(F.elu(features)), a[:, :n_q], sample

    def down(
        self,
        h: Tensor,
        up: Tensor | None = None,
        eps: Tensor | None = None,
        z: Tensor | None = None,
        temperature: float = 1.0,
    ) -> BlockOutput:
        """Top-down step. Three modes: ``z`` given (densities of the generative model);
        ``up`` and ``eps`` (a posterior sample); ``eps`` alone (a prior sample, std times
        ``temperature``)."""
        d = self.down_conv1(F.elu(h))
        p_mean, p_log_std, p_ctx, r_mean, r_log_std, r_ctx, features = d.split(self.down_split, dim=1)
        ladj = None
        if z is None and up is not None:
            q_mean, q_log_std, q_ctx = up.split(self.up_split[:3], dim=1)
            if self.top_down:
                q_mean, q_log_std, q_ctx = q_mean + r_mean, q_log_std + r_log_std, q_ctx + r_ctx
            z, ladj = self._posterior_sample(eps, q_mean, q_log_std, q_ctx)
        elif z is None:
            z = self._prior_sample(temperature * eps, p_mean, p_log_std, p_ctx)
        mean, log_std = self._prior_params(z, p_mean, p_log_std, p_ctx)
        base = (z - mean) * torch.exp(-log_std)
        log_p = log_standard_normal(base) - log_std  # = log_normal(z, mean, log_std)
        if self.downsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = h + RESIDUAL_SCALE * self.down_conv2(F.elu(torch.cat([z, features], dim=1)))
        return BlockOutput(h, z, log_p, ladj, base)

    @staticmethod
    def _context(ctx: Tensor) -> Tensor | None:
        return ctx if ctx.shape[1] else None

    def _posterior_sample(
        self, eps: Tensor, mean: Tensor, log_std: Tensor, ctx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """z and the elementwise log|dz/deps| (valid elementwise: the map is triangular in channel order)."""
        z = mean + torch.exp(log_std) * eps
        ladj = log_std
        if self.flow is not None:
            out = self.flow(z, self._context(ctx))
            if len(out) == 1:  # mean-only: volume preserving
                z = z - AR_SCALE * out[0]
            else:
                m, s = (AR_SCALE * t for t in out)
                z = (z - m) * torch.exp(-s)
                ladj = ladj - s
        return z, ladj

    def _prior_params(self, z: Tensor, mean: Tensor, log_std: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        if self.prior_flow is None:
            return mean, log_std
        m, s = self.prior_flow(z, self._context(ctx))
        return mean + AR_SCALE * m, log_std + AR_SCALE * s

    def _prior_sample(self, eps: Tensor, mean: Tensor, log_std: Tensor, ctx: Tensor) -> Tensor:
        z = mean + torch.exp(log_std) * eps
        if self.prior_flow is not None:
            # the autoregressive prior samples sequentially: after pass k, the first k positions
            # in autoregressive order are exact (channel masks: channels; pixel masks: pixels x channels)
            for _ in range(self.n_z * (z.shape[-2] * z.shape[-1] if self.pixel_ar else 1)):
                mean_k, log_std_k = self._prior_params(z, mean, log_std, ctx)
                z = mean_k + torch.exp(log_std_k) * eps
        return z


# ----------------------------------------------------------------------------- the posterior


class HierarchicalPosterior(Posterior):
    """q(z|x) of the hierarchical model: the top-down pass with x's bottom-up activations.

    ``transform(eps)`` runs the top-down pass with the given noise (z of lower blocks depends on
    the z above them through the top-down stream) and returns flat z (*S, B, D) and
    ladj (*S, B), so that log q(z|x) = log N(eps; 0, I) - ladj.
    """

    def __init__(self, model: HierarchicalVAE, x: Tensor):
        super().__init__(model.latent_dim, x.shape[0], x)
        self.model, self.x = model, x
        # with up_feedback the bottom-up pass depends on the sample: it runs per row in transform
        self.up = None if model.up_feedback else model.bottom_up(x)

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        lead = eps.shape[:-1]
        flat = eps.reshape(-1, eps.shape[-1])

        def rows(index: Tensor) -> tuple[Tensor, Tensor]:
            eps_blocks, images = self.model.split_latent(flat[index]), index % self.batch_size
            if self.up is None:
                z, ladj = self.model.sample_up(self.x.index_select(0, images), eps_blocks)
            else:
                out = self.model.top_down(len(index), up=self.up, up_index=images, eps=eps_blocks)
                z, ladj = out.z, out.ladj
            return self.model.join_latent(z), _total(ladj)

        z, ladj = self.model._passes(flat.shape[0], rows)
        return z.view(*lead, -1), ladj.view(lead)


# ----------------------------------------------------------------------------- the model


@dataclass
class TopDown:
    """A top-down pass: per-block lists in top-down order, and the decoder's output (or None)."""

    z: list[Tensor]
    log_p: list[Tensor]
    ladj: list[Tensor] | None
    out: Tensor | None  # (N, P * C, H_padded, W_padded)
    base: list[Tensor]  # the prior's standard-normal base of each z


class HierarchicalVAE(nn.Module):
    """The ResNet VAE with bidirectional inference (IAF paper, section 6; openai/iaf ``cvae1``).

    Arguments:
        cfg: its :class:`HierarchicalSpec` (``depths``, ``n_h``, ``n_z``, ``depth_ar``,
            ``posterior`` (one of :data:`BLOCK_POSTERIORS`), ``prior`` (:data:`BLOCK_PRIORS`), ...).
        shape: image shape (C, H, W).
        binary: whether pixels are binary (else 8-bit).

    Attributes:
        latent_dim: D, the total number of latent variables (all blocks).
        latent_shapes: each block's z shape (n_z, h, w), in the (top-down) order of the flat latent.
        max_rows: evaluation passes (``forward`` without autograd, ``encode(x).transform``,
            ``log_joint``, ...) run over at most this many (sample, image) rows at a time, so
            memory is bounded whatever K and the batch size. Default: as many rows as
            ``cfg.row_budget_mb`` of activations hold (:meth:`bytes_per_row`).

    Example:
        >>> cfg = HierarchicalSpec(depths=[1, 1], n_h=8, n_z=2, posterior="down-iaf")
        >>> model = HierarchicalVAE(cfg, (1, 8, 8), binary=True)
        >>> model.latent_dim, model(torch.zeros(3, 1, 8, 8), samples=2).kl_groups.shape
        (40, torch.Size([2, 3, 4]))
    """

    def __init__(
        self, cfg: HierarchicalSpec, shape: tuple[int, int, int], binary: bool, max_rows: int | None = None
    ):
        super().__init__()
        _check(cfg)
        self.shape = tuple(shape)
        c, height, width = self.shape
        levels = len(cfg.depths)
        factor = 2**levels
        padded = [math.ceil(n / factor) * factor for n in (height, width)]
        pad_h, pad_w = padded[0] - height, padded[1] - width
        self.pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # F.pad order
        self.top_size = (padded[0] // factor, padded[1] // factor)
        self.likelihood = build_likelihood(cfg.likelihood, binary, self.shape, cfg.mixtures)
        self.x_enc = WNConv2d(c, cfg.n_h, 5, stride=2, init_scale=HEAD_INIT_SCALE)  # openai/iaf: 0.1
        levels_of_blocks = [i for i, depth in enumerate(cfg.depths) for _ in range(depth)]
        first = {i: sum(cfg.depths[:i]) for i in range(levels)}  # index of each level's first block
        self.blocks = nn.ModuleList(
            HierarchicalBlock(cfg, downsample=i > 0 and k == first[i], top=k == len(levels_of_blocks) - 1)
            for k, i in enumerate(levels_of_blocks)
        )
        self.h_top = nn.Parameter(torch.zeros(cfg.n_h))
        self.x_dec = WNConv2d(
            cfg.n_h, self.likelihood.params * c, 5, stride=2, transpose=True, init_scale=HEAD_INIT_SCALE
        )
        self.latent_shapes = [
            (cfg.n_z, padded[0] // 2 ** (i + 1), padded[1] // 2 ** (i + 1))
            for i in reversed(levels_of_blocks)
        ]
        self.latent_sizes = [math.prod(s) for s in self.latent_shapes]
        self.latent_dim = sum(self.latent_sizes)
        self.cfg = cfg
        self.up_feedback = cfg.up_feedback
        budget = cfg.row_budget_mb * 2**20
        self.max_rows = max_rows or max(1, budget // self.bytes_per_row())

    def bytes_per_row(self, element_size: int = 4) -> int:
        """An upper estimate of the activation memory one (sample, image) row takes in an
        evaluation (no autograd) pass: twice the largest block's transient maps (stream, conv
        outputs, AR hidden layers, its indexed bottom-up parameters), plus every block's kept
        per-element terms (z, log p, log|det|, eps) and the decoder's maps."""
        cfg, (c, height, width) = self.cfg, self.shape
        transient = 0
        for block, (_, h, w) in zip(reversed(self.blocks), self.latent_shapes, strict=True):
            side = 4 if block.downsample else 1  # the stream is upsampled to twice the size
            maps = (
                2 * cfg.n_h + sum(block.down_split) + sum(block.up_split) + 4 * cfg.n_z
                + 2 * cfg.n_h * max(cfg.depth_ar, 1) + side * 2 * cfg.n_h
            )  # fmt: skip
            transient = max(transient, maps * h * w)
        kept = 4 * sum(self.latent_sizes)
        decoder = (cfg.n_h + 2 * self.likelihood.params * c) * (height + self.pad[2] + self.pad[3]) * (
            width + self.pad[0] + self.pad[1]
        )
        return element_size * (2 * transient + kept + decoder)

    # -- flat latents <-> per-block tensors (top-down order)

    def split_latent(self, flat: Tensor) -> list[Tensor]:
        """(N, D) -> per-block (N, n_z, h, w), top-down order."""
        parts = flat.split(self.latent_sizes, dim=-1)
        return [p.reshape(-1, *s) for p, s in zip(parts, self.latent_shapes, strict=True)]

    @staticmethod
    def join_latent(parts: Sequence[Tensor]) -> Tensor:
        return torch.cat([p.flatten(1) for p in parts], dim=1)

    # -- the two passes

    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """Per-block bottom-up posterior parameters, in block (bottom-up) order, each (B, ., h, w)."""
        return self._up_pass(x)[0]

    def sample_up(self, x: Tensor, eps: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``up_feedback``: the posterior sample drawn in the bottom-up pass over rows x (N, C, H, W)
        with noise ``eps`` (top-down order): per-block z and log|dz/deps|, in top-down order."""
        _, samples = self._up_pass(x, eps)
        return [z for z, _ in reversed(samples)], [ladj for _, ladj in reversed(samples)]

    def _up_pass(
        self, x: Tensor, eps: list[Tensor] | None = None
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        h = self.x_enc(F.pad(2 * x - 1, self.pad))
        params, samples = [], []
        for k, block in enumerate(self.blocks):
            h, q, sample = block.up(h, None if eps is None else eps[len(self.blocks) - 1 - k])
            params.append(q)
            if sample is not None:
                samples.append(sample)
        return params, samples

    def top_down(
        self,
        n: int,
        up: list[Tensor] | None = None,
        eps: list[Tensor] | None = None,
        z: list[Tensor] | None = None,
        temperature: float = 1.0,
        decode: bool = False,
        up_index: Tensor | None = None,
    ) -> TopDown:
        """The top-down pass over n rows: given z, a posterior sample (``up`` in bottom-up
        order, ``eps``) or a prior sample (``eps`` alone). Lists of z/eps are in top-down order;
        a block whose entry of ``z`` is None draws its z (the prior below given top blocks).
        ``up_index`` (n,) picks row i's bottom-up parameters as ``up[.][up_index[i]]``, one block
        at a time, so that S samples of B images never hold S copies of every block's ``up``."""
        h = self.h_top.view(1, -1, 1, 1).expand(n, -1, *self.top_size)
        zs, log_ps, ladjs, bases = [], [], [], []
        for k, block in enumerate(reversed(self.blocks)):
            u = None if up is None else up[len(self.blocks) - 1 - k]
            if u is not None and up_index is not None:
                u = u.index_select(0, up_index)
            out = block.down(
                h,
                up=u,
                eps=None if eps is None else eps[k],
                z=None if z is None else z[k],
                temperature=temperature,
            )
            h = out.h
            zs.append(out.z)
            log_ps.append(out.log_p)
            ladjs.append(out.ladj)
            bases.append(out.base)
        out = self.x_dec(F.elu(h)) if decode else None
        return TopDown(zs, log_ps, ladjs if up is not None else None, out, bases)

    def _params(self, out: Tensor) -> Tensor:
        """Decoder output (N, P*C, Hp, Wp) -> likelihood parameters (N, P, C, H, W), padding cropped."""
        c, height, width = self.shape
        left, _, top, _ = self.pad
        out = out[:, :, top : top + height, left : left + width]
        return out.reshape(out.shape[0], -1, c, height, width)

    def _passes(
        self, n: int, fn: Callable[[Tensor], tuple[Tensor, ...]], limit: int | None = None
    ) -> list[Tensor]:
        """:func:`~flowvae.core.map_rows` in passes of ``limit`` rows (default ``max_rows``)."""
        return map_rows(n, limit or self.max_rows, fn, device=self.h_top.device)

    # -- the flat VAE's interface

    def forward(
        self, x: Tensor, samples: int = 1, eps: Tensor | None = None, one_pass: bool = False
    ) -> ElboTerms:
        """The ELBO's terms for ``samples`` posterior draws per example.

        With autograd on (training), or ``one_pass``, this is one pass over all S x B rows.
        Without it (evaluation) images go in chunks of at most ``max_rows`` and (sample, image)
        rows in passes of at most ``max_rows``, each indexing the shared bottom-up parameters
        (never repeating them S times) and drawing its own noise (when ``eps`` is None), so peak
        memory depends on neither S nor B.

        Arguments:
            x: images (B, C, H, W).
            samples: S.
            eps: optional base noise (S, B, D); drawn from N(0, I) when None.
            one_pass: all rows at once even without autograd (data-dependent init needs the
                whole batch's statistics).

        Returns:
            :class:`~flowvae.estimators.ElboTerms` with (S, B) terms and ``kl_groups``
            (S, B, G), G = blocks x n_z: for each block and feature map, log q - log p summed over
            the map's positions (free bits clamp its minibatch mean, paper Eq. 15).
        """
        s = samples if eps is None else eps.shape[0]
        if one_pass or torch.is_grad_enabled():  # autograd keeps every row's activations anyway
            return self._terms(x, s, eps, s * x.shape[0])

        def images(index: Tensor) -> tuple[Tensor, ...]:  # bound the bottom-up pass too
            start, end = int(index[0]), int(index[-1]) + 1
            with noise.narrowed(start, end - start):  # examples keep their own draws
                t = self._terms(x[start:end], s, None if eps is None else eps[:, start:end], self.max_rows)
            return t.log_likelihood, t.log_prior, t.log_q, t.kl_groups

        return ElboTerms(*map_rows(x.shape[0], self.max_rows, images, device=x.device, dim=1))

    def _terms(self, x: Tensor, s: int, eps: Tensor | None, rows_per_pass: int) -> ElboTerms:
        """Bottom-up pass over the images, then the (sample, image) rows through the top-down
        pass in passes of ``rows_per_pass`` rows, then the ELBO's terms."""
        batch = x.shape[0]
        up = None if self.up_feedback else self.bottom_up(x)
        # rows are sample-major: row r is image r % batch; noise not given is drawn per pass
        flat = None if eps is None else eps.reshape(s * batch, -1)

        def rows(index: Tensor) -> tuple[Tensor, ...]:
            images = index % batch
            if flat is None:
                draws = noise.randn_rows(images, self.latent_dim, dtype=self.h_top.dtype, device=x.device)
            else:
                draws = flat[index]
            eps_blocks = self.split_latent(draws)
            if up is None:  # up_feedback: z is drawn in a bottom-up pass per row
                z, ladj = self.sample_up(x.index_select(0, images), eps_blocks)
                out = self.top_down(len(index), z=z, decode=True)
            else:
                out = self.top_down(len(index), up=up, up_index=images, eps=eps_blocks, decode=True)
                ladj = out.ladj
            log_q = [log_standard_normal(e) - a for e, a in zip(eps_blocks, ladj, strict=True)]
            kl = torch.cat([(q - p).sum((2, 3)) for q, p in zip(log_q, out.log_p, strict=True)], dim=1)
            log_lik = self.likelihood.log_prob(x.index_select(0, images), self._params(out.out))
            return log_lik, _total(out.log_p), _total(log_q), kl

        log_lik, log_p, log_q, kl_groups = self._passes(s * batch, rows, rows_per_pass)
        return ElboTerms(
            log_likelihood=log_lik.view(s, batch),
            log_prior=log_p.view(s, batch),
            log_q=log_q.view(s, batch),
            kl_groups=kl_groups.view(s, batch, -1),
        )

    @torch.no_grad()
    def data_init(self, x: Tensor) -> None:
        """Weight normalisation's data-dependent init from a first batch: one forward pass in
        which every convolution, in the order the data reaches it, sets its scale and bias so
        that its outputs have zero mean and standard deviation ``init_scale`` on the batch."""
        convs = [m for m in self.modules() if isinstance(m, WNConv2d)]
        for conv in convs:
            conv.request_data_init()
        self.forward(x, one_pass=True)  # the statistics are those of the whole batch
        for conv in convs:  # any conv this configuration never runs keeps its default init
            conv._init_pending = False

    def encode(self, x: Tensor) -> HierarchicalPosterior:
        return HierarchicalPosterior(self, x)

    def _densities(self, z: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """log p(z) and (if x is given) log p(x|z) for flat z (*S, B, D)."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        batch = lead[-1] if lead else 1

        def rows(index: Tensor) -> tuple[Tensor, ...]:
            out = self.top_down(len(index), z=self.split_latent(flat[index]), decode=x is not None)
            log_p = _total(out.log_p)
            if x is None:
                return (log_p,)
            return log_p, self.likelihood.log_prob(x.index_select(0, index % batch), self._params(out.out))

        parts = self._passes(flat.shape[0], rows)
        log_p = parts[0].view(lead)
        return log_p, parts[1].view(lead) if x is not None else None

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) = sum_i log p(z_i | z_>i): z (*S, B, D) -> (*S, B)."""
        return self._densities(z, None)[0]

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z): x (B, C, H, W), z (*S, B, D) -> (*S, B)."""
        return self._densities(z, x)[1]

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        log_p, log_lik = self._densities(z, x)
        return log_p + log_lik

    def sample_prior(
        self, sample_shape: Sequence[int], like: Tensor | None = None, temperature: float = 1.0,
        given: Sequence[Tensor] = (),
    ) -> Tensor:  # fmt: skip
        """Flat z (*sample_shape, D) drawn ancestrally from the prior; ``temperature`` scales the
        prior's standard deviations (temperature < 1 gives smoother samples; NVAE's per-layer
        temperature). ``given``: the top blocks' z, each (examples, n_z, h, w), kept as they are
        while the blocks below are drawn given them (every row draws the noise of all blocks,
        so the lower blocks' draws do not depend on how many are given). The samples have the
        model's dtype and device (``like`` is accepted for the protocol; it must agree)."""
        n = math.prod(sample_shape)
        if like is not None and (like.dtype, like.device) != (self.h_top.dtype, self.h_top.device):
            raise ValueError("HierarchicalVAE samples in its own dtype and device; move the model instead")
        like = self.h_top
        examples = sample_shape[-1] if len(sample_shape) else 1  # the last sample dim indexes examples

        def rows(index: Tensor) -> tuple[Tensor]:
            images = index % examples
            eps = noise.randn_rows(images, self.latent_dim, dtype=like.dtype, device=like.device)
            z = [g.index_select(0, images) for g in given] + [None] * (len(self.blocks) - len(given))
            out = self.top_down(len(index), eps=self.split_latent(eps), z=z, temperature=temperature)
            return (self.join_latent(out.z),)

        return self._passes(n, rows)[0].view(*sample_shape, self.latent_dim)

    def prior_base(self, z: Tensor) -> Tensor:
        """The prior's standard-normal base u of flat z (*S, B, D): u_i = (z_i - mean_i) / std_i
        of p(z_i | z_>i), the noise an ancestral sample of z would have drawn."""
        flat = z.reshape(-1, z.shape[-1])

        def rows(index: Tensor) -> tuple[Tensor]:
            return (self.join_latent(self.top_down(len(index), z=self.split_latent(flat[index])).base),)

        return self._passes(flat.shape[0], rows)[0].view(z.shape)

    def prior_from_base(self, u: Tensor) -> Tensor:
        """Flat z (*S, B, D) of the prior's base u: the ancestral sample that draws the noise u."""
        flat = u.reshape(-1, u.shape[-1])

        def rows(index: Tensor) -> tuple[Tensor]:
            return (self.join_latent(self.top_down(len(index), eps=self.split_latent(flat[index])).z),)

        return self._passes(flat.shape[0], rows)[0].view(u.shape)

    def decode_params(self, z: Tensor) -> Tensor:
        """Likelihood parameters (*S, B, P, C, H, W) for flat z (*S, B, D)."""
        flat = z.reshape(-1, z.shape[-1])

        def rows(index: Tensor) -> tuple[Tensor]:
            out = self.top_down(len(index), z=self.split_latent(flat[index]), decode=True)
            return (self._params(out.out),)

        out = self._passes(flat.shape[0], rows)[0]
        return out.view(*z.shape[:-1], *out.shape[1:])

    def decode_mean(self, z: Tensor) -> Tensor:
        return self.likelihood.mean(self.decode_params(z))

    def decode_sample(self, z: Tensor) -> Tensor:
        return self.likelihood.sample(self.decode_params(z))


def _total(parts: Sequence[Tensor]) -> Tensor:
    """Sum of per-block elementwise terms (N, n_z, h, w) -> (N,)."""
    return torch.cat([p.flatten(1) for p in parts], dim=1).sum(-1)


def _check(cfg: HierarchicalSpec) -> None:
    if cfg.posterior not in BLOCK_POSTERIORS:
        raise ValueError(
            f"unknown posterior {cfg.posterior!r} for model.type=hierarchical; "
            f"available: {', '.join(BLOCK_POSTERIORS)}"
        )
    if cfg.prior not in BLOCK_PRIORS:
        raise ValueError(f"unknown model.prior {cfg.prior!r}; available: {', '.join(BLOCK_PRIORS)}")
    if cfg.ar_mask not in AR_MASKS:
        raise ValueError(f"unknown model.ar_mask {cfg.ar_mask!r}; available: {', '.join(AR_MASKS)}")
    if cfg.up_feedback and BLOCK_POSTERIORS[cfg.posterior].top_down:
        raise ValueError(f"model.up_feedback=true needs an up-* posterior, not {cfg.posterior!r}")
    if cfg.row_budget_mb < 1:
        raise ValueError(f"model.row_budget_mb must be >= 1, got {cfg.row_budget_mb}")
    if not cfg.depths or min(cfg.depths) < 1:
        raise ValueError(f"model.depths must be a non-empty list of positive block counts, got {cfg.depths}")
    if cfg.n_h < 1 or cfg.n_z < 1 or cfg.depth_ar < 0:
        raise ValueError(
            f"model.n_h and model.n_z must be >= 1 and model.depth_ar >= 0 "
            f"(got n_h={cfg.n_h}, n_z={cfg.n_z}, depth_ar={cfg.depth_ar})"
        )


__all__ = [
    "BlockPosterior", "HierarchicalBlock", "HierarchicalPosterior",
    "HierarchicalSpec", "HierarchicalVAE", "BLOCK_POSTERIORS",
    "BLOCK_PRIORS",
]  # fmt: skip
