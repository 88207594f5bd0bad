"""The fused Bernoulli likelihood of IWAE (issue 14) against the reference formula.

In eval mode a Bernoulli VAE with an ``mlp`` or ``linear`` decoder computes log p(x|z) as
h·(Wᵀx) + b·x - Σ softplus(l) (:func:`~flowvae.numerics.log_bernoulli_linear`) instead of
log_bernoulli(x, l) summed over pixels. Both are floating-point evaluations of one exact value;
the tolerance is the probabilistic rounding bound of such sums (Higham & Mary 2019, SIAM J.
Sci. Comput. 41(5), Thm. 2.4): a sum or dot product of n terms with independent rounding errors
is within γ̃_n(λ) ≈ λ √n u times the sum of the terms' absolute values of its exact value, u
the unit roundoff, with probability at least 1 - 2n exp(-λ²(1-u)²/2): below 1e-7 for λ = 7.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flowvae.config import ModelConfig
from flowvae.core import Posterior
from flowvae.estimators import iwae
from flowvae.likelihoods import Bernoulli
from flowvae.model import build_model
from flowvae.numerics import log_bernoulli, log_bernoulli_linear, log_mean_exp
from flowvae.testing import rounding_bound

SHAPE = (1, 8, 8)


def test_log_bernoulli_linear_equals_the_summed_log_bernoulli_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((5, 30), 0.3, dtype=torch.float64), generator=g)
    h = torch.randn(7, 5, 11, dtype=torch.float64, generator=g)
    weight = 2 * torch.randn(30, 11, dtype=torch.float64, generator=g)
    bias = torch.randn(30, dtype=torch.float64, generator=g)
    got = log_bernoulli_linear(h, weight, bias, x @ weight, x @ bias)
    want = log_bernoulli(x, h @ weight.t() + bias).sum(-1)
    assert got.shape == (7, 5)
    bound = rounding_bound(x, h, weight, bias, torch.float64)
    assert ((got - want).abs() <= bound).all()


def test_log_bernoulli_linear_float32_is_within_the_rounding_bound_of_the_exact_value():
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((6, 784), 0.13), generator=g)
    h = F.elu(torch.randn(50, 6, 300, generator=g))  # a hidden layer's activations
    weight = 5 / math.sqrt(300) * torch.randn(784, 300, generator=g)  # logits of spread ~5
    bias = torch.randn(784, generator=g)
    exact = log_bernoulli(x.double(), h.double() @ weight.double().t() + bias.double()).sum(-1)
    bound = rounding_bound(x, h, weight, bias)
    fused = log_bernoulli_linear(h, weight, bias, x @ weight, x @ bias)
    old = log_bernoulli(x, h @ weight.t() + bias).sum(-1)
    assert fused.dtype == torch.float32
    assert ((fused.double() - exact).abs() <= bound).all()
    assert ((old.double() - exact).abs() <= bound).all()
    # a wrong formula is far outside it: e.g. leaving out the bias' b·x term
    assert ((fused - x @ bias - old).abs() > bound).any()


def _model(**options) -> torch.nn.Module:
    cfg = ModelConfig(latent_dim=4, hidden=[32, 24], context_dim=8, flow_steps=2, flow_hidden=16, **options)
    torch.manual_seed(0)
    model = build_model(cfg, SHAPE, binary=True)
    with torch.no_grad():  # weights large enough that the logits span a realistic range
        for p in model.decoder.parameters():
            p.mul_(3)
    return model


def _images(n: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, *SHAPE), 0.3))


class _Replay:
    """Serves pre-drawn base samples in order, so two computations see the same draws."""

    def __init__(self, eps: torch.Tensor):
        self.eps, self.used, self.calls = eps, 0, 0

    def __call__(self, posterior: Posterior, sample_shape=()) -> torch.Tensor:
        (n,) = sample_shape
        self.used += n
        self.calls += 1
        return self.eps[self.used - n : self.used]


MODELS = {
    "diag": {},
    "iaf": {"posterior": "iaf"},
    "planar": {"posterior": "planar"},
    "batch-norm": {"batch_norm": True},
    "input-to-all": {"input_to_all": True},
    "linear-decoder": {"decoder": "linear"},
}


@pytest.mark.parametrize("options", MODELS.values(), ids=MODELS.keys())
@torch.no_grad()
def test_iwae_equals_the_reference_formula_within_float32_rounding(options, monkeypatch):
    """iwae() in eval mode (the fused path, in row blocks) against log-mean-exp of the old
    formula's weights on the same draws; log-mean-exp is 1-Lipschitz in the max norm, so the
    per-image tolerance is the largest of its K weights' rounding bounds (both formulas). The
    draws also pass the posterior in blocks (4 samples x 10 images of at most 48 rows): each
    block's z must meet its own log q."""
    model = _model(**options)
    if options.get("batch_norm"):  # running statistics away from their initial (0, 1)
        model.train()
        for _ in range(3):
            model(_images(64), samples=2)
    model.eval()
    monkeypatch.setattr(type(model), "fused_rows", 48)  # several blocks, one not full
    x, k = _images(10), 37
    eps = torch.randn(k, 10, model.latent_dim)
    replay = _Replay(eps)
    monkeypatch.setattr(Posterior, "sample_base", lambda self, shape=(): replay(self, shape))
    new = iwae(model, x, samples=k, chunk=16)
    assert replay.calls == 4 + 4 + 2  # chunks of 16, 16, 5 samples, in blocks of 4

    q = model.encode(x)
    z, ladj = q.transform(eps)
    h = model.decoder.features(z.reshape(-1, z.shape[-1])).view(k, 10, -1)
    out = model.decoder.out
    old_log_lik = log_bernoulli(x.flatten(1), F.linear(h, out.weight, out.bias)).sum(-1)
    log_w = old_log_lik + model.log_prior(z) - (q.base_log_prob(eps) - ladj)
    reference = log_mean_exp(log_w.double(), 0)
    tolerance = 2 * rounding_bound(x.flatten(1), h, out.weight, out.bias).max(0).values
    assert new.shape == (10,) and torch.isfinite(new).all()
    assert ((new.double() - reference).abs() <= tolerance).all()


def test_eval_mode_fuses_and_train_mode_keeps_the_reference_formula(monkeypatch):
    model, x = _model(), _images(6)
    z = torch.randn(5, 6, model.latent_dim)
    reference = Bernoulli().log_prob(x, model.decoder(z.reshape(-1, z.shape[-1])).view(5, 6, 1, *SHAPE))
    # train mode: exactly the old computation, with gradients to every decoder parameter
    model.train()
    got = model.log_likelihood(x, z)
    assert torch.equal(got, reference)
    got.sum().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())

    def refuse(*args):
        raise AssertionError("eval mode should not form and score the full logits")

    monkeypatch.setattr(Bernoulli, "log_prob", refuse)
    model.eval()
    fused = model.log_likelihood(x, z)  # the fused path does not call log_prob
    assert fused.shape == (5, 6)
    with pytest.raises(AssertionError, match="full logits"):
        model.train()(x, samples=2)


def test_fused_path_keeps_gradients_for_ais_and_broadcasting_shapes():
    """AIS and local optimisation differentiate log p(x|z) in eval mode; an image batch that
    does not match z's batch dimension broadcasts as before (the reference path)."""
    model, x = _model().eval(), _images(4)
    z = torch.randn(3, 4, model.latent_dim, requires_grad=True)
    model.log_likelihood(x, z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    one = model.log_likelihood(x[:1], z.detach())  # (1, C, H, W) against (3, 4, D)
    assert one.shape == (3, 4)


def test_evaluation_blocks_are_sized_per_device():
    """Cache-sized blocks on a CPU; on a GPU blocks 16x larger (2048-row blocks left an H100
    launch-bound at 2M samples/s against 34M: BENCHMARKS.md)."""
    model, x = _model(), _images(10)
    assert model._samples_per_block(x) == model.fused_rows // 10
    gpu_like = torch.empty(10, *SHAPE, device="meta")
    on_gpu = model._samples_per_block(gpu_like)
    assert on_gpu == model.fused_rows_gpu // 10 >= 16 * model._samples_per_block(x)


@torch.no_grad()
def test_made_decoder_fuses_with_a_per_image_bias_within_float32_rounding(monkeypatch):
    """The autoregressive decoder's direct connections make the output layer's bias per image;
    the fused eval path (blocks of rows, x's first layer once) must equal the train-mode
    formula on the same z within the rounding bound, without forming the full logits."""
    model = _model(decoder="made", decoder_hidden=[24, 24], posterior="iaf")
    with torch.no_grad():
        model.decoder.direct.weight.normal_(0, 0.3)
    monkeypatch.setattr(type(model), "fused_rows", 48)
    x, z = _images(10), torch.randn(23, 10, model.latent_dim)
    reference = model.train().log_likelihood(x, z)
    h = model.decoder.features(z, x)
    weight, bias = model.decoder.output_layer(x)
    bound = 2 * rounding_bound(x.flatten(1), h, weight, bias)
    monkeypatch.setattr(Bernoulli, "log_prob", lambda *a: (_ for _ in ()).throw(AssertionError("full")))
    fused = model.eval().log_likelihood(x, z)
    assert fused.shape == (23, 10)
    assert ((fused.double() - reference.double()).abs() <= bound).all()
