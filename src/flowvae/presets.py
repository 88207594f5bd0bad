"""Named presets. Each derives from a parent and overrides a few keys (``section__name=value``).

``flowvae presets`` lists them; ``flowvae train --preset NAME key=value ...`` starts from one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, nearest, parse_override, set_key


@dataclass(frozen=True)
class Preset:
    description: str
    parent: str | None
    overrides: dict[str, Any]


PRESETS: dict[str, Preset] = {}
DATA_PRESETS: dict[str, str] = {}  # data.name -> the preset a run without --preset starts from


def register_preset(name: str, description: str, parent: str | None = None, **overrides: Any):
    """Register a preset; ``overrides`` use ``section__name`` keyword form."""
    PRESETS[name] = Preset(
        description, parent, {k.replace("__", "."): v for k, v in overrides.items()}
    )


def preset(name: str) -> Config:
    if name not in PRESETS:
        near = nearest(name, list(PRESETS))
        hint = f"did you mean {' or '.join(near[:3])}? (`flowvae presets` lists them)" if near else (
            f"available: {', '.join(sorted(PRESETS))}")
        raise ConfigError(f"unknown preset {name!r}; {hint}")
    p = PRESETS[name]
    cfg = preset(p.parent) if p.parent else Config()
    for key, value in p.overrides.items():
        set_key(cfg, key, copy.deepcopy(value))
    return cfg


def starting_preset(overrides: list[str], config_file: str | None = None) -> tuple[str, str]:
    """The preset of a run given no ``--preset``: that of its ``data.name``, and a note saying so.

    ``data.name`` comes from the overrides (the last one wins) or else the YAML config file;
    without either the run is on ``digits``. Returns ``(preset name, one-line note)``.
    """
    name = None
    if config_file:
        try:
            values = yaml.safe_load(Path(config_file).read_text())
        except (OSError, yaml.YAMLError):  # reported by load_yaml with the file's name
            values = None
        data = values.get("data") if isinstance(values, dict) else None
        name = data.get("name") if isinstance(data, dict) else None
    for text in overrides:
        key, value = parse_override(text)
        if key == "data.name":
            name = value
    name = name if isinstance(name, str) and name else "digits"
    if name in DATA_PRESETS:
        chosen = DATA_PRESETS[name]
        return chosen, f"no preset given: starting from preset {chosen}, the default for data.name={name}"
    return "digits", f"no preset given and none for data.name={name}: starting from preset digits' values"


# ---------------------------------------------------------------------------------------------
# the presets

register_preset(
    "digits",
    "default: MLP diag VAE on scikit-learn's 8x8 digits (zero download; ~20 s of training on 2 CPU cores)",
    data__name="digits",
    model__latent_dim=8,
    model__hidden=[128, 128],
    train__epochs=30,
    train__batch_size=50,
    eval__samples=1000,
)
register_preset(
    "mnist-mlp",
    "static binarized MNIST, MLP 300-300 encoder/decoder, z=32, diag posterior",
    data__name="binarized_mnist",
    model__latent_dim=32,
    model__hidden=[300, 300],
    train__epochs=100,
    train__batch_size=100,
    train__kl_warmup_epochs=10.0,
    train__ema=0.999,
)

register_preset(
    "mnist-static-hour",
    "static binarized MNIST in one CPU hour: mnist-mlp with a 4-step IAF (64 hidden units), lr 2e-3 "
    "on a cosine that ends when train.max_minutes=60 runs out, gradient norm clipped at 100",
    parent="mnist-mlp",
    model__posterior="iaf",
    model__flow_steps=4,
    model__flow_hidden=64,
    train__lr=0.002,
    train__lr_schedule="cosine-budget",
    train__epochs=100_000,  # the time budget ends the run
    train__max_minutes=60.0,
    train__grad_clip=100.0,  # ~3.5x the typical norm (~28): without it one run blew up at epoch 152
)
register_preset(
    "mnist-static-hour-vamp",
    "mnist-static-hour with a VampPrior of 100 pseudo-inputs (Tomczak & Welling 2018); in 10 minutes it "
    "beat 500 pseudo-inputs and the two-layer HVAE (BENCHMARKS.md, issue 26)",
    parent="mnist-static-hour",
    model__prior="vampprior",
    model__prior_components=100,
)

# --------------------------------------------------------------------------------------------
# flow posteriors on MNIST, one ResNet encoder/decoder for all so that results are comparable

register_preset(
    "mnist-iaf",
    "dynamic MNIST, ResNet encoder/decoder (64 maps), z=64, 8 IAF steps (seed 001 setup)",
    data__name="mnist",
    data__binarize="dynamic",
    model__encoder="resnet",
    model__decoder="resnet",
    model__channels=64,
    model__blocks=2,
    model__latent_dim=64,
    model__posterior="iaf",
    model__context_dim=64,
    model__flow_steps=8,
    model__flow_hidden=320,
    model__flow_layers=2,
    train__epochs=100,
    train__batch_size=100,
    train__kl_warmup_epochs=10.0,
    train__ema=0.999,
)
register_preset(
    "mnist-static-diag",
    "static binarized MNIST, mnist-iaf's ResNet encoder/decoder and z=64, diag posterior",
    parent="mnist-iaf",
    data__name="binarized_mnist",
    data__binarize="auto",
    model__posterior="diag",
)
# the flows keep mnist-iaf's flow settings (8 steps, h of 64, 2 x 320 hidden units)
_STATIC_MNIST_FLOWS = {
    "iaf": {},
    "iaf-mean": {},
    "planar": {},
    "sylvester-orthogonal": {"model__num_ortho_vecs": 32},
    "sylvester-householder": {"model__num_householder": 8},
    "sylvester-triangular": {},
    "realnvp": {},
    "realnvp-aux": {"model__aux_dim": 64},
}
for _posterior, _extra in _STATIC_MNIST_FLOWS.items():
    register_preset(
        f"mnist-static-{_posterior}",
        f"mnist-static-diag with the {_posterior} posterior (8 steps)",
        parent="mnist-static-diag",
        model__posterior=_posterior,
        **_extra,
    )

# --------------------------------------------------------------------------------------------
# hierarchical ResNet VAE with bidirectional inference (IAF paper section 6, openai/iaf)

register_preset(
    "iaf-cifar10",
    "openai/iaf README Table-3 run: CIFAR-10, ResNet VAE depths [10,10], n_h 160, n_z 32, "
    "down-iaf (depth_ar 2, pixel AR masks), free bits 0.25, Adamax, EMA, iaf-logistic "
    "(3.28 bits/dim reported)",
    data__name="cifar10",
    model__type="hierarchical",
    model__likelihood="iaf-logistic",  # models.py px=logistic: one global logsd_x, clipped mean
    model__ar_mask="pixel",  # graphy/nodes/ar.py conv2d masks
    model__depths=[10, 10],
    model__n_h=160,
    model__n_z=32,
    model__depth_ar=2,
    model__posterior="down-iaf",
    model__prior="diag",
    train__optimizer="adamax",
    train__lr=0.002,  # openai/iaf train.py: alpha 0.002 (beta1 0.9, beta2 0.999)
    train__batch_size=16,  # openai/iaf train.py n_batch (Theano); tf_train.py used 8 GPUs x 32
    train__ema=0.999,  # AdaMaxAvg keeps w_avg <- 0.001 w + 0.999 w_avg; evaluated on w_avg
    train__kl_min=0.25,  # nats per layer and feature map, minibatch-averaged (Eq. 15)
    train__epochs=1000,  # openai/iaf trains until stopped; choose a budget with train.max_minutes
    eval__chunk=100,
)
register_preset(
    "iaf-cifar10-311",
    "openai/iaf README tf_train.py run (3.11 bits/dim): CIFAR-10 (all 50k images), one level of 20 "
    "blocks, n_h 160, n_z 32, down-iaf with pixel AR masks, free bits 0.1, Adamax 0.002, global batch "
    "256 (torchrun: 8 processes x 32), EMA, the reference's iaf-logistic likelihood",
    parent="iaf-cifar10",
    data__valid_size=0,  # the reference trains on every training image
    model__likelihood="iaf-logistic",  # one global log-scale, clipped means, no edge tails
    model__depths=[20],  # tf_train.py depth=1, num_blocks=20
    model__depth_ar=2,  # ar_multiconv2d with [h_size, h_size]
    model__ar_mask="pixel",  # get_conv_ar_mask
    train__batch_size=256,  # 32 per GPU x 8 GPUs; free bits average over each process's batch
    train__kl_min=0.1,
)
register_preset(
    "iaf-imagenet32",
    "iaf-cifar10 on downsampled ImageNet 32x32 (the official npz batches; bits/dim on its validation "
    "set, the test split here)",
    parent="iaf-cifar10",
    data__name="imagenet32",
)
register_preset(
    "iaf-cifar10-small",
    "CPU-sized iaf-cifar10 on the 4000-image CIFAR-10 subset (data.root=../shared/data/cifar10_subset)",
    parent="iaf-cifar10",
    data__name="npz",
    data__file="cifar10_subset_4000.npz",
    data__valid_size=250,
    data__test_size=500,
    model__likelihood="logistic",  # as recorded in BENCHMARKS.md (issue 6)
    model__ar_mask="channel",
    model__depths=[2, 2],
    model__n_h=32,
    model__n_z=8,
    model__depth_ar=1,
    train__batch_size=32,
    train__epochs=20,
    eval__samples=1000,
)
register_preset(
    "hier-mnist-small",
    "CPU-sized hierarchical ResNet VAE (depths [2,2], n_h 32, n_z 8, down-iaf) on dynamic MNIST",
    parent="iaf-cifar10-small",
    data__name="mnist",
    data__file="",
    data__valid_size=-1,
    data__test_size=-1,
    model__likelihood="auto",
    train__batch_size=64,
    train__epochs=50,
    eval__samples=5000,
)

# --------------------------------------------------------------------------------------------
# inference suboptimality (Cremer, Li & Duvenaud 2018, arXiv 1801.03558): `flowvae gaps RUN`.
# z=50, MLP 200-200 (ELU) encoder and decoder, Adam 1e-3 decayed tenfold over the 3280 epochs of
# the IWAE schedule (here smoothly: 0.9993 per epoch), KL warm-up over 400 epochs (CIFAR-10: 50),
# as in the authors' code. The flow q is the auxiliary coupling flow with 2 steps of 100 units.
# The encoder- and decoder-size variants change one network each (model.hidden is the encoder's,
# model.decoder_hidden the decoder's).

register_preset(
    "gaps-mnist-ffg",
    "Cremer et al. 2018: dynamic MNIST, z=50, MLP 200-200, FFG (diag) q, KL warm-up 400 epochs",
    data__name="mnist",
    data__binarize="dynamic",
    model__latent_dim=50,
    model__hidden=[200, 200],
    model__decoder_hidden=[200, 200],
    model__posterior="diag",
    train__epochs=3280,
    train__batch_size=100,
    train__lr=1e-3,
    train__lr_schedule="exponential",
    train__lr_decay=0.9993,
    train__kl_warmup_epochs=400.0,
    eval__samples=5000,
)
register_preset(
    "gaps-mnist-flow",
    "gaps-mnist-ffg with the realnvp-aux flow q (2 steps, 100 hidden units)",
    parent="gaps-mnist-ffg",
    model__posterior="realnvp-aux",
    model__flow_steps=2,
    model__flow_hidden=100,
    model__flow_layers=1,
)
for _q in ("ffg", "flow"):
    register_preset(
        f"gaps-fashion-{_q}",
        f"gaps-mnist-{_q} on dynamically binarized Fashion-MNIST",
        parent=f"gaps-mnist-{_q}",
        data__name="fashion_mnist",
    )
    register_preset(
        f"gaps-cifar10-{_q}",
        f"gaps-mnist-{_q} on CIFAR-10 binarized at 0.5 (per channel), KL warm-up 50 epochs",
        parent=f"gaps-mnist-{_q}",
        data__name="cifar10",
        data__binarize="threshold",
        train__kl_warmup_epochs=50.0,
    )
    register_preset(
        f"gaps-mnist-{_q}-no-warmup",
        f"gaps-mnist-{_q} without KL warm-up",
        parent=f"gaps-mnist-{_q}",
        train__kl_warmup_epochs=0.0,
    )
    register_preset(
        f"gaps-mnist-{_q}-large-encoder",
        f"gaps-mnist-{_q} with a 500-500 encoder (the decoder stays 200-200)",
        parent=f"gaps-mnist-{_q}",
        model__hidden=[500, 500],
    )
    register_preset(
        f"gaps-mnist-{_q}-new-encoder",
        f"a new gaps-mnist-{_q} encoder on a trained, frozen decoder: add train.init_from=RUN_DIR",
        parent=f"gaps-mnist-{_q}",
        train__freeze="decoder",
    )
# decoder capacity: 0 or 4 hidden layers of 200 units (the authors' decoder-size experiment)
register_preset(
    "gaps-mnist-ffg-decoder-0",
    "gaps-mnist-ffg with a decoder of no hidden layers (encoder 200-200)",
    parent="gaps-mnist-ffg",
    model__decoder_hidden=[],
)
register_preset(
    "gaps-mnist-ffg-decoder-4",
    "gaps-mnist-ffg with a decoder of 4 hidden layers of 200 units (encoder 200-200)",
    parent="gaps-mnist-ffg",
    model__decoder_hidden=[200, 200, 200, 200],
)

# --------------------------------------------------------------------------------------------
# VampPrior (Tomczak & Welling 2018, arXiv 1705.07120), Table 2's MLP rows on static MNIST:
# VAE 88.56 / VAE+VampPrior 85.57, HVAE 85.89 / HVAE+VampPrior 83.19 nats. The reference network
# of their code (jmtomczak/vae_vampprior, models/VAE.py and HVAE_2level.py; the peer of
# BENCHMARKS.md), item by item: gated dense layers 300-300 (GatedDense), z 40 (each layer),
# log-variances Hardtanh(-6, 2), He-normal weights, AdamNormGrad 5e-4, batch 100, beta = epoch /
# 100 once an epoch, early stopping when 50 epochs at full KL weight in a row brought no better
# valid loss (their counter stops when it passes 50: 51 here), 500 pseudo-inputs from N(0.05,
# 0.01^2) through hardtanh(0, 1), and in the HVAE a first gated layer per input of q(z1|x, z2) and
# p(x|z1, z2), q(z1|x, z2) with a network of its own on x. The one difference left: their
# Bernoulli clamps its probabilities to [1e-5, 1 - 1e-5]; ours is exact in its logits
# (BENCHMARKS.md measures what the clamp changes).

register_preset(
    "vampprior-mnist-vae",
    "Tomczak & Welling 2018's MLP VAE with a standard prior, their code's network and training "
    "(paper: 88.56 nats): static MNIST, gated 300-300, z 40, AdamNormGrad 5e-4",
    data__name="binarized_mnist",
    model__latent_dim=40,
    model__hidden=[300, 300],
    model__mlp_layer="gated",
    model__init="he",
    model__log_var_bounds=[-6.0, 2.0],
    train__epochs=2000,
    train__batch_size=100,
    train__optimizer="adam-normgrad",
    train__lr=5e-4,
    train__kl_warmup_epochs=100.0,
    train__kl_warmup_by="epoch",
    train__early_stopping=51,
    eval__samples=5000,
)
register_preset(
    "vampprior-mnist-vae-vamp",
    "vampprior-mnist-vae with a VampPrior of 500 pseudo-inputs (paper: 85.57 nats)",
    parent="vampprior-mnist-vae",
    model__prior="vampprior",
    model__prior_components=500,
)
register_preset(
    "vampprior-mnist-hvae",
    "vampprior-mnist-vae with two stochastic layers of 40 units, their HVAE_2level's separate "
    "input layers (paper: 85.89 nats)",
    parent="vampprior-mnist-vae",
    model__stochastic_layers=2,
    model__two_layer_inputs="separate",
)
register_preset(
    "vampprior-mnist-hvae-vamp",
    "vampprior-mnist-hvae with a VampPrior of 500 pseudo-inputs on z2 (paper: 83.19 nats)",
    parent="vampprior-mnist-hvae",
    model__prior="vampprior",
    model__prior_components=500,
)

# --------------------------------------------------------------------------------------------
# the static-MNIST rows of the Sylvester-flows paper (van den Berg et al. 2018, arXiv 1803.05649),
# with its code's defaults (riannevdberg/sylvester-flows, the peer of BENCHMARKS.md): gated-conv
# encoder/decoder (32 and 64 maps), z 64, h of 256 units, 4 flow steps, MADEs of 2 x 320 units,
# 8 orthonormal vectors or Householder reflections, Adamax 5e-4, batch 100, KL warm-up over 100
# epochs (beta = epoch / 100 once an epoch), early stopping when 100 epochs at full KL weight
# brought no better valid ELBO (101 here: their counter stops when it passes 100), no EMA. With
# mnist-static-iaf's Adam 1e-3 instead, this network's KL blew up to 1e19 nats at step 4, in
# float32 as in bf16 (BENCHMARKS.md, "Early stability of the gated-conv network").

register_preset(
    "sylvester-mnist-diag",
    "the Sylvester-flows paper's static-MNIST setup (its code's defaults): gated-conv encoder and "
    "decoder, z 64, Adamax 5e-4, batch 100, KL warm-up 100 epochs, diag posterior",
    data__name="binarized_mnist",
    model__encoder="gated-conv",
    model__decoder="gated-conv",
    model__channels=32,
    model__latent_dim=64,
    model__posterior="diag",
    model__context_dim=256,
    model__flow_steps=4,
    model__flow_hidden=320,
    model__flow_layers=2,
    model__num_ortho_vecs=8,
    model__num_householder=8,
    train__optimizer="adamax",
    train__lr=5e-4,
    train__batch_size=100,
    train__epochs=2000,
    train__kl_warmup_epochs=100.0,
    train__kl_warmup_by="epoch",
    train__early_stopping=101,  # their counter stops when it passes 100
    eval__samples=5000,
)
for _posterior in ("planar", "iaf", "sylvester-orthogonal", "sylvester-householder", "sylvester-triangular"):
    register_preset(
        f"sylvester-mnist-{_posterior.removeprefix('sylvester-')}",
        f"sylvester-mnist-diag with 4 {_posterior} steps",
        parent="sylvester-mnist-diag",
        model__posterior=_posterior,
    )

# --------------------------------------------------------------------------------------------
# the same two papers' other datasets: each preset is its static-MNIST parent with the data (and
# what the paper's code changed for that dataset). Omniglot: dynamic binarization (the dataset's
# auto), valid/test sampled once. Caltech 101 Silhouettes: the file's split, binary already; the
# Sylvester code estimates its log-likelihood with 2000 samples. Frey faces: 8-bit, split with
# numpy's RandomState(123), the Sylvester code's default --freyseed (the VampPrior code shuffles
# unseeded); the discretized logistic likelihood of the VampPrior code (its 'gray' input type; the
# Sylvester code's 256-way softmax has no counterpart here). Not carried over: the VampPrior code
# initialises Caltech's and Frey's pseudo-inputs from N(0.5, 0.02^2), flowvae always from
# N(0.05, 0.01^2) (priors.py).

_PAPER_DATASETS = {
    "omniglot": ("Omniglot", {"data__name": "omniglot"}, {}),
    "caltech": ("Caltech 101 Silhouettes", {"data__name": "caltech101_silhouettes"}, {"eval__samples": 2000}),
    "frey": (
        "Frey faces", {"data__name": "frey_faces", "data__seed": 123, "model__likelihood": "logistic"}, {}
    ),
}
for _data, (_title, _overrides, _sylvester_only) in _PAPER_DATASETS.items():
    for _variant in ("diag", "planar", "iaf", "orthogonal", "householder", "triangular"):
        register_preset(
            f"sylvester-{_data}-{_variant}",
            f"sylvester-mnist-{_variant} on {_title}",
            parent=f"sylvester-mnist-{_variant}",
            **_overrides,
            **_sylvester_only,
        )
    for _variant in ("vae", "vae-vamp", "hvae", "hvae-vamp"):
        register_preset(
            f"vampprior-{_data}-{_variant}",
            f"vampprior-mnist-{_variant} on {_title}",
            parent=f"vampprior-mnist-{_variant}",
            **_overrides,
        )

# --------------------------------------------------------------------------------------------
# the dataset's default preset: where `flowvae train data.name=NAME` (no --preset) starts

register_preset(
    "mnist-dynamic-mlp",
    "mnist-mlp on dynamically binarized MNIST",
    parent="mnist-mlp",
    data__name="mnist",
    data__binarize="dynamic",
)
register_preset(
    "fashion-mnist-mlp",
    "mnist-mlp on dynamically binarized Fashion-MNIST",
    parent="mnist-dynamic-mlp",
    data__name="fashion_mnist",
)
DATA_PRESETS.update(
    digits="digits",
    binarized_mnist="mnist-mlp",
    mnist="mnist-dynamic-mlp",
    fashion_mnist="fashion-mnist-mlp",
    cifar10="iaf-cifar10",
    omniglot="vampprior-omniglot-vae",
    caltech101_silhouettes="vampprior-caltech-vae",
    frey_faces="vampprior-frey-vae",
    imagenet32="iaf-imagenet32",
    imagenet64="iaf-imagenet32",  # its data.name=imagenet64 override wins
    celeba64="iaf-cifar10",
)  # npz has none: its images can be anything
