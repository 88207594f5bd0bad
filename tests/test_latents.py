"""After training (flowvae.latents): encode, decode, interpolate, sample at a temperature, traverse,
reconstruct with the top k layers kept, on every model type.

Tolerances: equalities that hold by construction (the same z through the same decoder) are
checked to 1e-6 in float32 images in [0, 1] (another batch size may round the decoder's matrix
products differently); maps and their inverses in float64 to 1e-9.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

import flowvae
from flowvae.checkpoint import load_run
from flowvae.config import ConfigError, ModelConfig
from flowvae.data import load_data
from flowvae.latents import reconstruct_by_layers, split_layers, stochastic_layers
from flowvae.model import build_model

MODELS = {
    "diag": dict(latent_dim=3, hidden=[16]),
    "iaf": dict(latent_dim=3, hidden=[16], posterior="iaf", flow_steps=2, flow_hidden=8, context_dim=4),
    "realnvp-aux": dict(latent_dim=3, hidden=[16], posterior="realnvp-aux", flow_steps=2, flow_hidden=8),
    "flow-prior": dict(latent_dim=3, hidden=[16], prior="flow", prior_flow_steps=2, prior_flow_hidden=8),
    "vampprior": dict(latent_dim=3, hidden=[16], prior="vampprior", prior_components=4),
    "two-layer": dict(latent_dim=3, hidden=[16], stochastic_layers=2),
    "hierarchical": dict(type="hierarchical", depths=[1, 1], n_h=6, n_z=2, depth_ar=1, posterior="down-iaf"),
    "hierarchical-up-feedback": dict(
        type="hierarchical", depths=[1, 1], n_h=6, n_z=2, depth_ar=1, posterior="up-iaf", up_feedback=True
    ),
    "hierarchical-iaf-prior": dict(
        type="hierarchical", depths=[2], n_h=6, n_z=2, depth_ar=1, posterior="down-diag", prior="iaf"
    ),
}
LAYERS = {"two-layer": 2, "hierarchical": 2, "hierarchical-up-feedback": 2, "hierarchical-iaf-prior": 2}


def model_of(name: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODELS[name]), (1, 8, 8), binary=True).to(dtype)
    x = images(dtype=dtype)
    model.data_init(x)
    for p in model.parameters():  # weights away from their init, so that no map is the identity
        p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


def images(n: int = 5, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.4, dtype=dtype), generator=g)


@pytest.mark.parametrize("name", list(MODELS))
def test_encode_then_decode_at_the_mean_is_the_reconstruction(name):
    model, x = model_of(name), images()
    latents = flowvae.encode(model, x)
    assert latents.z.shape == (5, model.latent_dim) and latents.log_q is None
    q = model.encode(x)
    z_mean, _ = q.transform(torch.zeros(5, q.base_dim))  # the base's mean through the flow
    assert torch.allclose(latents.z, z_mean, atol=1e-6)
    decoded = flowvae.decode(model, latents.z)
    assert decoded.params.shape[:2] == (5, 1) and decoded.mean.shape == (5, 1, 8, 8)
    assert torch.allclose(decoded.mean, model.decode_mean(z_mean), atol=1e-6)
    assert torch.allclose(flowvae.reconstruct(model, x), decoded.mean, atol=1e-6)
    assert len(latents.layers) == LAYERS.get(name, 1)
    assert torch.equal(torch.cat([t.flatten(1) for t in latents.layers], 1), latents.z)


@pytest.mark.parametrize("name", ["iaf", "hierarchical"])
def test_encode_samples_k_draws_with_log_q_per_example_stream(name):
    model, x = model_of(name), images()
    latents = flowvae.encode(model, x, 4, seed=3)
    assert latents.z.shape == (4, 5, model.latent_dim) and latents.log_q.shape == (4, 5)
    # example 2 alone, at its own index: the same draws (its stream depends on (seed, index) only)
    alone = flowvae.encode(model, x[2:3], 4, seed=3, indices=[2])
    assert torch.allclose(alone.z[:, 0], latents.z[:, 2], atol=1e-5)
    assert torch.allclose(alone.log_q[:, 0], latents.log_q[:, 2], atol=1e-4)
    in_batches = flowvae.encode(model, x, 4, seed=3, batch_size=2)
    assert torch.allclose(in_batches.z, latents.z, atol=1e-5)
    assert torch.isfinite(latents.log_q).all()


def test_the_training_time_reconstruction_is_encode_then_decode_at_the_mean(tmp_path):
    """reconstructions.png of a run shows x and flowvae.decode(flowvae.encode(x)) side by side."""
    from PIL import Image

    from flowvae.images import make_grid

    run_dir = tmp_path / "run"
    run_cli("train", "--run-dir", str(run_dir), "--no-progress", "model.hidden=[16]", "model.latent_dim=2",
            "train.epochs=1", "eval.samples=2", "train.ema=0")  # fmt: skip
    run = load_run(run_dir, "latest")
    x = load_data(run.config.data).valid[:32]
    rec = flowvae.decode(run.model, flowvae.encode(run.model, x).z).mean
    expected = make_grid(torch.stack([x, rec], 1).view(-1, 1, 8, 8), nrow=8)
    with Image.open(run_dir / "reconstructions.png") as png:
        written = torch.from_numpy(__import__("numpy").asarray(png).copy())
    assert written.shape == expected.shape[:2]
    assert (written.int() - torch.from_numpy(expected[..., 0]).int()).abs().max() <= 1


@pytest.mark.parametrize("name", list(MODELS))
def test_temperature_0_is_the_mode_and_1_the_ordinary_sample_of_the_same_stream(name):
    model = model_of(name)
    ordinary = flowvae.sample(model, 6, temperature=1.0, seed=4)
    from flowvae import noise

    with noise.example_streams(noise.ExampleStreams.seeded(4, range(6))):  # the model's own sampler
        z = model.sample_prior((6,))
        assert torch.allclose(ordinary, model.decode_mean(z), atol=1e-6)
    assert not torch.allclose(ordinary, flowvae.sample(model, 6, seed=5))  # another seed, other images
    cold = flowvae.sample(model, 6, temperature=0.0, seed=4)
    if name == "vampprior":  # the mode of the drawn component: its mean
        return
    mode = model.prior_from_base(torch.zeros(6, model.latent_dim))  # every conditional at its mean
    assert torch.allclose(cold, model.decode_mean(mode), atol=1e-6)
    assert torch.allclose(cold, flowvae.sample(model, 6, temperature=0.0, seed=9), atol=1e-6)


def test_vampprior_temperature_scales_within_the_drawn_component():
    model = model_of("vampprior")
    from flowvae import noise

    with noise.example_streams(noise.ExampleStreams.seeded(0, range(200))):
        z = model.sample_prior((200,), temperature=0.0)
    mean, _ = model.prior.components(model)
    distance = (z[:, None] - mean[None]).abs().amax(-1)  # (draws, components)
    assert distance.min(dim=1).values.max() < 1e-6  # every draw is a component's mean


def test_sample_in_batches_reports_progress_and_does_not_depend_on_the_batch_size():
    model = model_of("iaf")
    done: list[int] = []
    small = flowvae.sample(model, 10, batch_size=4, progress=done.append)
    assert small.shape == (10, 1, 8, 8) and done == [4, 4, 2]
    assert torch.allclose(small, flowvae.sample(model, 10), atol=1e-6)
    assert len({round(v, 6) for v in small.flatten(1).sum(1).tolist()}) == 10  # every image its own z


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("space", ["latent", "base"])
@pytest.mark.parametrize("path", ["linear", "slerp"])
def test_interpolation_endpoints_are_the_endpoints_reconstructions(name, space, path):
    model, x0, x1 = model_of(name), images(3, seed=1), images(3, seed=2)
    if space == "base" and name == "vampprior":
        with pytest.raises(ConfigError, match="mixture"):
            flowvae.interpolate(model, x0, x1, 4, space=space, path=path)
        return
    out = flowvae.interpolate(model, x0, x1, 5, space=space, path=path)
    assert out.shape == (3, 5, 1, 8, 8)
    assert torch.allclose(out[:, 0], flowvae.reconstruct(model, x0), atol=1e-5)
    assert torch.allclose(out[:, -1], flowvae.reconstruct(model, x1), atol=1e-5)
    assert not torch.allclose(out[:, 2], out[:, 0], atol=1e-3)  # the middle is elsewhere


@pytest.mark.parametrize("name", ["flow-prior", "two-layer", "hierarchical", "hierarchical-iaf-prior"])
def test_the_prior_base_map_inverts(name):
    model = model_of(name, torch.float64)
    with torch.no_grad():
        z = model.sample_prior((7,))
        u = model.prior_base(z)
        assert torch.allclose(model.prior_from_base(u), z, atol=1e-9)
        # a standard-normal base: log p(z) = log N(u) - log|dz/du| changes with u, and u is finite
        assert torch.isfinite(u).all() and u.shape == z.shape


def test_slerp_keeps_the_norm_between_vectors_of_equal_norm():
    from flowvae.latents import _path

    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    points = _path(a, b, torch.linspace(0, 1, 7), "slerp")
    assert torch.allclose(points.norm(dim=-1), torch.full((7, 1), 3.0), atol=1e-5)
    assert torch.equal(points[0], a) and torch.equal(points[-1], b)
    parallel = _path(a, 2 * a, torch.tensor([0.0, 0.5, 1.0]), "slerp")  # no angle: the straight line
    assert torch.allclose(parallel[1], 1.5 * a)


@pytest.mark.parametrize("name", ["diag", "hierarchical"])
def test_traverse_sets_one_latent_and_keeps_the_others(name):
    model, x = model_of(name), images(2)
    out = flowvae.traverse(model, x, 1, [-2.0, 0.0, 2.0])
    assert out.shape == (2, 3, 1, 8, 8)
    z = flowvae.encode(model, x).z.clone()
    z[:, 1] = 2.0
    assert torch.allclose(out[:, 2], flowvae.decode(model, z).mean, atol=1e-6)
    with pytest.raises(ConfigError, match=f"latent dimension {model.latent_dim} is out of range"):
        flowvae.traverse(model, x, model.latent_dim, [0.0])


@pytest.mark.parametrize("name", list(MODELS))
def test_keep_all_layers_is_the_reconstruction_and_keep_0_a_prior_sample(name):
    model, x = model_of(name), images(4)
    layers = stochastic_layers(model)
    assert layers == LAYERS.get(name, 1)
    assert torch.allclose(flowvae.reconstruct(model, x, keep_layers=layers),
                          flowvae.decode(model, flowvae.encode(model, x).z).mean, atol=1e-6)  # fmt: skip
    for t in (1.0, 0.5):
        assert torch.allclose(flowvae.reconstruct(model, x, keep_layers=0, temperature=t, seed=2),
                              flowvae.sample(model, 4, temperature=t, seed=2), atol=1e-6)  # fmt: skip
    rows = reconstruct_by_layers(model, x, seed=2)
    assert rows.shape == (layers + 1, 4, 1, 8, 8)
    with pytest.raises(ConfigError, match=f"keep_layers={layers + 1} is out of range"):
        flowvae.reconstruct(model, x, keep_layers=layers + 1)


@pytest.mark.parametrize("name", ["two-layer", "hierarchical"])
def test_keeping_the_top_layer_keeps_its_z_and_redraws_the_ones_below(name):
    model, x = model_of(name), images(4)
    top = flowvae.encode(model, x).layers[0]
    from flowvae import noise

    with noise.example_streams(noise.ExampleStreams.seeded(0, range(4))):
        z = model.sample_prior((4,), given=[top])
    kept, below = split_layers(model, z)
    assert torch.equal(kept, top)
    assert not torch.allclose(below, flowvae.encode(model, x).layers[1])
    kept_one = flowvae.reconstruct(model, x, keep_layers=1)
    assert torch.allclose(kept_one, flowvae.decode(model, z).mean, atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x: flowvae.sample(m, 2, temperature=-0.5), "temperature must be a finite number >= 0"),
        (lambda m, x: flowvae.reconstruct(m, x, temperature=float("nan")), "temperature must be a finite"),
        (lambda m, x: flowvae.interpolate(m, x, x, 1), "steps must be >= 2"),
        (lambda m, x: flowvae.interpolate(m, x, x[:1], 3), "x0 and x1 differ in shape"),
        (lambda m, x: flowvae.interpolate(m, x, x, 3, space="pixels"), "space must be one of latent, base"),
        (lambda m, x: flowvae.encode(m, x, 0), "samples must be >= 1"),
        (lambda m, x: flowvae.traverse(m, x, -1, [0.0]), "latent dimension -1 is out of range"),
    ],
)
def test_bad_arguments_raise_one_line(call, message):
    with pytest.raises(ConfigError, match=message) as info:
        call(model_of("diag"), images(2))
    assert "\n" not in str(info.value)


def test_an_autoregressive_decoder_has_no_parameters_without_the_image_but_decodes_and_samples():
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=3, hidden=[16], decoder="made", decoder_hidden=[16])
    model, x = build_model(cfg, (1, 8, 8), binary=True).eval(), images(3)
    decoded = flowvae.decode(model, flowvae.encode(model, x).z)
    assert decoded.params is None and decoded.mean.shape == (3, 1, 8, 8)
    assert flowvae.reconstruct(model, x, keep_layers=0).shape == (3, 1, 8, 8)
    torch.manual_seed(1)  # its pixels are drawn one by one from torch's generator
    first = flowvae.sample(model, 4, seed=2)
    torch.manual_seed(1)
    assert torch.equal(flowvae.sample(model, 4, seed=2), first)
