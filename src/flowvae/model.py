"""Config -> modules: the one place that reads a :class:`~flowvae.config.ModelConfig`.

Networks, posteriors, likelihoods and models take plain numbers (shapes, widths, step counts);
this module maps the config's keys onto them. The mapping of ``model.*`` keys to the
posterior heads' options is :data:`POSTERIOR_OPTIONS`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import fields

from torch import nn

from .config import ModelConfig
from .hierarchical import HierarchicalSpec, HierarchicalVAE
from .likelihoods import build_likelihood
from .nets import build_decoder, build_encoder
from .posteriors import build_posterior
from .vae import VAE

Shape = tuple[int, int, int]

# a posterior head's option -> the model.* key that sets it
POSTERIOR_OPTIONS = {
    "steps": "flow_steps", "hidden": "flow_hidden", "layers": "flow_layers", "context": "context_dim",
    "ortho_vecs": "num_ortho_vecs", "householder": "num_householder", "aux": "aux_dim",
}  # fmt: skip


def posterior_options(cfg: ModelConfig) -> dict:
    """The posterior heads' keyword options from ``cfg`` (each head takes its own subset)."""
    return {option: getattr(cfg, key) for option, key in POSTERIOR_OPTIONS.items()}


def build_flat(cfg: ModelConfig, shape: Shape, binary: bool) -> VAE:
    """The flat VAE: ``model.encoder`` -> ``model.posterior`` -> ``model.decoder``."""
    net = {"batch_norm": cfg.batch_norm, "input_to_all": cfg.input_to_all, "dropout": cfg.dropout,
           "channels": cfg.channels, "blocks": cfg.blocks}  # fmt: skip
    # built in this order so that a seed gives the same initial weights as before the re-layering
    likelihood = build_likelihood(cfg.likelihood, binary, shape, cfg.mixtures)
    encoder = build_encoder(cfg.encoder, shape, hidden=list(cfg.hidden), **net)
    posterior = build_posterior(cfg.posterior, encoder.out_features, cfg.latent_dim, **posterior_options(cfg))
    decoder_hidden = list(reversed(cfg.hidden)) if cfg.decoder_hidden is None else list(cfg.decoder_hidden)
    decoder = build_decoder(
        cfg.decoder, shape, likelihood.params, cfg.latent_dim, hidden=decoder_hidden, **net
    )
    return VAE(encoder, posterior, decoder, likelihood, shape)


def hierarchical_spec(cfg: ModelConfig) -> HierarchicalSpec:
    """The hierarchical model's settings: the ``model.*`` keys of the same names."""
    return HierarchicalSpec(**{f.name: copy.deepcopy(getattr(cfg, f.name)) for f in fields(HierarchicalSpec)})


def build_hierarchical(cfg: ModelConfig, shape: Shape, binary: bool) -> HierarchicalVAE:
    """The ResNet VAE with bidirectional inference (``model.type=hierarchical``)."""
    return HierarchicalVAE(hierarchical_spec(cfg), shape, binary)


MODEL_TYPES: dict[str, Callable[[ModelConfig, Shape, bool], nn.Module]] = {
    "flat": build_flat,
    "hierarchical": build_hierarchical,
}


def build_model(cfg: ModelConfig, shape: Shape, binary: bool) -> nn.Module:
    """The model named by ``cfg.type`` for images of ``shape`` (binary or 8-bit)."""
    if cfg.type not in MODEL_TYPES:
        raise ValueError(f"unknown model.type {cfg.type!r}; available: {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[cfg.type](cfg, tuple(shape), binary)


__all__ = [
    "MODEL_TYPES", "POSTERIOR_OPTIONS", "build_flat", "build_hierarchical", "build_model",
    "hierarchical_spec", "posterior_options",
]  # fmt: skip
