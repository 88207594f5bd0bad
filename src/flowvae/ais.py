"""Annealed importance sampling (AIS) with HMC transitions, and bidirectional Monte Carlo (BDMC).

AIS (Neal 2001, arXiv physics/9803008) estimates log p(x) by moving samples from a normalised
start density p0(u) to the unnormalised target f_1(u) (whose integral is p(x)) through

    log f_beta(u) = log p0(u) + beta * l(u),      l(u) = log f_1(u) - log p0(u),

for 0 = beta_0 < beta_1 < ... < beta_T = 1. Each chain accumulates the log-weight
sum_t (beta_t - beta_{t-1}) l(u_{t-1}) and moves u with an HMC transition that leaves f_{beta_t}
invariant. exp(log-weight) is an unbiased estimate of p(x), so the per-example estimate is the
log-mean-exp of the chains' log-weights: a stochastic lower bound on log p(x) (Jensen).

Two start densities (Wu, Burda, Salakhutdinov & Grosse 2017, arXiv 1611.04273):

- ``init="prior"``: u = z, p0 = p(z), l(z) = log p(x|z);
- ``init="posterior"``: u = eps, the posterior's standard-normal base variable, p0 = N(0, I), and
  log f_1(eps) = log p(x, z(eps)) + ladj(eps), so l(eps) = log p(x, z) - log q(z|x), the
  importance log-weight. The integral of f_1 is p(x) for every posterior, flows and auxiliary-
  variable posteriors included, and no inverse is needed. AIS with ``steps=1`` is exactly
  importance sampling with q (the IWAE estimate).

Everything is batched over chains and examples: u is (C, B, D); step sizes are per chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import noise
from .core import log_weight
from .numerics import log_mean_exp

SCHEDULES = ("linear", "sigmoid")
INITS = ("prior", "posterior")

# Step-size adaptation (Wu et al. 2017): per transition, multiply a chain's step size by 1.02
# if its running acceptance probability is above the target, else by 0.98, within these bounds.
STEP_SIZE_INCREASE = 1.02
STEP_SIZE_DECREASE = 0.98
STEP_SIZE_MIN = 1e-4
STEP_SIZE_MAX = 1.0
ACCEPTANCE_DECAY = 0.9  # running average of each chain's acceptance probability
CHAINS = 16  # AIS chains per example unless told otherwise


@dataclass(frozen=True)
class AISOptions:
    """The settings of an AIS run, and the one place their defaults are written.

    Attributes:
        steps: annealing steps T (T + 1 inverse temperatures from 0 to 1).
        leapfrog: leapfrog steps per HMC transition.
        schedule: ``linear`` or ``sigmoid`` (see :func:`annealing_schedule`).
        init: ``prior`` (anneal z from p(z)) or ``posterior`` (anneal eps from q's base).
        target_accept: acceptance rate the per-chain step sizes adapt toward.
        step_size: initial leapfrog step size.
    """

    steps: int = field(default=1000, metadata={"help": "intermediate distributions"})
    leapfrog: int = field(default=10, metadata={"help": "leapfrog steps per HMC move"})
    schedule: str = field(
        default="sigmoid", metadata={"help": "spacing of the temperatures", "choices": SCHEDULES}
    )
    init: str = field(
        default="prior",
        metadata={"help": "start chains from the prior, or from q(z|x) (no proper bound)", "choices": INITS},
    )
    target_accept: float = field(
        default=0.65, metadata={"help": "HMC acceptance rate the step size adapts to", "range": (0.0, 1.0)}
    )
    step_size: float = field(default=0.1, metadata={"help": "initial HMC step size", "range": (0.0, None)})

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"AIS needs steps >= 1, got {self.steps}")
        if self.leapfrog < 1:
            raise ValueError(f"AIS needs leapfrog >= 1, got {self.leapfrog}")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target_accept}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown AIS schedule {self.schedule!r}; available: {', '.join(SCHEDULES)}")
        if self.init not in INITS:
            raise ValueError(f"unknown AIS init {self.init!r}; available: {', '.join(INITS)}")
        if not self.step_size > 0:
            raise ValueError(f"AIS needs step_size > 0, got {self.step_size}")


def annealing_schedule(
    name: str, steps: int, sharpness: float = 4.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The inverse temperatures beta_0 = 0 < ... < beta_T = 1: a tensor of ``steps + 1`` values.

    ``linear`` spaces them evenly; ``sigmoid`` is the sigmoidal schedule of Grosse, Ghahramani &
    Adams 2015 (arXiv 1511.02543), beta_t ∝ sigmoid(sharpness * (2t/T - 1)) rescaled to [0, 1],
    which spends more steps near both ends where the distributions change fastest.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown AIS schedule {name!r}; available: {', '.join(SCHEDULES)}")
    if steps < 1:
        raise ValueError(f"AIS needs steps >= 1, got {steps}")
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if name == "sigmoid" and steps > 1:
        s = torch.sigmoid(sharpness * (2 * t - 1))
        t = (s - s[0]) / (s[-1] - s[0])
    return t.to(dtype)


# ----------------------------------------------------------------------------- annealing paths


@dataclass
class AnnealingPath:
    """log f_beta(u) = log p0(u) + beta * log_ratio(u); both functions map (C, B, D) -> (C, B)."""

    log_p0: Callable[[Tensor], Tensor]
    log_ratio: Callable[[Tensor], Tensor]


def prior_path(model: nn.Module, x: Tensor) -> AnnealingPath:
    """From the prior p(z) to p(x, z): l(z) = log p(x|z)."""
    return AnnealingPath(model.log_prior, lambda z: model.log_likelihood(x, z))


def posterior_path(model: nn.Module, x: Tensor, posterior) -> AnnealingPath:
    """From q's base N(0, I) to p(x, z(eps)) exp(ladj(eps)): l(eps) = log p(x, z) - log q(z|x)."""

    def log_ratio(eps: Tensor) -> Tensor:
        z, ladj = posterior.transform(eps)
        return log_weight(model.log_joint(x, z), posterior.base_log_prob(eps) - ladj)

    return AnnealingPath(posterior.base_log_prob, log_ratio)


# ----------------------------------------------------------------------------- HMC


@dataclass
class _State:
    """A batch of chain positions with their densities and gradients (cached between steps)."""

    u: Tensor  # (C, B, D)
    log_p0: Tensor  # (C, B)
    log_ratio: Tensor  # (C, B)
    grad_log_p0: Tensor  # (C, B, D)
    grad_log_ratio: Tensor  # (C, B, D)

    def log_f(self, beta: float) -> Tensor:
        return self.log_p0 + beta * self.log_ratio

    def grad_log_f(self, beta: float) -> Tensor:
        return self.grad_log_p0 + beta * self.grad_log_ratio

    def where(self, mask: Tensor, other: _State) -> _State:
        """This state where ``mask`` (C, B) holds, else ``other``."""
        m = mask.unsqueeze(-1)
        return _State(
            torch.where(m, self.u, other.u),
            torch.where(mask, self.log_p0, other.log_p0),
            torch.where(mask, self.log_ratio, other.log_ratio),
            torch.where(m, self.grad_log_p0, other.grad_log_p0),
            torch.where(m, self.grad_log_ratio, other.grad_log_ratio),
        )


def _evaluate(path: AnnealingPath, u: Tensor) -> _State:
    """Densities and their gradients with respect to u only (never the model's parameters)."""
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        log_p0 = path.log_p0(u)
        (grad_log_p0,) = torch.autograd.grad(log_p0.sum(), u)
        log_ratio = path.log_ratio(u)
        (grad_log_ratio,) = torch.autograd.grad(log_ratio.sum(), u)
    return _State(u.detach(), log_p0.detach(), log_ratio.detach(), grad_log_p0, grad_log_ratio)


def _hmc_transition(
    path: AnnealingPath, state: _State, beta: float, step_size: Tensor, leapfrog: int
) -> tuple[_State, Tensor, Tensor]:
    """One HMC transition leaving f_beta invariant (unit mass, fresh momentum, Metropolis test).

    Returns the new state, whether each chain accepted (C, B) and its acceptance probability.
    """
    momentum = noise.randn(state.u.shape, batch_dim=1, dtype=state.u.dtype, device=state.u.device)
    p = momentum + 0.5 * step_size * state.grad_log_f(beta)
    proposal = state
    for i in range(leapfrog):
        proposal = _evaluate(path, proposal.u + step_size * p)
        p = p + (step_size if i < leapfrog - 1 else 0.5 * step_size) * proposal.grad_log_f(beta)
    h_old = state.log_f(beta) - 0.5 * (momentum**2).sum(-1)
    h_new = proposal.log_f(beta) - 0.5 * (p**2).sum(-1)
    # a non-finite proposal (overflow, NaN gradients) is rejected
    log_accept = torch.where(torch.isfinite(h_new), h_new - h_old, torch.full_like(h_new, -math.inf))
    uniform = noise.rand(log_accept.shape, batch_dim=1, dtype=log_accept.dtype, device=log_accept.device)
    accept = torch.log(uniform) < log_accept
    return proposal.where(accept, state), accept, torch.exp(log_accept.clamp(max=0))


# ----------------------------------------------------------------------------- AIS


@dataclass
class AISResult:
    """The outcome of one (forward or reverse) AIS run over a batch.

    Forward runs: ``log_weights`` estimate log p(x) (unbiased in exp). Reverse runs (BDMC):
    they estimate log 1/p(x), and ``log_marginal`` is the stochastic upper bound
    -log-mean-exp(log_weights).
    """

    log_weights: Tensor  # (C, B)
    acceptance: float  # fraction of accepted HMC proposals over transitions, chains, examples
    example_acceptance: Tensor  # (B,) the same per example (over its transitions and chains)
    step_size: Tensor  # (C, B) final per-chain step sizes
    final: Tensor  # (C, B, D) the chains' last states (z for init=prior, eps for init=posterior)
    reverse: bool = False

    @property
    def log_marginal(self) -> Tensor:
        """Per-example log p̂(x), (B,), float64: log-mean-exp over chains (never the mean of
        log-weights)."""
        if self.reverse:
            return -log_mean_exp(self.log_weights.double(), dim=0)
        return log_mean_exp(self.log_weights.double(), dim=0)


def anneal(path: AnnealingPath, start: Tensor, betas: Tensor, **options) -> AISResult:
    """Run AIS along ``path`` from ``start`` (C, B, D), distributed as f_{betas[0]}.

    The chains accumulate sum_t (beta_t - beta_{t-1}) l(u_{t-1}), an estimate of
    log(Z_{beta_T} / Z_{beta_0}), with an HMC transition at every intermediate beta (T - 1
    transitions of ``leapfrog`` gradient evaluations each; none at the ends, where it would not
    change the weight). Step sizes adapt per chain toward ``target_accept``. ``options``: the
    :class:`AISOptions` fields ``leapfrog``, ``target_accept``, ``step_size``.
    """
    o = AISOptions(**options)
    leapfrog, target_accept = o.leapfrog, o.target_accept
    betas = betas.tolist()
    state = _evaluate(path, start)
    log_w = torch.zeros_like(state.log_p0)  # (C, B)
    step = torch.full_like(state.log_p0, o.step_size).unsqueeze(-1)  # (C, B, 1)
    running = torch.full_like(state.log_p0, target_accept)  # (C, B)
    accepted = torch.zeros_like(log_w)  # (C, B) accepted proposals per chain, kept on device
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]) * state.log_ratio
        if t == len(betas) - 1:
            break
        state, accept, prob = _hmc_transition(path, state, betas[t], step, leapfrog)
        accepted = accepted + accept
        # each chain's step size follows its own recent acceptance (Wu et al. 2017). Every
        # transition leaves f_beta invariant given its step size; strictly, a step size that
        # depends on the chain's past can bias the AIS weights, but only slightly (the tests
        # measure the result against exact log p(x))
        running = ACCEPTANCE_DECAY * running + (1 - ACCEPTANCE_DECAY) * prob
        grow = (running > target_accept).unsqueeze(-1)
        step = torch.where(grow, step * STEP_SIZE_INCREASE, step * STEP_SIZE_DECREASE)
        step = step.clamp(STEP_SIZE_MIN, STEP_SIZE_MAX)
    transitions = len(betas) - 2
    per_example = accepted.double().mean(0).cpu() / transitions if transitions > 0 else None
    if per_example is None:
        per_example = torch.full((log_w.shape[1],), float("nan"), dtype=torch.float64)
    return AISResult(log_w, per_example.mean().item(), per_example, step.squeeze(-1), state.u)


@torch.no_grad()
def ais(model: nn.Module, x: Tensor, chains: int = CHAINS, **options) -> AISResult:
    """Hamiltonian AIS estimate of log p(x) for a batch x (B, C, H, W).

    Arguments:
        model: anything with ``log_prior``, ``log_likelihood``, ``log_joint``, ``sample_prior``
            and (for ``init="posterior"``) ``encode``; put it in eval mode first.
        x: the batch; device and dtype of the chains follow the model.
        chains: independent AIS chains per example (C).
        options: :class:`AISOptions` fields (steps, leapfrog, schedule, init, target_accept,
            step_size); unset ones take its defaults.

    Returns:
        :class:`AISResult`; ``.log_marginal`` is the per-example estimate (B,).

    References:
        Neal 2001, Annealed importance sampling, arXiv physics/9803008.
        Wu, Burda, Salakhutdinov & Grosse 2017, On the quantitative analysis of decoder-based
        generative models, arXiv 1611.04273.
    """
    o = AISOptions(**options)
    batch = x.shape[0]
    if o.init == "prior":
        path = prior_path(model, x)
        start = model.sample_prior((chains, batch))
    else:
        posterior = model.encode(x)
        path = posterior_path(model, x, posterior)
        start = posterior.sample_base((chains,))
    betas = annealing_schedule(o.schedule, o.steps)
    return anneal(path, start, betas, **vars(o))


@torch.no_grad()
def reverse_ais(model: nn.Module, x: Tensor, z: Tensor, chains: int = CHAINS, **options) -> AISResult:
    """AIS from p(z|x) back to p(z), started at exact posterior samples z (B, D) or (C, B, D).

    The log-weights estimate log 1/p(x) (unbiased in exp), so ``.log_marginal`` =
    -log-mean-exp(log-weights) is a stochastic *upper* bound on log p(x), provided z really is an
    exact posterior sample (Grosse et al. 2015, arXiv 1511.02543). ``options``: as :func:`ais`
    (``init`` does not apply: the path is the prior's).
    """
    o = AISOptions(**options)
    start = z.expand(chains, *z.shape[-2:]) if z.dim() == 2 else z
    betas = annealing_schedule(o.schedule, o.steps).flip(0)
    result = anneal(prior_path(model, x), start.clone(), betas, **vars(o))
    result.reverse = True
    return result


def ais_estimate(
    model: nn.Module, x: Tensor, samples: int = CHAINS, chains: int | None = None, **options
) -> tuple[Tensor, dict[str, Tensor]]:
    """The estimator ``ais``: per-example log p̂(x) (B,) and its diagnostics, each (B,).

    ``samples`` is the number of chains per example (``chains`` overrides it); ``options`` are
    :class:`AISOptions` fields. Diagnostics: ``acceptance``, each example's HMC acceptance
    rate over its chains and transitions.
    """
    result = ais(model, x, chains=chains or samples, **options)
    return result.log_marginal, {"acceptance": result.example_acceptance}



# ----------------------------------------------------------------------------- BDMC


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo on n examples simulated from the model."""

    lower: Tensor  # (n,) forward AIS log p̂(x): stochastic lower bound
    upper: Tensor  # (n,) reverse AIS log p̂(x): stochastic upper bound
    forward_acceptance: float
    reverse_acceptance: float
    x: Tensor  # (n, C, H, W) the simulated data
    z: Tensor  # (n, D) the latents they were simulated from

    @property
    def lower_mean(self) -> float:
        return self.lower.mean().item()

    @property
    def upper_mean(self) -> float:
        return self.upper.mean().item()

    options: dict[str, Any] = field(default_factory=dict)  # the AIS settings both runs used

    @property
    def gap(self) -> float:
        """upper - lower, in nats per example: bounds the error of forward AIS on this data."""
        return self.upper_mean - self.lower_mean

    @property
    def gap_stderr(self) -> float:
        """The standard error of :attr:`gap` over the examples (paired)."""
        d = (self.upper - self.lower).double()
        return d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else math.nan

    @property
    def crossed(self) -> bool:
        """The lower bound above the upper one: no bracket; the chains have not converged (or the
        examples are too few for the gap's noise)."""
        return self.gap < 0

    @property
    def warning(self) -> str | None:
        """What crossed bounds mean and what to raise; None when they bracket log p(x)."""
        if not self.crossed:
            return None
        now = ", ".join(f"{k}={self.options[k]}" for k in ("steps", "leapfrog") if k in self.options)
        return (
            f"the BDMC bounds crossed: the lower bound (forward AIS, {self.lower_mean:.3f}) is above the "
            f"upper bound (reverse AIS, {self.upper_mean:.3f}) by {-self.gap:.3f} ± {self.gap_stderr:.3f} "
            f"nats: the chains have not converged{f' at {now}' if now else ''}; raise the AIS steps "
            "(and chains, or n if the gap is within its noise) until lower <= upper"
        )

    def to_json(self) -> dict:
        return {
            "n": self.lower.numel(),
            "lower": self.lower_mean,
            "upper": self.upper_mean,
            "gap": self.gap,
            "gap_stderr": self.gap_stderr,
            "crossed": self.crossed,
            "warning": self.warning,
            "forward_acceptance": self.forward_acceptance,
            "reverse_acceptance": self.reverse_acceptance,
        }


@torch.no_grad()
def bdmc(
    model: nn.Module, n: int = 100, chains: int = CHAINS, batch_size: int = 100, **options
) -> BDMCResult:
    """Sandwich log p(x) on data simulated from the model between two AIS runs.

    Simulates (z, x) with z ~ p(z), x ~ p(x|z), so z is an exact sample of p(z|x). Forward AIS
    from the prior gives a stochastic lower bound on log p(x); reverse AIS from the simulated z
    back to the prior gives a stochastic upper bound. The true value lies (in expectation) in
    [lower, upper]; the gap bounds the error of forward AIS with these settings (chains, steps,
    leapfrog, schedule) on data from the model, which certifies how many steps suffice for real
    data only insofar as the model fits that data (Wu et al. 2017 use it exactly so). Both runs
    start from the prior (``init="prior"``): reversing a posterior-initialised run would need
    the flow's inverse.

    Arguments:
        model: the generative model, in eval mode (needs ``sample_prior`` and ``decode_sample``).
        n: number of simulated examples, processed ``batch_size`` at a time.
        chains, options: as in :func:`ais` (both runs start from the prior: ``init`` is fixed).

    References:
        Grosse, Ghahramani & Adams 2015, Sandwiching the marginal likelihood using bidirectional
        Monte Carlo, arXiv 1511.02543. Wu et al. 2017, arXiv 1611.04273.
    """
    if options.get("init", "prior") != "prior":
        raise ValueError("BDMC runs both directions from the prior: init must be prior")
    options = {k: v for k, v in options.items() if k != "init"}
    lower, upper, xs, zs, acc_forward, acc_reverse = [], [], [], [], 0.0, 0.0
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = model.sample_prior((b,))
        x = model.decode_sample(z)
        forward = ais(model, x, chains, init="prior", **options)
        reverse = reverse_ais(model, x, z, chains, **options)
        lower.append(forward.log_marginal)
        upper.append(reverse.log_marginal)
        xs.append(x)
        zs.append(z)
        acc_forward += forward.acceptance * b / n
        acc_reverse += reverse.acceptance * b / n
    return BDMCResult(
        torch.cat(lower), torch.cat(upper), acc_forward, acc_reverse, torch.cat(xs), torch.cat(zs),
        {**asdict(AISOptions(**options)), "chains": chains},
    )  # fmt: skip
