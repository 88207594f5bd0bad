"""What one training update is made of: the loss (KL warm-up, free bits, the IWAE objective),
the learning-rate schedules, the optimizer and its EMA, the training precision (bf16 autocast
where the hardware has it) and ``train_step`` itself; plus the valid ELBO that training reports
and ``train.init_from``/``train.freeze``. :mod:`flowvae.train` runs the loop.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checkpoint import load_run
from .config import Config, ConfigError
from .core import ElboTerms
from .data import ImageData, iterate_batches
from .estimators import elbo_terms
from .layers import row_blocks


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    cfg: Config,
    beta: float,
    lr: float,
) -> dict[str, float]:
    """One update. Returns floats; ``skipped`` is 1 when the loss or gradient was not finite
    (or the gradient norm exceeded ``train.skip_threshold``) and the update was not applied.

    ``model`` may be wrapped in DistributedDataParallel: backward always runs (a NaN loss gives
    NaN gradients), so every rank reaches the same skip decision after the gradient all-reduce.
    """
    t = cfg.train
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=uses_bf16(t.amp, x.device.type)):
        terms = model(x, t.samples)
    latent_dim = getattr(model, "_orig_mod", model)
    latent_dim = getattr(latent_dim, "module", latent_dim).latent_dim
    loss = training_loss(terms, beta, t.kl_min, latent_dim, t.objective)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if t.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
    else:  # no clipping: the norm only (for the skip test and the log), no pass scaling by 1
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # the step's one host sync: everything the skip decision and the log need, in one transfer
    stats = [loss, terms.log_weight.mean(), terms.kl.mean(), grad_norm]
    loss_value, elbo, kl, norm = torch.stack([v.detach().float() for v in stats]).tolist()
    skip = not math.isfinite(norm) or not math.isfinite(loss_value)
    skip = skip or (t.skip_threshold > 0 and norm > t.skip_threshold)
    if skip:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return {"loss": loss_value, "elbo": elbo, "kl": kl, "grad_norm": norm, "skipped": float(skip)}


@torch.no_grad()
def evaluate_elbo(model: nn.Module, data: ImageData, split: str, cfg: Config) -> float:
    """Mean ELBO (true KL, no warm-up, no free bits) over a split, with a fixed RNG stream;
    NaN for an empty split (``data.valid_size=0``: no validation)."""
    if len(data.split(split)) == 0:
        return math.nan
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.eval.seed)
        for x in iterate_batches(data, split, cfg.eval.batch_size, shuffle=False, seed=cfg.eval.seed):
            x = x.to(device)
            total += elbo_terms(model, x, cfg.eval.valid_samples).log_weight.mean(0).sum().item()
            n += x.shape[0]
    return total / n


class EMA:
    """Polyak averaging of the weights: shadow <- d * shadow + (1 - d) * weights.

    d = min(decay, (1 + step) / (10 + step)): early on the average forgets quickly, so a short
    run is not evaluated with weights still close to their initialisation (as TensorFlow's
    ExponentialMovingAverage with num_updates). A function of the step: resumes exactly.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.model.parameters(), model.parameters(), strict=True):
            s.lerp_(p, 1 - decay)
        for s, b in zip(self.model.buffers(), model.buffers(), strict=True):
            s.copy_(b)


def learning_rate(cfg: Config, progress: float, horizon: float = 0.0) -> float:
    """The lr after ``progress`` epochs: a pure function of progress (and, for ``cosine-budget``,
    of the ``horizon`` in epochs kept in the run's state), so resume needs no other state."""
    t = cfg.train
    if t.lr_schedule == "constant":
        return t.lr
    if t.lr_schedule == "exponential":
        return t.lr * t.lr_decay ** math.floor(progress)
    if t.lr_schedule in ("cosine", "cosine-budget"):
        end = horizon if t.lr_schedule == "cosine-budget" and horizon > 0 else t.epochs
        frac = min(progress / max(end, 1e-9), 1.0)
        return t.lr_min + 0.5 * (t.lr - t.lr_min) * (1 + math.cos(math.pi * frac))
    raise ConfigError(
        f"unknown train.lr_schedule {t.lr_schedule!r}; use constant, exponential, cosine, cosine-budget"
    )


def budget_horizon(cfg: Config, epoch: int, epochs_timed: float, seconds: float) -> float:
    """The epoch at which ``cosine-budget`` ends: ``train.epochs``, or sooner the epoch at which
    ``train.max_minutes`` runs out, had the ``epochs_timed`` epochs just done (in ``seconds``,
    evaluations included) set the pace of the rest. ``epoch``: epochs completed so far."""
    t = cfg.train
    if not t.max_minutes or epochs_timed <= 0:
        return float(t.epochs)
    left = max(60 * t.max_minutes - seconds, 0.0)
    return min(float(t.epochs), epoch + left * epochs_timed / max(seconds, 1e-9))


def kl_weight(cfg: Config, progress: float) -> float:
    """KL warm-up (Sønderby et al. 2016): the weight rises linearly to 1 over kl_warmup_epochs,
    every step (``train.kl_warmup_by=step``) or once an epoch (``epoch``: (e + 1) / w through
    epoch e, counted from 0: the VampPrior and Sylvester-flows code's beta = epoch / warmup with
    epochs counted from 1, so the first epoch trains at 1 / w, not 0)."""
    t = cfg.train
    w = t.kl_warmup_epochs
    if w <= 0:
        return 1.0
    if t.kl_warmup_by == "epoch":
        return min(1.0, (math.floor(progress) + 1) / w)
    return min(1.0, progress / w)


def training_loss(
    terms: ElboTerms, beta: float, kl_min: float, latent_dim: int, objective: str = "elbo"
) -> Tensor:
    """-(E[log p(x|z)] - beta * KL) per example, with free bits (Kingma et al. 2016, Eq. 15).

    ``objective="iwae"``: minus the importance-weighted bound (Burda et al. 2016) over the
    samples (dim 0), log mean_k exp(log p(x|z_k) + beta (log p(z_k) - log q(z_k|x))): with one
    sample it is the ELBO; with more it is tighter. Free bits do not apply to it.

    Free bits: the KL of each group, averaged over the minibatch, is clamped from below at
    ``kl_min`` nats per latent dimension (a group is the whole latent vector of a flat VAE, a
    feature map of a layer in the hierarchical model). Reported numbers never use this.
    """
    if objective == "iwae":
        log_w = terms.log_likelihood - beta * terms.kl
        return -(torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).mean()
    if terms.kl_groups is None:
        kl = terms.kl.mean()
        if kl_min > 0:
            kl = torch.clamp(kl, min=kl_min * latent_dim)
    else:
        kl = terms.kl_groups.flatten(0, -2).mean(0)  # (G,) mean over samples and batch
        kl = torch.clamp(kl, min=kl_min).sum() if kl_min > 0 else kl.sum()
    return -terms.log_likelihood.mean() + beta * kl


# decoder: the generative model, everything but the encoder and posterior (the prior too: a
# learned prior, the two-layer model's p(z1|z2)); encoder: the inference model
FREEZE = {"decoder": ("decoder.", "likelihood.", "prior."), "encoder": ("encoder.", "posterior.")}


def freeze(model: nn.Module, part: str) -> None:
    """Leave a part of the model out of training (``train.freeze``), e.g. to retrain only the
    encoder of a trained model (Cremer et al. 2018, with ``train.init_from``)."""
    if not part:
        return
    if part not in FREEZE:
        raise ConfigError(f"unknown train.freeze {part!r}; use decoder or encoder")
    names = [n for n, p in model.named_parameters() if n.startswith(FREEZE[part])]
    if not names:
        raise ConfigError(f"train.freeze={part}: this model has no {part} parameters")
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)


def init_from(model: nn.Module, run_dir: str, part: str, device: torch.device) -> None:
    """Initialise from a trained run's best weights: all of them, or with ``train.freeze`` only
    the frozen part (the rest starts fresh: e.g. a new encoder on a trained decoder)."""
    source = load_run(run_dir, "best", device)[1].state_dict()
    if part:
        if part not in FREEZE:
            raise ConfigError(f"unknown train.freeze {part!r}; use decoder or encoder")
        source = {k: v for k, v in source.items() if k.startswith(FREEZE[part])}
    own = model.state_dict()
    bad = [k for k, v in source.items() if k not in own or own[k].shape != v.shape]
    if bad or not source:
        raise ConfigError(
            f"train.init_from={run_dir}: its {part or 'model'} does not match this model's "
            f"({len(bad)} mismatched tensors, e.g. {bad[:1]})"
        )
    model.load_state_dict(source, strict=not part)


class AdamNormGrad(torch.optim.Adam):
    """The optimizer of Tomczak & Welling's VampPrior code (``utils/optimizer.py``), exactly: Adam
    on each parameter tensor's gradient divided by its L2 norm (+ 1e-7), L2 weight decay added
    after the normalisation, and Adam's "efficient" form (Kingma & Ba 2015, Sec. 2), whose eps is
    added to sqrt(v) before the bias corrections. torch's Adam adds it after them, so its eps at
    step t is ``eps / sqrt(1 - beta2^t)`` here; the update then runs in torch's fused kernel (one
    pass over the parameters: the plain foreach form took 40 % of a VampPrior step on a CPU).

    ``row_blocks`` ({id(parameter): k}, :func:`~flowvae.layers.row_blocks`) names parameters
    that hold k of the reference's tensors as k equal blocks of rows (a gated layer's h and g):
    each block's gradient is normalised on its own, as the reference normalises each tensor."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 row_blocks: dict[int, int] | None = None):  # fmt: skip
        params = list(params)
        fused = all(p.dtype in (torch.float32, torch.float64) for p in params) or None
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
        for group in self.param_groups:
            group["reference_eps"] = eps
        self.row_blocks = dict(row_blocks or {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            blocks = [block for p in params for block in self._blocks(p)]
            norms = torch._foreach_norm(blocks)
            torch._foreach_add_(norms, 1e-7)
            torch._foreach_div_(blocks, norms)
            state = self.state.get(params[0], {})
            t = int(state["step"]) + 1 if "step" in state else 1
            group["eps"] = group["reference_eps"] / math.sqrt(1 - group["betas"][1] ** t)
        return super().step(closure)

    def _blocks(self, p: Tensor) -> Sequence[Tensor]:
        """``p``'s gradient as the views normalised one by one (itself, or its blocks of rows)."""
        k = self.row_blocks.get(id(p), 1)
        if k == 1:
            return (p.grad,)
        if not p.grad.is_contiguous():  # views of its rows must be views of the gradient itself
            p.grad = p.grad.contiguous()
        return p.grad.view(k, -1).unbind(0)

    def load_state_dict(self, state_dict: dict) -> None:
        """Also the state of the earlier, foreach form of this optimizer, whose steps are ints and
        whose groups hold only lr, betas, eps (the reference's) and weight_decay: a key a saved group
        lacks keeps this optimizer's value (``fused`` included), ``reference_eps`` defaults to its eps."""
        saved = state_dict.get("param_groups")
        if isinstance(saved, list) and len(saved) == len(self.param_groups):
            mine = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
            saved = [{**m, "reference_eps": g.get("eps"), **g} if isinstance(g, dict) else g
                     for m, g in zip(mine, saved, strict=True)]  # fmt: skip
            state_dict = {**state_dict, "param_groups": saved}
        super().load_state_dict(state_dict)


def optimizer_for(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, Adamax or AdamNormGrad over the trainable parameters, in one fused kernel (Adam) or
    one call per operation over all tensors (Adamax, AdamNormGrad) instead of a Python loop over
    parameters: at batch 100 on a CPU the loop cost ~2 ms of a ~10 ms step. Same update rule
    either way."""
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    if t.optimizer == "adam":
        fused = all(p.dtype in (torch.float32, torch.float64) for p in params)
        adam = torch.optim.AdamW if t.weight_decay > 0 else torch.optim.Adam
        return adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)
    if t.optimizer == "adam-normgrad":
        return AdamNormGrad(params, lr=t.lr, weight_decay=t.weight_decay, row_blocks=row_blocks(model))
    if t.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=t.lr, weight_decay=t.weight_decay, foreach=True)
    raise ConfigError(f"unknown train.optimizer {cfg.train.optimizer!r}; use adam, adamax or adam-normgrad")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether this machine multiplies bf16 matrices in hardware: AVX-512 BF16 or AMX on x86
    CPUs, compute capability 8.0 or later on CUDA GPUs."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def uses_bf16(amp: str, device_type: str) -> bool:
    """``train.amp`` resolved on ``device_type``: ``auto`` is bf16 where :func:`native_bf16`."""
    return amp == "bf16" or (amp == "auto" and native_bf16(device_type))


def precision_note(amp: str, device_type: str) -> str:
    """What the training forward pass runs in, and why; recorded in ``invocations.jsonl``."""
    if uses_bf16(amp, device_type):
        why = "this machine has native bf16 matmul" if amp == "auto" else "train.amp=bf16"
        return f"bf16 autocast ({why}; evaluation stays float32)"
    why = "no native bf16 matmul on this machine" if amp == "auto" else "train.amp=none"
    return f"float32 ({why})"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown train.device {name!r}; use auto, cpu or cuda")
    return torch.device(name)
