"""ELBO, IWAE and AIS against each other and against the exact log p(x) of a linear-Gaussian VAE.

Every inequality between estimators holds in expectation; each assertion allows a few standard
errors of the estimate (computed from the per-example spread), never a hand-picked slack.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowvae.ais import ais
from flowvae.config import ModelConfig
from flowvae.core import Posterior
from flowvae.estimators import ESTIMATORS, elbo, elbo_terms, evaluate, iwae
from flowvae.linear_gaussian import exact_log_marginal
from flowvae.model import build_model
from flowvae.numerics import log_mean_exp
from flowvae.testing import random_linear_gaussian_vae

B = 128



@pytest.fixture(scope="module")
def problem():
    model = random_linear_gaussian_vae(seed=0).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((B,)))
        return model, x, exact_log_marginal(model, x)


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


def test_registry_names():
    assert {"elbo", "iwae", "ais", "exact"} <= set(ESTIMATORS)


@torch.no_grad()
def test_elbo_below_iwae_below_exact(problem):
    model, x, exact = problem
    torch.manual_seed(1)
    lower = elbo(model, x, samples=100)
    middle = iwae(model, x, samples=100)
    m, se = _mean_and_se(middle - lower)
    assert m > 4 * se  # ELBO < IWAE, clearly (the encoder is imperfect)
    m, se = _mean_and_se(middle - exact)
    assert m < 3 * se  # IWAE is a lower bound in expectation
    m, se = _mean_and_se(lower - exact)
    assert m < -1.0 and m < 3 * se


@torch.no_grad()
def test_iwae_converges_to_exact_as_k_grows(problem):
    model, x, exact = problem
    torch.manual_seed(2)
    errors = {}
    for k, reps in [(1, 8), (10, 8), (100, 8), (5000, 1)]:
        # averaging repeats per example shrinks the noise, not the bias being compared
        estimate = torch.stack([iwae(model, x, samples=k) for _ in range(reps)]).mean(0)
        errors[k] = _mean_and_se(estimate - exact)
    # the bias shrinks with K; each step down is significant against the noise of both
    for a, b in [(1, 10), (10, 100), (100, 5000)]:
        (ma, sa), (mb, sb) = errors[a], errors[b]
        assert abs(ma) - abs(mb) > 3 * math.hypot(sa, sb), errors
    m, se = errors[5000]
    assert abs(m) < 0.05 and abs(m) < 3 * se + 0.01, errors


class _Replay:
    """Serves pre-drawn base samples in order, so two estimator calls see the same draws."""

    def __init__(self, eps: torch.Tensor):
        self.eps, self.used = eps, 0

    def __call__(self, posterior: Posterior, sample_shape=()) -> torch.Tensor:
        (n,) = sample_shape
        out = self.eps[self.used : self.used + n]
        self.used += n
        assert out.shape[0] == n, "ran out of pre-drawn samples"
        return out


def _with_draws(monkeypatch, eps, fn):
    replay = _Replay(eps)
    monkeypatch.setattr(Posterior, "sample_base", lambda self, shape=(): replay(self, shape))
    return fn()


@torch.no_grad()
def test_iwae_chunking_does_not_change_the_estimate(problem, monkeypatch):
    model, x, _ = problem
    k = 1000
    eps = torch.randn(k, B, model.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    whole = _with_draws(monkeypatch, eps, lambda: iwae(model, x, samples=k, chunk=k))
    chunked = _with_draws(monkeypatch, eps, lambda: iwae(model, x, samples=k, chunk=77))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    # and both are the log-mean-exp of the very same weights
    w = _with_draws(monkeypatch, eps, lambda: elbo_terms(model, x, samples=k).log_weight)
    torch.testing.assert_close(whole, log_mean_exp(w, 0), rtol=0, atol=1e-10)
    # Jensen, draw by draw: log-mean-exp >= mean, so IWAE >= ELBO on the same samples
    same_elbo = _with_draws(monkeypatch, eps, lambda: elbo(model, x, samples=k))
    assert (whole >= same_elbo).all()


@torch.no_grad()
def test_iwae_increases_with_k_in_expectation(problem):
    model, x, exact = problem
    torch.manual_seed(4)
    means = []
    for k in (1, 3, 30):
        reps = torch.stack([iwae(model, x, samples=k) for _ in range(4)])  # (4, B)
        means.append(_mean_and_se(reps.mean(0) - exact))  # paired with exact: less noise
    for (ma, sa), (mb, sb) in zip(means, means[1:], strict=False):
        assert mb - ma > 3 * math.hypot(sa, sb), means


# ----------------------------------------------------------------------------- a trained VAE


@pytest.fixture(scope="module")
def trained_digits_vae():
    """An MLP VAE with a Bernoulli likelihood trained for 200 steps on binarized digits."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images / 16.0, dtype=torch.float32)
    data = (images > 0.5).float().unsqueeze(1)  # (1797, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    data = data[torch.randperm(data.shape[0], generator=g)]
    train, test = data[:-64], data[-64:]
    torch.manual_seed(0)
    cfg = ModelConfig(likelihood="bernoulli", latent_dim=4, hidden=[64])
    model = build_model(cfg, (1, 8, 8), binary=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        batch = train[torch.randint(train.shape[0], (64,), generator=g)]
        loss = -elbo_terms(model, batch).log_weight.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), test


@pytest.mark.parametrize("init", ["prior", "posterior"])
def test_ais_beats_small_k_iwae_on_a_trained_vae(trained_digits_vae, init):
    model, x = trained_digits_vae
    torch.manual_seed(5)
    with torch.no_grad():
        small_iwae = iwae(model, x, samples=5)
        large_iwae = iwae(model, x, samples=2000)  # near log p(x) for this small latent space
        single_elbo = elbo(model, x, samples=1)
    result = ais(model, x, chains=8, steps=200, leapfrog=5, init=init)
    m, se = _mean_and_se(result.log_marginal - small_iwae)
    assert m > -3 * se, (m, se)
    m, se = _mean_and_se(result.log_marginal - large_iwae)
    assert abs(m) < 0.1 and abs(m) < 3 * se + 0.02, (m, se)
    m, se = _mean_and_se(small_iwae - single_elbo)
    assert m > 0
    assert 0.3 < result.acceptance < 1.0


def test_evaluate_runs_every_registered_estimator_but_exact_needs_a_linear_gaussian(
    trained_digits_vae, problem
):
    model, x = trained_digits_vae
    torch.manual_seed(6)
    est = evaluate(model, x[:8].split(4), "ais", samples=2, steps=3, leapfrog=2)
    assert est.n == 8 and math.isfinite(est.nll)
    assert est.bits_per_dim is not None and est.bits_per_dim > 0  # binary data: a code length
    with pytest.raises(ValueError, match="needs a linear-Gaussian model"):
        evaluate(model, x[:8].split(4), "exact", samples=1)
    lg_model, lg_x, exact = problem
    est = evaluate(lg_model, lg_x.split(50), "exact", samples=1)
    assert est.n == B
    assert est.nll == pytest.approx(-exact.mean().item(), abs=1e-9)
    # a Gaussian density on continuous x is not a code length: no bits/dim
    assert est.bits_per_dim is None and est.to_json()["bits_per_dim"] is None


# How each registered estimator is checked against the exact log p(x): its samples and options,
# and whether it is a bound (mean below log p(x)) or consistent (mean within tolerance of it).
# A new estimator adds its line here; the contract test below then covers it.
CONTRACT = {
    "elbo": {"samples": 50, "options": {}, "kind": "bound"},
    "iwae": {"samples": 2000, "options": {"chunk": 500}, "kind": "consistent"},
    "ais": {"samples": 8, "options": {"steps": 200, "leapfrog": 5}, "kind": "consistent"},
    "exact": {"samples": 1, "options": {}, "kind": "exact"},
}


def test_the_contract_table_names_every_registered_estimator():
    assert set(CONTRACT) == set(ESTIMATORS)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@torch.no_grad()
def test_every_registered_estimator_meets_the_contract_on_the_exact_model(problem, name):
    """Per example (B,), float64, finite, with per-example diagnostics; its mean against the exact
    log p(x) within 3 standard errors over examples (plus 0.05 nat of AIS/IWAE bias at these
    settings, measured as < 0.02 on this model)."""
    model, x, exact = problem
    spec, record = CONTRACT[name], ESTIMATORS[name]
    x = x[:32]
    log_p, diagnostics = record.estimate(model, x, spec["samples"], **record.settings(**spec["options"]))
    assert log_p.shape == (32,) and log_p.dtype == torch.float64 and torch.isfinite(log_p).all()
    assert all(v.shape == (32,) for v in diagnostics.values())
    m, se = _mean_and_se(log_p - exact[:32].double())
    if spec["kind"] == "exact":
        assert abs(m) < 1e-9
    elif spec["kind"] == "bound":
        assert m < 3 * se, (m, se)
    else:
        assert abs(m) < 3 * se + 0.05, (m, se)
