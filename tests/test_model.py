"""Encoders, decoders, likelihoods and the flat VAE's interface."""

import math

import pytest
import torch

from flowvae.config import ModelConfig
from flowvae.likelihoods import (
    Bernoulli,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    Gaussian,
    IAFLogistic,
    build_likelihood,
)
from flowvae.model import build_model

SHAPES = [((1, 8, 8), True), ((1, 28, 28), True), ((3, 32, 32), False)]


@pytest.mark.parametrize("net", ["mlp", "gated-conv", "resnet", "linear"])
@pytest.mark.parametrize("shape, binary", SHAPES)
def test_encoders_and_decoders_shapes_and_gradients(net, shape, binary):
    cfg = ModelConfig(encoder=net, decoder=net, latent_dim=5, hidden=[16], channels=4, blocks=1)
    model = build_model(cfg, shape, binary)
    x = torch.rand(3, *shape)
    x = x.round() if binary else (x * 255).round() / 255
    terms = model(x, samples=2)
    assert terms.log_weight.shape == (2, 3) and torch.isfinite(terms.log_weight).all()
    z = model.sample_prior((4,))
    assert model.decode_mean(z).shape == (4, *shape) and model.decode_sample(z).shape == (4, *shape)
    (-terms.log_weight.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("shape, binary", SHAPES)
def test_made_decoder_shapes_gradients_and_images(shape, binary):
    """model.decoder=made: scores, gradients, samples and means for binary and 8-bit images."""
    cfg = ModelConfig(decoder="made", latent_dim=5, hidden=[16], posterior="iaf", flow_hidden=8)
    model = build_model(cfg, shape, binary)
    x = torch.rand(3, *shape)
    x = x.round() if binary else (x * 255).round() / 255
    terms = model(x, samples=2)
    assert terms.log_weight.shape == (2, 3) and torch.isfinite(terms.log_weight).all()
    (-terms.log_weight.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    z = model.sample_prior((2,))
    with torch.no_grad():
        assert model.decode_mean(z).shape == (2, *shape) and model.decode_sample(z).shape == (2, *shape)
    with pytest.raises(ValueError, match="autoregressive decoder needs the images"):
        model._decode(z)


def test_mlp_options_batch_norm_and_input_to_every_layer():
    cfg = ModelConfig(hidden=[16, 8], batch_norm=True, input_to_all=True, latent_dim=3)
    model = build_model(cfg, (1, 4, 4), True)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.encoder.modules())
    assert model.encoder.out_features == 8 + 16  # the last layer's units plus the input
    first_decoder = model.decoder.net.layers[1][0]
    assert first_decoder.in_features == 8 + 3  # widths reversed (8, 16), latent fed to every layer


def test_log_joint_is_prior_plus_likelihood_and_forward_matches_the_parts():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, hidden=[8]), (1, 4, 4), True)
    x = torch.rand(5, 1, 4, 4).round()
    z = torch.randn(2, 5, 3)
    assert torch.allclose(model.log_joint(x, z), model.log_prior(z) + model.log_likelihood(x, z))
    torch.manual_seed(1)
    terms = model(x, samples=2)
    torch.manual_seed(1)
    z, log_q = model.encode(x).rsample_and_log_prob((2,))
    assert torch.allclose(terms.log_weight, model.log_joint(x, z) - log_q)


def test_likelihoods_are_normalised_where_they_are_discrete():
    pixel = torch.randn(4, 1, 1, 1, 1)  # one-pixel images: p(0) + p(1) = 1
    p = sum(Bernoulli().log_prob(torch.full((1, 1, 1), v), pixel).exp() for v in (0.0, 1.0))
    assert torch.allclose(p, torch.ones(4))
    values = torch.arange(256.0).view(256, 1, 1, 1) / 255
    for lik in (DiscretizedLogistic(), DiscretizedLogisticMixture(3)):
        params = torch.randn(1, lik.params, 1, 1, 1) * 0.5
        total = lik.log_prob(values, params.expand(256, -1, -1, -1, -1)).exp().sum()
        assert math.isclose(total.item(), 1.0, abs_tol=1e-4)
        sample = lik.sample(params)
        assert ((sample * 255).round() == sample * 255).all() and (0 <= sample).all() and (sample <= 1).all()


def test_iaf_logistic_has_one_scale_clipped_means_and_no_edge_tails():
    torch.manual_seed(0)
    lik = IAFLogistic().double()
    assert [p.numel() for p in lik.parameters()] == [1]
    lik.log_scale.data.fill_(-1.5)
    values = torch.arange(256.0, dtype=torch.float64).view(256, 1, 1, 1) / 255
    for mean in (-0.3, 0.0, 0.45, 3.0):  # 3.0 is clipped to the centre of the top bin
        out = torch.full((256, 1, 1, 1, 1), mean, dtype=torch.float64)
        total = lik.log_prob(values, out).exp().sum()
        # the bins tile [-0.5, 0.5] exactly: the total is the logistic's mass there, not 1
        m, s = min(mean, 0.5 - 1 / 512), math.exp(-1.5)
        inside = 1 / (1 + math.exp(-(0.5 - m) / s)) - 1 / (1 + math.exp(-(-0.5 - m) / s))
        assert math.isclose(total.item(), inside, rel_tol=1e-9) and total < 1 - 1e-3
    # pixel k has the bin [(k - 128) / 256, (k - 127) / 256]
    k, mean = 200.0, 0.1
    out = torch.full((1, 1, 1, 1, 1), mean, dtype=torch.float64)
    lo, hi = ((k - 128) / 256 - mean) / s, ((k - 127) / 256 - mean) / s
    expected = math.log(1 / (1 + math.exp(-hi)) - 1 / (1 + math.exp(-lo)))
    assert math.isclose(lik.log_prob(torch.full((1, 1, 1), k / 255), out).item(), expected, rel_tol=1e-9)
    sample = lik.sample(torch.zeros(100, 1, 1, 4, 4, dtype=torch.float64))
    assert ((sample * 255).round() == sample * 255).all() and (0 <= sample).all() and (sample <= 1).all()
    with pytest.raises(ValueError, match="8-bit"):
        build_likelihood("iaf-logistic", True, (1, 2, 2), 1)


def test_gaussian_likelihood_matches_torch():
    lik = Gaussian((1, 2, 2))
    x, mean = torch.randn(1, 2, 2), torch.randn(3, 1, 1, 2, 2)
    ref = torch.distributions.Normal(mean[:, 0], lik.log_std.exp()).log_prob(x).flatten(1).sum(-1)
    assert torch.allclose(lik.log_prob(x, mean), ref)


def test_bad_model_configs_fail_clearly():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_model(ModelConfig(encoder="transformer"), (1, 8, 8), True)
    with pytest.raises(ValueError, match="needs binary data"):
        build_model(ModelConfig(likelihood="bernoulli"), (1, 8, 8), False)
    with pytest.raises(ValueError, match="unknown model.type"):
        build_model(ModelConfig(type="deep"), (1, 8, 8), True)


@pytest.mark.parametrize("transpose", [False, True])
def test_gated_conv_is_two_convolutions_and_loads_their_old_checkpoints(transpose):
    """The merged gated convolution computes conv_h(x) * sigmoid(conv_g(x)) with the weights two
    separate layers would draw, and a state dict saved with separate ``h.*``/``g.*`` loads."""
    from torch import nn

    from flowvae.nets import GatedConv

    kind, options = (nn.ConvTranspose2d, {"output_padding": 1}) if transpose else (nn.Conv2d, {})
    torch.manual_seed(0)
    h, g = kind(3, 4, 5, 2, 2, **options), kind(3, 4, 5, 2, 2, **options)
    after_two = torch.rand(1)
    torch.manual_seed(0)
    gated = GatedConv(3, 4, stride=2, transpose=transpose)
    assert torch.equal(torch.rand(1), after_two)  # the merged layer draws exactly what two layers draw
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(gated(x), h(x) * torch.sigmoid(g(x)))
    old = {f"{name}.{p}": t for name, layer in (("h", h), ("g", g)) for p, t in layer.state_dict().items()}
    fresh = GatedConv(3, 4, stride=2, transpose=transpose)
    fresh.load_state_dict({k: 2 * v for k, v in old.items()})
    torch.testing.assert_close(fresh(x), 2 * h(x) * torch.sigmoid(2 * g(x)))


def test_conv_networks_run_channels_last_and_give_the_same_numbers():
    cfg = ModelConfig(encoder="gated-conv", decoder="gated-conv", latent_dim=4)
    model = build_model(cfg, (1, 12, 12), True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    x = (torch.rand(3, 1, 12, 12) < 0.5).float()
    model.eval()
    torch.manual_seed(1)
    fast = model(x, 2).log_weight
    model.to(memory_format=torch.contiguous_format)
    torch.manual_seed(1)
    plain = model(x, 2).log_weight
    # the same sums in another order: float32 rounding of terms of size ~|log w| ~ 1e2
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-4)


def test_every_model_type_satisfies_the_whole_latent_variable_model_protocol():
    """Estimators, BDMC, training and images use exactly the protocol's members: every model
    type must have all of them (isinstance checks methods and attributes alike)."""
    from flowvae.core import LatentVariableModel

    hierarchical = {"type": "hierarchical", "posterior": "down-iaf", "depths": [1], "n_h": 4, "n_z": 2}
    for overrides in ({}, hierarchical):
        model = build_model(ModelConfig(**overrides), (1, 8, 8), binary=True)
        assert isinstance(model, LatentVariableModel), overrides
        z = model.sample_prior((2, 3), like=next(model.parameters()))
        assert z.shape == (2, 3, model.latent_dim)
        assert model.decode_sample(z[0]).shape == (3, 1, 8, 8)


SYLVESTER_PRESETS = ["diag", "planar", "iaf", "orthogonal", "householder", "triangular"]


@pytest.mark.parametrize("name", SYLVESTER_PRESETS)
def test_sylvester_paper_presets_build_its_architecture_and_take_a_finite_step(name):
    """The sylvester-mnist-* presets: the peer's gated-conv network at z 64 with its flow, and one
    update with the preset's own optimizer (Adamax 5e-4) gives finite numbers."""
    from flowvae.optim import optimizer_for, train_step
    from flowvae.presets import preset

    cfg = preset(f"sylvester-mnist-{name}")
    model = build_model(cfg.model, (1, 28, 28), True)
    posterior = "diag" if name == "diag" else name if name in ("planar", "iaf") else f"sylvester-{name}"
    assert cfg.model.posterior == posterior and model.latent_dim == 64
    nets = type(model.encoder).__name__, type(model.decoder).__name__
    assert nets == ("GatedConvEncoder", "GatedConvDecoder")
    optimizer = optimizer_for(cfg, model)
    assert type(optimizer).__name__ == "Adamax" and optimizer.param_groups[0]["lr"] == 5e-4
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28).round()
    stats = train_step(model, optimizer, x, cfg, beta=0.01, lr=cfg.train.lr)
    assert stats["skipped"] == 0 and all(math.isfinite(v) for v in stats.values())
