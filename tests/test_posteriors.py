"""Tests of every registered posterior q(z|x), through the interface the estimators use.

The parametrized tests iterate :data:`POSTERIORS`, so a newly registered posterior is covered
automatically. Numerical checks run in float64 with perturbed (non-initial) parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal

from flowvae.config import FlowSize, ModelConfig
from flowvae.core import FlowPosterior, Posterior
from flowvae.estimators import elbo
from flowvae.flows import AuxiliaryPosterior
from flowvae.linear_gaussian import best_diag_elbo, exact_log_marginal
from flowvae.model import build_model, posterior_options
from flowvae.posteriors import IAF, POSTERIORS, build_posterior

FEATURES = 5
CFG = dict(
    latent_dim=3, context_dim=4, flow_steps=2, flow_hidden=7, flow_layers=2,
    num_householder=2, num_ortho_vecs=2, aux_dim=2,
)  # fmt: skip
NAMES = sorted(POSTERIORS)


def perturb(module: nn.Module, scale: float = 0.5) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def make_head(name: str, seed: int = 0, **overrides: int) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(posterior=name, **{**CFG, **overrides})
    return perturb(build_posterior(name, FEATURES, cfg.latent_dim, **posterior_options(cfg)).double())


def features(batch: int) -> Tensor:
    return torch.randn(batch, FEATURES, dtype=torch.float64)


def full_map(posterior: Posterior, eps: Tensor) -> tuple[Tensor, Tensor]:
    """The bijection eps -> everything it produces, and its claimed log|det|.

    For an auxiliary posterior that is eps -> (z_T, v_T), without the log r term.
    """
    if hasattr(posterior, "transform_joint"):
        z, v, ladj = posterior.transform_joint(eps)
        return torch.cat([z, v], -1), ladj
    return posterior.transform(eps)


EPS = torch.finfo(torch.float64).eps


def slogdet_tolerance(jac: Tensor) -> float:
    """Rounding bound on log|det J| from J's conditioning: (B, E, E) -> a scalar.

    d log|det J| = tr(J^-1 dJ), so entries off by |dJ_ij| <= c eps |J_ij| (a few roundings
    each) move it by at most c eps sum_ij |J_ij| |J^-1_ji|. A well-conditioned D x D step gives
    about D eps; a composite of many steps can reach 1e11 eps, where the last digits of slogdet
    depend on the BLAS kernel (AVX2 vs AVX-512): no fixed tolerance is right for both.
    """
    inv = torch.linalg.inv(jac)
    return (16 * EPS * (jac.abs() * inv.abs().transpose(-1, -2)).sum((-1, -2)).max()).item()


def per_example_jacobian(fn: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """The Jacobians of fn, a map of (B, E) acting on each row on its own: (B, E_out, E)."""
    jac = torch.autograd.functional.jacobian(fn, inputs)
    rows = range(inputs.shape[0])
    for b in rows:
        others = torch.arange(inputs.shape[0]) != b
        assert (jac[b][:, others] == 0).all()  # examples are independent
    return torch.stack([jac[b, :, b] for b in rows])


def autograd_log_det(posterior: Posterior, eps: Tensor) -> tuple[Tensor, float]:
    """log|det| of the per-example Jacobian of eps (B, E) -> full_map, by autograd: (B,),
    and the rounding tolerance its conditioning allows (:func:`slogdet_tolerance`)."""
    jac = per_example_jacobian(lambda e: full_map(posterior, e)[0], eps)
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert (sign != 0).all()
    return logabsdet, slogdet_tolerance(jac)


def check_step_log_dets(posterior: Posterior, eps: Tensor) -> None:
    """Each flow step's claimed log|det| against slogdet of that step's own Jacobian, at the
    point the step sees, and the steps adding up to the posterior's log|det|.

    Steps are well conditioned even where their composite is not, so this check is tight.
    """
    flow = posterior.joint if isinstance(posterior, AuxiliaryPosterior) else posterior
    assert isinstance(flow, FlowPosterior)
    z = flow.mean + torch.exp(flow.log_std) * eps
    total = flow.log_std.sum(-1)
    for step in flow.steps:
        jac = per_example_jacobian(lambda u, step=step: step(u, flow.context)[0], z)
        z, ladj = step(z, flow.context)
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert (sign != 0).all()
        tol = 1e-12 + slogdet_tolerance(jac) + 4 * EPS * ladj.abs().max().item()
        torch.testing.assert_close(ladj, logabsdet, atol=tol, rtol=0)
        total = total + ladj
    _, claimed = full_map(posterior, eps)
    torch.testing.assert_close(claimed, total, atol=1e-12, rtol=1e-12)


def check_log_det(posterior: Posterior, eps: Tensor) -> None:
    """Per step (tight), then the whole map within the tolerance its conditioning allows."""
    check_step_log_dets(posterior, eps)
    _, ladj = full_map(posterior, eps)
    expected, tol = autograd_log_det(posterior, eps)
    torch.testing.assert_close(ladj, expected, atol=1e-12 + tol, rtol=0)


def invert(posterior: FlowPosterior, z: Tensor) -> Tensor:
    """eps = (flow)^{-1}(z), by the steps' numerical inverses; z (N, B, D)."""
    for step in reversed(posterior.steps):
        z = step.inverse(z, posterior.context.expand(*z.shape[:-1], posterior.context.shape[-1]))
    return (z - posterior.mean) * torch.exp(-posterior.log_std)


@pytest.mark.parametrize("name", NAMES)
def test_log_det_is_slogdet_of_the_autograd_jacobian(name: str) -> None:
    posterior = make_head(name)(features(4))
    check_log_det(posterior, posterior.sample_base())  # eps (B, E)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_is_the_change_of_variables_density(name: str) -> None:
    posterior = make_head(name)(features(3))
    torch.manual_seed(7)
    z, log_q = posterior.rsample_and_log_prob((2,))
    torch.manual_seed(7)
    eps = posterior.sample_base((2,))  # the same draws
    for s in range(2):
        zv, _ = full_map(posterior, eps[s])
        log_det, tol = autograd_log_det(posterior, eps[s])
        expected = Normal(0.0, 1.0).log_prob(eps[s]).sum(-1) - log_det
        if isinstance(posterior, AuxiliaryPosterior):
            d = posterior.latent_dim
            expected = expected - posterior.log_reverse(zv[..., :d], zv[..., d:])
        torch.testing.assert_close(z[s], zv[..., : z.shape[-1]])
        torch.testing.assert_close(log_q[s], expected, atol=1e-9 + tol, rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sample_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("batch", [1, 5])
def test_shapes(name: str, sample_shape: tuple[int, ...], batch: int) -> None:
    posterior = make_head(name)(features(batch))
    z, log_q = posterior.rsample_and_log_prob(sample_shape)
    assert z.shape == (*sample_shape, batch, CFG["latent_dim"])
    assert log_q.shape == (*sample_shape, batch)
    assert z.dtype == log_q.dtype == torch.float64
    assert torch.isfinite(z).all() and torch.isfinite(log_q).all()


@pytest.mark.parametrize("name", NAMES)
def test_sample_dims_are_independent_draws(name: str) -> None:
    """Transforming (S, B, E) at once equals transforming each of the S slices on its own."""
    posterior = make_head(name)(features(3))
    eps = posterior.sample_base((4,))
    z, ladj = posterior.transform(eps)
    for s in range(4):
        z_s, ladj_s = posterior.transform(eps[s])
        torch.testing.assert_close(z[s], z_s)
        torch.testing.assert_close(ladj[s], ladj_s)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_of_the_elbo_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(posterior=name, hidden=[6], **CFG)
    model = build_model(cfg, (1, 2, 3), binary=True).double()
    perturb(model.posterior)
    x = torch.bernoulli(torch.full((4, 1, 2, 3), 0.5, dtype=torch.float64))
    (-elbo(model, x, samples=2).mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(name: str) -> None:
    head, fresh = make_head(name, seed=0), make_head(name, seed=1)
    fresh.load_state_dict(head.state_dict())
    x = features(3)
    eps = head(x).sample_base((2,))
    torch.testing.assert_close(fresh(x).transform(eps), head(x).transform(eps))


@pytest.mark.parametrize("name", NAMES)
def test_inverse_recovers_the_base_sample(name: str) -> None:
    posterior = make_head(name)(features(3))
    flow = posterior.joint if isinstance(posterior, AuxiliaryPosterior) else posterior
    if not isinstance(flow, FlowPosterior):
        pytest.skip("not a FlowPosterior: no generic inverse")
    if not all(hasattr(step, "inverse") for step in flow.steps):
        pytest.skip("a step has no inverse")
    eps = flow.sample_base((2,))
    z, _ = flow.transform(eps)
    torch.testing.assert_close(invert(flow, z), eps, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "overrides",
    [dict(latent_dim=1), dict(context_dim=0), dict(flow_layers=0, flow_steps=3)],
    ids=["one-latent", "no-context", "no-hidden-layers"],
)
def test_edge_configurations(name: str, overrides: dict[str, int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nn.Linear(0, n): "zero-element tensors"
        posterior = make_head(name, **overrides)(features(3))
    eps = posterior.sample_base()
    assert torch.isfinite(full_map(posterior, eps)[1]).all()
    check_log_det(posterior, eps)


def test_whole_map_tolerance_covers_one_ulp_of_an_ill_conditioned_jacobian() -> None:
    """Seven coupling steps without hidden layers compose to a Jacobian of condition ~1e11:
    one-ulp changes of its entries (another BLAS kernel's rounding) move slogdet by more than
    a fixed 1e-9, and never by more than :func:`slogdet_tolerance`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        posterior = make_head("realnvp-aux", flow_layers=0, flow_steps=3)(features(3))
    jac = per_example_jacobian(lambda e: full_map(posterior, e)[0], posterior.sample_base())
    tol = slogdet_tolerance(jac)
    gen = torch.Generator().manual_seed(0)
    moves = []
    for _ in range(20):
        ulps = torch.randint(-1, 2, jac.shape, generator=gen).to(jac) * torch.finfo(jac.dtype).eps
        moved = torch.linalg.slogdet(jac * (1 + ulps))[1] - torch.linalg.slogdet(jac)[1]
        moves.append(moved.abs().max().item())
    assert max(moves) > 1e-9  # a fixed tolerance would be flaky across machines
    assert max(moves) < tol


# ----------------------------------------------------------------------------- specific


def test_auxiliary_log_weight_holds_the_reverse_model() -> None:
    """realnvp-aux: log q = log q(z_T, v_T|x) - log r(v_T|x, z_T), with r computed here."""
    head = make_head("realnvp-aux")
    x = features(3)
    posterior = head(x)
    assert posterior.base_dim == CFG["latent_dim"] + CFG["aux_dim"]
    torch.manual_seed(3)
    z, log_q = posterior.rsample_and_log_prob()
    torch.manual_seed(3)
    eps = posterior.sample_base()
    z_t, v_t, _ = posterior.transform_joint(eps)
    torch.testing.assert_close(z, z_t)
    h = head.context(x)  # (B, C)
    mean, log_std = head.reverse(torch.cat([z_t, h], -1)).chunk(2, -1)
    log_r = Normal(mean, log_std.exp()).log_prob(v_t).sum(-1)
    log_det, tol = autograd_log_det(posterior, eps)
    log_q_joint = Normal(0.0, 1.0).log_prob(eps).sum(-1) - log_det
    torch.testing.assert_close(log_q, log_q_joint - log_r, atol=1e-7 + tol, rtol=1e-7)


def test_iaf_density_by_brute_force() -> None:
    """The classic sign bug: log q(z) must be log N(eps) - log|det dz/deps|, not + .

    In D = 2, log q of the IAF posterior at the points it samples equals the density obtained by
    numerically inverting z to eps and taking the autograd Jacobian there, and exp(log q)
    integrates to one over a grid (a flipped log-det would not).
    """
    torch.manual_seed(0)
    head = IAF(FEATURES, latent=2, flow_steps=3, flow_hidden=8, flow_layers=1, context_dim=3)
    head = perturb(head.double(), 0.7)
    posterior = head(0.3 * features(1))
    z, log_q = posterior.rsample_and_log_prob((6,))  # (6, 1, 2)
    eps = invert(posterior, z)
    for s in range(6):
        log_det, tol = autograd_log_det(posterior, eps[s])
        expected = Normal(0.0, 1.0).log_prob(eps[s]).sum(-1) - log_det
        torch.testing.assert_close(log_q[s], expected, atol=1e-8 + tol, rtol=1e-8)

    with torch.no_grad():
        cloud = posterior.rsample_and_log_prob((5000,))[0][:, 0]  # (N, 2)
        low, high = cloud.min(0).values - 1, cloud.max(0).values + 1
        n = 250
        axes = [torch.linspace(low[i].item(), high[i].item(), n, dtype=torch.float64) for i in (0, 1)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 2)
        eps = invert(posterior, grid)
        _, ladj = posterior.transform(eps)
        cell = (high - low).prod() / (n - 1) ** 2
        log_base = Normal(0.0, 1.0).log_prob(eps).sum(-1)
        mass = (torch.exp(log_base - ladj).sum() * cell).item()
        flipped = (torch.exp(log_base + ladj).sum() * cell).item()
    assert abs(mass - 1) < 0.01
    assert abs(flipped - 1) > 0.1  # the check can tell the sign apart


# ----------------------------------------------------------------------------- linear Gaussian


def linear_gaussian_vae(posterior: str) -> nn.Module:
    """Probabilistic PCA, x in R^6, z in R^2, whose exact posterior is strongly correlated.

    The decoder is the same for every posterior (its own generator) and is frozen.
    """
    cfg = ModelConfig(
        encoder="linear", decoder="linear", likelihood="gaussian", latent_dim=2,
        posterior=posterior, context_dim=8, flow_steps=4, flow_hidden=16, flow_layers=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, (1, 1, 6), binary=False)
    gen = torch.Generator().manual_seed(0)
    g, h, b = torch.randn(3, 6, generator=gen)
    with torch.no_grad():
        model.decoder.out.weight.copy_(torch.stack([g, g + 0.3 * h], -1))  # nearly collinear
        model.decoder.out.bias.copy_(b)
        model.likelihood.log_std.fill_(math.log(0.5))
    for p in [*model.decoder.parameters(), *model.likelihood.parameters()]:
        p.requires_grad_(False)
    return model


def elbo_gap(posterior: str, x: Tensor, steps: int = 200) -> tuple[float, float]:
    """Train q only; returns (mean log p(x) - ELBO, the same for the best factorised q)."""
    model = linear_gaussian_vae(posterior)
    torch.manual_seed(1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        (-elbo(model, x, samples=8).mean()).backward()
        optimizer.step()
    with torch.no_grad():
        log_px = exact_log_marginal(model, x)
        gap = (log_px - elbo(model, x, samples=500)).mean().item()
        best_diag_gap = (log_px - best_diag_elbo(model, x)).mean().item()
    return gap, best_diag_gap


def test_a_flow_beats_the_best_factorised_gaussian_on_a_linear_gaussian_model() -> None:
    """ELBO gaps to the exact log p(x) after training q alone: iaf < best diag <= diag."""
    model = linear_gaussian_vae("diag")
    torch.manual_seed(2)
    with torch.no_grad():  # data from the model itself
        x = model.decode_sample(torch.randn(64, 2))
    diag_gap, best_diag_gap = elbo_gap("diag", x)
    assert best_diag_gap > 0.7  # the posterior is strongly correlated
    assert diag_gap > best_diag_gap - 0.05  # no factorised q beats the closed form
    flow_gap, _ = elbo_gap("iaf", x)
    assert flow_gap < 0.5 * best_diag_gap, (flow_gap, best_diag_gap, diag_gap)


def test_a_head_refuses_a_size_it_does_not_take_and_records_list_the_heads_own_options():
    from flowvae.posteriors import POSTERIORS, Planar

    with pytest.raises(TypeError, match="Planar takes flow_steps, context_dim; got flow_hidden"):
        Planar(4, 2, flow_hidden=3)
    assert all(set(r.options) <= set(FlowSize().__dict__) for r in POSTERIORS.values())
    assert POSTERIORS["realnvp-aux"].options[-1] == "aux_dim"
