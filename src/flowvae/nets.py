"""Encoders and decoders of the flat (one stochastic layer) VAE.

An encoder maps images (B, C, H, W) to features (B, out_features); a decoder maps latents
(N, D) to per-pixel likelihood parameters (N, P, C, H, W). They receive numbers (image shape,
widths), never a dataset name. Decoders whose last layer is a linear map (``mlp``, ``linear``)
expose its input as ``features(z, x)`` and the layer as ``output_layer(x) -> (weight, bias)``
(the ``made`` decoder's bias depends on the image), so that a likelihood can fuse its
log-density with that layer (:meth:`flowvae.likelihoods.Bernoulli.log_prob_linear`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import GatedLinear
from .made import MADE, MaskedLinear

Shape = tuple[int, int, int]


# ----------------------------------------------------------------------------- mlp


class MLP(nn.Module):
    """An MLP of ``hidden`` widths whose hidden layers are ``layer``: ``elu`` (linear, ELU) or
    ``gated`` (:class:`~flowvae.layers.GatedLinear`, no activation); optional batch norm; optionally
    the input fed to every hidden layer; optional dropout after each hidden layer (training only).

    ``split``: sizes of the input's parts (summing to ``in_features``); the first hidden layer is
    then one layer per part, each ``hidden[0]`` wide, concatenated (Tomczak & Welling's separate
    gated layers for x and z2 before a joint layer).
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        batch_norm: bool = False,
        input_to_all: bool = False,
        dropout: float = 0.0,
        layer: str = "elu",
        split: Sequence[int] = (),
    ):
        super().__init__()
        if layer not in MLP_LAYERS:
            raise ValueError(f"unknown mlp layer {layer!r}; available: {', '.join(MLP_LAYERS)}")
        if split and (sum(split) != in_features or not hidden or input_to_all):
            raise ValueError(f"split {list(split)} needs hidden layers, parts summing to {in_features}, "
                             "and no input_to_all")
        self.input_to_all, self.split = input_to_all, tuple(split)

        def hidden_layer(width: int, h: int) -> nn.Sequential:
            layer_ = [nn.Linear(width, h)] if layer == "elu" else [GatedLinear(width, h)]
            if batch_norm:
                layer_.append(nn.BatchNorm1d(h))
            if layer == "elu":
                layer_.append(nn.ELU())
            if dropout > 0:
                layer_.append(nn.Dropout(dropout))
            return nn.Sequential(*layer_)

        self.layers = nn.ModuleList()
        width = in_features
        for i, h in enumerate(hidden):
            if i == 0 and split:
                self.layers.append(_Parts(hidden_layer(part, h) for part in split))
                h = h * len(split)
            else:
                self.layers.append(hidden_layer(width, h))
            width = h + (in_features if input_to_all else 0)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h.split(self.split, dim=-1)) if i == 0 and self.split else layer(h)
            if self.input_to_all:
                h = torch.cat([h, x], dim=-1)
        return h


MLP_LAYERS = ("elu", "gated")  # model.mlp_layer


class _Parts(nn.ModuleList):
    """One layer per part of the input, outputs concatenated."""

    def forward(self, parts: Sequence[Tensor]) -> Tensor:
        return torch.cat([layer(p) for layer, p in zip(self, parts, strict=True)], dim=-1)


class MLPEncoder(nn.Module):
    """images (B, C, H, W) -> features (B, F): an :class:`MLP` (``mlp`` its keyword options)."""

    def __init__(self, shape: Shape, hidden: list[int], **mlp):
        super().__init__()
        c, h, w = shape
        self.net = MLP(c * h * w, hidden, **mlp)
        self.out_features = self.net.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """latents (N, D) -> (N, P, C, H, W): an :class:`MLP` (``mlp`` its keyword options, ``split``
    the parts of z with a first layer each), then a linear layer."""

    def __init__(self, shape: Shape, params: int, latent: int, hidden: list[int], **mlp):
        super().__init__()
        self.shape, self.params = shape, params
        self.net = MLP(latent, hidden, **mlp)
        self.out = nn.Linear(self.net.out_features, params * shape[0] * shape[1] * shape[2])

    def features(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """The input of the linear output layer ``out``: z (*N, D) -> (*N, F); x is not used."""
        return self.net(z.reshape(-1, z.shape[-1])).view(*z.shape[:-1], -1)

    def output_layer(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``out`` as (weight (P, F), bias (P,)), the same for every image."""
        return self.out.weight, self.out.bias

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.features(z)).view(-1, self.params, *self.shape)


# ----------------------------------------------------------------------------- linear


class LinearEncoder(nn.Module):
    """x -> W x + b: enough for the exact posterior mean of a linear-Gaussian model."""

    def __init__(self, shape: Shape):
        super().__init__()
        c, h, w = shape
        self.out_features = c * h * w

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class LinearDecoder(nn.Module):
    """z -> W z + b (probabilistic PCA when paired with a Gaussian likelihood)."""

    def __init__(self, shape: Shape, params: int, latent: int):
        super().__init__()
        self.shape, self.params = shape, params
        self.out = nn.Linear(latent, params * shape[0] * shape[1] * shape[2])

    def features(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """The input of the linear output layer ``out``: z itself."""
        return z

    def output_layer(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``out`` as (weight (P, D), bias (P,)), the same for every image."""
        return self.out.weight, self.out.bias

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.features(z)).view(-1, self.params, *self.shape)


# ----------------------------------------------------------------------------- made


class MADEDecoder(nn.Module):
    """An autoregressive decoder: p(x|z) = Π_i p(x_i | x_<i, z) over the pixels in raster order
    (channel, row, column), each factor the likelihood's per-pixel density.

    A MADE over the pixels (:class:`~flowvae.made.MADE`, equal hidden widths) with z as its
    context, plus direct masked connections from earlier pixels to each output (DARN, Gregor et
    al. 2014; MADE, Germain et al. 2015). The pixels' contribution does not depend on z, so for
    many z per image (importance sampling) it is computed once per image: the cost per sample is
    an ``mlp`` decoder's. Sampling is sequential (:meth:`generate`, one pass per pixel, updating
    the first layer incrementally).
    """

    autoregressive = True

    def __init__(self, shape: Shape, params: int, latent: int, hidden: list[int]):
        super().__init__()
        if not hidden or len(set(hidden)) != 1:
            raise ValueError(f"the made decoder needs one or more hidden layers of equal width, got {hidden}")
        self.shape, self.params = shape, params
        self.pixels = shape[0] * shape[1] * shape[2]
        self.made = MADE(self.pixels, latent, hidden[0], len(hidden), num_outputs=params)
        order = torch.arange(self.pixels)
        self.direct = MaskedLinear((order[:, None] > order[None, :]).repeat(params, 1))  # (P*D, D)
        nn.init.zeros_(self.direct.weight)

    def features(self, z: Tensor, x: Tensor) -> Tensor:
        """The input of the masked output layer: z (*S, B, D), x (B, C, H, W) -> (*S, B, F)."""
        return self.made.last_hidden(x.flatten(-3), z)

    def output_layer(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The output layer as a linear map of :meth:`features`: weight (P*D, F) and the
        per-image bias (B, P*D), which holds the direct connections from x."""
        out = self.made.output
        return out.weight * out.mask, out.bias + self.direct(x.flatten(-3))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        """z (*S, B, D), x (B, C, H, W) -> parameters (*S, B, P, C, H, W) of p(x_i | x_<i, z)."""
        h = self.features(z, x)
        weight, bias = self.output_layer(x)
        return (h @ weight.t() + bias).view(*h.shape[:-1], self.params, *self.shape)

    @torch.no_grad()
    def generate(self, z: Tensor, likelihood: nn.Module) -> tuple[Tensor, Tensor]:
        """Ancestral sampling, pixel by pixel: z (N, D) -> (sample, mean), each (N, C, H, W),
        where ``mean`` holds each pixel's mean given the sampled pixels before it."""
        made, n, pixels = self.made, z.shape[0], self.pixels
        first = made.hidden[0]
        w_first = first.weight * first.mask  # (H, D)
        w_out = made.output.weight * made.output.mask  # (P*D, H)
        w_direct = self.direct.weight * self.direct.mask  # (P*D, D)
        pre = first.bias + made.context(z)  # first layer's pre-activation with every pixel 0
        direct = self.direct.bias + made.output.bias.expand(n, -1)  # (N, P*D)
        sample, mean = z.new_zeros(n, pixels), z.new_zeros(n, pixels)
        for i in range(pixels):
            h = pre
            for layer in made.hidden[1:]:
                h = layer(F.elu(h))
            rows = torch.arange(self.params, device=z.device) * pixels + i
            out = (F.elu(h) @ w_out[rows].t() + direct[:, rows]).view(n, self.params, 1, 1, 1)
            mean[:, i] = likelihood.mean(out).view(n)
            sample[:, i] = likelihood.sample(out).view(n)
            pre = pre + sample[:, i, None] * w_first[:, i]
            direct = direct + sample[:, i, None] * w_direct[:, i]
        return sample.view(n, *self.shape), mean.view(n, *self.shape)


# ----------------------------------------------------------------------------- gated conv


class GatedConv(nn.Module):
    """h = conv_h(x) * sigmoid(conv_g(x)) (Dauphin et al. 2017; Sylvester flows' encoder).

    conv_h and conv_g run as one convolution with 2 * cout outputs (h first): one larger
    convolution is faster than two. They are initialised as two (the same draws as two separate
    layers), and checkpoints that stored them as ``h.*`` and ``g.*`` still load.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, transpose: bool = False):
        super().__init__()
        kind, options = (nn.ConvTranspose2d, {"output_padding": stride - 1}) if transpose else (nn.Conv2d, {})
        conv = lambda n: kind(cin, n, 5, stride, 2, **options)  # noqa: E731
        self.out_dim = 1 if transpose else 0  # the weight's output-channel dimension
        h, g = conv(cout), conv(cout)
        self.conv = nn.utils.skip_init(kind, cin, 2 * cout, 5, stride, 2, **options)  # draws nothing
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([h.weight, g.weight], self.out_dim))
            self.conv.bias.copy_(torch.cat([h.bias, g.bias]))

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.conv(x).chunk(2, 1)
        return h * torch.sigmoid(g)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name in ("weight", "bias"):  # runs saved with two convolutions: h.*, g.* -> conv.*
            h, g = f"{prefix}h.{name}", f"{prefix}g.{name}"
            if h in state_dict and g in state_dict:
                dim = self.out_dim if name == "weight" else 0
                state_dict[f"{prefix}conv.{name}"] = torch.cat([state_dict.pop(h), state_dict.pop(g)], dim)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def channels_last(module: nn.Module) -> nn.Module:
    """Store a convolutional network's 4-d weights channels-last (NHWC): oneDNN's and cuDNN's
    convolutions are faster in that layout, and a network fed NHWC inputs keeps it throughout."""
    return module.to(memory_format=torch.channels_last)


class GatedConvEncoder(nn.Module):
    """5x5 gated convolutions, two stride-2 downsamplings, then a linear layer."""

    def __init__(self, shape: Shape, channels: int = 32):
        super().__init__()
        c, h, w = shape
        ch = channels
        self.convs = nn.Sequential(
            GatedConv(c, ch), GatedConv(ch, ch, 2), GatedConv(ch, 2 * ch),
            GatedConv(2 * ch, 2 * ch, 2), GatedConv(2 * ch, 2 * ch),
        )  # fmt: skip
        self.out_features = 2 * ch * _down(h) * _down(w)
        channels_last(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x.contiguous(memory_format=torch.channels_last)).flatten(1)


class GatedConvDecoder(nn.Module):
    def __init__(self, shape: Shape, params: int, latent: int, channels: int = 32):
        super().__init__()
        c, h, w = shape
        ch = channels
        self.shape, self.params, self.start = shape, params, (2 * ch, _down(h), _down(w))
        self.inp = nn.Linear(latent, 2 * ch * _down(h) * _down(w))
        self.convs = nn.Sequential(
            GatedConv(2 * ch, 2 * ch), GatedConv(2 * ch, ch, 2, transpose=True),
            GatedConv(ch, ch), GatedConv(ch, ch, 2, transpose=True), GatedConv(ch, ch),
        )  # fmt: skip
        self.out = nn.Conv2d(ch, params * c, 1)
        channels_last(self)

    def forward(self, z: Tensor) -> Tensor:
        h = self.inp(z).view(-1, *self.start).contiguous(memory_format=torch.channels_last)
        return self.out(self.convs(h)).reshape(-1, self.params, *self.shape)


# ----------------------------------------------------------------------------- resnet


class ResidualBlock(nn.Module):
    """ELU -> 3x3 conv -> ELU -> 3x3 conv, added to the input."""

    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.ELU(), nn.Conv2d(ch, ch, 3, 1, 1), nn.ELU(), nn.Conv2d(ch, ch, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResNetEncoder(nn.Module):
    """3x3 residual blocks with two strided downsamplings (IAF paper's MNIST encoder)."""

    def __init__(self, shape: Shape, channels: int = 32, blocks: int = 2):
        super().__init__()
        c, h, w = shape
        ch = channels
        layers: list[nn.Module] = [nn.Conv2d(c, ch, 3, 1, 1)]
        for _ in range(2):
            layers += [ResidualBlock(ch) for _ in range(blocks)]
            layers += [nn.ELU(), nn.Conv2d(ch, ch, 3, 2, 1)]
        layers.append(nn.ELU())
        self.net = nn.Sequential(*layers)
        self.out_features = ch * _down(h) * _down(w)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


class ResNetDecoder(nn.Module):
    def __init__(self, shape: Shape, params: int, latent: int, channels: int = 32, blocks: int = 2):
        super().__init__()
        c, h, w = shape
        ch = channels
        self.shape, self.params, self.start = shape, params, (ch, _down(h), _down(w))
        self.inp = nn.Linear(latent, ch * _down(h) * _down(w))
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [ResidualBlock(ch) for _ in range(blocks)]
            layers += [nn.ELU(), nn.ConvTranspose2d(ch, ch, 3, 2, 1, output_padding=1)]
        layers += [nn.ELU(), nn.Conv2d(ch, params * c, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.inp(z).view(-1, *self.start)).view(-1, self.params, *self.shape)


def _down(n: int) -> int:
    """Size after two stride-2 convolutions with padding (ceil twice)."""
    once = (n + 1) // 2
    return (once + 1) // 2


@dataclass(frozen=True)
class NetRecord:
    """A named encoder or decoder: ``net(shape, **options)`` (decoders also take ``params``
    and ``latent``); ``options`` are the keyword options it takes, filled from the config by
    :mod:`flowvae.model`."""

    name: str
    net: type[nn.Module]
    options: tuple[str, ...] = ()

    def build(self, *args, **options) -> nn.Module:
        return self.net(*args, **{k: v for k, v in options.items() if k in self.options})


def _registry(*records: NetRecord) -> dict[str, NetRecord]:
    return {r.name: r for r in records}


_MLP = ("hidden", "batch_norm", "input_to_all", "dropout", "layer")
ENCODERS = _registry(
    NetRecord("mlp", MLPEncoder, _MLP),
    NetRecord("gated-conv", GatedConvEncoder, ("channels",)),
    NetRecord("resnet", ResNetEncoder, ("channels", "blocks")),
    NetRecord("linear", LinearEncoder),
)
DECODERS = _registry(
    NetRecord("mlp", MLPDecoder, (*_MLP, "split")),
    NetRecord("gated-conv", GatedConvDecoder, ("channels",)),
    NetRecord("resnet", ResNetDecoder, ("channels", "blocks")),
    NetRecord("linear", LinearDecoder),
    NetRecord("made", MADEDecoder, ("hidden",)),
)


def build_encoder(name: str, shape: Shape, **options) -> nn.Module:
    """The encoder ``name`` for images of ``shape``; options it does not take are ignored."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")
    return ENCODERS[name].build(shape, **options)


def build_decoder(name: str, shape: Shape, params: int, latent: int, **options) -> nn.Module:
    """The decoder ``name``: latents (N, latent) -> ``params`` maps per pixel (N, P, C, H, W)."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; available: {', '.join(DECODERS)}")
    return DECODERS[name].build(shape, params, latent, **options)
