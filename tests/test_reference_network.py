"""The ``vampprior-mnist-*`` presets are the VampPrior paper's network, checked against its code.

With the reference's weights copied into ours (``../shared/peers/vae_vampprior``, jmtomczak's code
patched for today's torch), both compute the same importance log-weight log p(x, z) - log q(z|x)
for the same x and base noise, in float64: the gated layers, the Hardtanh(-6, 2) log-variances,
the VampPrior over hardtanh'd pseudo-inputs, and the HVAE's separate input layers (its joint
layers take their inputs in the other order: their columns are swapped). The reference omits
-log(2 pi)/2 in every Gaussian; in a log-weight those cancel (as many in p as in q). Also: the same
parameter counts, AdamNormGrad's steps equal to theirs, He initialisation's spread, the per-epoch
warm-up, and early stopping that does not count during warm-up.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from flowvae.config import Config
from flowvae.model import build_model
from flowvae.optim import AdamNormGrad, kl_weight, optimizer_for
from flowvae.presets import preset

PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "vae_vampprior"
needs_peer = pytest.mark.skipif(not PEER.is_dir(), reason="the reference code (../shared/peers) is not here")
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def peer():
    sys.path.insert(0, str(PEER))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from models import VAE, HVAE_2level
            from utils import distributions, optimizer
        yield argparse.Namespace(VAE=VAE.VAE, HVAE=HVAE_2level.VAE, dist=distributions, opt=optimizer)
    finally:
        sys.path.remove(str(PEER))
        for name in [m for m in sys.modules if m.split(".")[0] in ("models", "utils")]:
            del sys.modules[name]


def peer_args(prior: str, components: int = 7) -> argparse.Namespace:
    return argparse.Namespace(
        input_size=list(SHAPE), z1_size=40, z2_size=40, prior=prior, number_components=components,
        input_type="binary", cuda=False, pseudoinputs_mean=0.05, pseudoinputs_std=0.01,
        use_training_data_init=False,
    )  # fmt: skip


def gated(p: dict, name: str) -> list[torch.Tensor]:
    """Their GatedDense (h, g) as our GatedLinear's one (2O, I) layer: [weight, bias]."""
    return [torch.cat([p[f"{name}.h.{t}"], p[f"{name}.g.{t}"]]) for t in ("weight", "bias")]


def gaussian(p: dict, mean: str, logvar: str) -> list[torch.Tensor]:
    return [torch.cat([p[f"{mean}.{t}"], p[f"{logvar}.linear.{t}"]]) for t in ("weight", "bias")]


def swapped(p: dict, name: str) -> list[torch.Tensor]:
    """A joint GatedDense whose two 300-wide inputs come in the other order in ours."""
    weight, bias = gated(p, name)
    return [torch.cat([weight[:, 300:], weight[:, :300]], dim=1), bias]


def copy_into(model: torch.nn.Module, tensors: list[torch.Tensor]) -> None:
    """Our parameters in registration order get ``tensors`` (shapes checked)."""
    params = list(model.parameters())
    assert len(params) == len(tensors)
    with torch.no_grad():
        for mine, theirs in zip(params, tensors, strict=True):
            assert mine.shape == theirs.shape
            mine.copy_(theirs)


def vae_tensors(p: dict, prior: str) -> list[torch.Tensor]:
    out = [*gated(p, "q_z_layers.0"), *gated(p, "q_z_layers.1"), *gaussian(p, "q_z_mean", "q_z_logvar")]
    out += [*gated(p, "p_x_layers.0"), *gated(p, "p_x_layers.1"), p["p_x_mean.linear.weight"]]
    out += [p["p_x_mean.linear.bias"]]
    return out + ([p["means.linear.weight"].T] if prior == "vampprior" else [])


def hvae_tensors(p: dict, prior: str) -> list[torch.Tensor]:
    out = [*gated(p, "q_z2_layers.0"), *gated(p, "q_z2_layers.1"), *gaussian(p, "q_z2_mean", "q_z2_logvar")]
    out += [*gated(p, "q_z1_layers_z2.0"), *gated(p, "q_z1_layers_x.0"), *swapped(p, "q_z1_layers_joint.0")]
    out += gaussian(p, "q_z1_mean", "q_z1_logvar")
    out += [*gated(p, "p_x_layers_z2.0"), *gated(p, "p_x_layers_z1.0"), *swapped(p, "p_x_layers_joint.0")]
    out += [p["p_x_mean.linear.weight"], p["p_x_mean.linear.bias"]]
    out += [p["means.linear.weight"].T] if prior == "vampprior" else []
    out += [*gated(p, "p_z1_layers.0"), *gated(p, "p_z1_layers.1")]
    return out + gaussian(p, "p_z1_mean", "p_z1_logvar")


def ours_log_weight(model, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    q = model.encode(x)
    z, ladj = q.transform(eps)
    return model.log_joint(x, z) - (q.base_log_prob(eps) - ladj)


def theirs_vae(net, peer, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    d = peer.dist
    mean, logvar = net.q_z(x)
    z = mean + torch.exp(0.5 * logvar) * eps
    x_mean, _ = net.p_x(z)
    return d.log_Bernoulli(x, x_mean, dim=1) + net.log_p_z(z) - d.log_Normal_diag(z, mean, logvar, dim=1)


def theirs_hvae(net, peer, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    d = peer.dist
    eps2, eps1 = eps.split([40, 40], dim=-1)
    m2, lv2 = net.q_z2(x)
    z2 = m2 + torch.exp(0.5 * lv2) * eps2
    m1, lv1 = net.q_z1(x, z2)
    z1 = m1 + torch.exp(0.5 * lv1) * eps1
    pm1, plv1 = net.p_z1(z2)
    x_mean, _ = net.p_x(z1, z2)
    log_p = d.log_Bernoulli(x, x_mean, dim=1) + d.log_Normal_diag(z1, pm1, plv1, dim=1) + net.log_p_z2(z2)
    return log_p - d.log_Normal_diag(z1, m1, lv1, dim=1) - d.log_Normal_diag(z2, m2, lv2, dim=1)


def paired(peer, row: str, components: int = 7):
    """The reference's model for ``row`` and our preset with its weights, both float64:
    (ours, theirs, the reference's tensors in our order from its state dict)."""
    prior = "vampprior" if row.endswith("vamp") else "standard"
    two = row.startswith("hvae")
    torch.manual_seed(0)
    theirs = (peer.HVAE if two else peer.VAE)(peer_args(prior, components)).double().eval()
    if prior == "vampprior":
        theirs.idle_input = theirs.idle_input.double()  # a plain attribute: .double() misses it
    cfg = preset(f"vampprior-mnist-{row}")
    if prior == "vampprior":
        cfg.model.prior_components = components
    ours = build_model(cfg.model, SHAPE, True).double().eval()
    with torch.no_grad():  # pseudo-inputs spread over [0, 1] so that hardtanh clamps some
        theirs.means.linear.weight.uniform_(-0.2, 1.2) if prior == "vampprior" else None
    in_our_order = lambda: (hvae_tensors if two else vae_tensors)(dict(theirs.named_parameters()), prior)  # noqa: E731
    copy_into(ours, in_our_order())
    return cfg, ours, theirs, in_our_order


def log_weights(peer, row, ours, theirs, x, eps):
    two = row.startswith("hvae")
    ref = (theirs_hvae if two else theirs_vae)(theirs, peer, x.flatten(1), eps)
    return ours_log_weight(ours, x, eps), ref


@needs_peer
@pytest.mark.parametrize("row", ["vae", "vae-vamp", "hvae", "hvae-vamp"])
def test_preset_computes_the_reference_log_weight(peer, row):
    _, ours, theirs, _ = paired(peer, row)
    x = (torch.rand(6, *SHAPE, dtype=torch.float64) < 0.3).double()
    eps = torch.randn(6, 80 if row.startswith("hvae") else 40, dtype=torch.float64)
    with torch.no_grad():
        mine, ref = log_weights(peer, row, ours, theirs, x, eps)
    torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-8)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@needs_peer
@pytest.mark.parametrize("row", ["vae-vamp", "hvae-vamp"])
def test_preset_training_steps_equal_the_references(peer, row):
    """From the same weights, on the same batches and noise, four steps of the preset's optimizer
    (``optimizer_for``) leave the weights the reference's AdamNormGrad leaves. The reference
    normalises each of its tensors' gradients on its own, so ours must too where one of our
    tensors holds two of theirs (a gated layer's h and g, a Gaussian head's mean and log-variance):
    normalised together, the weights after these steps differed by up to 3e-4 (lr 5e-4)."""
    cfg, ours, theirs, in_our_order = paired(peer, row)
    ours.train(), theirs.train()
    opt_ours = optimizer_for(cfg, ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt_theirs = peer.opt.AdamNormGrad(theirs.parameters(), lr=cfg.train.lr)
        for step in range(4):
            x = (torch.rand(8, *SHAPE, dtype=torch.float64) < 0.1 + 0.1 * step).double()
            eps = torch.randn(8, 80 if row.startswith("hvae") else 40, dtype=torch.float64)
            mine, ref = log_weights(peer, row, ours, theirs, x, eps)
            for loss, opt in ((-mine.mean(), opt_ours), (-ref.mean(), opt_theirs)):
                opt.zero_grad()
                loss.backward()
                opt.step()
    for (name, a), b in zip(ours.named_parameters(), in_our_order(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")
    assert not torch.equal(ours.decoder.out.weight, paired(peer, row)[1].decoder.out.weight)


@needs_peer
def test_bounded_log_variance_clamps_as_hardtanh(peer):
    """A head whose raw log-variance is far outside [-6, 2] gets exactly the bound (theirs too)."""
    cfg = preset("vampprior-mnist-vae")
    ours = build_model(cfg.model, SHAPE, True).double()
    with torch.no_grad():
        ours.posterior.gaussian.bias[40:] = torch.linspace(-20, 20, 40, dtype=torch.float64)
        ours.posterior.gaussian.weight[40:] = 0
    _, log_std = ours.posterior.base_gaussian(torch.zeros(1, 300, dtype=torch.float64))
    expected = 0.5 * torch.linspace(-20, 20, 40, dtype=torch.float64).clamp(-6, 2)
    torch.testing.assert_close(log_std[0], expected)


@needs_peer
def test_adam_normgrad_steps_equal_the_reference(peer):
    torch.manual_seed(0)
    start = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    mine = [p.clone().requires_grad_() for p in start]
    ref = [p.clone().requires_grad_() for p in start]
    opt_mine = AdamNormGrad(mine, lr=5e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt_ref = peer.opt.AdamNormGrad(ref, lr=5e-4)
        for step in range(4):
            grads = [torch.randn_like(p) * (10.0**step) for p in start]
            for params, opt in ((mine, opt_mine), (ref, opt_ref)):
                for p, g in zip(params, grads, strict=True):
                    p.grad = g.clone()
                opt.step()
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(mine[0], start[0])


def test_adam_normgrad_resumes_the_state_of_its_earlier_foreach_form():
    """Runs started before AdamNormGrad moved onto torch's fused Adam saved ints as steps and
    groups without ``reference_eps`` (their eps was it): they resume, fused, and take the step an
    unbroken run takes."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]

    def steps(params, opt, batches):
        for batch in batches:
            for p, g in zip(params, batch, strict=True):
                p.grad = g.clone()
            opt.step()

    unbroken = [p.clone().requires_grad_() for p in start]
    opt_unbroken = AdamNormGrad(unbroken, lr=5e-4)
    steps(unbroken, opt_unbroken, grads)
    first = [p.clone().requires_grad_() for p in start]
    opt_first = AdamNormGrad(first, lr=5e-4)
    steps(first, opt_first, grads[:2])
    saved = opt_first.state_dict()
    earlier = {
        "state": {i: {"step": int(s["step"]), "exp_avg": s["exp_avg"], "exp_avg_sq": s["exp_avg_sq"]}
                  for i, s in saved["state"].items()},  # fmt: skip
        "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                          "params": g["params"]} for g in saved["param_groups"]],  # fmt: skip
    }
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt_resumed = AdamNormGrad(resumed, lr=5e-4)
    opt_resumed.load_state_dict(earlier)
    steps(resumed, opt_resumed, grads[2:])
    for a, b in zip(unbroken, resumed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    assert opt_resumed.param_groups[0]["fused"] and opt_resumed.param_groups[0]["reference_eps"] == 1e-8


def test_he_init_draws_weights_with_variance_two_over_fan_in():
    torch.manual_seed(0)
    model = build_model(preset("vampprior-mnist-vae").model, SHAPE, True)
    weight = model.encoder.net.layers[0][0].linear.weight  # (600, 784)
    expected = math.sqrt(2 / 784)
    # the sample sd of 470,400 normals is within 1 % of sigma with overwhelming probability
    assert abs(weight.std().item() / expected - 1) < 0.01
    default = build_model(Config().model, SHAPE, True).encoder.net.layers[0][0].weight
    assert abs(default.std().item() / expected - 1) > 0.2  # torch's default is another spread


def test_per_epoch_warmup_is_the_references_beta():
    cfg = preset("vampprior-mnist-vae")
    # theirs: beta = epoch / 100 for epochs 1, 2, ...; ours: epochs 0, 1, ... at any point inside
    for epoch, inside in [(0, 0.0), (0, 0.99), (1, 0.5), (98, 0.2), (99, 0.0), (150, 0.3)]:
        assert kl_weight(cfg, epoch + inside) == min(1.0, (epoch + 1) / 100)
    cfg.train.kl_warmup_by = "step"
    assert kl_weight(cfg, 0.5) == 0.005


def test_early_stopping_does_not_count_during_warmup(tmp_path):
    """With a learning rate too small to change a float32 weight, no evaluation improves on the
    first: early stopping after 1 bad evaluation stops at the first one at full KL weight (epoch
    2 of a 3-epoch warm-up), not at epoch 1 while the weight is still 2/3."""
    run = tmp_path / "run"
    result = run_cli(
        "train", "--preset", "digits", "train.lr=1e-30", "train.epochs=10", "train.early_stopping=1",
        "train.kl_warmup_epochs=3", "train.kl_warmup_by=epoch", "--run-dir", str(run), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 3, rows
    assert "early stopping" in result.stdout + result.stderr
