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

# --------------------------------------------------------------------------------------------
# hierarchical ResNet VAE with bidirectional inference (IAF paper section 6, openai/iaf)

register_preset(
    "iaf-cifar10",
    "openai/iaf README Table-3 run: CIFAR-10, ResNet VAE depths [10,10], n_h 160, n_z 32, "
    "down-iaf (depth_ar 2), free bits 0.25, Adamax, EMA (3.28 bits/dim reported)",
    data__name="cifar10",
    model__type="hierarchical",
    model__likelihood="logistic",
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
    "iaf-cifar10-small",
    "CPU-sized iaf-cifar10 on the 4000-image CIFAR-10 subset (data.root=../shared/data/cifar10_subset)",
    parent="iaf-cifar10",
    data__name="npz",
    data__file="cifar10_subset_4000.npz",
    data__valid_size=250,
    data__test_size=500,
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
