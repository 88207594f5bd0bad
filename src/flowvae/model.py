"""Config -> modules: the one place that reads a :class:`~flowvae.config.ModelConfig`.

Networks, posteriors, likelihoods and models take plain numbers (shapes, widths, step counts);
this module maps the config's keys onto them. A posterior head's options are the ``model.*``
keys of the same names (:data:`~flowvae.config.FLOW_SIZE_KEYS`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import fields

from torch import nn

from .config import FLOW_SIZE_KEYS, ConfigError, ModelConfig
from .hierarchical import HierarchicalSpec, HierarchicalVAE
from .likelihoods import build_likelihood
from .nets import build_decoder, build_encoder
from .posteriors import build_posterior
from .priors import build_prior
from .two_layer import TwoLayerHead, TwoLayerPrior
from .vae import VAE

Shape = tuple[int, int, int]

def posterior_options(cfg: ModelConfig) -> dict:
    """The posterior heads' keyword options from ``cfg`` (each head takes its own subset)."""
    return {key: getattr(cfg, key) for key in FLOW_SIZE_KEYS}


def build_flat(cfg: ModelConfig, shape: Shape, binary: bool) -> VAE:
    """The flat VAE: ``model.encoder`` -> ``model.posterior`` -> ``model.decoder``, prior
    ``model.prior``; with ``model.stochastic_layers=2`` the posterior and the prior are those of
    the top layer z2 of :mod:`flowvae.two_layer` (``latent_dim`` units in each layer)."""
    net = {"batch_norm": cfg.batch_norm, "input_to_all": cfg.input_to_all, "dropout": cfg.dropout,
           "channels": cfg.channels, "blocks": cfg.blocks}  # fmt: skip
    # built in this order: a seed gives the same initial weights in every version
    likelihood = build_likelihood(cfg.likelihood, binary, shape, cfg.mixtures)
    encoder = build_encoder(cfg.encoder, shape, hidden=list(cfg.hidden), **net)
    posterior = build_posterior(cfg.posterior, encoder.out_features, cfg.latent_dim, **posterior_options(cfg))
    decoder_hidden = list(reversed(cfg.hidden)) if cfg.decoder_hidden is None else list(cfg.decoder_hidden)
    layers = cfg.stochastic_layers
    decoder = build_decoder(
        cfg.decoder, shape, likelihood.params, layers * cfg.latent_dim, hidden=decoder_hidden, **net
    )
    prior = build_prior(
        "standard" if cfg.prior == "auto" else cfg.prior, cfg.latent_dim, shape, cfg.prior_components,
        cfg.prior_flow_steps, cfg.prior_flow_hidden, cfg.prior_flow_layers,
    )  # fmt: skip
    if layers == 2:  # Tomczak & Welling's HVAE: q(z2|x) q(z1|x, z2), p(z2) p(z1|z2)
        posterior = TwoLayerHead(posterior, encoder.out_features, cfg.latent_dim, cfg.hidden)
        prior = TwoLayerPrior(prior, cfg.latent_dim, list(reversed(cfg.hidden)))
    return VAE(encoder, posterior, decoder, likelihood, shape, prior)


def hierarchical_spec(cfg: ModelConfig) -> HierarchicalSpec:
    """The hierarchical model's settings: the ``model.*`` keys of the same names (``prior=auto``:
    ``diag``)."""
    spec = HierarchicalSpec(**{f.name: copy.deepcopy(getattr(cfg, f.name)) for f in fields(HierarchicalSpec)})
    spec.prior = "diag" if spec.prior == "auto" else spec.prior
    return spec


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


def check_for_data(cfg: ModelConfig, shape: Shape, train_examples: int) -> None:
    """What only the data can refuse, before anything is built: a VampPrior with more
    pseudo-inputs than training examples. Its optimum is the aggregate posterior, a mixture over
    the training examples (Tomczak & Welling 2018), so more components cannot help, while each
    costs an encoder pass per step (and an image of parameters with its Adam moments)."""
    k = cfg.prior_components
    if cfg.type == "flat" and cfg.prior == "vampprior" and k > train_examples:
        size = "x".join(map(str, shape))
        raise ConfigError(
            f"model.prior_components={k}: more pseudo-inputs than the {train_examples} training examples "
            f"cannot help (the best VampPrior is the mixture over them) and costs {k} encoder passes of a "
            f"{size} image per step; use at most {train_examples}"
        )


__all__ = [
    "MODEL_TYPES", "build_flat", "build_hierarchical", "build_model", "check_for_data",
    "hierarchical_spec", "posterior_options",
]  # fmt: skip
