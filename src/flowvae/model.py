"""Config -> modules: the one place that reads a :class:`~flowvae.config.ModelConfig`.

Networks, posteriors, likelihoods and models take plain numbers (shapes, widths, step counts);
this module maps the config's keys onto them. A posterior head's options are the ``model.*``
keys of the same names (:data:`~flowvae.config.FLOW_SIZE_KEYS`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import fields

from torch import nn

from .config import FLOW_SIZE_KEYS, PRIOR_OPTION_KEYS, ConfigError, ModelConfig
from .hierarchical import HierarchicalSpec, HierarchicalVAE
from .layers import he_init_
from .likelihoods import build_likelihood
from .nets import build_decoder, build_encoder
from .posteriors import build_posterior
from .priors import build_prior
from .two_layer import TwoLayerHead, TwoLayerPrior, WithInput
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
           "channels": cfg.channels, "blocks": cfg.blocks, "layer": cfg.mlp_layer}  # fmt: skip
    gaussians = {"log_var_bounds": list(cfg.log_var_bounds)}
    layers, d = cfg.stochastic_layers, cfg.latent_dim
    separate = layers == 2 and cfg.two_layer_inputs == "separate"
    # built in this order: a seed gives the same initial weights in every version
    likelihood = build_likelihood(cfg.likelihood, binary, shape, cfg.mixtures)
    encoder = build_encoder(cfg.encoder, shape, hidden=list(cfg.hidden), **net)
    posterior = build_posterior(
        cfg.posterior, encoder.out_features, d, **posterior_options(cfg), **gaussians
    )  # fmt: skip
    decoder_hidden = list(reversed(cfg.hidden)) if cfg.decoder_hidden is None else list(cfg.decoder_hidden)
    split = {"split": [d, d]} if separate else {}  # z = (z2, z1): a first layer for each
    decoder = build_decoder(
        cfg.decoder, shape, likelihood.params, layers * d, hidden=decoder_hidden, **net, **split
    )
    prior = build_prior("standard" if cfg.prior == "auto" else cfg.prior, d, shape,
                        **{key: getattr(cfg, key) for key in PRIOR_OPTION_KEYS})  # fmt: skip
    if layers == 2:  # Tomczak & Welling's HVAE: q(z2|x) q(z1|x, z2), p(z2) p(z1|z2)
        pixels = math.prod(shape) if separate else 0
        features = encoder.out_features
        if separate:
            encoder = WithInput(encoder, pixels)
        nets = {"layer": cfg.mlp_layer, **gaussians}
        posterior = TwoLayerHead(posterior, features, d, cfg.hidden, pixels, **nets)
        prior = TwoLayerPrior(prior, d, list(reversed(cfg.hidden)), **nets)
    model = VAE(encoder, posterior, decoder, likelihood, shape, prior)
    if cfg.init == "he":
        he_init_(model)
    return model


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
