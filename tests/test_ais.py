"""Hamiltonian AIS and BDMC, checked against the exact log p(x) of a linear-Gaussian VAE.

Tolerances are a few standard errors of the mean over examples (the estimate's own noise),
plus the 0.1-nat accuracy AIS must reach with enough steps.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from flowvae.ais import (
    AISResult,
    ais,
    ais_estimate,
    anneal,
    annealing_schedule,
    bdmc,
    prior_path,
)
from flowvae.estimators import ESTIMATORS, elbo_terms, evaluate, iwae
from flowvae.linear_gaussian import (
    exact_log_marginal,
    exact_posterior,
    sample_exact_posterior,
)
from flowvae.numerics import log_mean_exp
from flowvae.posteriors import POSTERIORS
from flowvae.testing import random_linear_gaussian_vae

B = 32  # examples
FAST = dict(chains=16, leapfrog=5)



@functools.cache
def _problem(posterior: str = "diag", n: int = B):
    """A linear-Gaussian VAE, n examples simulated from it, and their exact log p(x).

    The ``diag`` encoder is deliberately imperfect (see ``random_linear_gaussian_vae``); a flow
    posterior, randomly initialised, is first fitted to the examples for 300 Adam steps on the
    ELBO, as a trained amortised flow would be.
    """
    model = random_linear_gaussian_vae(
        seed=0, posterior=posterior, flow_steps=2, flow_hidden=16, context_dim=8
    ).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((n,)))
    if posterior != "diag":
        optimizer = torch.optim.Adam(model.posterior.parameters(), lr=1e-2)
        for _ in range(300):
            loss = -elbo_terms(model, x).log_weight.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.zero_grad(set_to_none=True)
    with torch.no_grad():
        return model, x, exact_log_marginal(model, x)


@functools.cache
def _ais_error(init: str, steps: int, posterior: str = "diag", n: int = B) -> tuple[float, float]:
    """Mean over examples of (AIS - exact) and its standard error; cached across tests."""
    model, x, exact = _problem(posterior, n)
    torch.manual_seed(steps)
    result = ais(model, x, steps=steps, init=init, **FAST)
    err = result.log_marginal - exact
    return err.mean().item(), err.std().item() / math.sqrt(n)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "sigmoid"])
@pytest.mark.parametrize("steps", [1, 2, 7, 100])
def test_schedule_goes_from_zero_to_one(name, steps):
    betas = annealing_schedule(name, steps)
    assert betas.shape == (steps + 1,)
    assert betas[0] == 0 and betas[-1] == 1
    assert (betas[1:] > betas[:-1]).all()


def test_sigmoid_schedule_is_symmetric_and_dense_at_the_ends():
    betas = annealing_schedule("sigmoid", 100)
    torch.testing.assert_close(betas + betas.flip(0), torch.ones(101, dtype=torch.float64))
    gaps = betas.diff()
    assert gaps[0] < gaps[50] / 5 and gaps[-1] < gaps[50] / 5


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(schedule="cosine"), "unknown AIS schedule 'cosine'; available: linear, sigmoid"),
        (dict(init="data"), "unknown AIS init 'data'; available: prior, posterior"),
        (dict(steps=0), "steps >= 1"),
        (dict(leapfrog=0), "leapfrog >= 1"),
        (dict(target_accept=1.5), "target_accept"),
    ],
)
def test_bad_options_fail_clearly(options, match):
    model, x, _ = _problem()
    with pytest.raises(ValueError, match=match):
        ais(model, x[:2], chains=2, steps=options.pop("steps", 3), **options)


# ----------------------------------------------------------------------------- AIS


@torch.no_grad()
def test_one_step_from_the_posterior_is_importance_sampling():
    # with T = 1 there is no transition: the weights are exactly p(x, z) / q(z|x), z ~ q
    model, x, _ = _problem()
    torch.manual_seed(1)
    result = ais(model, x, chains=50, steps=1, init="posterior")
    torch.manual_seed(1)
    torch.testing.assert_close(result.log_marginal, iwae(model, x, samples=50, chunk=50))
    assert math.isnan(result.acceptance)


@pytest.mark.parametrize("init", ["prior", "posterior"])
def test_ais_is_within_a_tenth_of_a_nat_of_exact(init):
    m, se = _ais_error(init, 300)
    assert abs(m) < 0.1, (m, se)
    assert m < 3 * se, (m, se)  # a stochastic lower bound: not significantly above log p(x)


def test_posterior_start_needs_fewer_steps_than_prior_start():
    # at equal (few) steps the start from q is far closer; the prior start needs many more
    prior, prior_se = _ais_error("prior", 5, n=512)
    post, post_se = _ais_error("posterior", 5, n=512)
    assert prior < 0 and abs(prior) - abs(post) > 3 * math.hypot(prior_se, post_se)
    assert abs(_ais_error("prior", 300)[0]) < abs(prior) / 5


def test_estimate_does_not_scale_with_the_number_of_steps():
    # guards against dividing the log-weights by T: log p(x) is about -9 nats here
    _, _, exact = _problem()
    assert exact.mean() < -5
    for steps in (30, 300):
        m, se = _ais_error("prior", steps)
        assert abs(m) < 0.5, (steps, m, se)


def test_estimate_is_the_log_mean_exp_of_the_weights_not_their_mean():
    model, x, exact = _problem()
    torch.manual_seed(2)
    poor = ais(model, x, chains=200, steps=3, leapfrog=2, init="prior")
    lme = log_mean_exp(poor.log_weights, 0)
    torch.testing.assert_close(poor.log_marginal, lme, rtol=0, atol=0)
    mean = poor.log_weights.mean(0)
    assert (lme > mean).all()
    assert (lme - exact).mean() > (mean - exact).mean() + 1.0  # far better with poor chains
    # the registered estimator returns exactly this, chains defaulting to ``samples``
    torch.manual_seed(2)
    value = ESTIMATORS["ais"](model, x, samples=200, steps=3, leapfrog=2, init="prior")
    torch.testing.assert_close(value, lme, rtol=0, atol=0)


def test_estimator_returns_its_acceptance_as_a_per_example_diagnostic():
    model, x, _ = _problem()
    assert ESTIMATORS["ais"].estimate is ais_estimate
    torch.manual_seed(3)
    first, diagnostics = ais_estimate(model, x[:8], samples=999, chains=4, steps=20, leapfrog=2)
    assert first.shape == (8,) and diagnostics["acceptance"].shape == (8,)
    assert 0 < diagnostics["acceptance"].min() <= diagnostics["acceptance"].max() <= 1
    est = evaluate(model, x[:12].split(8), "ais", samples=4, steps=20, leapfrog=2)
    assert 0 < est.diagnostics["acceptance"]["mean"] <= 1 and est.settings["steps"] == 20
    with pytest.raises(ValueError, match="unknown option for estimator 'ais'"):
        evaluate(model, x[:4], "ais", samples=4, stepz=20)


def test_hmc_leaves_the_posterior_invariant():
    # start at exact posterior samples and run 30 HMC transitions at beta = 1 (weights stay 0)
    model, x, _ = _problem()
    x = x[:2]
    torch.manual_seed(4)
    n = 2000
    start = sample_exact_posterior(model, x, (n,))
    result = anneal(prior_path(model, x), start, torch.ones(31, dtype=torch.float64), leapfrog=5)
    assert (result.log_weights == 0).all()
    assert 0.4 < result.acceptance < 0.95
    post = exact_posterior(model, x)
    z = result.final  # (n, 2, d), approximately independent across chains
    var = torch.diagonal(post.covariance)
    assert ((z.mean(0) - post.mean).abs() < 4 * torch.sqrt(var / n)).all()
    assert ((z.var(0) / var - 1).abs() < 4 * math.sqrt(2 / n)).all()
    assert not torch.allclose(z, start)  # the chains did move


def test_step_size_adapts_toward_the_target_acceptance():
    model, x, _ = _problem()
    runs = {}
    for target in (0.3, 0.9):
        torch.manual_seed(5)
        runs[target] = ais(model, x[:8], chains=8, steps=150, leapfrog=3, target_accept=target)
    assert runs[0.3].step_size.median() > 1.5 * runs[0.9].step_size.median()
    assert runs[0.3].acceptance < runs[0.9].acceptance


def test_evaluation_needs_no_parameter_gradients():
    model, x, _ = _problem()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        out = ESTIMATORS["ais"](model, x[:4], 2, steps=5, leapfrog=2, init="posterior")
    assert not out.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_float32_model_gives_float32_estimates():
    model = random_linear_gaussian_vae(seed=1, dtype=torch.float32).eval()
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((4,)))
    for init in ("prior", "posterior"):
        result = ais(model, x, chains=2, steps=5, leapfrog=2, init=init)
        assert result.log_weights.dtype == torch.float32
        assert torch.isfinite(result.log_marginal).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu():
    model = random_linear_gaussian_vae(seed=1, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((4,)))
    for init in ("prior", "posterior"):
        result = ais(model, x, chains=2, steps=5, leapfrog=2, init=init)
        assert result.log_marginal.device.type == "cuda"
    assert bdmc(model, n=3, chains=2, steps=5, leapfrog=2).upper.device.type == "cuda"


# ----------------------------------------------------------------------------- flows

FLOWS = [p for p in ("iaf", "planar", "realnvp-aux") if p in POSTERIORS]


@pytest.mark.parametrize("posterior", FLOWS)
def test_posterior_start_works_with_flow_posteriors(posterior):
    # runs in the flow's base space through transform() alone: no inverse needed, and for
    # realnvp-aux the reverse model r(v|x, z) inside ladj makes the target integrate to p(x)
    m, se = _ais_error("posterior", 100, posterior, 16)
    assert abs(m) < 0.1, (m, se)
    assert m < 3 * se, (m, se)


# ----------------------------------------------------------------------------- BDMC


@functools.cache
def _bdmc(steps: int):
    model, _, _ = _problem()
    torch.manual_seed(6)
    result = bdmc(model, n=B, chains=4, steps=steps, leapfrog=5, batch_size=16)
    with torch.no_grad():
        return result, exact_log_marginal(model, result.x)


@pytest.mark.parametrize("steps", [10, 200])
def test_bdmc_sandwiches_the_exact_value(steps):
    result, exact = _bdmc(steps)
    lower = result.lower - exact
    upper = result.upper - exact
    se_lower = lower.std().item() / math.sqrt(B)
    se_upper = upper.std().item() / math.sqrt(B)
    assert lower.mean() < 3 * se_lower
    assert upper.mean() > -3 * se_upper
    assert result.lower_mean <= result.upper_mean
    assert result.gap == pytest.approx(result.upper_mean - result.lower_mean)
    json = result.to_json()
    assert set(json) >= {"n", "lower", "upper", "gap", "forward_acceptance", "reverse_acceptance"}


def test_bdmc_gap_shrinks_with_more_steps():
    few, _ = _bdmc(10)
    many, _ = _bdmc(200)
    assert many.gap < few.gap / 3
    assert many.gap < 0.5


def test_reverse_result_is_an_upper_bound_estimate():
    w = torch.tensor([[1.0], [3.0]])
    r = AISResult(w, 0.5, torch.full((1,), 0.5), torch.ones(2, 1), torch.zeros(2, 1, 1), True)
    torch.testing.assert_close(r.log_marginal, -log_mean_exp(w.double(), 0))
