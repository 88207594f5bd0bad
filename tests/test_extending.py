"""Adding an estimator, a flow posterior or a prior needs no edit outside the files ARCHITECTURE.md
lists: here each is registered from this file alone and reaches the CLI, `evaluate`, local
optimisation and the model through the registries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from conftest import run_cli
from torch import nn

from flowvae import estimators, noise, posteriors, priors
from flowvae.core import Prior
from flowvae.estimators import ESTIMATORS, EstimatorRecord, evaluate, importance_log_weights
from flowvae.flows import PlanarStep
from flowvae.local import LocalOptions, local_optimise
from flowvae.numerics import log_mean_exp
from flowvae.testing import random_linear_gaussian_vae


@dataclass(frozen=True)
class HalfOptions:
    """Options of the toy estimator: which half of the K weights to keep."""

    half: str = field(default="first", metadata={"help": "which half", "choices": ("first", "second")})


def half_iwae(model, x, samples=10, half="first"):
    """IWAE over half of the K weights: a toy that is still a lower bound."""
    w = importance_log_weights(model, x, samples, samples)
    part = w[: samples // 2] if half == "first" else w[samples // 2 :]
    return log_mean_exp(part.double(), dim=0), {"kept": torch.full((x.shape[0],), float(part.shape[0]))}


class PlanarTwice(posteriors.StepsHead):
    """Planar steps, two per flow step (a toy family)."""

    def make_step(self, latent, size, k):
        return PlanarStep(latent, size.context_dim)


@pytest.fixture
def registered(monkeypatch):
    record = EstimatorRecord("half-iwae", half_iwae, 10, "importance samples K", HalfOptions)
    monkeypatch.setitem(estimators.ESTIMATORS, "half-iwae", record)
    head = posteriors.PosteriorRecord("planar-twice", PlanarTwice, "flow")
    monkeypatch.setitem(posteriors.POSTERIORS, "planar-twice", head)
    return record


def test_a_registered_estimator_is_evaluated_and_reaches_the_cli(registered, tmp_path):
    model = random_linear_gaussian_vae().eval()
    x = model.decode_sample(model.sample_prior((6,)))
    est = evaluate(model, x, "half-iwae", 8, half="second")
    assert est.n == 6 and est.settings == {"half": "second"} and est.diagnostics["kept"]["mean"] == 4
    run = tmp_path / "run"
    run_cli("train", "--run-dir", str(run), "--no-progress", "model.hidden=[16]", "model.latent_dim=3",
            "train.epochs=1")  # fmt: skip
    flags = ["--estimator", "half-iwae", "--samples", "6", "--half", "second", "--limit", "10", "--json"]
    out = json.loads(run_cli("eval", str(run), *flags).stdout)
    assert out["estimator"] == "half-iwae" and out["settings"] == {"half": "second"} and out["n"] == 10
    assert "half-iwae" in ESTIMATORS


def test_a_registered_flow_head_is_built_and_optimised_locally(registered):
    head = posteriors.build_posterior("planar-twice", 5, 3, flow_steps=2, context_dim=4)
    z, log_q = head(torch.randn(7, 5)).rsample_and_log_prob((2,))
    assert z.shape == (2, 7, 3) and log_q.shape == (2, 7)
    model = random_linear_gaussian_vae().eval()
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((3,)))
    options = LocalOptions(max_steps=20, eval_samples=20)
    result = local_optimise(model, x, "planar-twice", options=options, flow_steps=1)
    assert result.elbo.shape == (3,) and torch.isfinite(result.elbo).all()


class Laplace(nn.Module):
    """A toy prior: independent standard Laplace coordinates (no options)."""

    options = ()

    def __init__(self, latent, shape=()):
        super().__init__()
        self.latent_dim = latent

    def log_prob(self, z, model=None):
        return (-z.abs() - math.log(2)).sum(-1)

    def sample(self, sample_shape, model=None, like=None, temperature=1.0):
        p = like if like is not None else next(model.parameters())
        u = noise.rand((*sample_shape, self.latent_dim), batch_dim=-2, dtype=p.dtype, device=p.device) - 0.5
        return -temperature * torch.sign(u) * torch.log1p(-2 * u.abs())  # the inverse CDF

    def moments(self, model=None):
        return None  # not Gaussian: no closed form


def test_a_registered_prior_is_built_and_evaluated(monkeypatch):
    monkeypatch.setitem(priors.PRIORS, "laplace", priors.PriorRecord("laplace", Laplace))
    model = random_linear_gaussian_vae().eval()
    model.prior = priors.build_prior("laplace", model.latent_dim, model.shape, prior_components=3)
    assert isinstance(model.prior, Prior)
    z = torch.randn(2, 5, model.latent_dim, dtype=torch.float64)
    torch.testing.assert_close(model.log_prior(z), (-z.abs() - math.log(2)).sum(-1))
    with torch.no_grad():
        x = model.decode_sample(model.sample_prior((6,)))
    for name in ("elbo", "iwae", "ais"):
        options = {"steps": 5, "leapfrog": 2} if name == "ais" else {}
        assert math.isfinite(evaluate(model, x, name, 4, **options).nll), name
    with pytest.raises(ValueError):
        evaluate(model, x, "exact")  # no Gaussian moments: no closed form
