import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowvae.numerics import (
    bits_per_dim,
    discretized_logistic_log_prob,
    discretized_logistic_mixture_log_prob,
    kl_normal,
    log_bernoulli,
    log_mean_exp,
    log_normal,
    log_standard_normal,
)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_log_normal_matches_torch_distributions():
    x, m, s = torch.randn(50), torch.randn(50), torch.randn(50)
    ref = torch.distributions.Normal(m, s.exp()).log_prob(x)
    assert torch.allclose(log_normal(x, m, s), ref)
    assert torch.allclose(log_standard_normal(x), torch.distributions.Normal(0.0, 1.0).log_prob(x))


def test_kl_normal_matches_torch_and_monte_carlo():
    mq, sq, mp, sp = torch.randn(4, 20).unbind()
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, sq.exp()), torch.distributions.Normal(mp, sp.exp())
    )
    assert torch.allclose(kl_normal(mq, sq, mp, sp), ref)
    assert (kl_normal(mq, sq, mq, sq).abs() < 1e-12).all()
    z = mq + sq.exp() * torch.randn(200_000, 20)
    log_ratio = log_normal(z, mq, sq) - log_normal(z, mp, sp)
    stderr = log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((log_ratio.mean(0) - ref).abs() < 5 * stderr).all()


def test_log_bernoulli_is_stable_and_exact():
    logits = torch.tensor([-100.0, -3.0, 0.0, 3.0, 100.0])
    for x in (0.0, 1.0):
        got = log_bernoulli(torch.full_like(logits, x), logits)
        p = torch.sigmoid(logits)
        ref = torch.log(p if x else 1 - p)
        assert torch.isfinite(got).all()
        finite = torch.isfinite(ref)
        assert torch.allclose(got[finite], ref[finite])
    assert math.isclose(log_bernoulli(torch.tensor(1.0), torch.tensor(-100.0)).item(), -100.0, rel_tol=1e-9)


@settings(max_examples=25, deadline=None)
@given(mean=st.floats(-1.2, 1.2), log_scale=st.floats(-6.0, 1.0))
def test_discretized_logistic_is_a_distribution_over_256_values(mean, log_scale):
    x = torch.arange(256) / 255.0
    lp = discretized_logistic_log_prob(x, torch.tensor(mean), torch.tensor(log_scale))
    assert torch.isfinite(lp).all()
    assert math.isclose(lp.exp().sum().item(), 1.0, abs_tol=1e-6)


def test_discretized_logistic_matches_cdf_difference_in_the_middle():
    x = torch.tensor([100 / 255.0])
    mean, log_scale = torch.tensor(-0.1), torch.tensor(-2.0)
    xc, half, s = 2 * x - 1, 1 / 255.0, log_scale.exp()
    ref = torch.log(torch.sigmoid((xc + half - mean) / s) - torch.sigmoid((xc - half - mean) / s))
    assert torch.allclose(discretized_logistic_log_prob(x, mean, log_scale), ref)


def test_mixture_of_one_component_equals_single_logistic():
    x = torch.rand(30).mul(255).round() / 255
    m, s = torch.randn(30, 1) * 0.5, torch.randn(30, 1) - 2
    single = discretized_logistic_log_prob(x, m[:, 0], s[:, 0])
    mixture = discretized_logistic_mixture_log_prob(x, torch.zeros(30, 1), m, s)
    assert torch.allclose(single, mixture)
    mix3 = discretized_logistic_mixture_log_prob(
        torch.arange(256) / 255.0, torch.randn(3), torch.randn(3) * 0.5, torch.randn(3) - 2
    )
    assert math.isclose(mix3.exp().sum().item(), 1.0, abs_tol=1e-6)


def test_log_mean_exp_is_not_the_mean_of_logs():
    w = torch.tensor([[0.0, math.log(3.0)]])
    assert math.isclose(log_mean_exp(w, dim=1).item(), math.log(2.0))
    big = torch.tensor([1000.0, 1000.0])
    assert math.isclose(log_mean_exp(big).item(), 1000.0)


def test_bits_per_dim():
    assert math.isclose(bits_per_dim(3072 * math.log(2) * 3.0, 3072), 3.0)
