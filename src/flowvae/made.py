"""MADE and the inverse autoregressive flow steps built on it.

:class:`MADE` (Germain et al. 2015) is the masked network of every autoregressive step here and
of the autoregressive decoder (:mod:`flowvae.nets`); :class:`IAFStep` (Kingma et al. 2016; gated
or mean-only) is a flow step with the :class:`~flowvae.core.ConditionalBijection` signature,
like those of :mod:`flowvae.flows`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flows import init_small

# ----------------------------------------------------------------------------- MADE


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, inputs: Tensor) -> Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation, with a context input.

    Output ``p`` for variable ``i`` depends only on the variables before ``i`` in ``order`` and
    on the context. Degrees: variable ``order[k]`` has degree k+1; hidden unit j has degree
    ``j mod D`` (``1 + j mod (D-1)`` without context), so any hidden width works, not only
    multiples of D; a layer narrower than that spreads its degrees evenly over the same range
    (``j * D // H``), so that late variables still see late inputs. Degree-0 units see the
    context only, which lets even the first variable's outputs depend on it; the context
    connects to every unit of the first layer.

    Arguments:
        features: D, the number of autoregressive variables.
        context_features: C, the size of the context (0 for none).
        hidden_features: width of every hidden layer.
        num_layers: number of hidden layers (0: one masked linear map).
        num_outputs: P, outputs per variable (IAF: 2 for m and s; mean-only IAF: 1).
        order: a permutation of ``range(D)``, the autoregressive order; default ``0..D-1``.

    Returns:
        (forward) a tensor (..., P, D): ``out[..., p, i]`` is output p of variable i.

    References:
        Germain, Gregor, Murray & Larochelle, MADE, arXiv 1502.03509.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int,
        num_layers: int,
        num_outputs: int,
        order: Tensor | None = None,
    ):
        super().__init__()
        self.features, self.num_outputs = features, num_outputs
        order = torch.arange(features) if order is None else torch.as_tensor(order)
        if sorted(order.tolist()) != list(range(features)):
            raise ValueError(f"order must be a permutation of range({features}), got {order}")
        self.register_buffer("order", order)
        degrees_in = torch.empty(features, dtype=torch.long)
        degrees_in[order] = torch.arange(1, features + 1)
        low = 0 if context_features else 1
        span = max(features - low, 1)
        units = torch.arange(hidden_features)
        # cyclic when every degree fits; else spread evenly, so late variables still see late inputs
        degrees_hidden = low + (units % span if hidden_features >= span else units * span // hidden_features)
        self.hidden = nn.ModuleList()
        degrees = degrees_in
        for _ in range(num_layers):
            self.hidden.append(MaskedLinear(degrees_hidden[:, None] >= degrees[None, :]))
            degrees = degrees_hidden
        degrees_out = degrees_in.repeat(num_outputs)  # output p * D + i belongs to variable i
        self.output = MaskedLinear(degrees_out[:, None] > degrees[None, :])
        first_width = hidden_features if num_layers else features * num_outputs
        self.context = nn.Linear(context_features, first_width) if context_features else None

    def init_output_small(self) -> None:
        """Start the outputs near zero (flows built on a MADE start near their identity)."""
        init_small(self.output)
        if self.context is not None and not self.hidden:  # the context feeds the outputs
            init_small(self.context)

    def last_hidden(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The input of the masked output layer ``output`` (needs a hidden layer): (..., H).

        ``inputs`` and ``context`` broadcast against each other: (B, D) inputs with (S, B, C)
        contexts give (S, B, H), the inputs' first layer computed once.
        """
        h = self.hidden[0](inputs)
        if self.context is not None:
            h = h + self.context(context)
        for layer in self.hidden[1:]:
            h = layer(F.elu(h))
        return F.elu(h)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        if self.hidden:
            h = self.output(self.last_hidden(inputs, context))
        else:
            h = self.output(inputs)  # (..., P*D)
            if self.context is not None:
                h = h + self.context(context)
        return h.unflatten(-1, (self.num_outputs, self.features))  # (..., P, D)


def alternating_order(features: int, step: int) -> Tensor:
    """The variable order of IAF step ``step``: natural, reversed, natural, ..."""
    order = torch.arange(features)
    return order.flip(0) if step % 2 else order


# ----------------------------------------------------------------------------- IAF


class IAFStep(nn.Module):
    """Inverse autoregressive flow step with the numerically stable gated update.

    ``m, s = MADE(z, h)``; ``z_new = sigmoid(s) * z + (1 - sigmoid(s)) * m``; since m_i and s_i
    depend on z only through the variables before i, the Jacobian is triangular and
    log|det| = sum_i log sigmoid(s_i). The bias of s starts at ``gate_bias`` > 0 and the MADE's
    output weights start small, so every step starts close to the identity. ``mean_only``: the
    volume-preserving step ``z_new = z + m(z, h)`` (log|det| = 0; no s, no gate).

    Arguments:
        features: D.
        context_features: C, the size of h.
        order: the autoregressive order (alternate it between steps to reverse the variables).
        gate_bias: initial bias of s (sigmoid(2) = 0.88).
        mean_only: the shift-only update.
        net: the MADE's size, passed to :class:`MADE` (``hidden_features``, ``num_layers``).

    Returns:
        (forward) ``(z_new, ladj)``, shapes (..., D) and (...).

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, Improving variational inference
        with inverse autoregressive flow, arXiv 1606.04934 (Eqs. 13-14).
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        order: Tensor | None = None,
        gate_bias: float = 2.0,
        mean_only: bool = False,
        **net: int,
    ):
        super().__init__()
        self.mean_only = mean_only
        outputs = 1 if mean_only else 2  # m, or m and s
        self.made = MADE(features, context_features, num_outputs=outputs, order=order, **net)
        self.made.init_output_small()
        if not mean_only:
            with torch.no_grad():
                self.made.output.bias[features:] = gate_bias  # outputs [D:2D] are s

    def _update(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor | None]:
        """(m, s), each (..., D); s is None for a mean-only step."""
        out = self.made(z, context)
        return (out.squeeze(-2), None) if self.mean_only else out.unbind(-2)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self._update(z, context)
        if s is None:
            z_new = z + m
            return z_new, z_new.new_zeros(z_new.shape[:-1])
        gate = torch.sigmoid(s)
        return gate * z + (1 - gate) * m, F.logsigmoid(s).sum(-1)

    @torch.no_grad()
    def inverse(self, z_new: Tensor, context: Tensor) -> Tensor:
        """D sequential passes: after pass k the first k variables (in order) are exact."""
        z = z_new.clone()
        for _ in range(z.shape[-1]):
            m, s = self._update(z, context)
            if s is None:
                z = z_new - m
            else:
                gate = torch.sigmoid(s)
                z = (z_new - (1 - gate) * m) / gate
        return z
