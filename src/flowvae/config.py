"""Typed, nested configuration, ``key=value`` overrides and the registry of named presets.

A run is fully described by one :class:`Config` (``data``, ``model``, ``train``, ``eval``).
Presets derive from one another (vdvae style); overrides are type-checked and an unknown
key fails naming the nearest valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, unknown preset. One-line message."""


# string choices: an override outside them fails when parsed, listing the valid values
DatasetName = Literal[
    "digits", "binarized_mnist", "mnist", "fashion_mnist", "cifar10", "npz",
    "omniglot", "caltech101_silhouettes", "frey_faces", "imagenet32", "imagenet64", "celeba64",
]
Binarize = Literal["auto", "dynamic", "threshold", "none"]
ModelType = Literal["flat", "hierarchical"]
Network = Literal["mlp", "gated-conv", "resnet", "linear"]
DecoderNetwork = Literal[Network, "made"]  # made: autoregressive over the pixels given z
LikelihoodName = Literal["auto", "bernoulli", "logistic", "logistic-mixture", "gaussian", "iaf-logistic"]
FlatPosterior = Literal[
    "diag", "iaf", "iaf-mean", "planar", "sylvester-orthogonal", "sylvester-householder",
    "sylvester-triangular", "realnvp", "realnvp-aux",
]  # fmt: skip
HierarchicalPosterior = Literal["up-diag", "up-iaf", "down-diag", "down-iaf", "down-iaf-mean"]
PosteriorName = Literal[FlatPosterior, HierarchicalPosterior]
# one vocabulary of priors; each model.type takes its subset (PRIORS_BY_TYPE), auto: its default
FlatPrior = Literal["standard", "vampprior", "flow"]
HierarchicalPrior = Literal["diag", "iaf"]
PriorName = Literal["auto", FlatPrior, HierarchicalPrior]
ArMask = Literal["channel", "pixel"]
Optimizer = Literal["adam", "adamax", "adam-normgrad"]
MlpLayer = Literal["elu", "gated"]
Init = Literal["default", "he"]
TwoLayerInputs = Literal["concat", "separate"]
WarmupBy = Literal["step", "epoch"]
LrSchedule = Literal["constant", "exponential", "cosine", "cosine-budget"]
Objective = Literal["elbo", "iwae"]
Amp = Literal["auto", "none", "bf16"]
Freeze = Literal["", "decoder", "encoder"]
Track = Literal["none", "mlflow"]


@dataclass
class DataConfig:
    name: DatasetName = "digits"
    root: str = ""  # folder of the dataset files; "" -> $FLOWVAE_DATA, else ./data
    binarize: Binarize = "auto"  # auto: the dataset's usual
    valid_size: int = -1  # examples held out of train for validation; -1: dataset default
    test_size: int = -1  # digits/npz (no test file): examples held out for test; -1: as valid_size
    file: str = ""  # npz: path of the .npz file (relative to root or absolute)
    key: str = ""  # npz: array name; "" -> the first uint8 array in the file
    seed: int = 0  # seed of the fixed valid/test binarization and of fixed splits (frey_faces: numpy's)


@dataclass(frozen=True)
class FlowSize:
    """The size of a flow posterior, under the names every layer uses (the ``model.*`` keys, the
    posterior heads' keyword options, ``flowvae gaps --flow-*``), and their defaults."""

    context_dim: int = 64  # size of the context vector h the encoder hands to flows
    flow_steps: int = 4
    flow_hidden: int = 320  # MADE / coupling-net hidden units
    flow_layers: int = 1  # hidden layers in each MADE / coupling net
    num_householder: int = 8  # sylvester-householder: reflections per step
    num_ortho_vecs: int = 8  # sylvester-orthogonal: columns of Q (M <= latent_dim)
    aux_dim: int = 0  # realnvp-aux: size of v; 0 -> latent_dim


FLOW_SIZE_KEYS = tuple(f.name for f in dataclasses.fields(FlowSize))


@dataclass(frozen=True)
class PriorOptions:
    """The options of the flat model's priors, under the names every layer uses (the ``model.*``
    keys, the prior classes' keyword options), their defaults, and (metadata) the prior that
    reads each (:data:`PRIOR_KEYS`)."""

    prior_components: int = field(default=500, metadata={"prior": "vampprior"})  # pseudo-inputs K
    prior_flow_steps: int = field(default=4, metadata={"prior": "flow"})  # affine couplings
    prior_flow_hidden: int = field(default=256, metadata={"prior": "flow"})  # units of each coupling's MLP
    prior_flow_layers: int = field(default=1, metadata={"prior": "flow"})  # hidden layers of each MLP


PRIOR_OPTION_KEYS = tuple(f.name for f in dataclasses.fields(PriorOptions))


@dataclass
class ModelConfig:
    type: ModelType = "flat"
    encoder: Network = "mlp"
    decoder: DecoderNetwork = "mlp"
    likelihood: LikelihoodName = "auto"
    latent_dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [300, 300])  # mlp widths (encoder)
    decoder_hidden: list[int] | None = None  # mlp decoder widths; None: hidden reversed
    batch_norm: bool = False  # mlp: batch norm after each hidden layer
    input_to_all: bool = False  # mlp: feed the network's input to every hidden layer
    dropout: float = 0.0  # mlp: dropout after each hidden layer while training (0 = off)
    mlp_layer: MlpLayer = "elu"  # mlp hidden layers: elu (linear + ELU) or gated (h(x) * sigmoid(g(x)))
    init: Init = "default"  # linear weights: torch's default, or he: N(0, 2/fan_in) (flow steps keep theirs)
    log_var_bounds: list[float] = field(default_factory=list)  # [lo, hi]: Gaussians' log-variance hardtanh'd
    channels: int = 32  # conv encoders/decoders: feature maps
    blocks: int = 2  # resnet: residual blocks per resolution
    mixtures: int = 5  # logistic-mixture: components
    # posterior q(z|x)
    posterior: PosteriorName = "diag"  # flat: FlatPosterior; hierarchical: HierarchicalPosterior
    context_dim: int = FlowSize.context_dim  # the flow size (FlowSize): one vocabulary everywhere
    flow_steps: int = FlowSize.flow_steps
    flow_hidden: int = FlowSize.flow_hidden
    flow_layers: int = FlowSize.flow_layers
    num_householder: int = FlowSize.num_householder
    num_ortho_vecs: int = FlowSize.num_ortho_vecs
    aux_dim: int = FlowSize.aux_dim
    # prior p(z): flat FlatPrior (auto: standard), hierarchical HierarchicalPrior (auto: diag)
    prior: PriorName = "auto"
    prior_components: int = PriorOptions.prior_components  # the priors' options (PriorOptions)
    prior_flow_steps: int = PriorOptions.prior_flow_steps
    prior_flow_hidden: int = PriorOptions.prior_flow_hidden
    prior_flow_layers: int = PriorOptions.prior_flow_layers
    stochastic_layers: int = 1  # flat: 2 = Tomczak & Welling's HVAE, latent_dim units per layer
    # two layers: nets on concatenations (q(z1|x,z2) reads the encoder's h), or separate: a first
    # layer per input and a network of q(z1|x,z2) on x (their code's HVAE_2level); mlp nets only
    two_layer_inputs: TwoLayerInputs = "concat"
    # hierarchical ResNet VAE (model.type=hierarchical; openai/iaf names in README)
    depths: list[int] = field(default_factory=lambda: [2, 2])  # blocks per level (resolution)
    n_h: int = 64  # deterministic feature maps per block
    n_z: int = 32  # stochastic feature maps per block
    depth_ar: int = 1  # hidden layers of each block's IAF (masked convolutions)
    up_feedback: bool = False  # up-* posteriors: sampled z feeds the bottom-up stream (openai/iaf)
    ar_mask: ArMask = "channel"  # hierarchical IAF masks; pixel: openai/iaf (reverse raster order)
    row_budget_mb: int = 1024  # hierarchical evaluation: activation memory of one pass over its rows


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 100
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    # cosine-budget: cosine over the sooner end of train.epochs and train.max_minutes (the epochs
    # that fit in the time left, re-estimated after every epoch from the epochs' measured time)
    lr_schedule: LrSchedule = "constant"
    lr_decay: float = 1.0  # exponential: multiply the lr by this every epoch
    lr_min: float = 0.0  # cosine, cosine-budget: final lr
    weight_decay: float = 0.0  # adam: decoupled (AdamW); adamax: L2 added to the gradient
    objective: Objective = "elbo"  # iwae: the importance-weighted bound over train.samples samples
    kl_warmup_epochs: float = 0.0  # KL weight rises linearly from 0 to 1 over this many epochs
    # step: the weight rises every step; epoch: it is (epoch + 1) / kl_warmup_epochs through each
    # epoch (0-based), as the VampPrior and Sylvester-flows code
    kl_warmup_by: WarmupBy = "step"
    kl_min: float = 0.0  # free bits: nats per latent dimension (0 = off); never in reported numbers
    samples: int = 1  # z samples per example in the training ELBO
    ema: float = 0.0  # Polyak averaging of weights for evaluation (0 = off), e.g. 0.999
    grad_clip: float = 0.0  # clip the global gradient norm (0 = off)
    skip_threshold: float = 0.0  # skip an update whose gradient norm exceeds this (0 = off)
    # stop after this many evaluations without a better valid ELBO, counted once the KL weight is 1
    # (0 = off)
    early_stopping: int = 0
    eval_every: int = 1  # epochs between evaluations/checkpoints
    checkpoint_every_steps: int = 0  # also checkpoint every N steps inside an epoch (0 = off)
    max_minutes: float = 0.0  # wall-time budget; then a clean stop with a checkpoint (0 = off)
    max_steps: int = 0  # step budget; then a clean stop with a checkpoint (0 = off)
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (CUDA if present, else cpu)
    amp: Amp = "auto"  # bf16 autocast of the training forward pass; auto: where the hardware has native bf16
    compile: bool = False  # torch.compile the training forward pass (for GPUs; off by default)
    threads: int = 0  # torch intra-op threads (0 = torch default)
    freeze: Freeze = ""  # left out of the optimizer; decoder: all but the encoder and posterior
    init_from: str = ""  # a run whose best weights initialise the model (with freeze: that part only)
    # mlflow: also log to MLflow ($MLFLOW_TRACKING_URI, else ./mlruns; pip install "flowvae[mlflow]")
    track: Track = "none"


EVAL_SEED = 1234  # the default seed of every evaluation: its subset (--limit) and every example's draws


@dataclass
class EvalConfig:
    samples: int = 5000  # K of the importance-sampled estimate (paper protocol)
    chunk: int = 500  # samples per chunk: memory is bounded by batch_size * chunk
    batch_size: int = 100
    valid_samples: int = 1  # samples of the valid ELBO computed during training
    seed: int = EVAL_SEED


UNDECAYED = 0.05  # a cosine decay is unfinished while the lr is more than this of the way above lr_min


def unfinished_schedule(t: TrainConfig, kl_weight: float, lr: float) -> list[str]:
    """The parts of its schedule that a run's last step had not finished, from that step's KL
    weight and learning rate (``metrics.csv``'s last row, ``TrainState``; the schedules
    themselves are :func:`flowvae.optim.kl_weight` and :func:`flowvae.optim.learning_rate`):
    the KL warm-up (weight below 1) and a cosine decay of the lr (more than 5 % of the way from
    ``train.lr_min`` up to ``train.lr`` left). Schedules are in epochs; a time budget does not
    stretch or shrink them (``cosine-budget`` alone fits itself to one), so a budget that ends
    first leaves them unfinished, and the run, ``flowvae compare`` and its table say so."""
    parts = []
    if t.kl_warmup_epochs > 0 and kl_weight < 1:
        parts.append(f"KL warm-up (KL weight {kl_weight:.2f}; 1 after {t.kl_warmup_epochs:g} epochs)")
    span = t.lr - t.lr_min
    if t.lr_schedule in ("cosine", "cosine-budget") and span > 0 and lr > t.lr_min + UNDECAYED * span:
        parts.append(f"{t.lr_schedule} lr decay (lr {lr:.3g}: {(t.lr - lr) / span:.0%} of the way from "
                     f"{t.lr:g} to {t.lr_min:g})")  # fmt: skip
    return parts


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# overrides


def valid_keys(cfg: Config | None = None) -> list[str]:
    """All dotted keys of a config, e.g. ``model.latent_dim``."""
    cfg = cfg or Config()
    return [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, section.name))
    ]


def _field_type(obj: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    return hints[name]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``typ``; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if value is None and "" in choices:
            return ""
        if isinstance(value, str) and value in choices:
            return value
        valid = ", ".join(c if c else '""' for c in choices)
        raise ConfigError(f"{key}: {value!r} is not a valid value; valid values: {valid}")
    if origin in (list, tuple):
        (inner,) = typing.get_args(typ)[:1]
        if not isinstance(value, (list, tuple)):  # a scalar is not read as one element: `hidden: 300`
            raise ConfigError(f"{key}: expected a list, e.g. [{value!r}], got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(typ):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {typ}")
    if typ is type(None):
        if value is None or value == "null":
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {typ}")


# ---------------------------------------------------------------------------------------------
# value checks: each key's range, checked whenever a key is set (overrides, YAML, presets)

Check = tuple[Callable[[Any], bool], str]
_POSITIVE: Check = (lambda v: v > 0, "must be > 0")
_NON_NEGATIVE: Check = (lambda v: v >= 0, "must be >= 0")
_SPLIT_SIZE: Check = (lambda v: v >= -1, "must be >= 0, or -1 for the dataset default")
_FRACTION: Check = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_DEVICE: Check = (
    lambda v: re.fullmatch(r"cpu|auto|cuda(:\d+)?", v) is not None, "must be cpu, cuda, cuda:N or auto"
)

# the values a free-form string key takes, as `flowvae config` lists them (checked by CHECKS)
FORMS: dict[str, tuple[str, ...]] = {"train.device": ("cpu", "cuda", "cuda:N", "auto")}

CHECKS: dict[str, Check] = {
    "data.valid_size": _SPLIT_SIZE,
    "data.test_size": _SPLIT_SIZE,
    "model.latent_dim": _POSITIVE,
    "model.hidden": _POSITIVE,  # lists: every element
    "model.decoder_hidden": _POSITIVE,
    "model.channels": _POSITIVE,
    "model.blocks": _POSITIVE,
    "model.mixtures": _POSITIVE,
    "model.context_dim": _NON_NEGATIVE,
    "model.flow_steps": _NON_NEGATIVE,
    "model.flow_hidden": _POSITIVE,
    "model.flow_layers": _NON_NEGATIVE,
    "model.num_householder": _POSITIVE,
    "model.num_ortho_vecs": _POSITIVE,
    "model.aux_dim": _NON_NEGATIVE,
    "model.prior_components": _POSITIVE,
    "model.prior_flow_steps": _POSITIVE,
    "model.prior_flow_hidden": _POSITIVE,
    "model.prior_flow_layers": _NON_NEGATIVE,
    "model.stochastic_layers": (lambda v: v in (1, 2), "must be 1 or 2"),
    "model.depths": _POSITIVE,
    "model.n_h": _POSITIVE,
    "model.n_z": _POSITIVE,
    "model.depth_ar": _NON_NEGATIVE,
    "model.row_budget_mb": _POSITIVE,
    "model.dropout": _FRACTION,
    "train.epochs": _POSITIVE,
    "train.batch_size": _POSITIVE,
    "train.lr": _POSITIVE,
    "train.lr_decay": _POSITIVE,
    "train.lr_min": _NON_NEGATIVE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.kl_warmup_epochs": _NON_NEGATIVE,
    "train.kl_min": _NON_NEGATIVE,
    "train.samples": _POSITIVE,
    "train.ema": _FRACTION,
    "train.grad_clip": _NON_NEGATIVE,
    "train.skip_threshold": _NON_NEGATIVE,
    "train.early_stopping": _NON_NEGATIVE,
    "train.eval_every": _POSITIVE,
    "train.checkpoint_every_steps": _NON_NEGATIVE,
    "train.max_minutes": _NON_NEGATIVE,
    "train.max_steps": _NON_NEGATIVE,
    "train.device": _DEVICE,
    "train.threads": _NON_NEGATIVE,
    "eval.samples": _POSITIVE,
    "eval.chunk": _POSITIVE,
    "eval.batch_size": _POSITIVE,
    "eval.valid_samples": _POSITIVE,
}


def check_value(key: str, value: Any) -> None:
    """Reject a non-finite float, or a value outside ``CHECKS[key]`` (lists: each element)."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}={v}: must be a finite number")
        if key in CHECKS and v is not None and not CHECKS[key][0](v):
            raise ConfigError(f"{key}={v}: {CHECKS[key][1]}")


# keys read by one model.type only: setting one for the other type is a mistake (it would be ignored)
MODEL_TYPE_KEYS: dict[str, set[str]] = {
    "flat": {
        "encoder", "decoder", "latent_dim", "hidden", "decoder_hidden", "batch_norm", "input_to_all",
        "dropout", "mlp_layer", "init", "log_var_bounds", "two_layer_inputs", "channels", "blocks",
        "context_dim", "flow_steps", "flow_hidden", "flow_layers", "num_householder", "num_ortho_vecs",
        "aux_dim", *PRIOR_OPTION_KEYS, "stochastic_layers",
    },
    "hierarchical": {"depths", "n_h", "n_z", "depth_ar", "up_feedback", "ar_mask", "row_budget_mb"},
}  # fmt: skip
POSTERIORS_BY_TYPE = {
    "flat": typing.get_args(FlatPosterior), "hierarchical": typing.get_args(HierarchicalPosterior),
}  # fmt: skip
PRIORS_BY_TYPE = {
    "flat": ("auto", *typing.get_args(FlatPrior)),
    "hierarchical": ("auto", *typing.get_args(HierarchicalPrior)),
}  # fmt: skip
# keys of one prior only: given for another, they would be ignored
PRIOR_KEYS = {f.name: f.metadata["prior"] for f in dataclasses.fields(PriorOptions)}


def check_ignored(cfg: Config, given: list[str] | tuple[str, ...]) -> None:
    """Refuse a ``given`` (dotted) key that ``cfg.model.type`` does not read."""
    for other, keys in MODEL_TYPE_KEYS.items():
        ignored = [k for k in given if other != cfg.model.type and k.startswith("model.") and k[6:] in keys]
        if ignored:
            raise ConfigError(
                f"{ignored[0]} is ignored by model.type={cfg.model.type} (it is for model.type={other}); "
                "remove it"
            )


def validate(cfg: Config, given: list[str] | tuple[str, ...] = ()) -> Config:
    """Checks across keys, made once the whole config is known (before any file is written).

    Every key's own range is checked when it is set (:func:`check_value`); here: the posterior
    of ``model.type``, hierarchical levels, flow steps for a flow posterior, and that none of
    the keys the user ``given`` (dotted) is one that ``model.type`` ignores (a preset's own
    values for the other type are harmless and not reported).
    """
    m = cfg.model
    allowed = POSTERIORS_BY_TYPE[m.type]
    if m.posterior not in allowed:
        raise ConfigError(
            f"model.posterior={m.posterior} is not a posterior of model.type={m.type}; "
            f"valid values: {', '.join(allowed)}"
        )
    if m.prior not in PRIORS_BY_TYPE[m.type]:
        raise ConfigError(
            f"model.prior={m.prior} is not a prior of model.type={m.type}; "
            f"valid values: {', '.join(PRIORS_BY_TYPE[m.type])}"
        )
    check_ignored(cfg, given)
    for key in given:
        name = key[6:] if key.startswith("model.") else ""
        if name in PRIOR_KEYS and m.prior != PRIOR_KEYS[name]:
            raise ConfigError(
                f"{key} is ignored unless model.prior={PRIOR_KEYS[name]} (it is {m.prior}); remove it"
            )
    if m.type == "hierarchical" and not m.depths:
        raise ConfigError("model.depths=[]: model.type=hierarchical needs at least one level, e.g. [2, 2]")
    bounds = m.log_var_bounds
    if len(bounds) not in (0, 2) or (bounds and bounds[0] >= bounds[1]):
        raise ConfigError(f"model.log_var_bounds={bounds}: use [] (unbounded) or [low, high] with low < high")
    mlps = m.encoder == m.decoder == "mlp"
    if m.two_layer_inputs == "separate" and (m.stochastic_layers != 2 or not mlps):
        raise ConfigError(
            "model.two_layer_inputs=separate needs model.stochastic_layers=2 and mlp encoder and decoder "
            f"(it is stochastic_layers={m.stochastic_layers}, encoder={m.encoder}, decoder={m.decoder})"
        )
    if m.type == "flat" and m.posterior != "diag" and m.flow_steps <= 0:
        raise ConfigError(f"model.flow_steps={m.flow_steps}: model.posterior={m.posterior} needs >= 1 step")
    if m.prior == "vampprior" and (m.batch_norm or m.dropout > 0):
        raise ConfigError(
            "model.prior=vampprior runs its pseudo-inputs through the encoder, whose batch norm or "
            "dropout would make the prior evaluated another than the one trained; use "
            "model.batch_norm=false and model.dropout=0, or another model.prior"
        )
    if cfg.train.freeze == "decoder" and m.prior == "vampprior":
        raise ConfigError(
            "train.freeze=decoder keeps the generative model fixed, but model.prior=vampprior is the "
            "encoder at its pseudo-inputs: a new encoder changes the prior; use another model.prior"
        )
    if cfg.train.objective == "iwae" and cfg.train.kl_min > 0:
        raise ConfigError(
            f"train.kl_min={cfg.train.kl_min:g} (free bits) clamps a KL term that train.objective=iwae does "
            "not have; use train.kl_min=0 or train.objective=elbo"
        )
    for key in valid_keys(cfg):
        section, name = key.split(".")
        check_value(key, getattr(getattr(cfg, section), name))
    return cfg


def nearest(name: str, names: list[str], score: Callable[[str], float] | None = None) -> list[str]:
    """The ``names`` nearest to ``name``, best first: those whose ``score`` (default: difflib's
    ratio to ``name``) is above 0.7 and within 0.05 of the best (a key's or a preset's "did you mean")."""
    score = score or (lambda n: difflib.SequenceMatcher(None, name, n).ratio())
    scores = {n: score(n) for n in names}
    best = max(scores.values(), default=0.0)
    return sorted((n for n, v in scores.items() if v >= max(0.7, best - 0.05)), key=lambda n: -scores[n])


def suggest_keys(key: str, keys: list[str]) -> str:
    """The valid keys nearest to ``key`` by difflib's ratio of the names after the dot (``posterior``
    -> ``model.posterior``; in another section than ``key``'s, the better of 0.95 times that and
    the whole keys' ratio), those above 0.7 and within 0.05 of the best: ``did you mean ...?``."""
    section, _, name = key.rpartition(".")

    def score(k: str) -> float:
        own, _, own_name = k.partition(".")
        by_name = difflib.SequenceMatcher(None, name, own_name).ratio()
        if section in ("", own):
            return by_name
        return max(0.95 * by_name, difflib.SequenceMatcher(None, key, k).ratio())

    near = nearest(key, keys, score)
    listing = "`flowvae config` lists every key"
    return f"did you mean {' or '.join(near[:3])}? ({listing})" if near else listing


def get_key(cfg: Config, key: str) -> Any:
    """The value of a dotted key (``model.posterior``) of ``cfg``."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.name`` to ``value`` (already parsed), type- and range-checked."""
    parts = key.split(".")
    if len(parts) != 2 or not hasattr(cfg, parts[0]) or not dataclasses.is_dataclass(
        getattr(cfg, parts[0])
    ) or parts[1] not in {f.name for f in dataclasses.fields(getattr(cfg, parts[0]))}:
        raise ConfigError(f"unknown config key {key!r}; {suggest_keys(key, valid_keys(cfg))}")
    section = getattr(cfg, parts[0])
    value = _coerce(value, _field_type(section, parts[1]), key)
    check_value(key, value)
    setattr(section, parts[1], value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.hidden=[500,500]"`` -> ``("model.hidden", [500, 500])`` (YAML value syntax)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` overrides, then :func:`validate` the result as a whole.

    The last step of building a run's config (preset, YAML, overrides; or a resumed run's saved
    config): everything a bad value can break is caught here, before any file is written.
    """
    given = []
    for text in overrides:
        key, value = parse_override(text)
        set_key(cfg, key, value)
        given.append(key)
    return validate(cfg, given)


def apply_dict(cfg: Config, values: dict[str, Any], origin: str = "config") -> Config:
    """Apply a nested ``{section: {name: value}}`` mapping (a YAML config file)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections (data, model, train, eval)")
    for section, entries in values.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        for name, value in entries.items():
            set_key(cfg, f"{section}.{name}", value)
    if cfg.model.type == "flat" and cfg.model.prior == "diag":
        # configs saved before the flat model read model.prior hold the hierarchical default there
        cfg.model.prior = "auto"
    return cfg


def load_yaml(path: str | Path, cfg: Config | None = None) -> Config:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{yaml_where(e)}: {problem}") from None
    cfg = cfg or Config()
    before = copy.deepcopy(cfg.model)
    try:
        cfg = apply_dict(cfg, values or {}, origin=str(path))
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    # keys the file changed that the model type ignores (a full dump, e.g. a run's config.yaml,
    # repeats the other type's defaults: harmless); against the type in effect after this file
    changed = [f"model.{f.name}" for f in dataclasses.fields(before)
               if getattr(before, f.name) != getattr(cfg.model, f.name)]  # fmt: skip
    try:
        check_ignored(cfg, changed)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def yaml_where(error: yaml.YAMLError) -> str:
    """`` at line L, column C`` where a YAML error marks its place (1-based), else ``""``."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def from_dict(values: dict[str, Any]) -> Config:
    return apply_dict(Config(), values)


def save_yaml(cfg: Config, path: str | Path, comment: str = "") -> None:
    """Every key of ``cfg``; ``comment`` (e.g. where the values came from) as ``#`` lines above."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    Path(path).write_text(head + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
