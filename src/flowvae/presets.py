"""Named presets. Each derives from a parent and overrides a few keys (``section__name=value``).

``flowvae presets`` lists them; ``flowvae train --preset NAME key=value ...`` starts from one.
"""

from .config import register_preset

register_preset(
    "digits",
    "default: MLP diag VAE on scikit-learn's 8x8 digits (zero download, ~1 min on CPU)",
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
