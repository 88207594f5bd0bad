"""Local (per-datapoint) optimisation of a posterior under a fixed trained model.

Cremer, Li & Duvenaud (2018) split the inference gap log p(x) - L[q] of an amortized posterior q
into an *approximation* gap (the best member q* of the family is not the true posterior) and an
*amortization* gap (the encoder does not output q*). Estimating L[q*] needs q* itself: for every
data point a fresh posterior, with its own parameters and no encoder, is fitted by maximising
its ELBO with the model held fixed. This module does that for any posterior in
:data:`flowvae.posteriors.POSTERIORS` (``diag`` gives q*_FFG, ``realnvp-aux`` the paper's
q*_flow) for a whole batch at once:

- the posterior head is built with no input features and no context (``context_dim=0``), so
  its output depends on its parameters alone: the Gaussian layer is a bias holding (mean,
  log-std), amortized flow parameters become free biases, coupling nets see only z;
- B copies of its parameters are stacked (``torch.func.stack_module_state``-style, leading dim
  B) and the head is evaluated per example with ``torch.func.functional_call`` under
  ``torch.vmap``; every example owns its slice of every parameter, so one Adam step on the
  summed objective is B independent Adam steps (Adam is elementwise);
- :class:`LocalPosterior` is an ordinary :class:`~flowvae.posteriors.Posterior`, so the ELBO,
  IWAE and AIS code apply to it unchanged.

Each example's posterior is written z = m0 + s0 * f(eps), with the anchor (m0, s0) at the initial
Gaussian and f the head, starting at the identity: Adam's steps, which are absolute in parameter
units, become fractions of the posterior's own width (a Gaussian on 256 pixels at sigma = 0.05
has posterior widths ~1e-3, where a raw step of 1e-3 costs nats). The map is affine, so the family
is unchanged; :attr:`LocalResult.mean` and ``log_std`` are the effective ones. When the head is
the Gaussian alone (``diag``), the anchor follows it: at every check an active example's anchor
moves to its current Gaussian and the head's Gaussian is reset to standard, with Adam's moments
and the kept best parameters mapped to the new coordinates (an exact change of variables), so
steps stay a fraction of the *current* widths however far they are from the initial ones (a
briefly trained encoder can be off by orders of magnitude). A flow's anchor stays put: its steps
act between the base Gaussian and the anchor, so moving it would change the posterior.

The amortized start is the best, by a Monte Carlo ELBO per example, of three Gaussians: q's
(moment-matched) Gaussian, the same with widths capped at the prior's (1: a log-concave
likelihood only narrows the posterior, and a width of thousands makes every step thousands of
optimal widths), and N(0, I) itself (a diverged encoder's means can be hundreds of widths off).
A good encoder keeps its q; each example's choice is its own.

Convergence is judged per example and is robust to Monte Carlo noise: every ``check_every``
steps the mean training ELBO over the window (noisy by 0.1-0.3 nat) is compared with that
example's best window. A single check without improvement does nothing; after ``patience``
checks in a row without an improvement of ``tolerance`` nats (cumulative progress grows with the
number of windows, noise does not) the step size is multiplied by ``lr_decay``, and after
``decays`` such reductions the example is converged and frozen, so its result does not depend on
when the others converge. The parameters returned are those of the example's best window, not
the last. The final L[q*] is a fresh Monte Carlo estimate with ``eval_samples`` draws (not the
training k), independent of the optimisation's draws, so picking the best window does not bias
it. Every draw is the example's own (:mod:`flowvae.noise`): its streams keyed by the seed and its
index, the optimisation's of one ``purpose`` and the final estimate's of the next, so neither
depends on the other examples of the batch, nor on how long they take to converge.

References:
    Cremer, Li & Duvenaud, Inference suboptimality in variational autoencoders,
    arXiv 1801.03558 (Sec. 3 and 5).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn

from .config import FLOW_SIZE_KEYS
from .core import FlowPosterior, Posterior, log_weight
from .flows import fix_iterations
from .noise import ExampleStreams, example_streams
from .posteriors import build_posterior

# the flow of q*_flow unless told otherwise: small next to an amortized flow, since B copies of
# its parameters (and Adam's two moments) are held at once
LOCAL_FLOW_DEFAULTS = {"flow_steps": 2, "flow_hidden": 100, "flow_layers": 1}


@dataclass
class LocalOptions:
    """How a local posterior is fitted and evaluated.

    Arguments:
        lr: Adam learning rate, in units of the posterior's widths (the initial ones for a flow,
            the current ones for ``diag``; see the module).
        samples: k, draws of z per example per step (the training ELBO's samples).
        max_steps: the step cap.
        check_every: steps between convergence checks.
        patience: checks in a row without improvement after which the step size is reduced.
        tolerance: the improvement in nats over the best window's mean ELBO that counts as one.
        lr_decay: the factor of each step-size reduction (1: constant), so that an example
            settles closer to its optimum than the noise of a constant step size allows.
        decays: reductions after which an example is converged and frozen.
        eval_samples: draws of the final ELBO estimate per example.
        eval_chunk: draws per chunk of the final estimate (bounds memory).
    """

    lr: float = field(
        default=1e-2, metadata={"help": "Adam learning rate, in widths of q", "range": (0.0, None)}
    )
    samples: int = field(default=50, metadata={"help": "z draws per step"})
    max_steps: int = field(default=10000, metadata={"help": "step cap"})
    check_every: int = field(default=100, metadata={"help": "steps between convergence checks"})
    patience: int = field(default=5, metadata={"help": "checks without improvement before a step-size decay"})
    tolerance: float = field(
        default=0.01, metadata={"help": "nats counted as an improvement", "range": (0.0, None)}
    )
    lr_decay: float = field(
        default=0.5, metadata={"help": "step-size factor on a stall", "range": (0.0, 1.0)}
    )
    decays: int = field(default=4, metadata={"help": "step-size reductions before convergence"})
    eval_samples: int = field(default=1000, metadata={"help": "draws of the final ELBO estimate"})
    eval_chunk: int = field(default=100, metadata={"help": "draws per chunk of the final estimate"})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (value >= 0 if f.name in ("tolerance", "decays") else value > 0):
                raise ValueError(f"local optimisation: {f.name} must be positive, got {value}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"local optimisation: lr_decay must be in (0, 1], got {self.lr_decay}")


@dataclass
class LocalResult:
    """Per-example outcome of :func:`local_optimise` for a batch of B examples."""

    posterior: str  # the family's name in POSTERIORS
    elbo: Tensor  # (B,) L[q*], estimated with ``eval_samples`` draws
    stderr: Tensor  # (B,) Monte Carlo standard error of ``elbo``
    steps: Tensor  # (B,) optimisation steps taken until converged (or the cap)
    converged: Tensor  # (B,) bool: stopped by the convergence rule, not by the cap
    skipped: Tensor  # (B,) updates skipped for a non-finite objective or gradient
    seconds: float
    local: LocalPosterior = field(repr=False)  # the fitted posteriors

    @property
    def capped(self) -> int:
        """Examples stopped by the step cap rather than by convergence."""
        return int((~self.converged).sum())

    @property
    def mean(self) -> Tensor | None:
        """(B, D) mean of the base Gaussian (the whole q* for ``diag``)."""
        return self.local.gaussian()[0] if self.local.has_gaussian else None

    @property
    def log_std(self) -> Tensor | None:
        return self.local.gaussian()[1] if self.local.has_gaussian else None


class _PerExample(nn.Module):
    """One example's posterior as a function of its base samples: eps (*S, E) -> (z, ladj)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        posterior = self.head(eps.new_zeros(1, 0))  # no features: a batch of one
        z, ladj = posterior.transform(eps.unsqueeze(-2))  # (*S, 1, D), (*S, 1)
        return z.squeeze(-2), ladj.squeeze(-1)


def local_head(posterior: str, latent_dim: int, **flow_options) -> nn.Module:
    """A fresh, non-amortized posterior head: no input features and no context vector.

    Arguments:
        posterior: a name in :data:`~flowvae.posteriors.POSTERIORS`.
        latent_dim: D.
        flow_options: the flow's size (:data:`~flowvae.config.FLOW_SIZE_KEYS`: ``flow_steps``,
            ``flow_hidden``, ``flow_layers``, ``aux_dim``, ...); defaults
            :data:`LOCAL_FLOW_DEFAULTS`.
    """
    unknown = set(flow_options) - set(FLOW_SIZE_KEYS)
    if unknown:
        valid = ", ".join(FLOW_SIZE_KEYS)
        raise ValueError(f"unknown local flow option {sorted(unknown)[0]!r}; valid: {valid}")
    options = {**LOCAL_FLOW_DEFAULTS, **flow_options, "context_dim": 0}
    with warnings.catch_warnings():  # no features by design: torch warns that it inits (0, D) weights
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op", UserWarning)
        return build_posterior(posterior, 0, latent_dim, **options)


class LocalPosterior(Posterior):
    """B independent posteriors of one family, one per example, as a single batched Posterior.

    ``params`` maps the head's parameter names to tensors (B, ...) that require grad (the
    leaves an optimizer updates); the head's own parameters are only a template. The head's
    output is mapped by the fixed per-example affine z -> anchor_mean + anchor_std * z (B, D),
    the identity until :meth:`set_gaussian` moves it (see the module docstring).

    Arguments:
        head: a head from :func:`local_head` (its parameters set the initial values).
        batch_size: B.
        like: a tensor whose dtype and device the parameters follow.
    """

    def __init__(self, head: nn.Module, batch_size: int, like: Tensor):
        self.module = _PerExample(head).to(dtype=like.dtype, device=like.device)
        fix_iterations(self.module)  # vmap cannot stop an iteration on a tensor's value
        with torch.no_grad():
            probe = head(like.new_zeros(1, 0))
        super().__init__(probe.base_dim, batch_size, like)
        self.params = {
            name: p.detach().unsqueeze(0).repeat(batch_size, *([1] * p.dim())).requires_grad_(True)
            for name, p in self.module.named_parameters()
        }
        self.buffers = {
            name: b.unsqueeze(0).expand(batch_size, *b.shape) for name, b in self.module.named_buffers()
        }
        self._call = torch.vmap(self._one, in_dims=(0, 0, 0))
        # every head maps its features to (mean, log_std) with a `gaussian` layer; without
        # features that layer's bias is the base Gaussian itself
        bias = getattr(getattr(head, "gaussian", None), "bias", None)
        self._gaussian = next((n for n, p in self.module.named_parameters() if p is bias), None)
        self.anchor_mean = like.new_zeros(batch_size, head.latent_dim)
        self.anchor_log_std = like.new_zeros(batch_size, head.latent_dim)

    def _one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], eps: Tensor):
        return torch.func.functional_call(self.module, (params, buffers), (eps,))

    @property
    def has_gaussian(self) -> bool:
        return self._gaussian is not None

    def gaussian(self) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of the base Gaussian in z's coordinates (anchor applied), each (B, D)."""
        mean, log_std = self.params[self._gaussian].detach().chunk(2, dim=-1)
        return self.anchor_mean + torch.exp(self.anchor_log_std) * mean, self.anchor_log_std + log_std

    @torch.no_grad()
    def set_gaussian(self, mean: Tensor, log_std: Tensor) -> None:
        """Start at the Gaussian (mean, log_std), each (B, D): the anchor takes it, the head's own
        Gaussian becomes standard."""
        if not self.has_gaussian:
            raise ValueError("this posterior head has no base Gaussian layer to initialise")
        self.anchor_mean = mean.detach().to(self.anchor_mean).clone()
        self.anchor_log_std = log_std.detach().to(self.anchor_log_std).clone()
        self.params[self._gaussian].zero_()

    def trainable(self) -> list[Tensor]:
        return [p for p in self.params.values() if p.numel() > 0]

    @property
    def gaussian_only(self) -> bool:
        """Whether the head's only trainable parameter is its base Gaussian (then the anchor may move)."""
        trainable = self.trainable()
        return self.has_gaussian and len(trainable) == 1 and trainable[0] is self.params[self._gaussian]

    @torch.no_grad()
    def reanchor(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Move the anchor of the examples in ``mask`` (B,) to their current Gaussian and reset the
        head's Gaussian to standard; the posterior is unchanged.

        Returns:
            (shift, log_scale), each (B, D): the head's old (mean, log_std), zero outside ``mask``.
            A head coordinate (mean m, log-std l) becomes ((m - shift) / exp(log_scale),
            l - log_scale), so a gradient with respect to the mean is multiplied by exp(log_scale).
        """
        if not self.gaussian_only:
            raise ValueError("only a head that is a Gaussian alone can be re-anchored")
        head = self.params[self._gaussian]
        keep = mask.unsqueeze(-1)
        shift, log_scale = (torch.where(keep, h, torch.zeros_like(h)) for h in head.chunk(2, -1))
        self.anchor_mean = self.anchor_mean + torch.exp(self.anchor_log_std) * shift
        self.anchor_log_std = self.anchor_log_std + log_scale
        head.sub_(torch.cat([shift, log_scale], -1))  # zero where masked, unchanged elsewhere
        return shift, log_scale

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """eps (*S, B, E) -> z (*S, B, D), ladj (*S, B); example b uses only its own parameters."""
        try:
            z, ladj = self._call(self.params, self.buffers, eps.movedim(-2, 0))  # (B, *S, .)
        except RuntimeError as e:
            if "data-dependent control flow" in str(e):
                raise ValueError(
                    "this posterior cannot be optimised per example: one of its steps branches on "
                    "tensor values, which torch.vmap does not support"
                ) from None
            raise
        z, ladj = z.movedim(0, -2), ladj.movedim(0, -1)
        return self.anchor_mean + torch.exp(self.anchor_log_std) * z, ladj + self.anchor_log_std.sum(-1)


@contextlib.contextmanager
def frozen_model(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter requiring grad; both restored on exit."""
    flags = [p.requires_grad for p in model.parameters()]
    training = model.training
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(training)


@torch.no_grad()
def amortized_gaussian(model: nn.Module, x: Tensor, samples: int = 256) -> tuple[Tensor, Tensor]:
    """A factorised Gaussian (mean, log_std), each (B, D), from the amortized q(z|x).

    For a ``diag`` encoder these are its outputs; for any other posterior, the per-dimension
    mean and standard deviation of ``samples`` draws of z (moment matching).
    """
    posterior = model.encode(x)
    if isinstance(posterior, FlowPosterior) and not posterior.steps:
        return posterior.mean.clone(), posterior.log_std.clone()
    z, _ = posterior.rsample_and_log_prob((samples,))
    return z.mean(0), torch.log(z.std(0).clamp_min(1e-6))


@torch.no_grad()
def starting_gaussian(
    model: nn.Module, x: Tensor, candidates: Sequence[tuple[Tensor, Tensor]], samples: int
) -> tuple[Tensor, Tensor]:
    """Per example, the candidate Gaussian (mean, log_std), each (B, D), with the highest Monte
    Carlo ELBO (``samples`` draws); a non-finite estimate never wins over a finite one."""
    mean, log_std = (t.clone() for t in candidates[0])
    best = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    for m, ls in candidates:
        q = FlowPosterior(m, ls)
        score = log_weights(model, x, q, samples).double().mean(0)
        better = torch.isfinite(score) & (score > best)
        best = torch.where(better, score, best)
        mean = torch.where(better.unsqueeze(-1), m, mean)
        log_std = torch.where(better.unsqueeze(-1), ls, log_std)
    return mean, log_std


def amortized_start(model: nn.Module, x: Tensor, samples: int) -> tuple[Tensor, Tensor]:
    """The local optimisation's default start (see the module): the best of q's Gaussian, q's with
    widths capped at 1, and N(0, I), each (B, D)."""
    mean, log_std = amortized_gaussian(model, x)
    capped = (mean, log_std.clamp(max=0.0))
    prior = (torch.zeros_like(mean), torch.zeros_like(log_std))
    return starting_gaussian(model, x, [(mean, log_std), capped, prior], samples)


def log_weights(model: nn.Module, x: Tensor, posterior: Posterior, samples: int) -> Tensor:
    """log p(x, z) - log q(z|x) for ``samples`` draws from ``posterior``: (samples, B)."""
    z, log_q = posterior.rsample_and_log_prob((samples,))
    return log_weight(model.log_joint(x, z), log_q)


@torch.no_grad()
def elbo_with_stderr(
    model: nn.Module, x: Tensor, posterior: Posterior, samples: int, chunk: int = LocalOptions.eval_chunk
) -> tuple[Tensor, Tensor]:
    """Monte Carlo ELBO of ``posterior`` and its standard error, each (B,), drawn in chunks."""
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    for start in range(0, samples, chunk):
        w = log_weights(model, x, posterior, min(chunk, samples - start)).double()
        total += w.sum(0)
        squares += (w**2).sum(0)
    mean = total / samples
    var = (squares / samples - mean**2).clamp_min(0) * samples / max(samples - 1, 1)
    return mean, torch.sqrt(var / samples)


def _per_example_finite(objective: Tensor, grads: Sequence[Tensor]) -> Tensor:
    ok = torch.isfinite(objective)
    for g in grads:
        ok &= torch.isfinite(g.flatten(1)).all(1)
    return ok


@torch.no_grad()
def _reanchor(local: LocalPosterior, optimizer: torch.optim.Adam, best: Tensor, mask: Tensor) -> None:
    """Re-anchor the examples in ``mask`` and map Adam's moments and the kept best head
    parameters ``best`` (B, 2D) to the new coordinates (see :meth:`LocalPosterior.reanchor`)."""
    shift, log_scale = local.reanchor(mask)
    best_mean, best_log_std = best.chunk(2, -1)
    best.copy_(torch.cat([(best_mean - shift) * torch.exp(-log_scale), best_log_std - log_scale], -1))
    state = optimizer.state.get(local.trainable()[0], {})
    if "exp_avg" in state:  # the mean's gradient scales by exp(log_scale), its square by that squared
        factor = torch.cat([torch.exp(log_scale), torch.ones_like(log_scale)], -1)
        state["exp_avg"].mul_(factor)
        state["exp_avg_sq"].mul_(factor**2)


def _per_example(mask: Tensor, like: Tensor) -> Tensor:
    """A (B,) mask shaped to broadcast against per-example parameters ``like`` (B, ...)."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class _Progress:
    """Every example's optimisation state, each (B,) on the device (no host sync per step)."""

    active: Tensor  # still optimising
    best: Tensor  # best window-mean ELBO so far
    best_params: list[Tensor]  # the trainable parameters at that window's last step
    bad_checks: Tensor  # checks since the last improvement by more than the tolerance
    decays: Tensor  # step-size reductions so far
    running: Tensor  # the current window's summed objective
    steps: Tensor  # steps taken
    scale: Tensor  # per-example step-size factor
    skipped: Tensor  # updates skipped as non-finite

    @classmethod
    def start(cls, batch: int, like: Tensor, trainable: list[Tensor]) -> _Progress:
        def zeros(dtype: torch.dtype) -> Tensor:
            return torch.zeros(batch, dtype=dtype, device=like.device)

        return cls(
            active=torch.ones(batch, dtype=torch.bool, device=like.device),
            best=torch.full((batch,), -math.inf, dtype=torch.float64, device=like.device),
            best_params=[p.detach().clone() for p in trainable], bad_checks=zeros(torch.long),
            decays=zeros(torch.long), running=zeros(torch.float64), steps=zeros(torch.long),
            scale=torch.ones(batch, dtype=like.dtype, device=like.device), skipped=zeros(torch.long),
        )  # fmt: skip

    def check(self, before: list[Tensor], options: LocalOptions) -> None:
        """End of a window: keep the best window's parameters (``before``: those its last
        objective was computed at), reduce the step size of stalled examples, stop converged ones."""
        average = self.running / options.check_every
        improved = self.active & (average > self.best + options.tolerance)
        better = self.active & (average > self.best)
        self.best = torch.where(better, average, self.best)
        for old, kept in zip(before, self.best_params, strict=True):
            kept.copy_(torch.where(_per_example(better, old), old, kept))
        self.bad_checks = torch.where(improved, torch.zeros_like(self.bad_checks), self.bad_checks + 1)
        stalled = self.active & (self.bad_checks >= options.patience)
        self.scale = torch.where(stalled, self.scale * options.lr_decay, self.scale)
        self.decays += stalled.long()
        self.bad_checks = torch.where(stalled, torch.zeros_like(self.bad_checks), self.bad_checks)
        self.active &= self.decays <= options.decays
        self.running.zero_()


def _masked_step(
    model: nn.Module, x: Tensor, local: LocalPosterior, optimizer: torch.optim.Adam, progress: _Progress,
    samples: int,
) -> list[Tensor]:  # fmt: skip
    """One Adam step of every active example's own ELBO, scaled per example; an example whose
    objective or gradient is not finite keeps its parameters. Returns the parameters before it."""
    trainable = local.trainable()
    objective = log_weights(model, x, local, samples).mean(0)  # (B,)
    optimizer.zero_grad(set_to_none=False)
    (-objective.sum()).backward()  # each example's parameters get the gradient of its own ELBO only
    update = progress.active & _per_example_finite(objective.detach(), [p.grad for p in trainable])
    progress.skipped += (progress.active & ~update).long()
    before = [p.detach().clone() for p in trainable]
    for p in trainable:  # a zero gradient keeps Adam's moments finite
        p.grad = torch.where(_per_example(update, p), p.grad, torch.zeros_like(p.grad))
    optimizer.step()
    with torch.no_grad():  # per-example step sizes; Adam moves even at zero gradient
        factor = torch.where(update, progress.scale, torch.zeros_like(progress.scale))
        for p, old in zip(trainable, before, strict=True):
            p.copy_(old + _per_example(factor, p) * (p - old))
    progress.steps += progress.active.long()
    progress.running += torch.nan_to_num(objective.detach().double(), nan=-math.inf)
    return before


def seeded_head(posterior: str, latent_dim: int, seed: int, **flow_options) -> nn.Module:
    """:func:`local_head` with initial weights from ``seed`` (the same for every batch of a
    seed), built on the CPU; the caller's generators are untouched (CPU: restored; CUDA: unused)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed % 2**64)
        return local_head(posterior, latent_dim, **flow_options)


def local_optimise(
    model: nn.Module,
    x: Tensor,
    posterior: str = "diag",
    init: tuple[Tensor, Tensor] | None = None,
    options: LocalOptions | None = None,
    *,
    seed: int | None = None,
    indices: Sequence[int] | None = None,
    purpose: int = 1,
    **flow_options,
) -> LocalResult:
    """Fit a fresh posterior to every example of ``x`` by maximising its ELBO; the model is fixed.

    Arguments:
        model: a trained VAE (``encode``, ``log_joint``); its parameters are never changed.
        x: a batch (B, C, H, W).
        posterior: the family, a name in :data:`~flowvae.posteriors.POSTERIORS` (``diag`` for
            q*_FFG, ``realnvp-aux`` for the paper's q*_flow).
        init: (mean, log_std), each (B, D), for the base Gaussian, used as given; ``None`` starts
            from the amortized q, or a sane Gaussian where q's is degenerate
            (:func:`amortized_start`). A flow's steps start near the identity,
            so a flow initialised at q*_FFG starts near L[q*_FFG].
        options: optimisation settings (:class:`LocalOptions`).
        seed, indices, purpose: example b draws from its streams keyed by ``seed`` and
            ``indices[b]`` (:meth:`~flowvae.noise.ExampleStreams.seeded`), of ``purpose`` while
            optimising and of ``purpose + 1`` for the final estimate (the estimates of
            :func:`flowvae.estimators.evaluate` use purpose 0). Default: a seed drawn from torch's
            global generator, indices 0 .. B-1.
        flow_options: the flow's size (see :func:`local_head`).

    Returns:
        :class:`LocalResult`; ``elbo`` is L[q*] per example.

    Example:
        >>> from flowvae.testing import random_linear_gaussian_vae
        >>> model = random_linear_gaussian_vae()
        >>> x = torch.randn(4, 1, 2, 4, dtype=torch.float64)
        >>> result = local_optimise(model, x, "diag", options=LocalOptions(max_steps=20))
        >>> result.elbo.shape
        torch.Size([4])
    """
    options = options or LocalOptions()
    start = time.perf_counter()
    like = next(model.parameters())
    x = x.to(like.device)
    seed = int(torch.randint(2**62, (), dtype=torch.long)) if seed is None else seed
    indices = range(x.shape[0]) if indices is None else indices
    with frozen_model(model), example_streams(ExampleStreams.seeded(seed, indices, purpose)):
        head = seeded_head(posterior, model.latent_dim, seed, **flow_options)
        local = LocalPosterior(head, x.shape[0], like)
        if local.has_gaussian:
            local.set_gaussian(*(init if init is not None else amortized_start(model, x, options.samples)))
        trainable = local.trainable()
        optimizer = torch.optim.Adam(trainable, lr=options.lr)
        progress = _Progress.start(x.shape[0], like, trainable)
        with torch.enable_grad():
            for step in range(1, options.max_steps + 1):
                before = _masked_step(model, x, local, optimizer, progress, options.samples)
                if step % options.check_every == 0:
                    with torch.no_grad():
                        progress.check(before, options)
                        if local.gaussian_only:  # the anchor follows the Gaussian (see the module)
                            _reanchor(local, optimizer, progress.best_params[0], progress.active)
                    if not progress.active.any():
                        break
        if progress.steps.max() >= options.check_every:  # the best window's parameters; an example
            with torch.no_grad():  # with no finite window keeps its initial ones
                for p, kept in zip(trainable, progress.best_params, strict=True):
                    p.copy_(kept)
        # the final estimate's draws do not depend on how long any example took to converge
        with example_streams(ExampleStreams.seeded(seed, indices, purpose + 1)):
            elbo, stderr = elbo_with_stderr(model, x, local, options.eval_samples, options.eval_chunk)
    active, steps, skipped = progress.active, progress.steps, progress.skipped
    return LocalResult(
        posterior=posterior, elbo=elbo, stderr=stderr, steps=steps.cpu(), converged=~active.cpu(),
        skipped=skipped.cpu(), seconds=time.perf_counter() - start, local=local,
    )  # fmt: skip


__all__ = [
    "LOCAL_FLOW_DEFAULTS", "LocalOptions", "LocalPosterior", "LocalResult", "amortized_gaussian",
    "amortized_start", "elbo_with_stderr", "frozen_model", "local_head", "local_optimise", "log_weights",
    "seeded_head", "starting_gaussian",
]  # fmt: skip
