"""ESS and Pareto k̂ of importance weights, on targets whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowvae.core import Posterior, log_weight
from flowvae.diagnostics import (
    KHAT_MIN_SAMPLES,
    KHAT_MIN_TAIL,
    effective_sample_size,
    khat_threshold,
    khat_warning,
    pareto_khat,
    pareto_tail_length,
)
from flowvae.estimators import evaluate, iwae, summarise
from flowvae.linear_gaussian import exact_log_marginal, exact_posterior
from flowvae.testing import random_linear_gaussian_vae


@pytest.mark.parametrize("tail", [0.25, 0.5, 0.8])
def test_khat_recovers_the_tail_index_of_pareto_weights(tail):
    # w = u^(-tail) has P(w > t) = t^(-1/tail): a Pareto tail of shape `tail`. The estimator's
    # spread at K = 5000 is ~0.1 per example; the mean of 200 examples is within 0.05 (its bias
    # toward the prior's 0.5 plus 5 standard errors).
    g = torch.Generator().manual_seed(0)
    log_w = -tail * torch.log(torch.rand(5000, 200, generator=g, dtype=torch.float64)) + 7.0
    khat = pareto_khat(log_w)
    assert khat.shape == (200,)
    assert abs(khat.mean().item() - tail) < 0.05


def test_ess_bounds_and_scale_invariance():
    assert torch.allclose(effective_sample_size(torch.zeros(300, 2)), torch.tensor([300.0, 300.0]).double())
    one = torch.full((300, 1), -1e4)
    one[17] = 0.0
    assert effective_sample_size(one).item() == pytest.approx(1.0)
    log_w = torch.randn(300, 4, dtype=torch.float64)
    torch.testing.assert_close(effective_sample_size(log_w + 123.0), effective_sample_size(log_w))
    torch.testing.assert_close(pareto_khat(log_w + 123.0), pareto_khat(log_w))
    assert torch.isnan(pareto_khat(torch.randn(20, 3))).all()  # K too small for a tail


class _ExactPosterior(Posterior):
    """p(z|x) of a linear-Gaussian model as a map of eps: z = mu + L^-T eps."""

    def __init__(self, model, x):
        self.post = exact_posterior(model, x)
        super().__init__(self.post.mean.shape[-1], x.shape[0], self.post.mean)

    def transform(self, eps):
        y = torch.linalg.solve_triangular(self.post.precision_cholesky.mT, eps.unsqueeze(-1), upper=True)
        ladj = -torch.log(torch.diagonal(self.post.precision_cholesky)).sum()
        return self.post.mean + y.squeeze(-1), ladj.expand(eps.shape[:-1])


@torch.no_grad()
def test_exact_posterior_as_proposal_gives_ess_equal_to_k():
    torch.manual_seed(0)
    model = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=4, noise_std=0.3)
    x = model.decode_sample(model.sample_prior((8,)))
    q = _ExactPosterior(model, x)
    z, log_q = q.rsample_and_log_prob((1000,))
    log_w = log_weight(model.log_joint(x, z), log_q)  # = log p(x) for every sample
    torch.testing.assert_close(log_w, exact_log_marginal(model, x).expand_as(log_w), atol=1e-9, rtol=0)
    ess = effective_sample_size(log_w)
    torch.testing.assert_close(ess, torch.full((8,), 1000.0, dtype=torch.float64), rtol=1e-9, atol=0)


@torch.no_grad()
def test_a_poor_posterior_has_a_large_khat_and_evaluate_warns():
    torch.manual_seed(1)
    model = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=4, noise_std=0.3)
    x = model.decode_sample(model.sample_prior((48,)))
    narrow = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=4, noise_std=0.3)
    narrow.posterior.gaussian.bias[4:] -= 1.5  # q's widths / e^1.5: far too narrow, heavy weights
    wide = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=4, noise_std=0.3)
    wide.posterior.gaussian.bias[4:] += 0.5  # a little wider than p(z|x): light-tailed weights
    poor = evaluate(narrow, x, "iwae", samples=2000)
    good = evaluate(wide, x, "iwae", samples=2000)
    assert poor.diagnostics["khat"]["median"] > 0.7 and good.diagnostics["khat"]["median"] < 0.5
    threshold = f"Pareto k̂ > {khat_threshold(2000):.3g} (the threshold at K = 2000"  # 0.697
    assert poor.warnings and threshold in poor.warnings[0]
    assert not good.warnings
    assert poor.per_example_diagnostics["ess"].shape == (48,)
    assert good.diagnostics["ess"]["median"] > 10 * poor.diagnostics["ess"]["median"]


def test_khat_warning_threshold():
    assert khat_warning(torch.tensor([0.1] * 99 + [0.9]), 5000) is None  # 1 %: a few bad examples
    assert "10 of 100" in khat_warning(torch.tensor([0.1] * 90 + [0.9] * 10), 5000)
    assert khat_warning(torch.tensor([float("nan")] * 3), 5000) is None


def test_khat_threshold_depends_on_the_sample_size():
    # min(1 - 1/log10 K, 0.7): 1 - 1/log10 K reaches 0.7 at K = 10^(10/3) = 2154.4
    assert khat_threshold(100) == pytest.approx(0.5, abs=1e-12)
    assert khat_threshold(1000) == pytest.approx(2 / 3, abs=1e-12)
    assert khat_threshold(2154) < 0.7 and khat_threshold(2155) == 0.7 == khat_threshold(10**6)
    with pytest.raises(ValueError, match="K >= 2"):
        khat_threshold(1)
    khat = torch.tensor([0.1] * 90 + [0.6] * 10)  # 10 % above 0.5 but below 0.7
    warning = khat_warning(khat, 100)
    assert warning and "Pareto k̂ > 0.5 (the threshold at K = 100" in warning and "10 of 100" in warning
    assert khat_warning(khat, 5000) is None  # at K = 5000 the threshold is 0.7
    assert "Pareto k̂ > 0.667 (the threshold at K = 1000" in khat_warning(khat + 0.1, 1000)


def _reference_khat(log_w: np.ndarray) -> float:
    """PSIS k̂ of ONE example's log-weights, step by step as the published algorithm (ArviZ's
    ``psislw`` with reff = 1 and its ``_gpdfit``; Vehtari et al. 2024), in plain numpy.

    inf where ``psislw`` fits no tail (4 or fewer weights strictly above the cutoff), and also
    for a tail of equal weights (the one rule ``psislw`` lacks; ArviZ >= 1.0 and R's loo refuse
    to fit such a tail).
    """
    total = log_w.size
    tail_size = int(np.ceil(min(total / 5.0, 3 * np.sqrt(total))))
    lw = np.sort(log_w - np.max(log_w))  # ascending, largest = 0
    cut = max(lw[-tail_size - 1], np.log(np.finfo(float).tiny))  # the (M+1)-th largest, floored
    tail = lw[lw > cut]
    if tail.size <= 4:
        return np.inf
    y = np.exp(tail) - np.exp(cut)  # exceedances, ascending
    if y[-1] == y[0]:
        return np.inf
    n = y.size
    m = 30 + int(np.sqrt(n))
    quartile = y[int(n / 4 + 0.5) - 1]
    b = np.array([1 / y[-1] + (1 - np.sqrt(m / (j - 0.5))) / (3 * quartile) for j in range(1, m + 1)])
    k = np.array([np.mean(np.log1p(-bj * y)) for bj in b])
    profile = n * (np.log(-b / k) - k - 1)
    w = np.array([1 / np.sum(np.exp(profile - p)) for p in profile])
    keep = w >= 10 * np.finfo(float).eps  # negligible candidates are dropped
    b_hat = np.sum(w[keep] * b[keep]) / np.sum(w[keep])
    k_hat = np.mean(np.log1p(-b_hat * y))
    return (n * k_hat + 10 * 0.5) / (n + 10)  # the weakly informative prior toward 0.5


_WEIGHT_SETS = {  # log-weights (K, B) from a numpy generator
    "pareto 0.9": lambda g, s: -0.9 * np.log(g.random(s)),  # heavy: a Pareto tail of shape 0.9
    "pareto 0.4": lambda g, s: -0.4 * np.log(g.random(s)),
    "lognormal 2.5": lambda g, s: 2.5 * g.standard_normal(s),
    "lognormal 0.3": lambda g, s: 0.3 * g.standard_normal(s),  # light
    "uniform": lambda g, s: np.log(g.random(s)),  # bounded weights: k < 0
    "extreme": lambda g, s: 1000 * g.standard_normal(s),  # cutoff floored at the smallest normal
    "tied": lambda g, s: np.round(2 * g.standard_normal(s)) / 2,  # ties at the cutoff shorten the tail
}


@pytest.mark.parametrize("samples", [21, 24, 32, 64, 100, 128, 226, 1000])
def test_khat_equals_the_published_psis_algorithm(samples):
    # Both compute in float64 from the same weights and differ only in summation order
    # (~M ulp in each mean), far below the 1e-6 asked; where the reference returns inf
    # (no tail to fit) pareto_khat returns NaN.
    g = np.random.default_rng(samples)
    finite = 0
    for name, draw in _WEIGHT_SETS.items():
        log_w = draw(g, (samples, 6))
        ours = pareto_khat(torch.from_numpy(log_w)).numpy()
        ref = np.array([_reference_khat(log_w[:, b]) for b in range(log_w.shape[1])])
        assert np.array_equal(np.isnan(ours), np.isinf(ref)), (name, ours, ref)
        ok = np.isfinite(ref)
        np.testing.assert_allclose(ours[ok], ref[ok], rtol=0, atol=1e-6, err_msg=name)
        finite += np.isfinite(ref).sum()
    assert finite >= 5 * 6  # the continuous sets always have a tail


def test_khat_needs_21_samples_and_distinct_weights():
    assert pareto_tail_length(20) == KHAT_MIN_TAIL - 1 and pareto_tail_length(21) == KHAT_MIN_TAIL
    assert KHAT_MIN_SAMPLES == 21 and all(pareto_tail_length(k) >= KHAT_MIN_TAIL for k in range(21, 3000))
    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(KHAT_MIN_SAMPLES, 4, generator=g, dtype=torch.float64)
    assert torch.isfinite(pareto_khat(log_w)).all()
    assert torch.isnan(pareto_khat(log_w[:-1])).all()
    assert torch.isnan(pareto_khat(torch.zeros(1000, 3))).all()  # all equal: exact posterior as proposal
    tied = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    tied[:-4] = tied[:-4].clamp_max(0.0)  # 4 distinct weights above a cutoff tied at 0
    tied[-4:] = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).unsqueeze(1)
    assert torch.isnan(pareto_khat(tied)).all()
    flat_tail = torch.randn(1000, 2, generator=g, dtype=torch.float64).clamp_max(2.0)
    flat_tail[-pareto_tail_length(1000) :] = 5.0  # the whole tail is one weight
    assert torch.isnan(pareto_khat(flat_tail)).all()


def test_summaries_leave_out_infinite_and_nan_diagnostics():
    s = summarise(torch.tensor([1.0, float("inf"), float("-inf"), float("nan"), 3.0]))
    assert s == {"mean": 2.0, "median": 1.0, "min": 1.0, "max": 3.0}


@torch.no_grad()
def test_an_estimate_says_why_khat_is_missing():
    torch.manual_seed(4)
    model = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=4, noise_std=0.3)
    x = model.decode_sample(model.sample_prior((6,)))
    few = evaluate(model, x, "iwae", samples=10)
    assert few.diagnostics["khat"]["note"] == "k̂ needs K ≥ 21 importance samples (K = 10)"
    assert not few.warnings
    enough = evaluate(model, x, "iwae", samples=KHAT_MIN_SAMPLES)
    assert "note" not in enough.diagnostics["khat"] and "note" not in enough.diagnostics["ess"]


@torch.no_grad()
def test_iwae_is_the_float64_log_mean_exp_of_its_weights_and_the_record_agrees():
    """iwae() and the registered estimate reduce the same K weights the same way (float64)."""
    from flowvae.estimators import importance_log_weights, iwae_estimate
    from flowvae.numerics import log_mean_exp

    torch.manual_seed(2)
    model = random_linear_gaussian_vae(shape=(1, 4, 4), latent_dim=4, dtype=torch.float32)
    x = model.decode_sample(model.sample_prior((4,)))
    values = []
    for fn in (iwae, lambda *a: iwae_estimate(*a)[0], importance_log_weights):
        torch.manual_seed(3)
        values.append(fn(model, x, 3000, 700))
    expected = log_mean_exp(values[2].double(), dim=0)  # reported in float64, not cast back
    assert values[2].shape == (3000, 4) and values[0].dtype == torch.float64
    assert torch.equal(values[0], expected) and torch.equal(values[1], expected)
