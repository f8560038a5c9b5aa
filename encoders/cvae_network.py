"""The FourLayerCVAE network of World Models (Fig. 4 of the paper), its sizes and factories.

The encoders that train it live in :mod:`embench.encoders.autoencoder`; this file is the
architecture alone (timm's model-file layout: the network first, small factories at the end).
"""

from __future__ import annotations

import torch
from torch import nn

from embench.errors import ConfigError

ENCODER_CHANNELS = (3, 32, 64, 128, 256)
DECODER_CHANNELS = (1024, 128, 64, 32, 3)
DECODER_KERNELS = (5, 5, 6, 6)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def check_image_size(height: int, width: int) -> int:
    """Return the side of a square 64+16n image, or raise :class:`ConfigError`.

    The decoder starts from a ``g x g`` map with ``g = (s - 64) / 16 + 1`` and its four stride-2
    transposed convolutions (kernels 5, 5, 6, 6) grow it to exactly ``16 g + 48 = s`` pixels, so
    only these sizes round-trip.
    """
    if height != width or height < 64 or (height - 64) % 16:
        raise ConfigError(
            "FourLayerCVAE needs square images of 64+16n pixels (64, 80, 96, ...); "
            f"got {height}x{width}.",
            "Resize the images (e.g. to 64x64) or choose an encoder without this constraint.",
        )
    return int(height)


def _conv_out(size: int) -> int:
    return (size - 4) // 2 + 1  # kernel 4, stride 2, no padding


def encoder_output_side(image_size: int) -> int:
    """Side of the last encoder feature map (2 for 64 px, 4 for 96 px)."""
    side = image_size
    for _ in range(len(ENCODER_CHANNELS) - 1):
        side = _conv_out(side)
    return side


def decoder_seed_side(image_size: int) -> int:
    """``g(s) = (s - 64) / 16 + 1``: side of the map the decoder's linear layer produces."""
    return (image_size - 64) // 16 + 1


def _kld(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    mu, logvar = mu.float(), logvar.float()
    return -torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


class _SeedConvTranspose2d(nn.ConvTranspose2d):
    """``ConvTranspose2d`` that maps a 1x1 input with one matrix product, channels-last out.

    On a 1x1 input (the decoder's seed at 64 px) a transposed convolution without padding is
    a linear map from ``C_in`` values to ``C_out x k x k``: ``out[n, c, i, j] = sum_k x[n, k]
    W[k, c, i, j] + b[c]``. CPU convolution kernels run this shape at ~20 GFLOP/s, one
    ``addmm`` at several times that. Same parameters and state dict as the parent class; any
    other input size takes the parent's path.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        plain = (self.padding == (0, 0) and self.output_padding == (0, 0)
                 and self.dilation == (1, 1) and self.groups == 1 and output_size is None)
        if not (plain and x.dim() == 4 and x.shape[-2:] == (1, 1)):
            return super().forward(x, output_size)
        c_out, kh, kw = self.weight.shape[1:]
        if self.bias is None:
            flat = x.flatten(1) @ self.weight.flatten(1)
        else:
            flat = torch.addmm(self.bias.repeat_interleave(kh * kw), x.flatten(1),
                               self.weight.flatten(1))
        return flat.view(-1, c_out, kh, kw).contiguous(memory_format=torch.channels_last)


class FourLayerCVAE(nn.Module):
    """World Models' convolutional VAE for square 64+16n pixel images.

    Encoder: four ``Conv2d(kernel 4, stride 2)`` layers, channels 3→32→64→128→256, each with
    BatchNorm + ReLU, flattened into two linear heads ``mu`` and ``logvar`` of size ``z_dim``.
    Decoder: ``Linear(z_dim, 1024·g·g)`` + ReLU reshaped to ``(1024, g, g)``, then four
    ``ConvTranspose2d(stride 2)`` layers 1024→128→64→32→3 with kernels 5, 5, 6, 6, BatchNorm +
    ReLU on the first three and Sigmoid on the last.

    It runs channels-last (NHWC memory, ~1.2x faster convolutions on CPU; inputs in NCHW are
    converted) and computes the first transposed convolution from a 1x1 seed as a matrix
    product. Both change only float rounding; ``textbook=True`` builds the same network the
    plain way (NCHW, ``nn.ConvTranspose2d``), the baseline of ``benchmarks/train_throughput.py``.

    Args:
        z_dim: size of ``mu``, ``logvar`` and the decoder's input.
        image_size: side of the square input (64, 80, 96, ...).
        textbook: build the plain-PyTorch form instead.

    Raises:
        ConfigError: for any other image size.

    Example:
        >>> net = FourLayerCVAE(z_dim=32, image_size=64)
        >>> recon, mu, logvar = net(torch.rand(8, 3, 64, 64))
    """

    def __init__(self, z_dim: int = 64, image_size: int = 64, *, textbook: bool = False) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.memory_format = torch.contiguous_format if textbook else torch.channels_last
        transposed = nn.ConvTranspose2d if textbook else _SeedConvTranspose2d
        self.image_size = check_image_size(image_size, image_size)
        layers: list[nn.Module] = []
        for i in range(len(ENCODER_CHANNELS) - 1):
            c_in, c_out = ENCODER_CHANNELS[i], ENCODER_CHANNELS[i + 1]
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        flat = ENCODER_CHANNELS[-1] * encoder_output_side(image_size) ** 2
        self.mu = nn.Linear(flat, z_dim)
        self.logvar = nn.Linear(flat, z_dim)

        g = decoder_seed_side(image_size)
        layers = [
            nn.Linear(z_dim, DECODER_CHANNELS[0] * g * g),
            nn.ReLU(True),
            nn.Unflatten(1, (DECODER_CHANNELS[0], g, g)),
        ]
        last = len(DECODER_KERNELS) - 1
        for i, kernel in enumerate(DECODER_KERNELS):
            c_in, c_out = DECODER_CHANNELS[i], DECODER_CHANNELS[i + 1]
            layers.append(transposed(c_in, c_out, kernel, stride=2))
            layers += [nn.Sigmoid()] if i == last else [nn.BatchNorm2d(c_out), nn.ReLU(True)]
        self.decoder = nn.Sequential(*layers)
        self.to(memory_format=self.memory_format)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, 3, s, s)`` in [0, 1] -> ``(mu, logvar)``, each ``(N, z_dim)``."""
        features = self.encoder(x.contiguous(memory_format=self.memory_format))
        return self.mu(features), self.logvar(features)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes ``(N, z_dim)`` -> images ``(N, 3, s, s)`` in [0, 1]."""
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(reconstruction, mu, logvar)``.

        ``sample=True`` decodes ``mu + eps * exp(logvar / 2)`` (VAE training); otherwise ``mu``.
        """
        mu, logvar = self.encode(x)
        z = mu
        if sample:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------


def four_layer_cvae(z_dim: int = 64, image_size: int = 64) -> FourLayerCVAE:
    """A FourLayerCVAE for ``image_size`` x ``image_size`` images."""
    return FourLayerCVAE(z_dim=z_dim, image_size=image_size)


def four_layer_cvae_64(z_dim: int = 64) -> FourLayerCVAE:
    """The 64 px FourLayerCVAE (LunarLander, SVHN tiled 2x2)."""
    return FourLayerCVAE(z_dim=z_dim, image_size=64)


def four_layer_cvae_96(z_dim: int = 64) -> FourLayerCVAE:
    """The 96 px FourLayerCVAE (STL-10)."""
    return FourLayerCVAE(z_dim=z_dim, image_size=96)
