"""Tests of flowvae.flows: MADE's masks and every flow step's log-det, inverse, shapes, gradients.

Numerical checks run in float64 with perturbed (non-initial) parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from flowvae.flows import (
    AffineCoupling,
    HouseholderSylvesterStep,
    OrthogonalSylvesterStep,
    PlanarStep,
    TriangularSylvesterStep,
    alternating_mask,
    solve_tanh_equation,
)
from flowvae.made import MADE, IAFStep

D, C = 4, 3  # latent and context sizes of the step tests; hidden width 7 is not a multiple of D


def perturb(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Move every parameter away from its initial value (gates no longer ~1, outputs not ~0)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


STEPS: dict[str, Callable[[], nn.Module]] = {
    "iaf": lambda: IAFStep(D, C, hidden_features=7, num_layers=2),
    "iaf-reversed-no-hidden": lambda: IAFStep(D, C, torch.arange(D).flip(0), hidden_features=7, num_layers=0),
    "iaf-mean": lambda: IAFStep(
        D, C, torch.tensor([2, 0, 3, 1]), mean_only=True, hidden_features=7, num_layers=1
    ),
    "planar": lambda: PlanarStep(D, C),
    "sylvester-orthogonal": lambda: OrthogonalSylvesterStep(D, C, 2),
    "sylvester-orthogonal-square": lambda: OrthogonalSylvesterStep(D, C, D),
    "sylvester-householder": lambda: HouseholderSylvesterStep(D, C, 3),
    "sylvester-triangular": lambda: TriangularSylvesterStep(D, C),
    "sylvester-triangular-reversed": lambda: TriangularSylvesterStep(D, C, reverse=True),
    "coupling-even": lambda: AffineCoupling(D, C, alternating_mask(D, 0), hidden_features=7, num_layers=2),
    "coupling-odd": lambda: AffineCoupling(D, C, alternating_mask(D, 1), hidden_features=7, num_layers=1),
}


@pytest.fixture(params=sorted(STEPS))
def step_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def step(step_name: str) -> nn.Module:
    torch.manual_seed(0)
    return perturb(STEPS[step_name]().double())


def randn(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def test_log_det_is_slogdet_of_the_autograd_jacobian(step: nn.Module) -> None:
    z, context = randn(5, D), randn(5, C)
    _, ladj = step(z, context)
    for b in range(5):
        jac = torch.autograd.functional.jacobian(lambda zb, b=b: step(zb, context[b])[0], z[b])
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign == 1  # every step here preserves orientation
        torch.testing.assert_close(ladj[b], logabsdet, atol=1e-10, rtol=1e-10)


def test_inverse_of_forward_is_identity(step: nn.Module) -> None:
    z, context = 2 * randn(2, 3, D), randn(2, 3, C)
    z_new, _ = step(z, context)
    torch.testing.assert_close(step.inverse(z_new, context), z, atol=1e-8, rtol=0)


def test_shapes_and_broadcast_context(step: nn.Module) -> None:
    z, context = randn(2, 3, D), randn(3, C)
    expanded = context.expand(2, 3, C)  # what FlowPosterior passes: stride 0 over samples
    z_new, ladj = step(z, expanded)
    assert z_new.shape == (2, 3, D) and ladj.shape == (2, 3)
    for ctx in (context, expanded.contiguous()):  # broadcast and materialised contexts agree
        z_other, ladj_other = step(z, ctx)
        torch.testing.assert_close(z_other, z_new)
        torch.testing.assert_close(ladj_other, ladj)
    z_single, ladj_single = step(z[0, 0], context[0])  # no leading dims at all
    torch.testing.assert_close(z_single, z_new[0, 0])
    torch.testing.assert_close(ladj_single, ladj[0, 0])


def test_gradients_reach_every_parameter(step: nn.Module) -> None:
    z_new, ladj = step(randn(6, D), randn(6, C))
    (z_new.sin().sum() + ladj.sum()).backward()
    for name, p in step.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_and_load_round_trip(step: nn.Module, step_name: str) -> None:
    torch.manual_seed(1)
    copy = STEPS[step_name]().double()
    copy.load_state_dict(step.state_dict())
    z, context = randn(3, D), randn(3, C)
    torch.testing.assert_close(copy(z, context), step(z, context))


# ----------------------------------------------------------------------------- MADE


@settings(max_examples=30, deadline=None)
@given(
    features=st.integers(1, 6),
    hidden=st.integers(1, 13),
    layers=st.integers(0, 3),
    context=st.sampled_from([0, 2]),
    seed=st.integers(0, 2**16),
)
def test_made_is_autoregressive_in_its_order(
    features: int, hidden: int, layers: int, context: int, seed: int
) -> None:
    """d out[i] / d in[j] = 0 unless j comes before i in the order; the context reaches all."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(features, generator=gen)
    torch.manual_seed(seed)
    made = MADE(features, context, hidden, layers, num_outputs=2, order=order).double()
    rank = torch.empty(features, dtype=torch.long)
    rank[order] = torch.arange(features)  # position of each variable in the order
    z, h = randn(features), randn(context)
    jac = torch.autograd.functional.jacobian(lambda x: made(x, h), z)  # (P, D, D)
    allowed = rank[None, :] < rank[:, None]  # [i, j]: j strictly before i
    assert (jac[:, ~allowed] == 0).all()
    full_width = hidden >= features  # every degree 0..D-1 present in every hidden layer
    if full_width or layers == 0:
        assert (jac[:, allowed] != 0).all()  # and nothing allowed is cut off
    if context:
        jac_h = torch.autograd.functional.jacobian(lambda c: made(z, c), h)  # (P, D, C)
        assert (jac_h.abs().sum(-1) > 0).all()  # the context reaches every output


def test_made_hidden_width_need_not_be_a_multiple_of_d() -> None:
    made = MADE(4, 3, 7, 2, num_outputs=2)
    assert made(randn(5, 4).float(), randn(5, 3).float()).shape == (5, 2, 4)
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 0, 5, 1, 1, order=torch.tensor([0, 0, 1]))


def test_made_narrower_than_d_spreads_its_degrees_over_the_whole_order() -> None:
    """With fewer hidden units than variables, late variables still see late inputs (cyclic
    degrees j mod D would stop at H - 1: the last output would see only the first H inputs)."""
    torch.manual_seed(0)
    made = MADE(20, 2, 5, 2, num_outputs=1).double()
    jac = torch.autograd.functional.jacobian(lambda x: made(x, randn(2))[0], randn(20))  # (D, D)
    assert jac[-1, 12:].abs().sum() > 0  # the last output sees inputs from the order's second half
    assert (jac.triu() == 0).all()  # and still nothing at or after itself


# ----------------------------------------------------------------------------- pieces


def test_iaf_starts_near_identity_with_gates_open() -> None:
    torch.manual_seed(0)
    step = IAFStep(D, C, gate_bias=2.0, hidden_features=16, num_layers=1)
    z = torch.randn(100, D)
    z_new, ladj = step(z, torch.randn(100, C))
    gate = torch.sigmoid(torch.tensor(2.0))
    assert (z_new - gate * z).abs().max() < 0.1  # m ~ 0 at init
    expected = torch.full((100,), D * torch.log(gate).item())
    torch.testing.assert_close(ladj, expected, atol=0.05, rtol=0)


def test_solve_tanh_equation() -> None:
    scale, slope, shift = randn(50), randn(50), randn(50)
    slope = torch.where(scale * slope < -1, -slope, slope)  # keep 1 + scale*slope*tanh' > 0
    y = 3 * randn(50)
    target = y + scale * torch.tanh(slope * y + shift)
    torch.testing.assert_close(solve_tanh_equation(target, scale, slope, shift), y)


def test_orthogonal_sylvester_basis_is_orthonormal() -> None:
    torch.manual_seed(0)
    step = perturb(OrthogonalSylvesterStep(6, C, 4).double())
    q = step._basis(randn(10, C))  # (10, 6, 4)
    torch.testing.assert_close(q.mT @ q, torch.eye(4, dtype=torch.float64).expand(10, 4, 4))
    step.fixed_iterations = 40  # the vmap-safe variant (local optimisation) converges as well
    q = torch.vmap(step._basis)(randn(10, C))
    torch.testing.assert_close(q.mT @ q, torch.eye(4, dtype=torch.float64).expand(10, 4, 4))


def test_alternating_mask() -> None:
    assert alternating_mask(4, 0).tolist() == [False, True, False, True]
    assert alternating_mask(4, 1).tolist() == [True, False, True, False]
    assert alternating_mask(1, 0).tolist() == [True] and alternating_mask(1, 1).tolist() == [True]


def test_sylvester_rejects_too_many_vectors() -> None:
    with pytest.raises(ValueError, match="M <= D"):
        OrthogonalSylvesterStep(3, C, 4)
