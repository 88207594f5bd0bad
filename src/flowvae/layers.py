"""Building blocks every network of the flat model can use, chosen by config keys:

- :class:`GaussianLinear` (every diagonal Gaussian a network outputs: posterior heads, the two-layer
  model's q(z1|x, z2) and p(z1|z2)): a linear layer to (mean, log std), with
  ``model.log_var_bounds=[lo, hi]`` the log-variance clamped by hardtanh (Tomczak & Welling's
  ``Hardtanh(-6, 2)``);
- :class:`GatedLinear` (``model.mlp_layer=gated``): h(x) * sigmoid(g(x)), the gated dense layer of
  Dauphin et al. (2017) that the VampPrior and Sylvester-flows code use in place of an activation;
- :func:`he_init_` (``model.init=he``): He et al.'s (2015) N(0, 2 / fan_in) weights;
- :func:`row_blocks`: the parameters of these layers that hold two of the usual form's tensors
  (h and g; mean and log-variance) as blocks of rows, for an optimizer that treats each tensor on
  its own (:class:`~flowvae.optim.AdamNormGrad`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GaussianLinear(nn.Linear):
    """features (..., F) -> (mean, log_std), each (..., D): one linear layer of 2D outputs.

    Without bounds the second half is log std. With ``log_var_bounds=(lo, hi)`` it is a
    log-variance clamped to [lo, hi] (hardtanh: no gradient outside), log std its half; the
    parameters are the same either way (a checkpoint's tensors do not say which).
    """

    def __init__(self, in_features: int, out_features: int, log_var_bounds: Sequence[float] = ()):
        super().__init__(in_features, 2 * out_features)
        bounds = list(log_var_bounds)
        if len(bounds) not in (0, 2) or (bounds and bounds[0] >= bounds[1]):
            raise ValueError(f"log_var_bounds must be [] or [low, high] with low < high, got {bounds}")
        self.log_var_bounds = tuple(float(b) for b in log_var_bounds)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        mean, raw = super().forward(features).chunk(2, dim=-1)
        if not self.log_var_bounds:
            return mean, raw
        return mean, 0.5 * F.hardtanh(raw, *self.log_var_bounds)


class GatedLinear(nn.Module):
    """x (..., I) -> h(x) * sigmoid(g(x)) (..., O), h and g affine, computed as one (I, 2O) matmul."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


def row_blocks(module: nn.Module) -> dict[int, int]:
    """{id(parameter): k} for every parameter of ``module`` that holds k tensors of its layer's
    usual form as k equal blocks along its first dimension: a :class:`GatedLinear`'s h and g, a
    :class:`GaussianLinear`'s mean and log std (or log-variance) rows, weights and biases alike.
    The VampPrior code keeps each as a tensor of its own, and its AdamNormGrad normalises each
    tensor's gradient separately; with these blocks ours does the same (elementwise optimizers,
    Adam and Adamax, are unaffected by how tensors are grouped)."""
    blocked = [m for m in module.modules() if isinstance(m, (GatedLinear, GaussianLinear))]
    return {id(p): 2 for m in blocked for p in m.parameters()}


INITS = ("default", "he")  # model.init


@torch.no_grad()
def he_init_(module: nn.Module) -> None:
    """Every ``nn.Linear`` of ``module`` outside flow steps gets weights from N(0, 2 / fan_in)
    (biases keep torch's default); flow steps (a ``steps`` container) keep their own
    initialisation, which starts them near the identity."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and "steps" not in name.split("."):
            m.weight.normal_(0.0, math.sqrt(2.0 / m.in_features))


__all__ = ["INITS", "GatedLinear", "GaussianLinear", "he_init_", "row_blocks"]
