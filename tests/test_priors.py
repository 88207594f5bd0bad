"""Learned priors (VampPrior, flow prior) and two stochastic layers, against exact values.

Tolerances:
- float64 closed forms and densities: 1e-9 to 1e-10 absolute (values of tens of nats; float64
  rounding is ~1e-16 relative, so this leaves a margin of 1e4 for cancellation);
- the mixture density of a float32 model: computed in float64 from the exact float32 inputs,
  only the final cast rounds, so the relative error is at most 2^-24 (one half-ulp);
- IWAE: the delta method for log of a mean of K weights, log p̂ - log p ≈ N(-r/(2K), r/K) with r
  = Var(w)/E[w]^2 estimated as K/ESS - 1 from the same weights; per example within its bias plus
  5 standard deviations, and the mean over examples within its bias plus 4 standard errors;
- AIS: as tests/test_ais.py, the mean error over examples under 0.1 nat and not significantly
  (3 standard errors) above the exact value, since AIS is a stochastic lower bound.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from flowvae.ais import ais
from flowvae.config import ModelConfig
from flowvae.estimators import ESTIMATORS, elbo_terms, importance_log_weights, iwae
from flowvae.linear_gaussian import (
    exact_log_marginal,
    exact_posterior,
    is_linear_gaussian,
    linear_gaussian_params,
)
from flowvae.model import build_model
from flowvae.numerics import log_gaussian_mixture, log_mean_exp, log_normal
from flowvae.priors import FlowPrior, VampPrior
from flowvae.testing import random_linear_gaussian_vae
from flowvae.two_layer import TwoLayerPosterior, TwoLayerPrior

B = 32


# ----------------------------------------------------------------------------- densities


def _brute_mixture(z, means, log_stds):
    """log (1/K) Σ_k Π_d N(z_d; m_kd, s_kd^2), elementwise over (..., K, D): the direct formula."""
    comps = log_normal(z.unsqueeze(-2), means, log_stds).sum(-1)
    return torch.logsumexp(comps, dim=-1) - math.log(means.shape[0])


def test_mixture_density_is_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(7, 5, generator=g, dtype=torch.float64)
    log_stds = torch.empty(7, 5, dtype=torch.float64).uniform_(-4, 1, generator=g)  # widths 0.02 to 2.7
    near = means[torch.randint(7, (3, 11), generator=g)]
    z = near + 0.1 * torch.randn(3, 11, 5, generator=g, dtype=torch.float64)
    got = log_gaussian_mixture(z, means, log_stds)
    assert got.shape == (3, 11) and got.dtype == torch.float64
    torch.testing.assert_close(got, _brute_mixture(z, means, log_stds), rtol=0, atol=1e-9)
    # float32 inputs: float64 inside, one rounding at the end
    z32, means32, log_stds32 = z.float(), means.float(), log_stds.float()
    reference = _brute_mixture(z32.double(), means32.double(), log_stds32.double())
    got32 = log_gaussian_mixture(z32, means32, log_stds32)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), reference, rtol=2.0**-24, atol=0)


def _model(dtype=torch.float64, **options):
    cfg = ModelConfig(latent_dim=3, hidden=[16], **options)
    torch.manual_seed(0)
    return build_model(cfg, (1, 4, 4), binary=True).to(dtype)


def _raw(layer: torch.nn.Linear, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log std) of an unbounded Gaussian layer, computed from its weights by hand."""
    return torch.nn.functional.linear(h, layer.weight, layer.bias).chunk(2, -1)


def test_vampprior_is_the_mixture_of_the_encoder_at_the_pseudo_inputs():
    model = _model(prior="vampprior", prior_components=5)
    prior = model.prior
    assert isinstance(prior, VampPrior) and prior.pseudo_inputs.shape == (5, 16)
    u = prior.inputs()
    assert ((u >= 0) & (u <= 1)).all()
    mean, log_std = _raw(model.posterior.gaussian, model.encoder(u))  # q(z|u_k) of diag
    z = torch.randn(4, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(model.log_prior(z), _brute_mixture(z, mean, log_std), rtol=0, atol=1e-10)


def test_pseudo_inputs_start_where_hardtanh_passes_gradients():
    # Tomczak's init N(0.05, 0.01^2): inside (0, 1), so the pseudo-inputs learn (at -0.05 they
    # would all sit at 0 with zero gradient)
    model = _model(prior="vampprior", prior_components=5)
    x = torch.bernoulli(torch.full((8, 1, 4, 4), 0.3, dtype=torch.float64))
    (-elbo_terms(model, x).log_weight.mean()).backward()
    grad = model.prior.pseudo_inputs.grad
    assert grad is not None and (grad != 0).float().mean() > 0.9


def test_vampprior_samples_come_from_its_components():
    model = _model(prior="vampprior", prior_components=1)
    mean, log_std = (t[0] for t in model.prior.components(model))
    torch.manual_seed(1)
    z = model.sample_prior((20000,))
    se = torch.exp(log_std) / math.sqrt(20000)
    assert ((z.mean(0) - mean).abs() < 5 * se).all()
    assert ((z.std(0) / torch.exp(log_std) - 1).abs() < 5 / math.sqrt(2 * 20000)).all()


def _nontrivial_flow_prior(latent=5, steps=3):
    torch.manual_seed(2)
    prior = FlowPrior(latent, steps, hidden=16, layers=1).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0, 0.5)  # away from the identity the couplings start at
    return prior


def test_flow_prior_log_det_matches_autograd():
    prior = _nontrivial_flow_prior()
    for z in torch.randn(4, 5, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda v: prior.to_base(v)[0], z)
        sign, logabsdet = torch.linalg.slogdet(jac)
        _, ladj = prior.to_base(z)
        assert sign != 0
        torch.testing.assert_close(ladj, logabsdet, rtol=0, atol=1e-10)
        expected = -0.5 * (prior.to_base(z)[0] ** 2 + math.log(2 * math.pi)).sum() + logabsdet
        torch.testing.assert_close(prior.log_prob(z), expected, rtol=0, atol=1e-10)


def test_flow_prior_samples_invert_its_density_map():
    prior = _nontrivial_flow_prior()
    like = torch.zeros((), dtype=torch.float64)
    torch.manual_seed(3)
    z = prior.sample((50,), like=like)
    torch.manual_seed(3)
    u = torch.randn(50, 5, dtype=torch.float64)
    assert (z - u).abs().max() > 0.1  # the flow is not the identity
    torch.testing.assert_close(prior.to_base(z)[0], u, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- two layers


def test_two_layer_posterior_is_q_z2_times_q_z1_given_z2():
    model = _model(stochastic_layers=2, posterior="diag")
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.3, dtype=torch.float64))
    q = model.encode(x)
    assert isinstance(q, TwoLayerPosterior) and model.latent_dim == 6
    torch.manual_seed(4)
    z, log_q = q.rsample_and_log_prob((5,))
    z2, z1 = z.split([3, 3], -1)
    h = model.encoder(x)
    mean2, log_std2 = _raw(model.posterior.top.gaussian, h)
    mean1, log_std1 = model.posterior.conditional(torch.cat([z2, h.expand(5, -1, -1)], -1))
    direct = log_normal(z2, mean2, log_std2).sum(-1) + log_normal(z1, mean1, log_std1).sum(-1)
    torch.testing.assert_close(log_q, direct, rtol=0, atol=1e-10)
    # and the prior is p(z2) p(z1|z2)
    assert isinstance(model.prior, TwoLayerPrior)
    mean_p, log_std_p = model.prior.conditional(z2)
    expected = log_normal(z2, 0 * z2, 0 * z2).sum(-1) + log_normal(z1, mean_p, log_std_p).sum(-1)
    torch.testing.assert_close(model.log_prior(z), expected, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- exact log p(x)


def _vamp_q_is_the_posterior_mean(model, width=0.3):
    """Set the (shared) head so that q(z|x) has the exact posterior mean under the VampPrior it
    induces: with constant log-std log(width) the prior is N(m, width^2 I), m = G u + c, and
    q's mean G x + c is m + G (x - b - W m) when G = Λ^{-1} W^T D^{-1} and
    G W c = (I - G W) G u - G b. q is then wider than the posterior (a safe proposal)."""
    head = model.posterior.gaussian
    w, b = model.decoder.out.weight.detach(), model.decoder.out.bias.detach()
    d_inv = torch.exp(-2 * model.likelihood.log_std.detach().flatten())
    d = w.shape[1]
    precision = torch.eye(d, dtype=w.dtype) / width**2 + w.T @ (w * d_inv[:, None])
    gain = torch.linalg.solve(precision, w.T * d_inv)  # (d, n)
    u = model.prior.inputs().flatten(1)[0]
    gw = gain @ w
    c = torch.linalg.solve(gw, (torch.eye(d, dtype=w.dtype) - gw) @ gain @ u - gain @ b)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:d] = gain
        head.bias[:d] = c
        head.bias[d:] = math.log(width)


@functools.cache
def _vamp_problem():
    """A linear-Gaussian VAE whose prior is a VampPrior of one pseudo-input (inside (0, 1))."""
    model = random_linear_gaussian_vae(seed=0, prior="vampprior", prior_components=1).eval()
    with torch.no_grad():
        model.prior.pseudo_inputs.uniform_(0.1, 0.9, generator=torch.Generator().manual_seed(5))
    _vamp_q_is_the_posterior_mean(model)
    torch.manual_seed(0)
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((B,)))
    return model, x


def _two_layer_q_from_the_exact_posterior(model, x, widen=1.2):
    """q(z2|x): the exact marginal mean and widths (times ``widen``) of z2; q(z1|x, z2): the exact
    conditional mean (linear in z2 and x) and its conditional widths (times ``widen``)."""
    p = linear_gaussian_params(model)
    post = exact_posterior(model, x)
    cov = post.covariance
    d_inv = torch.exp(-2 * p.log_std)
    gain = torch.cholesky_solve((p.weight * d_inv[:, None]).T, post.precision_cholesky)  # (d, n)
    offset = p.prior_mean - gain @ (p.bias + p.weight @ p.prior_mean)  # mean(x) = gain x + offset
    top, bottom = slice(0, 2), slice(2, 4)
    k = cov[bottom, top] @ torch.linalg.inv(cov[top, top])  # E[z1|z2] - mu1 = k (z2 - mu2)
    cond_var = torch.diagonal(cov[bottom, bottom] - k @ cov[top, bottom])
    head, conditional = model.posterior.top.gaussian, model.posterior.conditional.out
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:2] = gain[top]
        head.bias[:2] = offset[top]
        head.bias[2:] = 0.5 * torch.log(torch.diagonal(cov[top, top])) + math.log(widen)
        conditional.weight.zero_()  # inputs (z2, x)
        conditional.weight[:2, :2] = k
        conditional.weight[:2, 2:] = gain[bottom] - k @ gain[top]
        conditional.bias[:2] = offset[bottom] - k @ offset[top]
        conditional.bias[2:] = 0.5 * torch.log(cond_var) + math.log(widen)
    torch.testing.assert_close(model.encode(x).top.mean, post.mean[:, top], rtol=0, atol=1e-9)


@functools.cache
def _two_layer_problem():
    """Two linear-Gaussian layers; q set from the exact posterior (see above)."""
    model = random_linear_gaussian_vae(seed=0, latent_dim=2, stochastic_layers=2, hidden=[]).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((B,)))
    _two_layer_q_from_the_exact_posterior(model, x)
    return model, x


def _brute_marginal(model, mean, covariance):
    """N(x; W m + b, W Σ W^T + diag σ^2) with the full n x n covariance."""
    out = model.decoder.out
    w, b = out.weight.detach(), out.bias.detach()
    cov = w @ covariance @ w.T + torch.diag(torch.exp(2 * model.likelihood.log_std.detach().flatten()))
    return torch.distributions.MultivariateNormal(w @ mean + b, covariance_matrix=cov)


@torch.no_grad()
def test_vampprior_of_one_component_gives_the_gaussian_closed_form():
    model, x = _vamp_problem()
    u = model.prior.inputs()
    mean, log_std = _raw(model.posterior.gaussian, model.encoder(u)[0])
    covariance = torch.diag(torch.exp(2 * log_std))
    prior = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
    z = torch.randn(5, B, model.latent_dim, dtype=torch.float64)
    torch.testing.assert_close(model.log_prior(z), prior.log_prob(z), rtol=0, atol=1e-10)
    brute = _brute_marginal(model, mean, prior.covariance_matrix).log_prob(x.flatten(1))
    assert is_linear_gaussian(model)
    torch.testing.assert_close(ESTIMATORS["exact"](model, x), brute, rtol=0, atol=1e-9)
    # not the standard-normal answer: the prior matters here
    standard = _brute_marginal(model, 0 * mean, torch.eye(3, dtype=mean.dtype)).log_prob(x.flatten(1))
    assert (brute - standard).abs().mean() > 0.5
    # q's mean is the exact posterior mean under this prior (exact_posterior with a non-standard prior)
    torch.testing.assert_close(model.encode(x).mean, exact_posterior(model, x).mean, rtol=0, atol=1e-9)


@torch.no_grad()
def test_two_linear_gaussian_layers_give_the_joint_gaussian_closed_form():
    model, x = _two_layer_problem()
    out = model.prior.conditional.out
    a_mat, a_vec, std = out.weight[:2], out.bias[:2], torch.exp(out.bias[2:])
    eye = torch.eye(2, dtype=torch.float64)
    # z2 ~ N(0, I), z1 = A z2 + a + s eps: Cov = [[I, A^T], [A, A A^T + S^2]]
    lower = torch.cat([a_mat, a_mat @ a_mat.T + torch.diag(std**2)], 1)
    cov = torch.cat([torch.cat([eye, a_mat.T], 1), lower])
    mean = torch.cat([torch.zeros(2, dtype=torch.float64), a_vec])
    brute = _brute_marginal(model, mean, cov).log_prob(x.flatten(1))
    torch.testing.assert_close(exact_log_marginal(model, x), brute, rtol=0, atol=1e-9)
    z = torch.randn(3, B, 4, dtype=torch.float64)
    torch.testing.assert_close(
        model.log_prior(z), torch.distributions.MultivariateNormal(mean, cov).log_prob(z), rtol=0, atol=1e-10
    )


def test_exact_refuses_a_prior_without_a_closed_form():
    model = random_linear_gaussian_vae(seed=0, prior="vampprior", prior_components=2)
    with pytest.raises(ValueError, match="needs a Gaussian prior .* this model's prior is VampPrior"):
        linear_gaussian_params(model, "estimator 'exact'")
    model = random_linear_gaussian_vae(seed=0, prior="flow", prior_flow_steps=1)
    assert not is_linear_gaussian(model)


def _iwae_check(model, x, samples=5000):
    exact = exact_log_marginal(model, x)
    with torch.no_grad():
        torch.manual_seed(6)
        estimate = iwae(model, x, samples=samples)
        torch.manual_seed(6)
        log_w = importance_log_weights(model, x, samples=samples).double()
    torch.testing.assert_close(estimate, log_mean_exp(log_w).to(estimate.dtype))
    w = torch.softmax(log_w, dim=0)
    ess = 1 / (w**2).sum(0)
    assert (ess > samples / 50).all()  # the delta method below needs well-behaved weights
    r = samples / ess - 1  # Var(w) / E[w]^2
    bias, sd = r / (2 * samples), torch.sqrt(r / samples)
    err = estimate - exact
    assert ((err + bias).abs() < 5 * sd + bias).all(), (err, sd)
    assert abs(err.mean() + bias.mean()) < 4 * sd.pow(2).mean().sqrt() / math.sqrt(len(x)) + bias.mean()


def _ais_check(model, x, init):
    exact = exact_log_marginal(model, x)
    torch.manual_seed(7)
    err = ais(model, x, steps=300, init=init, chains=16, leapfrog=5).log_marginal - exact
    mean, se = err.mean().item(), err.std().item() / math.sqrt(len(x))
    assert abs(mean) < 0.1, (mean, se)
    assert mean < 3 * se, (mean, se)


def test_iwae_agrees_with_the_exact_value_under_a_vampprior():
    _iwae_check(*_vamp_problem())


def test_iwae_agrees_with_the_exact_value_of_two_layers():
    _iwae_check(*_two_layer_problem())


@pytest.mark.parametrize("init", ["prior", "posterior"])
def test_ais_agrees_with_the_exact_value_under_a_vampprior(init):
    _ais_check(*_vamp_problem(), init)


@pytest.mark.parametrize("init", ["prior", "posterior"])
def test_ais_agrees_with_the_exact_value_of_two_layers(init):
    _ais_check(*_two_layer_problem(), init)
