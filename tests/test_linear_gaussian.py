"""Exact inference in the linear-Gaussian VAE, the ground truth for every estimator."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowvae.config import ModelConfig
from flowvae.core import FlowPosterior
from flowvae.estimators import ESTIMATORS
from flowvae.linear_gaussian import (
    best_diag_elbo,
    best_diag_gaussian,
    exact,
    exact_log_marginal,
    exact_posterior,
    gaussian_elbo,
    is_linear_gaussian,
    linear_gaussian_params,
    sample_exact_posterior,
)
from flowvae.model import build_model
from flowvae.testing import random_linear_gaussian_vae

B = 16



@pytest.fixture(scope="module")
def model():
    return random_linear_gaussian_vae(seed=0).eval()


@pytest.fixture(scope="module")
def x(model):
    torch.manual_seed(0)
    with torch.no_grad():
        simulated = model.decode_sample(model.sample_prior((B,)))
    # and a few examples far from the model's data
    return torch.cat([simulated, 3 * torch.randn(4, *simulated.shape[1:], dtype=torch.float64)])


def _full_covariance_marginal(model) -> torch.distributions.MultivariateNormal:
    p = linear_gaussian_params(model)
    cov = p.weight @ p.weight.T + torch.diag(torch.exp(2 * p.log_std))
    return torch.distributions.MultivariateNormal(p.bias, covariance_matrix=cov)


@torch.no_grad()
def test_exact_log_marginal_matches_full_covariance_gaussian(model, x):
    brute = _full_covariance_marginal(model).log_prob(x.flatten(1))
    torch.testing.assert_close(exact_log_marginal(model, x), brute, rtol=0, atol=1e-10)


@torch.no_grad()
def test_posterior_is_bayes_rule(model, x):
    # log p(z|x) = log p(x, z) - log p(x), with log p(x, z) from the model's own code path
    z = 2 * torch.randn(5, x.shape[0], model.latent_dim, dtype=torch.float64)
    bayes = model.log_joint(x, z) - exact_log_marginal(model, x)
    post = exact_posterior(model, x)
    torch.testing.assert_close(post.log_prob(z), bayes, rtol=0, atol=1e-9)
    mvn = torch.distributions.MultivariateNormal(post.mean, covariance_matrix=post.covariance)
    torch.testing.assert_close(mvn.log_prob(z), bayes, rtol=0, atol=1e-9)


@torch.no_grad()
def test_posterior_is_strongly_correlated(model, x):
    # the fixture must make a factorised q genuinely wrong: a gap of over a nat
    gap = exact_log_marginal(model, x) - best_diag_elbo(model, x)
    assert (gap > 1.0).all()
    corr = exact_posterior(model, x).covariance
    corr = corr / torch.sqrt(torch.outer(torch.diagonal(corr), torch.diagonal(corr)))
    assert corr.triu(1).abs().max() > 0.5


@torch.no_grad()
def test_exact_posterior_samples_have_posterior_moments(model, x):
    torch.manual_seed(1)
    n = 20000
    z = sample_exact_posterior(model, x[:2], (n,))  # (n, 2, d)
    post = exact_posterior(model, x[:2])
    cov = post.covariance
    var = torch.diagonal(cov)
    assert z.shape == (n, 2, model.latent_dim)
    # mean: standard error sqrt(var / n); covariance entries: sqrt((S_ii S_jj + S_ij^2) / n)
    assert ((z.mean(0) - post.mean).abs() < 4 * torch.sqrt(var / n)).all()
    centered = z - post.mean
    sample_cov = torch.einsum("nbi,nbj->bij", centered, centered) / n
    se = torch.sqrt((torch.outer(var, var) + cov**2) / n)
    assert ((sample_cov - cov).abs() < 4 * se).all()


def _mc_elbo(model, x, mean, log_std, samples: int):
    """Monte Carlo ELBO of N(mean, exp(log_std)^2) and its standard error, per example."""
    z, log_q = FlowPosterior(mean, log_std).rsample_and_log_prob((samples,))
    w = model.log_joint(x, z) - log_q  # (S, B)
    return w.mean(0), w.std(0) / math.sqrt(samples)


@torch.no_grad()
def test_gaussian_elbo_matches_monte_carlo(model, x):
    torch.manual_seed(2)
    best_mean, best_log_std = best_diag_gaussian(model, x)
    other_mean = best_mean + 0.3 * torch.randn_like(best_mean)
    other_log_std = best_log_std + 0.3 * torch.randn_like(best_log_std)
    for mean, log_std in [(best_mean, best_log_std), (other_mean, other_log_std)]:
        mc, se = _mc_elbo(model, x, mean, log_std, 5000)
        closed = gaussian_elbo(model, x, mean, log_std)
        assert ((mc - closed).abs() < 4 * se).all()
    torch.testing.assert_close(
        gaussian_elbo(model, x, best_mean, best_log_std),
        best_diag_elbo(model, x),
        rtol=0,
        atol=1e-10,
    )


@functools.cache
def _small_problem():
    torch.manual_seed(3)
    model = random_linear_gaussian_vae(seed=3)
    with torch.no_grad():
        return model, model.decode_sample(model.sample_prior((4,)))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 2.0))
def test_best_diag_elbo_beats_any_diag_gaussian(seed, scale):
    model, x = _small_problem()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean, log_std = best_diag_gaussian(model, x)
        noise = torch.randn(2, *mean.shape, generator=g, dtype=mean.dtype)
        other = gaussian_elbo(model, x, mean + scale * noise[0], log_std + scale * noise[1])
        best = best_diag_elbo(model, x)
        assert (other <= best + 1e-10).all()
        assert (best <= exact_log_marginal(model, x)).all()


def test_best_diag_gaussian_is_a_stationary_point(model, x):
    with torch.no_grad():
        mean, log_std = best_diag_gaussian(model, x)
    mean, log_std = mean.clone().requires_grad_(True), log_std.clone().requires_grad_(True)
    grads = torch.autograd.grad(gaussian_elbo(model, x, mean, log_std).sum(), [mean, log_std])
    for g in grads:
        assert g.abs().max() < 1e-9


@torch.no_grad()
def test_exact_estimator(model, x):
    value = ESTIMATORS["exact"](model, x, samples=7)
    torch.testing.assert_close(value, exact_log_marginal(model, x))
    assert value.shape == (x.shape[0],)
    # the fixture's encoder is deliberately imperfect: its ELBO is well below log p(x)
    torch.manual_seed(3)
    assert (ESTIMATORS["elbo"](model, x, samples=1000) < value - 1.0).all()


def test_exact_estimator_rejects_other_models():
    cfg = ModelConfig(encoder="mlp", decoder="mlp", likelihood="bernoulli", latent_dim=2, hidden=[8])
    model = build_model(cfg, (1, 2, 2), binary=True)
    assert not is_linear_gaussian(model)
    msg = (
        r"estimator 'exact' needs a linear-Gaussian model \(model.decoder=linear, "
        r"model.likelihood=gaussian\); this model has decoder=MLPDecoder, likelihood=Bernoulli"
    )
    with pytest.raises(ValueError, match=msg):
        exact(model, torch.zeros(3, 1, 2, 2))


@pytest.mark.parametrize("noise_std", [0.02, 0.3])
def test_closed_forms_are_float64_for_a_float32_model(noise_std):
    """784 pixels, small sigma, float32 weights: the Woodbury quadratic form cancels by tens of
    nats in float32. Against a dense float64 N(b, W W^T + D) of the same (float32) weights, the
    error allowed is float64 rounding amplified by the covariance's condition number."""
    model = random_linear_gaussian_vae((1, 28, 28), latent_dim=16, noise_std=noise_std, seed=5)
    model = model.float()
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((8,)))
        x = torch.cat([x, x + 3 * noise_std * torch.randn_like(x)])  # and off-model points
        value, best = exact(model, x), best_diag_elbo(model, x)
        dense = _full_covariance_marginal(model.double())
        brute = dense.log_prob(x.double().flatten(1))
        cond = torch.linalg.cond(dense.covariance_matrix).item()
    assert value.dtype == best.dtype == torch.float64
    tol = torch.finfo(torch.float64).eps * cond * (brute.abs().max().item() + x[0].numel())
    assert tol < 1e-3
    torch.testing.assert_close(value, brute, rtol=0, atol=tol)
    assert (best <= value).all()
    # and the closed-form gap, from float64 Lambda, equals its definition from a float64 MVN
    post = exact_posterior(model, x)
    mean, log_std = best_diag_gaussian(model, x)
    torch.testing.assert_close(gaussian_elbo(model, x, mean, log_std), best, rtol=0, atol=tol)
    assert post.mean.dtype == torch.float64
