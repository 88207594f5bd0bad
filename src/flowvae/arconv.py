"""The convolutions of the IAF paper's ResNet VAE (openai/iaf): weight-normalised convolutions
with data-dependent init (:class:`WNConv2d`) and the masked, autoregressive convolution nets of
its IAF steps and priors (:class:`ARConvNet`, its masks :func:`channel_mask` and
:func:`iaf_degrees`). :mod:`flowvae.hierarchical` builds its blocks from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AR_SCALE = 0.1  # the autoregressive nets' outputs are scaled by 0.1 (openai/iaf's arw_mean *= .1)
HEAD_INIT_SCALE = 0.1  # std at data-dependent init of convs that feed residuals or distributions


# ----------------------------------------------------------------------------- weight-norm conv


class WNConv2d(nn.Module):
    """A (transposed) convolution with weight normalisation and data-dependent init.

    ``w = g * v / ||v||`` (norm per output channel), optionally ``v`` masked. After
    :meth:`request_data_init`, the next forward pass sets ``g`` and ``b`` so that on that batch
    every output channel has mean 0 and standard deviation ``init_scale``, and returns the
    normalised output (so layers downstream are initialised on normalised inputs).

    Arguments:
        in_channels, out_channels: feature maps.
        kernel_size: odd; padding keeps the size (stride 1), halves it (stride 2), or doubles it
            (``transpose=True``, stride 2).
        stride: 1 or 2.
        transpose: a transposed convolution (upsampling).
        mask: a 0/1 tensor of the weight's shape (out, in, k, k); masked convolutions only.
        init_scale: the output standard deviation at data-dependent init.

    References:
        Salimans & Kingma, Weight normalization, arXiv 1602.07868 (section 3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        transpose: bool = False,
        mask: Tensor | None = None,
        init_scale: float = 1.0,
    ):
        super().__init__()
        self.stride, self.padding, self.transpose = stride, kernel_size // 2, transpose
        self.init_scale = init_scale
        shape = (in_channels, out_channels) if transpose else (out_channels, in_channels)
        self.v = nn.Parameter(0.05 * torch.randn(*shape, kernel_size, kernel_size))
        self.g = nn.Parameter(torch.ones(out_channels))
        self.b = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("mask", None if mask is None else mask.float())
        self._init_pending = False

    def weight(self) -> Tensor:
        v = self.v if self.mask is None else self.v * self.mask
        dims = (0, 2, 3) if self.transpose else (1, 2, 3)
        norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True).clamp_min(1e-12)
        g = self.g.view(1, -1, 1, 1) if self.transpose else self.g.view(-1, 1, 1, 1)
        return g * v / norm

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.transpose:
            return F.conv_transpose2d(
                x, weight, bias, self.stride, self.padding, output_padding=self.stride - 1
            )
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def request_data_init(self) -> None:
        self._init_pending = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # the mask is a function of the config: weights saved with another one (model.ar_mask=pixel
        # runs saved before its masks were openai/iaf's) would silently become another model
        saved = state_dict.get(f"{prefix}mask")
        if self.mask is not None and saved is not None and saved.shape == self.mask.shape:
            if not torch.equal(saved.to(self.mask), self.mask):
                raise ValueError(
                    f"{prefix}mask: these weights were trained with another autoregressive mask than "
                    "their config builds now (model.ar_mask=pixel runs saved before its masks became "
                    "openai/iaf's get_conv_ar_mask); retrain the run"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self._init_pending:
            return self._data_init(x)
        return self._conv(x, self.weight(), self.b)

    @torch.no_grad()
    def _data_init(self, x: Tensor) -> Tensor:
        self._init_pending = False
        self.g.fill_(1.0)
        y = self._conv(x, self.weight(), None)
        mean = y.mean((0, 2, 3))
        std = y.std((0, 2, 3), unbiased=False)
        # a channel with no inputs (fully masked) stays constant: leave its scale at 1
        scale = torch.where(std > 1e-8, self.init_scale / std.clamp_min(1e-8), torch.ones_like(std))
        self.g.copy_(scale)
        self.b.copy_(-mean * scale)
        return (y - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- masked AR convs


def channel_mask(
    in_degrees: Tensor, out_degrees: Tensor, strict: bool, kernel_size: int = 3, pixels: bool = False
) -> Tensor:
    """A conv weight mask (out, in, k, k) connecting output channel j to input channel i iff
    ``out_degrees[j] > in_degrees[i]`` (``strict``) or ``>=``.

    ``pixels=False``: that channel mask at every kernel position (autoregressive over channels
    only). ``pixels=True`` (openai/iaf's ``get_conv_ar_mask``): the channel mask at the centre tap
    only; the taps on later pixels in raster order (right of the centre, rows below) are open and
    those on earlier pixels closed, so the net is autoregressive over pixels in reverse raster
    order and, within a pixel, over channels."""
    out, inp = out_degrees[:, None], in_degrees[None, :]
    allowed = (out > inp if strict else out >= inp).float()
    mask = allowed[:, :, None, None].repeat(1, 1, kernel_size, kernel_size)
    if pixels:
        c = kernel_size // 2
        mask[:, :, :c, :] = 0  # rows above
        mask[:, :, c, :c] = 0  # left of the centre
        mask[:, :, c, c + 1 :] = 1
        mask[:, :, c + 1 :, :] = 1
    return mask


def iaf_degrees(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """openai/iaf's ``get_linear_ar_mask(n_in, n_out)`` as degrees for :func:`channel_mask`: the
    wider side's channels in groups of ``n_wide / n_narrow`` take their group's index, the
    narrower side's channels their own (equal widths: input ``i`` feeds output ``j`` iff ``i <= j``).
    Where neither width divides the other (openai/iaf asserts it does) the groups are uneven
    (``index * n_narrow // n_wide``), which keeps the net autoregressive."""
    i, j = torch.arange(n_in), torch.arange(n_out)
    if n_out >= n_in:
        return i, j * n_in // n_out
    return i * n_out // n_in, j


AR_MASKS = ("channel", "pixel")


class ARConvNet(nn.Module):
    """Masked 3x3 convolutions, autoregressive over z (openai/iaf's ``ar_multiconv2d``).

    ``mask="pixel"`` (openai/iaf): output (pixel p, channel c) depends on z at pixels after p in
    raster order (all channels) and at p on channels < c, so the Jacobian is strictly triangular
    in the order (reverse raster pixel, channel). ``mask="channel"``: output channel c depends
    on input channels < c only, at all pixels of the receptive field (triangular in channel-major
    order); channel 0 then gets no flow at all. ``channel``: hidden channel j has degree
    ``j * n_z // hidden`` in every layer; ``pixel``: each layer's centre tap is openai/iaf's
    ``get_conv_ar_mask`` (:func:`iaf_degrees`; hidden to hidden: channel i feeds channel j iff i <= j).
    The context is added to the first hidden layer's pre-activations.

    Arguments:
        channels: n_z, the autoregressive channels.
        hidden: width of the hidden layers (n_h).
        depth: number of hidden layers (``depth_ar``); 0 is one masked conv, which takes no context.
        outputs: outputs per channel (2: mean and log-scale; 1: mean only).
        mask: ``pixel`` or ``channel`` (see above).

    Returns:
        (forward) a tuple of ``outputs`` tensors shaped like z.
    """

    def __init__(self, channels: int, hidden: int, depth: int, outputs: int, mask: str = "channel"):
        super().__init__()
        self.outputs = outputs
        pixels = mask == "pixel"
        degrees_in = torch.arange(channels)
        degrees, width = degrees_in, channels
        self.hidden = nn.ModuleList()
        for _ in range(depth):
            degrees_hidden = torch.arange(hidden) * channels // hidden
            pair = iaf_degrees(width, hidden) if pixels else (degrees, degrees_hidden)
            self.hidden.append(WNConv2d(width, hidden, 3, mask=channel_mask(*pair, False, pixels=pixels)))
            degrees, width = degrees_hidden, hidden
        d_in, d_out = iaf_degrees(width, channels) if pixels else (degrees, degrees_in)
        m = channel_mask(d_in, d_out.repeat(outputs), strict=True, pixels=pixels)
        self.out = WNConv2d(width, outputs * channels, 3, mask=m)

    @property
    def takes_context(self) -> bool:
        return len(self.hidden) > 0

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, ...]:
        h = z
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and context is not None:
                h = h + context
            h = F.elu(h)
        return self.out(h).chunk(self.outputs, dim=1)
