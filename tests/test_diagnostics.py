"""ESS and Pareto k̂ of importance weights, on targets whose answer is known."""

from __future__ import annotations

import pytest
import torch

from flowvae.core import Posterior, log_weight
from flowvae.diagnostics import effective_sample_size, khat_warning, pareto_khat
from flowvae.estimators import evaluate, iwae
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
    assert poor.warnings and "Pareto k̂ > 0.7" in poor.warnings[0]
    assert not good.warnings
    assert poor.per_example_diagnostics["ess"].shape == (48,)
    assert good.diagnostics["ess"]["median"] > 10 * poor.diagnostics["ess"]["median"]


def test_khat_warning_threshold():
    assert khat_warning(torch.tensor([0.1] * 99 + [0.9])) is None  # 1 %: a few bad examples
    assert "10 of 100" in khat_warning(torch.tensor([0.1] * 90 + [0.9] * 10))
    assert khat_warning(torch.tensor([float("nan")] * 3)) is None


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
    expected = log_mean_exp(values[2].double(), dim=0).float()
    assert values[2].shape == (3000, 4) and values[0].dtype == torch.float32
    assert torch.equal(values[0], expected) and torch.equal(values[1], expected)
