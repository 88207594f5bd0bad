"""Exact inference in the linear-Gaussian VAE (probabilistic PCA), the ground truth for estimators.

A :class:`~flowvae.vae.VAE` with ``decoder=linear`` and ``likelihood=gaussian`` is

    z ~ N(0, I_d),        x | z ~ N(W z + b, diag(sigma^2)),        x in R^n,

so that p(x) = N(x; b, W W^T + diag(sigma^2)) and the posterior is Gaussian,

    p(z|x) = N(mu, Lambda^{-1}),   Lambda = I + W^T D^{-1} W,   mu = Lambda^{-1} W^T D^{-1} (x - b),

with D = diag(sigma^2) (Tipping & Bishop 1999). Everything here works in latent space through
the Woodbury identity and the matrix determinant lemma,

    (x-b)^T C^{-1} (x-b) = (x-b)^T D^{-1} (x-b) - mu^T Lambda mu,   log|C| = log|D| + log|Lambda|,

so the cost is O(n d^2 + d^3), never O(n^3).

Every closed form also holds for any Gaussian prior N(m, Sigma) (``prior.moments``: a
one-component VampPrior, or two linear-Gaussian stochastic layers): with r = x - b - W m,
Lambda = Sigma^{-1} + W^T D^{-1} W, mu = m + Lambda^{-1} W^T D^{-1} r, the quadratic form is
r^T D^{-1} r - (mu - m)^T Lambda (mu - m) and log|C| gains log|Sigma|.

Every closed form here is computed in float64 whatever the model's dtype, and returned in
float64. ELBO, IWAE, AIS and BDMC are all checked against :func:`exact_log_marginal`;
:func:`best_diag_elbo` is the closed-form L[q*_diag] used to test local optimisation of a
factorised posterior (Cremer et al. 2018, arXiv 1801.03558).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import noise
from .core import Prior
from .likelihoods import Gaussian
from .nets import LinearDecoder
from .numerics import LOG_2PI


@dataclass
class LinearGaussianParams:
    """The parameters of a linear-Gaussian model, flattened over pixels (n = C*H*W)."""

    weight: Tensor  # W (n, d)
    bias: Tensor  # b (n,)
    log_std: Tensor  # log sigma (n,)
    prior_mean: Tensor  # m (d,) of the Gaussian prior
    prior_covariance: Tensor  # Sigma (d, d)


@dataclass
class GaussianPosterior:
    """The exact posterior N(mean, precision^{-1}); the precision is shared by all examples."""

    mean: Tensor  # (B, d)
    precision: Tensor  # Lambda (d, d)
    precision_cholesky: Tensor  # L (d, d), lower triangular, L L^T = Lambda

    @property
    def covariance(self) -> Tensor:
        return torch.cholesky_inverse(self.precision_cholesky)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; mean, Lambda^{-1}) for z (*S, B, d) -> (*S, B)."""
        d = self.mean.shape[-1]
        y = (z - self.mean) @ self.precision_cholesky  # (*S, B, d): |L^T (z - mu)|^2 = quad form
        log_det = 2 * torch.log(torch.diagonal(self.precision_cholesky)).sum()
        return -0.5 * ((y**2).sum(-1) + d * LOG_2PI) + 0.5 * log_det

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Exact posterior samples (*S, B, d): z = mu + L^{-T} eps has covariance Lambda^{-1}."""
        shape = (*sample_shape, *self.mean.shape)
        eps = noise.randn(shape, batch_dim=-2, dtype=self.mean.dtype, device=self.mean.device)
        # solve L^T y = eps for every sample: y = L^{-T} eps; eps (..., d) as columns
        y = torch.linalg.solve_triangular(
            self.precision_cholesky.mT, eps.unsqueeze(-1), upper=True
        ).squeeze(-1)
        return self.mean + y


def _prior_moments(model: nn.Module) -> tuple[Tensor, Tensor] | None:
    prior = getattr(model, "prior", None)
    return prior.moments(model) if isinstance(prior, Prior) else None


def _linear(model: nn.Module) -> bool:
    """A linear decoder and a Gaussian likelihood."""
    return isinstance(getattr(model, "decoder", None), LinearDecoder) and isinstance(
        getattr(model, "likelihood", None), Gaussian
    )


def is_linear_gaussian(model: nn.Module) -> bool:
    """Whether ``model`` is a flat VAE with a linear decoder, a Gaussian likelihood and a
    Gaussian prior."""
    return _linear(model) and _prior_moments(model) is not None


def linear_gaussian_params(model: nn.Module, what: str = "exact inference") -> LinearGaussianParams:
    """W, b, log sigma of a linear-Gaussian VAE; a clear ``ValueError`` for any other model."""
    if not _linear(model):
        decoder = type(getattr(model, "decoder", None)).__name__
        likelihood = type(getattr(model, "likelihood", None)).__name__
        raise ValueError(
            f"{what} needs a linear-Gaussian model (model.decoder=linear, "
            f"model.likelihood=gaussian); this model has decoder={decoder}, "
            f"likelihood={likelihood}"
        )
    moments = _prior_moments(model)
    if moments is None:
        raise ValueError(
            f"{what} needs a Gaussian prior (model.prior=standard, or vampprior with "
            "model.prior_components=1; two stochastic layers need model.hidden=[] and a constant "
            f"p(z1|z2) variance); this model's prior is {type(getattr(model, 'prior', None)).__name__}"
        )
    out = model.decoder.out
    mean, covariance = moments
    # float64 whatever the model's dtype: the quadratic form below cancels (x^T D^-1 x minus
    # mu^T Lambda mu), and in float32 at small sigma that costs tens of nats
    weight = out.weight.double()
    return LinearGaussianParams(
        weight, out.bias.double(), model.likelihood.log_std.flatten().double(),
        mean.to(weight.device), covariance.to(weight.device),
    )  # fmt: skip


def _residual(params: LinearGaussianParams, x: Tensor) -> Tensor:
    """r = x - b - W m, (B, n): x's offset from its mean under the model."""
    return x.flatten(1).to(params.bias.dtype) - params.bias - params.weight @ params.prior_mean


def exact_posterior(model: nn.Module, x: Tensor) -> GaussianPosterior:
    """p(z|x) of a linear-Gaussian VAE for a batch x (B, C, H, W)."""
    p = linear_gaussian_params(model, "exact_posterior")
    w_scaled = p.weight * torch.exp(-2 * p.log_std).unsqueeze(-1)  # D^{-1} W (n, d)
    prior_precision = torch.cholesky_inverse(torch.linalg.cholesky(p.prior_covariance))
    precision = prior_precision + p.weight.T @ w_scaled
    chol = torch.linalg.cholesky(precision)
    u = _residual(p, x) @ w_scaled  # W^T D^{-1} (x - b - W m), (B, d)
    mean = p.prior_mean + torch.cholesky_solve(u.T, chol).T  # m + Lambda^{-1} u, (B, d)
    return GaussianPosterior(mean, precision, chol)


def exact_log_marginal(model: nn.Module, x: Tensor) -> Tensor:
    """log p(x) = log N(x; b + W m, W Sigma W^T + diag sigma^2) of a linear-Gaussian VAE: (B,)."""
    p = linear_gaussian_params(model, "exact_log_marginal")
    post = exact_posterior(model, x)
    r = _residual(p, x)  # (B, n)
    n = r.shape[1]
    u = r @ (p.weight * torch.exp(-2 * p.log_std).unsqueeze(-1))  # (B, d)
    quad = (r**2 * torch.exp(-2 * p.log_std)).sum(-1) - (u * (post.mean - p.prior_mean)).sum(-1)
    log_det = (
        2 * p.log_std.sum() + torch.logdet(p.prior_covariance)
        + 2 * torch.log(torch.diagonal(post.precision_cholesky)).sum()
    )  # fmt: skip
    return -0.5 * (n * LOG_2PI + log_det + quad)


def sample_exact_posterior(model: nn.Module, x: Tensor, sample_shape: Sequence[int] = ()) -> Tensor:
    """Samples z ~ p(z|x), shape (*sample_shape, B, d) in the model's dtype, e.g. to start a
    reverse AIS chain."""
    return exact_posterior(model, x).sample(sample_shape).to(model.decoder.out.weight.dtype)


def gaussian_elbo(model: nn.Module, x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """The ELBO of q = N(mean, diag exp(log_std)^2) in closed form: log p(x) - KL(q || p(z|x)).

    Arguments:
        model: a linear-Gaussian VAE.
        x: images (B, C, H, W).
        mean, log_std: (B, d) parameters of a factorised Gaussian q(z|x).

    Returns:
        (B,) the exact ELBO (no Monte Carlo noise).
    """
    post = exact_posterior(model, x)
    lam = post.precision
    d = mean.shape[-1]
    var = torch.exp(2 * log_std)  # (B, d)
    diff = mean - post.mean
    # KL(N(m, S) || N(mu, Lambda^{-1})) = 1/2 [tr(Lambda S) + (m-mu)^T Lambda (m-mu) - d
    #                                         - log|S| - log|Lambda|]
    trace = (var * torch.diagonal(lam)).sum(-1)
    mahalanobis = ((diff @ lam) * diff).sum(-1)
    log_det_lam = 2 * torch.log(torch.diagonal(post.precision_cholesky)).sum()
    kl = 0.5 * (trace + mahalanobis - d - 2 * log_std.sum(-1) - log_det_lam)
    return exact_log_marginal(model, x) - kl


def best_diag_gaussian(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The factorised Gaussian q*_diag maximising the ELBO: (mean, log_std), each (B, d).

    Minimising KL(q || N(mu, Lambda^{-1})) over diagonal q gives mean = mu and variances
    1 / diag(Lambda) (the mean-field solution; Bishop 2006, Sec. 10.1.2).
    """
    post = exact_posterior(model, x)
    log_std = -0.5 * torch.log(torch.diagonal(post.precision))
    return post.mean, log_std.expand_as(post.mean)


def best_diag_elbo(model: nn.Module, x: Tensor) -> Tensor:
    """L[q*_diag] in closed form: log p(x) - 1/2 (sum_i log Lambda_ii - log|Lambda|), (B,).

    The gap to log p(x) is the approximation gap of a factorised posterior (Cremer et al. 2018,
    arXiv 1801.03558); it is zero exactly when the posterior precision is diagonal.
    """
    post = exact_posterior(model, x)
    log_det = 2 * torch.log(torch.diagonal(post.precision_cholesky)).sum()
    gap = 0.5 * (torch.log(torch.diagonal(post.precision)).sum() - log_det)
    return exact_log_marginal(model, x) - gap


def exact(model: nn.Module, x: Tensor, samples: int | None = None) -> Tensor:
    """The estimator ``exact``: log p(x) of a linear-Gaussian VAE, (B,). ``samples`` is unused.

    Raises ``ValueError`` for any other model.
    """
    del samples  # accepted for the common estimator signature; the value is exact
    linear_gaussian_params(model, "estimator 'exact'")
    return exact_log_marginal(model, x)
