"""Encoder and decoder networks.

Every encoder maps a batch ``x`` of shape ``(B, *obs_shape)`` to ``(loc, scale)`` of a diagonal Gaussian
q(z|x), both of shape ``(B, D)``. Every decoder maps latents of shape ``(*batch, D)`` (any number of leading
dimensions, so vectorised particles of shape ``(K, B, D)`` work) to the likelihood's parameters of shape
``(*batch, *obs_shape)``.

Three families, as in Mathieu et al. (2019):

* :class:`MLPEncoder` / :class:`MLPDecoder` for vectors (pinwheel: one hidden layer of 100 ReLU units);
* :class:`ConvEncoder64` / :class:`ConvDecoder64` for ``1x64x64`` images (dSprites): four 4x4 stride-2
  convolutions with 32, 32, 64, 64 channels, a 128-unit linear layer and two heads; the decoder mirrors it;
* :class:`DCGANEncoder32` / :class:`DCGANDecoder32` for ``1x32x32`` images (Fashion-MNIST), with batch norm;

and, for images of one's own, :class:`ConvEncoder` / :class:`ConvDecoder` for ``C x H x W`` images of any
channel count whose sides are multiples of 4, at least 16 (:func:`conv_halvings` says how many stride-2 layers
fit).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

Shape = Union[int, Sequence[int]]

__all__ = [
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder64",
    "ConvDecoder64",
    "DCGANEncoder32",
    "DCGANDecoder32",
    "ConvEncoder",
    "ConvDecoder",
    "conv_halvings",
    "positive_scale",
]

MIN_SCALE = 1e-4


def positive_scale(raw: torch.Tensor) -> torch.Tensor:
    """Map an unconstrained tensor to a strictly positive scale: ``softplus(raw) + 1e-4``."""
    return F.softplus(raw) + MIN_SCALE


def _as_shape(shape: Shape) -> Tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"expected a positive size or shape, got {shape}")
    return shape


def _check_dim(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_input(net: nn.Module, x: torch.Tensor, shape: Tuple[int, ...]) -> None:
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{type(net).__name__} expects input of shape (batch, {', '.join(map(str, shape))}), "
            f"got {tuple(x.shape)}"
        )


def _check_latent(net: nn.Module, z: torch.Tensor, latent_dim: int) -> None:
    if z.dim() < 1 or z.shape[-1] != latent_dim:
        raise ValueError(
            f"{type(net).__name__} expects latents of shape (..., {latent_dim}), got {tuple(z.shape)}"
        )


def _mlp(sizes: Sequence[int], activation: type) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Fully connected encoder ``x (B, *in_shape) -> (loc, scale)``, each ``(B, latent_dim)``.

    :param in_shape: shape of one observation (an int for vectors).
    :param latent_dim: D, the number of latent dimensions.
    :param hidden: sizes of the hidden layers (default one layer of 100 units, as for pinwheel).
    :param activation: activation module class between layers.
    """

    def __init__(
        self, in_shape: Shape, latent_dim: int, hidden: Sequence[int] = (100,), activation: type = nn.ReLU
    ):
        super().__init__()
        self.in_shape = _as_shape(in_shape)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        sizes = [math.prod(self.in_shape), *[_check_dim("hidden size", h) for h in hidden]]
        self.body = nn.Sequential(_mlp(sizes, activation), activation()) if hidden else nn.Identity()
        self.head = nn.Linear(sizes[-1], 2 * self.latent_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, x, self.in_shape)
        h = self.head(self.body(x.reshape(x.shape[0], -1)))
        loc, raw = h.split(self.latent_dim, dim=-1)
        return loc, positive_scale(raw)


class MLPDecoder(nn.Module):
    """Fully connected decoder ``z (..., latent_dim) -> params``, any number of leading dims.

    With ``scale="global"`` (default) it returns one unconstrained tensor of shape ``(..., *out_shape)``: a
    location for ``"normal"``/``"laplace"`` likelihoods (whose scale is then global, held by the VAE) or
    logits for ``"bernoulli"``.

    With ``scale="decoder"`` it also predicts the likelihood's scale per data point, as the paper's pinwheel
    decoder does: two linear heads on the last hidden layer h(z),

        loc(z) = W_μ h(z) + b_μ,    scale(z) = softplus(W_σ h(z) + b_σ) + 1e-4,

    returned as the pair ``(loc, scale)``, each ``(..., *out_shape)``, and the likelihood is
    p(x|z) = Π_i Lik(x_i; loc_i(z), scale_i(z)). The paper's head is a bare softplus (it starts near
    softplus(0) = log 2 ≈ 0.69); here :func:`positive_scale` adds a floor of 1e-4, because in float32
    softplus underflows to exactly 0 below about -104 and a zero scale is not a valid Normal or Laplace.
    The location head and the hidden layers are those of ``scale="global"`` (same parameter names, the same
    values from the same seed); the scale head is ``raw_scale``.

    :param latent_dim: D, the size of z's last dimension.
    :param out_shape: shape of one observation (an int for vectors).
    :param hidden: sizes of the hidden layers (default one layer of 100 units, as for pinwheel); with none,
        both heads act on z.
    :param activation: activation module class between layers.
    :param scale: ``"global"`` or ``"decoder"``; the attribute ``predicts_scale`` is ``scale == "decoder"``
        (:class:`~pyro_decomp.vae.DecompVAE` reads it).
    """

    SCALES = ("global", "decoder")

    def __init__(
        self,
        latent_dim: int,
        out_shape: Shape,
        hidden: Sequence[int] = (100,),
        activation: type = nn.ReLU,
        scale: str = "global",
    ):
        super().__init__()
        if scale not in self.SCALES:
            raise ValueError(f"scale must be one of {self.SCALES}, got {scale!r}")
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        self.out_shape = _as_shape(out_shape)
        self.scale = scale
        self.predicts_scale = scale == "decoder"
        sizes = [self.latent_dim, *[_check_dim("hidden size", h) for h in hidden], math.prod(self.out_shape)]
        self.net = _mlp(sizes, activation)
        if self.predicts_scale:
            self.raw_scale = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, z: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        _check_latent(self, z, self.latent_dim)
        shape = (*z.shape[:-1], *self.out_shape)
        if not self.predicts_scale:
            return self.net(z).reshape(shape)
        h = self.net[:-1](z)
        return self.net[-1](h).reshape(shape), positive_scale(self.raw_scale(h)).reshape(shape)


class ConvEncoder64(nn.Module):
    """Convolutional encoder for ``(B, 1, 64, 64)`` images (dSprites).

    Four 4x4 stride-2 convolutions (32, 32, 64, 64 channels, ReLU) to ``64x4x4``, a 128-unit linear layer,
    and two linear heads for the location and the scale of q(z|x).
    """

    in_shape = (1, 64, 64)

    def __init__(self, latent_dim: int, channels: Sequence[int] = (32, 32, 64, 64), hidden: int = 128):
        super().__init__()
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        chans = [1, *channels]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(chans[-1] * 4 * 4, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, self.latent_dim)
        self.raw_scale = nn.Linear(hidden, self.latent_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, x, self.in_shape)
        h = self.fc(self.conv(x).flatten(1))
        return self.loc(h), positive_scale(self.raw_scale(h))


class ConvDecoder64(nn.Module):
    """Mirror of :class:`ConvEncoder64`: ``z (..., D) -> logits (..., 1, 64, 64)``."""

    out_shape = (1, 64, 64)

    def __init__(self, latent_dim: int, channels: Sequence[int] = (64, 64, 32, 32), hidden: int = 128):
        super().__init__()
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        self.first = channels[0]
        self.fc = nn.Sequential(
            nn.Linear(self.latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels[0] * 4 * 4),
            nn.ReLU(),
        )
        chans = [*channels, 1]
        layers = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
            if i < len(chans) - 2:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_latent(self, z, self.latent_dim)
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, self.latent_dim)).reshape(-1, self.first, 4, 4)
        return self.deconv(h).reshape(*lead, *self.out_shape)


class DCGANEncoder32(nn.Module):
    """DCGAN-style encoder for ``(B, 1, 32, 32)`` images (Fashion-MNIST), with batch norm.

    Conv 4x4 stride 2 to ``w x16x16`` (LeakyReLU), ``2w x8x8`` and ``4w x4x4`` (batch norm, LeakyReLU), then a
    4x4 valid convolution to ``2D`` channels split into location and scale.
    """

    in_shape = (1, 32, 32)

    def __init__(self, latent_dim: int, width: int = 32):
        super().__init__()
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        w = _check_dim("width", width)
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1),
            nn.BatchNorm2d(4 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 2 * self.latent_dim, 4, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, x, self.in_shape)
        loc, raw = self.net(x).flatten(1).split(self.latent_dim, dim=-1)
        return loc, positive_scale(raw)


class DCGANDecoder32(nn.Module):
    """DCGAN-style decoder ``z (..., D) -> (..., 1, 32, 32)`` with batch norm.

    :param output: ``"sigmoid"`` (default) returns means in (0, 1) for a Laplace or Normal likelihood on grey
        images; ``"logits"`` returns unconstrained values (for a Bernoulli likelihood).
    """

    out_shape = (1, 32, 32)

    def __init__(self, latent_dim: int, width: int = 32, output: str = "sigmoid"):
        super().__init__()
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        if output not in ("sigmoid", "logits"):
            raise ValueError(f"output must be 'sigmoid' or 'logits', got {output!r}")
        self.output = output
        w = _check_dim("width", width)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.latent_dim, 4 * w, 4, 1, 0),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.ConvTranspose2d(w, 1, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_latent(self, z, self.latent_dim)
        lead = z.shape[:-1]
        h = self.net(z.reshape(-1, self.latent_dim, 1, 1))
        if self.output == "sigmoid":
            h = torch.sigmoid(h)
        return h.reshape(*lead, *self.out_shape)


MAX_HALVINGS = 4


def conv_halvings(height: int, width: int) -> int:
    """The number L of 4x4 stride-2 (padding 1) convolutions :class:`ConvEncoder` stacks on an ``H x W``
    image: each halves both sides exactly, so L is the largest number up to 4 with H / 2^L and W / 2^L
    integers and at least 4 (64x64: 4 layers to 4x4; 28x28: 2 layers to 7x7; 32x32: 3 to 4x4).

    :raises ValueError: when fewer than 2 fit (a side not a multiple of 4, or below 16).
    """
    layers = 0
    while layers < MAX_HALVINGS and height % 2 == 0 and width % 2 == 0 and min(height, width) >= 8:
        height, width, layers = height // 2, width // 2, layers + 1
    if layers < 2:
        raise ValueError(
            f"the conv networks take images whose height and width are multiples of 4 and at least 16, got "
            f"{height << layers}x{width << layers}; resize them (image folders: data option image_size) or "
            "use network mlp"
        )
    return layers


def _conv_plan(shape: Tuple[int, ...], channels: Sequence[int], what: str) -> Tuple[int, int, int, int]:
    """``(C, H, W, L)`` of a conv pair on images of ``shape``: L stride-2 halvings (:func:`conv_halvings`),
    with a ValueError in one line when ``shape`` is not ``(C, H, W)`` or ``channels`` gives fewer than L
    sizes. ``what`` begins the first message ("ConvEncoder takes")."""
    if len(shape) != 3:
        raise ValueError(f"{what} images of shape (C, H, W), got {shape}")
    c, h, w = shape
    layers = conv_halvings(h, w)
    if len(channels) < layers:
        raise ValueError(f"channels must give at least {layers} sizes for {h}x{w} images, got {channels}")
    return c, h, w, layers


class ConvEncoder(nn.Module):
    """Convolutional encoder for ``(B, C, H, W)`` images of any channel count C and sides that
    :func:`conv_halvings` takes: L = conv_halvings(H, W) 4x4 stride-2 convolutions (channels
    ``channels[:L]``, ReLU) to ``c x H/2^L x W/2^L``, a ``hidden``-unit linear layer and two heads for the
    location and the scale of q(z|x). On ``1x64x64`` it is :class:`ConvEncoder64`'s architecture.

    :param in_shape: ``(C, H, W)``.
    :param latent_dim: D.
    :param channels: output channels of the convolutions (the first L are used).
    :param hidden: units of the linear layer.
    """

    def __init__(
        self, in_shape: Shape, latent_dim: int, channels: Sequence[int] = (32, 32, 64, 64), hidden: int = 128
    ):
        super().__init__()
        self.in_shape = _as_shape(in_shape)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        c, h, w, layers = _conv_plan(self.in_shape, channels, "ConvEncoder takes")
        chans = [c, *[_check_dim("channels", k) for k in channels[:layers]]]
        convs = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            convs += [nn.Conv2d(cin, cout, 4, 2, 1), nn.ReLU()]
        self.conv = nn.Sequential(*convs)
        self.fc = nn.Sequential(nn.Linear(chans[-1] * (h >> layers) * (w >> layers), hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, self.latent_dim)
        self.raw_scale = nn.Linear(hidden, self.latent_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_input(self, x, self.in_shape)
        h = self.fc(self.conv(x).flatten(1))
        return self.loc(h), positive_scale(self.raw_scale(h))


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: ``z (..., D) -> (..., C, H, W)``, a linear map to
    ``channels[0] x H/2^L x W/2^L`` and L 4x4 stride-2 transposed convolutions, each doubling both sides
    exactly. The output is unconstrained: logits for a Bernoulli likelihood, a location for a Normal or
    Laplace one.
    """

    def __init__(
        self, latent_dim: int, out_shape: Shape, channels: Sequence[int] = (64, 64, 32, 32), hidden: int = 128
    ):
        super().__init__()
        self.out_shape = _as_shape(out_shape)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        c, h, w, layers = _conv_plan(self.out_shape, channels, "ConvDecoder makes")
        chans = [*[_check_dim("channels", k) for k in channels[len(channels) - layers :]], c]
        self.start = (chans[0], h >> layers, w >> layers)
        self.fc = nn.Sequential(
            nn.Linear(self.latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(self.start)), nn.ReLU()
        )
        deconvs = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            deconvs.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
            if i < len(chans) - 2:
                deconvs.append(nn.ReLU())
        self.deconv = nn.Sequential(*deconvs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_latent(self, z, self.latent_dim)
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, self.latent_dim)).reshape(-1, *self.start)
        return self.deconv(h).reshape(*lead, *self.out_shape)
