"""Flow steps conditioned on the encoder's context h: planar, Sylvester, affine coupling, and
the auxiliary-variable posterior.

Every step is a small bijection module with the signature of
:class:`~flowvae.core.ConditionalBijection` (nflows style)::

    z_new, ladj = step(z, context)      # z (..., D), context (..., C), ladj = log|det dz_new/dz|

and, where the math gives one, ``step.inverse(z_new, context) -> z`` (exact for couplings,
sequential for autoregressive steps, a monotone 1-D root search for planar and Sylvester steps).
Inverses are for tests and analysis: they run without gradients. The context's leading dims
need only broadcast against z's. The autoregressive steps (IAF, on MADE) are in
:mod:`flowvae.made`; the posterior heads that assemble steps, and their registry, in
:mod:`flowvae.posteriors`. Every flow posterior shares one composition loop,
:class:`~flowvae.core.FlowPosterior`; ``realnvp-aux`` runs it over (z, v) and adds a reverse
model, see :class:`AuxiliaryPosterior`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core import FlowPosterior, Posterior
from .layers import GaussianLinear
from .numerics import log_normal

# ----------------------------------------------------------------------------- helpers


def init_small(layer: nn.Linear, std: float = 1e-2) -> None:
    """Output layers start small, so that a flow starts near its identity (or gated) map."""
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)


def _mlp(in_features: int, out_features: int, *, hidden_features: int, num_layers: int) -> nn.Sequential:
    """ELU MLP with ``num_layers`` hidden layers of ``hidden_features`` units and a
    small-initialised output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_features), nn.ELU()]
        width = hidden_features
    out = nn.Linear(width, out_features)
    init_small(out)
    return nn.Sequential(*layers, out)


def _amortizer(context_features: int, out_features: int) -> nn.Linear:
    """The linear map h -> a step's parameters.

    Without a context (C = 0) it is a bias alone, which PyTorch's default init would set to zero
    (planar's w and Householder vectors would then be 0/0): start it random instead.
    """
    layer = nn.Linear(context_features, out_features)
    if context_features == 0:
        nn.init.normal_(layer.bias, std=0.1)
    return layer


def _matvec(matrix: Tensor, vector: Tensor) -> Tensor:
    """Batched matrix-vector product with broadcasting: (..., N, M) x (..., M) -> (..., N)."""
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def concat_context(inputs: Tensor, context: Tensor) -> Tensor:
    """cat([inputs, context], -1) after broadcasting their leading dims."""
    lead = torch.broadcast_shapes(inputs.shape[:-1], context.shape[:-1])
    return torch.cat(
        [inputs.expand(*lead, inputs.shape[-1]), context.expand(*lead, context.shape[-1])], dim=-1
    )


@torch.no_grad()
def solve_tanh_equation(
    target: Tensor, scale: Tensor, slope: Tensor, shift: Tensor, iterations: int = 110
) -> Tensor:
    """Solve ``y + scale * tanh(slope * y + shift) = target`` for y, elementwise, by bisection.

    The left side is increasing in y whenever ``1 + scale * slope * tanh' > 0``, which the planar
    and Sylvester constraints guarantee; ``|tanh| <= 1`` brackets the root in
    ``[target - |scale|, target + |scale|]``. Runs in float64; 110 halvings reach its precision.

    Returns:
        y with the broadcast shape of the arguments, in ``target``'s dtype.
    """
    dtype = target.dtype
    target, scale, slope, shift = (t.double() for t in (target, scale, slope, shift))
    low, high = target - scale.abs(), target + scale.abs()
    for _ in range(iterations):
        mid = (low + high) / 2
        above = mid + scale * torch.tanh(slope * mid + shift) > target
        high = torch.where(above, mid, high)
        low = torch.where(above, low, mid)
    return ((low + high) / 2).to(dtype)


# ----------------------------------------------------------------------------- planar


class PlanarStep(nn.Module):
    """Amortized planar flow step: ``z_new = z + u_hat * tanh(w.z + b)``, (u, w, b) from h.

    u is replaced by ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` with ``m(a) = -1 + softplus(a)``,
    so ``w.u_hat > -1`` and the map is invertible. log|det| = log(1 + w.u_hat * tanh'(w.z + b)).

    Arguments:
        features: D.
        context_features: C; (u, w, b) are a linear function of h.

    Returns:
        (forward) ``(z_new, ladj)``, shapes (..., D) and (...).

    References:
        Rezende & Mohamed, Variational inference with normalizing flows, arXiv 1505.05770
        (appendix A.1 for the constraint on u).
    """

    def __init__(self, features: int, context_features: int):
        super().__init__()
        self.features = features
        self.params = _amortizer(context_features, 2 * features + 1)

    def _amortized(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """u_hat (..., D), w (..., D), b (..., 1) and w.u_hat = m(w.u) (..., 1)."""
        u, w, b = self.params(context).split([self.features, self.features, 1], -1)
        wu = (w * u).sum(-1, keepdim=True)
        w_u_hat = F.softplus(wu) - 1  # > -1
        u_hat = u + (w_u_hat - wu) * w / (w * w).sum(-1, keepdim=True)
        return u_hat, w, b, w_u_hat

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        u_hat, w, b, w_u_hat = self._amortized(context)
        activation = torch.tanh((w * z).sum(-1, keepdim=True) + b)  # (..., 1)
        z_new = z + u_hat * activation
        ladj = torch.log1p(w_u_hat * (1 - activation**2)).squeeze(-1)
        return z_new, ladj.expand(z_new.shape[:-1])

    @torch.no_grad()
    def inverse(self, z_new: Tensor, context: Tensor) -> Tensor:
        """Solve ``a + (w.u_hat) tanh(a + b) = w.z_new`` for ``a = w.z``, then subtract."""
        u_hat, w, b, w_u_hat = self._amortized(context)
        a = solve_tanh_equation((w * z_new).sum(-1, keepdim=True), w_u_hat, torch.ones_like(b), b)
        return z_new - u_hat * torch.tanh(a + b)


# ----------------------------------------------------------------------------- Sylvester


class SylvesterStep(nn.Module):
    """Amortized Sylvester flow step: ``z_new = z + Q R tanh(R~ Q^T z + b)``.

    Q (D, M) has orthonormal columns; R and R~ (M, M) are upper triangular with diagonals
    ``tanh(.)``, so ``|r_ii r~_ii| < 1`` and, as ``0 < tanh' <= 1``, every
    ``1 + r_ii r~_ii tanh'`` is positive: the map is invertible (the paper's condition
    r_ii r~_ii > -1/||h'||_inf). log|det| = sum_i log(1 + r_ii r~_ii tanh'((R~ Q^T z + b)_i)).
    Subclasses choose how Q is represented and produced from h by implementing :meth:`_basis`,
    :meth:`_project` (Q^T z) and :meth:`_lift` (Q y).

    Arguments:
        features: D.
        context_features: C; all parameters are linear functions of h.
        num_vectors: M, the columns of Q (M <= D).

    Returns:
        (forward) ``(z_new, ladj)``, shapes (..., D) and (...).

    References:
        van den Berg, Hasenclever, Tomczak & Welling, Sylvester normalizing flows for
        variational inference, arXiv 1803.05649.
    """

    def __init__(self, features: int, context_features: int, num_vectors: int):
        super().__init__()
        if not 1 <= num_vectors <= features:
            raise ValueError(f"Sylvester flows need 1 <= M <= D, got M={num_vectors}, D={features}")
        self.features, self.num_vectors = features, num_vectors
        m = num_vectors
        rows, cols = torch.triu_indices(m, m, 1)
        self.register_buffer("upper_index", rows * m + cols)  # (M(M-1)/2,) in the flat matrix
        n_upper = len(self.upper_index)
        # per step: strict upper parts of R and R~, their diagonals before tanh, and b
        self.params = _amortizer(context_features, 2 * n_upper + 3 * m)

    def _basis(self, context: Tensor) -> Tensor | None:
        raise NotImplementedError

    def _project(self, basis: Tensor | None, z: Tensor) -> Tensor:
        raise NotImplementedError

    def _lift(self, basis: Tensor | None, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _amortized(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        m, n_upper = self.num_vectors, len(self.upper_index)
        upper, upper_tilde, diag, diag_tilde, b = self.params(context).split([n_upper, n_upper, m, m, m], -1)
        return (
            self._triangular(upper, diag),  # R (..., M, M)
            self._triangular(upper_tilde, diag_tilde),  # R~ (..., M, M)
            b,  # (..., M)
            self._basis(context),
        )

    def _triangular(self, upper: Tensor, diag: Tensor) -> Tensor:
        """Upper triangular (..., M, M) with strict upper part ``upper`` and diagonal tanh(diag)."""
        m = self.num_vectors
        matrix = torch.diag_embed(torch.tanh(diag)).flatten(-2)  # (..., M*M)
        return matrix.index_add(-1, self.upper_index, upper).unflatten(-1, (m, m))

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        r, r_tilde, b, basis = self._amortized(context)
        pre = _matvec(r_tilde, self._project(basis, z)) + b  # (..., M)
        activation = torch.tanh(pre)
        z_new = z + self._lift(basis, _matvec(r, activation))
        diag = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
        ladj = torch.log1p(diag * (1 - activation**2)).sum(-1)
        return z_new, ladj.expand(z_new.shape[:-1])

    @torch.no_grad()
    def inverse(self, z_new: Tensor, context: Tensor) -> Tensor:
        """Exact up to bisection precision.

        With y = Q^T z, Q^T z_new = y + R tanh(R~ y + b) is upper triangular in y, so y is found
        by back-substitution, one monotone 1-D equation per component (M to 1); the part of z
        outside span(Q) is unchanged by the step.
        """
        r, r_tilde, b, basis = self._amortized(context)
        target = self._project(basis, z_new)  # (..., M)
        lead = torch.broadcast_shapes(target.shape[:-1], b.shape[:-1])
        target = target.expand(*lead, self.num_vectors)
        y = torch.zeros_like(target)
        activation = torch.zeros_like(target)  # tanh(R~ y + b), filled from the last component
        for i in reversed(range(self.num_vectors)):
            known = (r[..., i, i + 1 :] * activation[..., i + 1 :]).sum(-1)
            shift = (r_tilde[..., i, i + 1 :] * y[..., i + 1 :]).sum(-1) + b[..., i]
            y[..., i] = solve_tanh_equation(target[..., i] - known, r[..., i, i], r_tilde[..., i, i], shift)
            activation[..., i] = torch.tanh(r_tilde[..., i, i] * y[..., i] + shift)
        return z_new - self._lift(basis, _matvec(r, activation))


class OrthogonalSylvesterStep(SylvesterStep):
    """Sylvester step with an amortized Q (D, M) made orthonormal by iterative orthogonalisation.

    The raw matrix from h is divided by its Frobenius norm (singular values in (0, 1]) and
    iterated with Björck's ``Q <- Q (3/2 I - 1/2 Q^T Q)``, which converges for singular values
    in (0, sqrt 3), until ``max |Q^T Q - I|`` falls below a dtype-dependent tolerance (at most
    ``max_iterations`` times). Arguments as :class:`SylvesterStep`; M = ``num_ortho_vecs``.

    References:
        van den Berg et al., arXiv 1803.05649 (O-SNF); Björck & Bowie, An iterative algorithm
        for computing the best estimate of an orthogonal matrix, SIAM J. Numer. Anal. 1971.
    """

    max_iterations = 100
    # None: iterate until converged. A fixed count runs without data-dependent control flow,
    # which torch.vmap (per-example local optimisation) requires.
    fixed_iterations: int | None = None

    def __init__(self, features: int, context_features: int, num_vectors: int):
        super().__init__(features, context_features, num_vectors)
        self.q = _amortizer(context_features, features * num_vectors)

    def _basis(self, context: Tensor) -> Tensor:
        q = self.q(context).unflatten(-1, (self.features, self.num_vectors))  # (..., D, M)
        q = q / torch.linalg.matrix_norm(q, keepdim=True)
        eye = torch.eye(self.num_vectors, dtype=q.dtype, device=q.device)
        eps = torch.finfo(q.dtype).eps  # stop near rounding level: ~1e-12 (f64), ~1e-5 (f32)
        tolerance = max(eps**0.75, 20 * self.num_vectors * eps)
        for _ in range(self.fixed_iterations or self.max_iterations):
            gram = q.mT @ q  # (..., M, M)
            if self.fixed_iterations is None and (gram - eye).abs().max() < tolerance:
                break
            q = q @ (1.5 * eye - 0.5 * gram)
        return q

    def _project(self, basis: Tensor | None, z: Tensor) -> Tensor:
        return _matvec(basis.mT, z)

    def _lift(self, basis: Tensor | None, y: Tensor) -> Tensor:
        return _matvec(basis, y)


class HouseholderSylvesterStep(SylvesterStep):
    """Sylvester step with Q = H_1 ... H_K, a product of amortized Householder reflections.

    ``H_k = I - 2 v_k v_k^T / |v_k|^2``; Q is applied reflection by reflection, never formed.
    M = D. Arguments as :class:`SylvesterStep`, plus ``num_reflections`` (K).

    References:
        van den Berg et al., arXiv 1803.05649 (H-SNF); Tomczak & Welling, Improving variational
        auto-encoders using Householder flow, arXiv 1611.09630.
    """

    def __init__(self, features: int, context_features: int, num_reflections: int):
        super().__init__(features, context_features, features)
        self.num_reflections = num_reflections
        self.vectors = _amortizer(context_features, num_reflections * features)

    def _basis(self, context: Tensor) -> Tensor:
        v = self.vectors(context).unflatten(-1, (self.num_reflections, self.features))
        return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)  # (..., K, D) unit vectors

    @staticmethod
    def _reflect(v: Tensor, z: Tensor) -> Tensor:
        return z - 2 * (v * z).sum(-1, keepdim=True) * v

    def _project(self, basis: Tensor | None, z: Tensor) -> Tensor:
        for k in range(self.num_reflections):  # Q^T z = H_K ... H_1 z
            z = self._reflect(basis[..., k, :], z)
        return z

    def _lift(self, basis: Tensor | None, y: Tensor) -> Tensor:
        for k in reversed(range(self.num_reflections)):  # Q y = H_1 ... H_K y
            y = self._reflect(basis[..., k, :], y)
        return y


class TriangularSylvesterStep(SylvesterStep):
    """Sylvester step with Q the identity or the reversal permutation (``reverse``), M = D.

    Alternate ``reverse`` between steps so that no variable is always last. Arguments as
    :class:`SylvesterStep`.

    References:
        van den Berg et al., arXiv 1803.05649 (T-SNF).
    """

    def __init__(self, features: int, context_features: int, reverse: bool = False):
        super().__init__(features, context_features, features)
        self.reverse = reverse

    def _basis(self, context: Tensor) -> None:
        return None

    def _project(self, basis: Tensor | None, z: Tensor) -> Tensor:
        return z.flip(-1) if self.reverse else z

    def _lift(self, basis: Tensor | None, y: Tensor) -> Tensor:
        return y.flip(-1) if self.reverse else y


# ----------------------------------------------------------------------------- coupling


class AffineCoupling(nn.Module):
    """Affine coupling layer: the variables in ``update`` are scaled and shifted by an MLP of the
    other variables and the context.

    ``z_new[u] = z[u] * exp(s) + t`` with ``(t, raw) = MLP(z[~u], h)`` and the soft clamp
    ``s = bound * tanh(raw / bound)``; log|det| = sum s; the inverse is exact.

    Arguments:
        features: D.
        context_features: C.
        update: a boolean mask (D,), the variables this layer changes.
        scale_bound: bound on |s| (soft clamp, for stability).
        net: the MLP's size (``hidden_features``, ``num_layers``: width and hidden layers).

    Returns:
        (forward) ``(z_new, ladj)``, shapes (..., D) and (...).

    References:
        Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, arXiv 1605.08803.
    """

    def __init__(
        self, features: int, context_features: int, update: Tensor, scale_bound: float = 3.0, **net: int
    ):
        super().__init__()
        update = torch.as_tensor(update, dtype=torch.bool)
        self.register_buffer("update_index", torch.nonzero(update).flatten())
        self.register_buffer("condition_index", torch.nonzero(~update).flatten())
        self.scale_bound = scale_bound
        n_update = len(self.update_index)
        self.net = _mlp(features - n_update + context_features, 2 * n_update, **net)

    def _shift_and_log_scale(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        inputs = concat_context(z.index_select(-1, self.condition_index), context)
        shift, raw = self.net(inputs).chunk(2, dim=-1)  # (..., |u|) each
        return shift, self.scale_bound * torch.tanh(raw / self.scale_bound)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(z, context)
        updated = z.index_select(-1, self.update_index) * torch.exp(log_scale) + shift
        z_new = z.expand(*updated.shape[:-1], z.shape[-1])  # leading dims of (z, context)
        return z_new.index_copy(-1, self.update_index, updated), log_scale.sum(-1)

    @torch.no_grad()
    def inverse(self, z_new: Tensor, context: Tensor) -> Tensor:
        shift, log_scale = self._shift_and_log_scale(z_new, context)  # same conditioning vars
        original = (z_new.index_select(-1, self.update_index) - shift) * torch.exp(-log_scale)
        z = z_new.expand(*original.shape[:-1], z_new.shape[-1])
        return z.index_copy(-1, self.update_index, original)


def alternating_mask(features: int, step: int) -> Tensor:
    """Coupling mask of step ``step``: odd positions on even steps, even positions on odd ones.

    With D = 1 every step updates the single variable (conditioned on the context only).
    """
    mask = torch.arange(features) % 2 == (1 - step % 2)
    return mask if mask.any() else ~mask


def fix_iterations(module: nn.Module, iterations: int = 40) -> None:
    """Give every iterative step in ``module`` a fixed iteration count instead of a convergence
    test, which ``torch.vmap`` (per-example local optimisation) cannot run."""
    for m in module.modules():
        if isinstance(m, OrthogonalSylvesterStep):
            m.fixed_iterations = iterations


# ----------------------------------------------------------------------------- auxiliary


class AuxiliaryPosterior(Posterior):
    """q(z|x) with an auxiliary variable v (``realnvp-aux``), as a map of a standard normal.

    The base is eps = (eps_z, eps_v) of size D + A. A :class:`~flowvae.core.FlowPosterior`
    over (z, v) draws z0 = mean + std * eps_z, then v0 ~ q(v0|x, z0) (its first step: an affine
    map of eps_v by a net of (h, z0)), then moves (z0, v0) to (z_T, v_T) by coupling steps. A
    learned reverse model r(v_T|x, z_T) (a diagonal Gaussian from a net of (h, z_T)) closes the
    bound. :meth:`transform` returns

        z_T,   ladj = log|det d(z_T, v_T)/d eps| + log r(v_T|x, z_T),

    so that the generic ``log q = log N(eps) - ladj`` is log q(z_T, v_T|x) - log r(v_T|x, z_T)
    and ``log p(x, z_T) - log q`` is exactly the auxiliary bound's log-weight

        log p(x, z_T) + log r(v_T|x, z_T) - log q(z_T, v_T|x).

    ELBO, IWAE and AIS from q's base (HMC in eps-space) use it unchanged; the importance weights
    p(x, z) r(v|x, z) / q(z, v|x) still have expectation p(x), so IWAE stays a bound that
    tightens with K.

    Arguments:
        joint: the flow over (z, v), base dim D + A.
        latent_dim: D; the first D coordinates of the joint are z.
        reverse: a module mapping ``cat(z_T, h)`` (..., D + C) to ``(mean, log_std)`` of v_T
            as one tensor (..., 2A).
        context: h (B, C).

    References:
        Cremer, Li & Duvenaud, Inference suboptimality in variational autoencoders,
        arXiv 1801.03558; Ranganath, Tran & Blei, Hierarchical variational models,
        arXiv 1511.02386; Maaløe, Sønderby, Sønderby & Winther, Auxiliary deep generative
        models, arXiv 1602.05473.
    """

    def __init__(self, joint: FlowPosterior, latent_dim: int, reverse: nn.Module, context: Tensor):
        super().__init__(joint.base_dim, joint.batch_size, joint.mean)
        self.joint, self.latent_dim = joint, latent_dim
        self.reverse, self.context = reverse, context

    def transform_joint(self, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(z_T, v_T, log|det d(z_T, v_T)/d eps|)``: (*S, B, D), (*S, B, A), (*S, B)."""
        zv, ladj = self.joint.transform(eps)
        z, v = zv.split([self.latent_dim, zv.shape[-1] - self.latent_dim], dim=-1)
        return z, v, ladj

    def log_reverse(self, z: Tensor, v: Tensor) -> Tensor:
        """log r(v|x, z): (*S, B)."""
        mean, log_std = self.reverse(concat_context(z, self.context)).chunk(2, dim=-1)
        return log_normal(v, mean, log_std).sum(-1)

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        z, v, ladj = self.transform_joint(eps)
        return z, ladj + self.log_reverse(z, v)


class AuxiliaryHead(nn.Module):
    """Maps encoder features (B, F) to an :class:`AuxiliaryPosterior`.

    Each of the ``flow_steps`` steps is two affine couplings: z from (v, h), then v from (z, h).

    Arguments:
        feature_dim: F.
        latent_dim: D.
        aux_dim: A, the size of v.
        context_dim: C, the size of h.
        flow_hidden, flow_layers: width and hidden layers of every net (q(v0|.), couplings, r).
        flow_steps: coupling steps T.
        log_var_bounds: [] or [low, high]: z0's log-variance clamped.

    References:
        Cremer, Li & Duvenaud, arXiv 1801.03558 (Sec. 3.2, auxiliary flow).
    """

    def __init__(
        self,
        feature_dim: int,
        latent_dim: int,
        aux_dim: int,
        context_dim: int,
        flow_hidden: int,
        flow_layers: int,
        flow_steps: int,
        log_var_bounds: Sequence[float] = (),
    ):
        super().__init__()
        self.latent_dim, self.aux_dim = latent_dim, aux_dim
        self.gaussian = GaussianLinear(feature_dim, latent_dim, log_var_bounds)
        self.context = nn.Linear(feature_dim, context_dim)
        joint = latent_dim + aux_dim
        is_v = torch.arange(joint) >= latent_dim

        net = dict(hidden_features=flow_hidden, num_layers=flow_layers)

        def coupling(update: Tensor) -> AffineCoupling:
            return AffineCoupling(joint, context_dim, update, **net)

        steps = [coupling(is_v)]  # v0 = mu(h, z0) + sigma(h, z0) * eps_v: q(v0|x, z0)
        for _ in range(flow_steps):
            steps += [coupling(~is_v), coupling(is_v)]
        self.steps = nn.ModuleList(steps)
        self.reverse = _mlp(latent_dim + context_dim, 2 * aux_dim, **net)

    def base_gaussian(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of z0, each (B, D): the diagonal Gaussian the flow over z starts from."""
        return self.gaussian(features)

    def forward(self, features: Tensor) -> AuxiliaryPosterior:
        mean, log_std = self.base_gaussian(features)  # (B, D) each
        v_base = mean.new_zeros(mean.shape[0], self.aux_dim)  # v0's own map is the first step
        context = self.context(features)  # (B, C)
        joint = FlowPosterior(
            torch.cat([mean, v_base], -1),
            torch.cat([log_std, v_base], -1),
            context,
            list(self.steps),
        )
        return AuxiliaryPosterior(joint, self.latent_dim, self.reverse, context)
