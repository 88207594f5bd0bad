"""Observation models p(x|z) over images, given decoder outputs (N, P, C, H, W).

Each likelihood says how many parameters per pixel it needs (``params``), scores images
(``log_prob`` sums over pixels) and turns parameters into images (``mean``, ``sample``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .numerics import (
    discretized_logistic_log_prob,
    discretized_logistic_mixture_log_prob,
    log_bernoulli,
    log_bernoulli_linear,
    log_normal,
    log_sigmoid_difference,
)


class Bernoulli(nn.Module):
    """Binary pixels; parameters are logits."""

    params = 1
    discrete = True  # a probability mass: bits/dim are meaningful

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        return log_bernoulli(x, out[..., 0, :, :, :]).flatten(-3).sum(-1)

    def log_prob_linear(self, x: Tensor, features: Iterable[Tensor], weight: Tensor, bias: Tensor) -> Tensor:
        """``log_prob`` of the logits ``h Wᵀ + b`` without forming x·l: x (B, C, H, W), the
        inputs h of the decoder's last linear layer in blocks (S_i, B, F) along the samples,
        its weight W (P, F) and bias b, (P,) or per image (B, P) -> (Σ S_i, B).

        Wᵀx and b·x are computed once for all blocks (see :func:`log_bernoulli_linear`).
        """
        pixels = x.flatten(-3)  # (B, P)
        x_weight, x_bias = pixels @ weight, (pixels * bias).sum(-1)
        parts = [log_bernoulli_linear(h, weight, bias, x_weight, x_bias) for h in features]
        return torch.cat(parts)

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out[..., 0, :, :, :])

    def sample(self, out: Tensor) -> Tensor:
        return torch.bernoulli(self.mean(out))


class DiscretizedLogistic(nn.Module):
    """8-bit pixels (values k/255) under a discretized logistic (IAF paper, openai/iaf)."""

    params = 2
    discrete = True

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        mean, log_scale = out[..., 0, :, :, :], out[..., 1, :, :, :].clamp(min=-7.0)
        return discretized_logistic_log_prob(x, mean, log_scale).flatten(-3).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return ((out[..., 0, :, :, :] + 1) / 2).clamp(0, 1)

    def sample(self, out: Tensor) -> Tensor:
        mean, log_scale = out[..., 0, :, :, :], out[..., 1, :, :, :].clamp(min=-7.0)
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return (torch.round((x.clamp(-1, 1) + 1) / 2 * 255) / 255).clamp(0, 1)


class DiscretizedLogisticMixture(nn.Module):
    """8-bit pixels under a mixture of ``k`` discretized logistics per pixel (no channel coupling)."""

    discrete = True

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.params = 3 * k

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = out.movedim(-4, -1)  # (..., C, H, W, 3k)
        logits, means, log_scales = out.split(self.k, dim=-1)
        return logits, means, log_scales.clamp(min=-7.0)

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        return discretized_logistic_mixture_log_prob(x, *self._split(out)).flatten(-3).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        logits, means, _ = self._split(out)
        return ((torch.softmax(logits, -1) * means).sum(-1) + 1).div(2).clamp(0, 1)

    def sample(self, out: Tensor) -> Tensor:
        logits, means, log_scales = self._split(out)
        pick = torch.distributions.Categorical(logits=logits).sample().unsqueeze(-1)
        mean, log_scale = means.gather(-1, pick)[..., 0], log_scales.gather(-1, pick)[..., 0]
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return (torch.round((x.clamp(-1, 1) + 1) / 2 * 255) / 255).clamp(0, 1)


class IAFLogistic(nn.Module):
    """openai/iaf's likelihood (``tf_train.py``): a discretized logistic with one learned global
    log-scale (initialised at 0), the decoder's mean clipped to the centres of the edge bins, and
    no tails on the edge bins.

    Pixel k in 0..255 occupies the bin [(k - 128) / 256, (k - 127) / 256] of [-0.5, 0.5]; the mean
    is clipped to ±(0.5 - 1/512). The 256 bin probabilities sum to less than one (the mass outside
    [-0.5, 0.5] is lost), so log p(x) is lower than with edge tails (:class:`DiscretizedLogistic`).
    The reference adds 1e-7 to each bin probability; this computes the log of the exact bin mass.
    """

    params = 1
    discrete = True
    BIN = 1.0 / 256
    MEAN_LIMIT = 0.5 - 1.0 / 512

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def _mean(self, out: Tensor) -> Tensor:
        return out[..., 0, :, :, :].clamp(-self.MEAN_LIMIT, self.MEAN_LIMIT)

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        lower = (torch.round(x * 255) - 128) * self.BIN
        inv_scale = torch.exp(-self.log_scale)
        minus = (lower - self._mean(out)) * inv_scale
        return log_sigmoid_difference(minus + self.BIN * inv_scale, minus).flatten(-3).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return self._mean(out) + 0.5

    def sample(self, out: Tensor) -> Tensor:
        mean = self._mean(out)
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        x = mean + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
        return torch.floor((x + 0.5) * 256).clamp(0, 255) / 255


class Gaussian(nn.Module):
    """Continuous pixels x ~ N(mean, sigma^2) with a learned log sigma per pixel.

    With a linear decoder and an N(0, I) prior this is probabilistic PCA, whose log p(x) and
    posterior are exact (see :mod:`flowvae.linear_gaussian`).
    """

    params = 1
    discrete = False  # a density over continuous values: no bits/dim

    def __init__(self, shape: tuple[int, int, int], init_log_std: float = math.log(0.1)):
        super().__init__()
        self.log_std = nn.Parameter(torch.full(shape, init_log_std))

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        return log_normal(x, out[..., 0, :, :, :], self.log_std).flatten(-3).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return out[..., 0, :, :, :]

    def sample(self, out: Tensor) -> Tensor:
        return self.mean(out) + torch.exp(self.log_std) * torch.randn_like(self.mean(out))


def likelihood_name(name: str, binary: bool) -> str:
    """The likelihood ``name`` stands for (``auto`` resolved), as reported next to every number."""
    if name == "auto":
        return "bernoulli" if binary else "logistic"
    return name


@dataclass(frozen=True)
class LikelihoodRecord:
    """A named likelihood: ``build(shape, mixtures)`` and the data it is for
    (``binary``, ``8-bit``, or ``any``)."""

    name: str
    build: Callable[..., nn.Module]
    data: str = "any"


LIKELIHOODS: dict[str, LikelihoodRecord] = {
    r.name: r
    for r in [
        LikelihoodRecord("bernoulli", lambda shape, mixtures=5: Bernoulli(), "binary"),
        LikelihoodRecord("logistic", lambda shape, mixtures=5: DiscretizedLogistic(), "8-bit"),
        LikelihoodRecord("logistic-mixture", lambda shape, mixtures=5: DiscretizedLogisticMixture(mixtures),
                         "8-bit"),
        LikelihoodRecord("gaussian", lambda shape, mixtures=5: Gaussian(shape), "any"),
        LikelihoodRecord("iaf-logistic", lambda shape, mixtures=5: IAFLogistic(), "8-bit"),
    ]
}  # fmt: skip


def build_likelihood(name: str, binary: bool, shape: tuple[int, int, int], mixtures: int) -> nn.Module:
    """``auto`` picks Bernoulli for binary data and the discretized logistic for 8-bit data."""
    name = likelihood_name(name, binary)
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; available: auto, {', '.join(LIKELIHOODS)}")
    data = LIKELIHOODS[name].data
    if data == "binary" and not binary:
        raise ValueError(f"model.likelihood={name} needs binary data (set data.binarize)")
    if data == "8-bit" and binary:
        raise ValueError(f"model.likelihood={name} is for 8-bit data; this data is binary")
    return LIKELIHOODS[name].build(shape, mixtures)
