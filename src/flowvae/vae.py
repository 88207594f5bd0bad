"""The flat VAE: encoder -> posterior q(z|x) -> decoder -> likelihood p(x|z), prior p(z)
(N(0, I) unless given one of :mod:`flowvae.priors`).

The model exposes what every estimator needs and nothing more (:class:`~flowvae.core.LatentVariableModel`):

- ``encode(x)``: the posterior q(z|x) as a :class:`~flowvae.core.Posterior`,
- ``log_prior(z)``, ``log_likelihood(x, z)``, ``log_joint(x, z)``: densities of the model,
- ``sample_prior(n)`` and ``decode_mean(z)`` / ``decode_sample(z)`` for images.

Latents are flat vectors (*S, B, D); the hierarchical model offers the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .core import ElboTerms, Posterior, map_rows
from .likelihoods import LIKELIHOODS
from .priors import StandardNormal


class VAE(nn.Module):
    """A VAE with one stochastic layer, assembled from modules (Kingma & Welling 2014).

    Arguments:
        encoder: images (B, C, H, W) -> features (B, F).
        posterior: a posterior head, features (B, F) -> :class:`~flowvae.core.Posterior`
            (any of :mod:`flowvae.posteriors`, or your own); it must expose ``latent_dim``.
        decoder: latents (N, D) -> likelihood parameters (N, P, C, H, W), P =
            ``likelihood.params`` (1 for ``bernoulli``): for 8x8 binary images end it with
            ``nn.Unflatten(1, (1, 1, 8, 8))``. Its first output is checked (one ``ValueError``
            naming the expected shape); later calls are not.
        likelihood: p(x|z) as a module of :mod:`flowvae.likelihoods`, or its name
            (``bernoulli``, ``logistic``, ``logistic-mixture``, ``gaussian``).
        shape: image shape (C, H, W); by default the decoder's ``shape``.
        prior: p(z), a module of :mod:`flowvae.priors` (``log_prob(z, model)``,
            ``sample(shape, model, like, temperature)``); default N(0, I).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import flowvae
        >>> encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ELU())
        >>> decoder = nn.Sequential(nn.Linear(4, 64), nn.Unflatten(1, (1, 1, 8, 8)))
        >>> q = flowvae.posteriors.IAF(features=32, latent=4, flow_steps=2, flow_hidden=16, context_dim=8)
        >>> vae = flowvae.VAE(encoder, q, decoder, "bernoulli", shape=(1, 8, 8))
        >>> x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
        >>> flowvae.elbo(vae, x).shape
        torch.Size([5])
    """

    fused_rows = 2048  # CPU: (sample, image) rows per block, cache-sized (measured: BENCHMARKS.md, issue 14)
    fused_rows_gpu = 32768  # other devices: blocks that keep a GPU busy (measured: BENCHMARKS.md, GPU)

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module | str,
        shape: Sequence[int] | None = None,
        prior: nn.Module | None = None,
    ):
        super().__init__()
        shape = shape if shape is not None else getattr(decoder, "shape", None)
        if shape is None:
            raise ValueError("VAE needs the image shape (C, H, W): pass shape=")
        self.shape = tuple(shape)
        self.latent_dim = posterior.latent_dim
        if isinstance(likelihood, str):
            if likelihood not in LIKELIHOODS:
                raise ValueError(f"unknown likelihood {likelihood!r}; available: {', '.join(LIKELIHOODS)}")
            likelihood = LIKELIHOODS[likelihood].build(self.shape)
        self.likelihood = likelihood
        self.encoder = encoder
        self.posterior = posterior
        self.decoder = decoder
        self.prior = prior if prior is not None else StandardNormal(self.latent_dim)
        self._decoder_checked = False  # set by the first decoder output of the right shape

    def forward(self, x: Tensor, samples: int = 1) -> ElboTerms:
        """The ELBO's terms for ``samples`` draws of z per example (what training differentiates).

        Evaluating (eval mode, no gradients), x is encoded once and the draws go through the
        posterior's flow, the prior and the decoder in blocks of about :attr:`fused_rows`
        (sample, image) rows, so that each block's activations stay in the CPU's cache
        (:attr:`fused_rows_gpu` on a GPU).
        """
        q = self.encode(x)
        step = self._samples_per_block(x)
        if self.training or torch.is_grad_enabled() or samples <= step:
            return self._terms(x, q, samples)

        def block(index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            t = self._terms(x, q, len(index))
            return t.log_likelihood, t.log_prior, t.log_q

        return ElboTerms(*map_rows(samples, step, block))

    def _samples_per_block(self, x: Tensor) -> int:
        rows = self.fused_rows if x.device.type == "cpu" else self.fused_rows_gpu
        return max(1, rows // max(x.shape[0], 1))

    def _terms(self, x: Tensor, q: Posterior, samples: int) -> ElboTerms:
        z, log_q = q.rsample_and_log_prob((samples,))
        return ElboTerms(self.log_likelihood(x, z), self.log_prior(z), log_q)

    def data_init(self, x: Tensor) -> None:
        """Data-dependent initialisation from a first batch: none for the flat VAE."""

    def encode(self, x: Tensor) -> Posterior:
        return self.posterior(self.encoder(x))

    def log_prior(self, z: Tensor) -> Tensor:
        return self.prior.log_prob(z, self)

    def _decode(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """Likelihood parameters (*S, B, P, C, H, W) at z (*S, B, D); an autoregressive decoder
        (``decoder.autoregressive``) also takes the images x (B, C, H, W) it scores."""
        if getattr(self.decoder, "autoregressive", False):
            if x is None:
                raise ValueError("an autoregressive decoder needs the images it scores")
            out = self.decoder(z, x)
            if not self._decoder_checked:
                self._check_decoder(out, z.shape[:-1], "(*S, B, P, C, H, W)")
            return out
        out = self.decoder(z.reshape(-1, z.shape[-1]))  # (N, P, C, H, W)
        if not self._decoder_checked:
            self._check_decoder(out, out.shape[:1], "(N, P, C, H, W)")
        return out.view(*z.shape[:-1], *out.shape[1:])

    def _check_decoder(self, out: Tensor, lead: Sequence[int], form: str) -> None:
        """Once: the decoder's output must be ``lead`` + (P, C, H, W), P the likelihood's
        parameters per pixel (``likelihood.params``; any P for a likelihood without it)."""
        params = getattr(self.likelihood, "params", None)
        p = params if params is not None else (out.shape[len(lead)] if out.dim() > len(lead) else "P")
        expected = (*lead, p, *self.shape)
        if tuple(out.shape) != expected:
            name = type(self.likelihood).__name__
            what = f"{params} ({name}.params)" if params is not None else f"what {name} takes"
            raise ValueError(
                f"the decoder returned shape {tuple(out.shape)}; VAE expects {form} = {expected}: P = "
                f"{what} likelihood parameters per pixel, (C, H, W) = shape; e.g. end the decoder with "
                f"nn.Unflatten(1, {(p, *self.shape)})"
            )
        self._decoder_checked = True

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z): x (B, C, H, W), z (*S, B, D) -> (*S, B).

        In eval mode, a likelihood that fuses its density (``log_prob_linear``) with a
        decoder's linear output layer (a decoder with ``output_layer(x) -> (weight, bias)`` and
        its input ``features(z, x)``: ``mlp``, ``linear``, ``made``) does so, over blocks of
        about :attr:`fused_rows` (sample, image) rows so that each block's activations stay in
        the CPU's cache (on a GPU, :attr:`fused_rows_gpu`: enough to keep it busy): this is
        what importance sampling runs, thousands of z per image. Training (train mode) and
        every other likelihood form the decoder's parameters in full.
        """
        fuse = getattr(self.likelihood, "log_prob_linear", None)
        lead, batch = z.shape[:-1], x.shape[0]
        fused = fuse is not None and hasattr(self.decoder, "output_layer") and not self.training
        if not fused or len(lead) == 0 or lead[-1] != batch:  # (other shapes: broadcasting)
            return self.likelihood.log_prob(x, self._decode(z, x))
        blocks = z.reshape(-1, batch, z.shape[-1]).split(self._samples_per_block(x))  # (s, B, D)
        weight, bias = self.decoder.output_layer(x)
        features = (self.decoder.features(zs, x) for zs in blocks)
        return fuse(x, features, weight, bias).view(lead)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.log_prior(z) + self.log_likelihood(x, z)

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        """The stochastic layers' shapes, top first, in the order of the flat z: ``[(D,)]``, or
        ``[(D2,), (D1,)]`` with two stochastic layers."""
        return [(size,) for size in getattr(self.prior, "layer_sizes", [self.latent_dim])]

    def sample_prior(
        self, sample_shape: Sequence[int], like: Tensor | None = None, temperature: float = 1.0,
        given: Sequence[Tensor] = (),
    ) -> Tensor:  # fmt: skip
        """z ~ p(z), (*sample_shape, D); ``temperature`` scales the prior's standard deviations.
        The last sample dim indexes examples (their own random streams when evaluating).
        ``given``: the top layers' z, each (examples, D_i), kept while the layers below are
        drawn given them (two stochastic layers: z1 ~ p(z1 | z2))."""
        if len(given) == len(self.latent_shapes):
            return torch.cat(list(given), dim=-1).expand(*sample_shape, self.latent_dim)
        if given:
            return self.prior.sample(sample_shape, self, like, temperature, top=given[0])
        return self.prior.sample(sample_shape, self, like, temperature)

    def prior_base(self, z: Tensor) -> Tensor:
        """The prior's standard-normal base u of z (*S, B, D) (N(0, I): z itself; a flow prior:
        its base; two layers: each layer's); a VampPrior, a mixture, has none (``ValueError``)."""
        return self.prior.base(z, self)

    def prior_from_base(self, u: Tensor) -> Tensor:
        """z of the prior's base u (*S, B, D): the inverse of :meth:`prior_base`."""
        return self.prior.from_base(u, self)

    def decode_mean(self, z: Tensor) -> Tensor:
        """The mean of p(x|z) at z (N, D); autoregressive: each pixel's mean given the pixels
        sampled before it."""
        if getattr(self.decoder, "autoregressive", False):
            return self.decoder.generate(z, self.likelihood)[1]
        return self.likelihood.mean(self._decode(z))

    def decode_params(self, z: Tensor) -> Tensor:
        """The likelihood's parameters (*S, B, P, C, H, W) at z (*S, B, D); an autoregressive
        decoder has none without the image (``ValueError``)."""
        return self._decode(z)

    def decode_sample(self, z: Tensor) -> Tensor:
        """x ~ p(x|z) at z (N, D)."""
        if getattr(self.decoder, "autoregressive", False):
            return self.decoder.generate(z, self.likelihood)[0]
        return self.likelihood.sample(self._decode(z))
