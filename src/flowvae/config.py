"""Typed, nested configuration, ``key=value`` overrides and the registry of named presets.

A run is fully described by one :class:`Config` (``data``, ``model``, ``train``, ``eval``).
Presets derive from one another (vdvae style); overrides are type-checked and an unknown
key fails with the list of valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, unknown preset. One-line message."""


@dataclass
class DataConfig:
    name: str = "digits"  # digits | binarized_mnist | mnist | fashion_mnist | cifar10 | npz
    root: str = ""  # folder of the dataset files; "" -> $FLOWVAE_DATA, else ./data
    binarize: str = "auto"  # auto | dynamic | threshold | none  (auto: the dataset's usual)
    valid_size: int = -1  # examples held out of train for validation; -1: dataset default
    test_size: int = -1  # digits/npz (no test file): examples held out for test; -1: as valid_size
    file: str = ""  # npz: path of the .npz file (relative to root or absolute)
    key: str = ""  # npz: array name; "" -> the first uint8 array in the file
    seed: int = 0  # seed of the fixed valid/test binarization and of fixed splits


@dataclass
class ModelConfig:
    type: str = "flat"  # flat | hierarchical
    encoder: str = "mlp"  # mlp | gated-conv | resnet | linear
    decoder: str = "mlp"  # mlp | gated-conv | resnet | linear
    likelihood: str = "auto"  # auto | bernoulli | logistic | logistic-mixture | gaussian | iaf-logistic
    latent_dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [300, 300])  # mlp widths (encoder)
    decoder_hidden: list[int] | None = None  # mlp decoder widths; None: hidden reversed
    batch_norm: bool = False  # mlp: batch norm after each hidden layer
    input_to_all: bool = False  # mlp: feed the network's input to every hidden layer
    channels: int = 32  # conv encoders/decoders: feature maps
    blocks: int = 2  # resnet: residual blocks per resolution
    mixtures: int = 5  # logistic-mixture: components
    # posterior q(z|x)
    posterior: str = "diag"
    context_dim: int = 64  # size of the context vector h the encoder hands to flows
    flow_steps: int = 4
    flow_hidden: int = 320  # MADE / coupling-net hidden units
    flow_layers: int = 1  # hidden layers in each MADE / coupling net
    num_householder: int = 8  # sylvester-householder: reflections per step
    num_ortho_vecs: int = 8  # sylvester-orthogonal: columns of Q (M <= latent_dim)
    aux_dim: int = 0  # realnvp-aux: size of v; 0 -> latent_dim
    # hierarchical ResNet VAE (model.type=hierarchical; openai/iaf names in README)
    depths: list[int] = field(default_factory=lambda: [2, 2])  # blocks per level (resolution)
    n_h: int = 64  # deterministic feature maps per block
    n_z: int = 32  # stochastic feature maps per block
    depth_ar: int = 1  # hidden layers of each block's IAF (masked convolutions)
    prior: str = "diag"  # hierarchical prior p(z_i|z_>i): diag | iaf
    up_feedback: bool = False  # up-* posteriors: sampled z feeds the bottom-up stream (openai/iaf Theano)
    ar_mask: str = "channel"  # hierarchical IAF masks: channel | pixel (openai/iaf: pixels, reverse raster)
    row_budget_mb: int = 1024  # hierarchical evaluation: activation memory of one pass over its rows


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 100
    optimizer: str = "adam"  # adam | adamax
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | exponential | cosine
    lr_decay: float = 1.0  # exponential: multiply the lr by this every epoch
    lr_min: float = 0.0  # cosine: final lr
    kl_warmup_epochs: float = 0.0  # KL weight rises linearly from 0 to 1 over this many epochs
    kl_min: float = 0.0  # free bits: nats per latent dimension (0 = off); never in reported numbers
    samples: int = 1  # z samples per example in the training ELBO
    ema: float = 0.0  # Polyak averaging of weights for evaluation (0 = off), e.g. 0.999
    grad_clip: float = 0.0  # clip the global gradient norm (0 = off)
    skip_threshold: float = 0.0  # skip an update whose gradient norm exceeds this (0 = off)
    early_stopping: int = 0  # stop after this many evaluations without a better valid ELBO (0 = off)
    eval_every: int = 1  # epochs between evaluations/checkpoints
    checkpoint_every_steps: int = 0  # also checkpoint every N steps inside an epoch (0 = off)
    max_minutes: float = 0.0  # wall-time budget; then a clean stop with a checkpoint (0 = off)
    max_steps: int = 0  # step budget; then a clean stop with a checkpoint (0 = off)
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    amp: str = "none"  # none | bf16: autocast the training forward pass (for GPUs; off by default)
    compile: bool = False  # torch.compile the training forward pass (for GPUs; off by default)
    threads: int = 0  # torch intra-op threads (0 = torch default)
    freeze: str = ""  # "" | decoder | encoder: parameters left out of the optimizer
    init_from: str = ""  # a run whose best weights initialise the model (with freeze: that part only)


@dataclass
class EvalConfig:
    samples: int = 5000  # K of the importance-sampled estimate (paper protocol)
    chunk: int = 500  # samples per chunk: memory is bounded by batch_size * chunk
    batch_size: int = 100
    valid_samples: int = 1  # samples of the valid ELBO computed during training
    seed: int = 1234


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
    if origin in (list, tuple):
        (inner,) = typing.get_args(typ)[:1]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
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


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.name`` to ``value`` (already parsed), type-checked."""
    parts = key.split(".")
    if len(parts) != 2 or not hasattr(cfg, parts[0]) or not dataclasses.is_dataclass(
        getattr(cfg, parts[0])
    ) or parts[1] not in {f.name for f in dataclasses.fields(getattr(cfg, parts[0]))}:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys(cfg))}")
    section = getattr(cfg, parts[0])
    setattr(section, parts[1], _coerce(value, _field_type(section, parts[1]), key))


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
    for text in overrides:
        set_key(cfg, *parse_override(text))
    return cfg


def apply_dict(cfg: Config, values: dict[str, Any], origin: str = "config") -> Config:
    """Apply a nested ``{section: {name: value}}`` mapping (a YAML config file)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections (data, model, train, eval)")
    for section, entries in values.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        for name, value in entries.items():
            set_key(cfg, f"{section}.{name}", value)
    return cfg


def load_yaml(path: str | Path, cfg: Config | None = None) -> Config:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return apply_dict(cfg or Config(), values or {}, origin=str(path))


def from_dict(values: dict[str, Any]) -> Config:
    return apply_dict(Config(), values)


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# presets


@dataclass(frozen=True)
class Preset:
    description: str
    parent: str | None
    overrides: dict[str, Any]


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, parent: str | None = None, **overrides: Any):
    """Register a preset; ``overrides`` use ``section__name`` keyword form."""
    PRESETS[name] = Preset(
        description, parent, {k.replace("__", "."): v for k, v in overrides.items()}
    )


def preset(name: str) -> Config:
    from . import presets  # noqa: F401  (fills PRESETS)

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    cfg = preset(p.parent) if p.parent else Config()
    for key, value in p.overrides.items():
        set_key(cfg, key, copy.deepcopy(value))
    return cfg
