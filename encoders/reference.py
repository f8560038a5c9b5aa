"""Reference encoders that need no training, to show what the autoencoders add.

Two rows beside the paper's four encoders on the board, each answering one question:

- ``alexnet_conv2``: the frozen perceptual network itself (ImageNet AlexNet ``features[:5]``
  followed by a Sigmoid, exactly what the perceptual loss compares), its 192 x 7 x 7 map
  average-pooled to ``pool`` x ``pool`` (3 x 3 by default: 1,728 numbers an image; ``pool=7``
  keeps the whole map, 9,408). Do the perceptual autoencoders beat the features their loss
  was computed on?
- ``untrained_ae``: the FourLayerCVAE encoder with its initial random weights (seeded), never
  trained, emitting ``mu`` in eval mode like the trained ones. How much of an autoencoder's
  score is the architecture alone?

Neither trains: ``fit`` only checks its input, so the run's cost is embedding and probes.

Example:
    >>> enc = AlexNetFeatures(pool=3).fit(train_images)
    >>> enc.encode(test_images).shape
    (N, 1728)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embench.encoders.cvae_network import FourLayerCVAE
from embench.encoders.image_staging import INFERENCE_BATCH, _batches, _check_images, _to_unit
from embench.encoders.perceptual import build_perceptual_network
from embench.encoders.perceptual_weights import torchvision_features
from embench.errors import ConfigError, NotFittedError
from embench.storage import fingerprint, resolve_home, sha256_arrays
from embench.training import resolve_device


def _positive_int(owner: str, name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{owner} {name} must be an integer >= 1; got {value!r}.")
    return value


def _encode_batches(images: Any, n: int, width: int, forward, device: torch.device) -> np.ndarray:
    """``forward`` over ``images`` in batches, on ``device``, into an ``(n, width)`` array."""
    out = np.empty((n, width), dtype=np.float32)
    with torch.inference_mode():
        for start, batch in _batches(images, INFERENCE_BATCH):
            rows = forward(_to_unit(batch.to(device)))
            out[start:start + len(batch)] = rows.float().flatten(1).cpu().numpy()
    return out


class AlexNetFeatures:
    """The frozen perceptual network's feature map, average-pooled, as an embedding.

    Args:
        pool: side of the pooled map (``adaptive_avg_pool2d``); the embedding has
            ``channels * pool * pool`` numbers (192 * 9 = 1,728 for the default).
        perceptual_network: torchvision network whose ``features`` give p (``"alexnet"``).
        perceptual_layer: p = ``features[:perceptual_layer]`` + Sigmoid (5: after conv2's
            ReLU, as the paper's perceptual loss).
        perceptual_weights: ``"imagenet"`` (the default; fetched like the perceptual loss's),
            ``"random"`` (only by name) or a weights file.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        home: EMBENCH_HOME, where the weights are cached.
    """

    name = "alexnet_conv2"

    def __init__(self, pool: int = 3, *, perceptual_network: str = "alexnet",
                 perceptual_layer: int = 5, perceptual_weights: str = "imagenet",
                 device: str = "auto", home: str | Path | None = None) -> None:
        self.pool = pool
        self.perceptual_network = perceptual_network
        self.perceptual_layer = perceptual_layer
        self.perceptual_weights = perceptual_weights
        self.device = device
        self.home = home

    def get_config(self) -> dict[str, Any]:
        """What determines the embeddings (JSON-ready; no ``device``/``home``)."""
        return {"pool": self.pool, "perceptual_network": self.perceptual_network,
                "perceptual_layer": self.perceptual_layer,
                "perceptual_weights": str(self.perceptual_weights)}

    @property
    def embedding_dim(self) -> int:
        """``channels * pool * pool``, known before ``fit`` (from the network's shapes)."""
        pool = _positive_int(type(self).__name__, "pool", self.pool)
        layer = _positive_int(type(self).__name__, "perceptual_layer", self.perceptual_layer)
        convs = [m for m in torchvision_features(self.perceptual_network, device="meta")[:layer]
                 if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ConfigError(f"{self.perceptual_network} features[:{layer}] has no "
                              "convolution.", "Choose a larger perceptual_layer.")
        return convs[-1].out_channels * pool * pool

    def fit(self, train_images: Any, val_images: Any = None, *, progress: Any = None,
            **_: Any) -> AlexNetFeatures:
        """Load the frozen network (nothing is trained); return ``self``."""
        _check_images(train_images, "train_images")
        self.embedding_dim_ = self.embedding_dim
        network = build_perceptual_network(
            self.perceptual_network, self.perceptual_layer, self.perceptual_weights,
            home=resolve_home(self.home), progress=progress)
        self.device_ = resolve_device(self.device)
        self.network_ = network.to(self.device_).eval()
        self.perceptual_ = dict(network.description)
        return self

    def encode(self, images: Any) -> np.ndarray:
        """Pooled p(x) of each image, ``(N, channels * pool * pool)`` float32."""
        if not hasattr(self, "network_"):
            raise NotFittedError(self)
        n, _ = _check_images(images, "images")

        def forward(x: torch.Tensor) -> torch.Tensor:
            return nn.functional.adaptive_avg_pool2d(self.network_(x), self.pool)

        return _encode_batches(images, n, self.embedding_dim_, forward, self.device_)

    @property
    def fingerprint(self) -> str:
        """sha256 of the config and the network's weights digest."""
        if not hasattr(self, "network_"):
            raise NotFittedError(self)
        return fingerprint(self.name, self.get_config(), self.perceptual_["weights_sha256"])

    def training_stats(self) -> dict[str, Any]:
        """No training; the network's identity (weights source and sha256)."""
        return {"trained": False, "perceptual": self.perceptual_}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pool={self.pool!r})"


class UntrainedAE:
    """The FourLayerCVAE's encoder with its seeded initial weights, never trained.

    Args:
        z_dim: size of ``mu`` (the embedding).
        seed: seeds the initial weights exactly as the trained encoders' ``fit`` does, so
            ``untrained_ae`` at seed s is where ``ae`` at seed s starts.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    name = "untrained_ae"

    def __init__(self, z_dim: int = 64, *, seed: int = 0, device: str = "auto") -> None:
        self.z_dim = z_dim
        self.seed = seed
        self.device = device

    def get_config(self) -> dict[str, Any]:
        """What determines the embeddings (JSON-ready)."""
        return {"z_dim": self.z_dim, "seed": self.seed}

    @property
    def embedding_dim(self) -> int:
        """Size of one embedding (``z_dim``)."""
        return self.z_dim

    def fit(self, train_images: Any, val_images: Any = None, **_: Any) -> UntrainedAE:
        """Build the network with the seed's initial weights (no training); return ``self``."""
        _positive_int(type(self).__name__, "z_dim", self.z_dim)
        if not isinstance(self.seed, int):
            raise ConfigError(f"UntrainedAE seed must be an integer; got {self.seed!r}.")
        _, size = _check_images(train_images, "train_images")
        with torch.random.fork_rng(devices=[]):  # as FourLayerCVAEEncoder.fit builds it
            torch.manual_seed(self.seed)
            model = FourLayerCVAE(self.z_dim, size)
        self.device_ = resolve_device(self.device)
        self.model_ = model.to(self.device_).eval()
        self.image_size_ = size
        return self

    def encode(self, images: Any) -> np.ndarray:
        """``mu`` of each image under the initial weights, ``(N, z_dim)`` float32."""
        if not hasattr(self, "model_"):
            raise NotFittedError(self)
        n, size = _check_images(images, "images")
        if size != self.image_size_:
            raise ConfigError(f"This UntrainedAE was built for {self.image_size_} px images; "
                              f"got {size} px.", "Embed images of the size it was fit on.")
        return _encode_batches(images, n, self.z_dim,
                               lambda x: self.model_.encode(x)[0], self.device_)

    @property
    def fingerprint(self) -> str:
        """sha256 of the config, the image size and every weight."""
        if not hasattr(self, "model_"):
            raise NotFittedError(self)
        state = self.model_.state_dict()
        digest = sha256_arrays(*(state[k].detach().cpu().numpy() for k in sorted(state)))
        return fingerprint(self.name, self.get_config(), self.image_size_, digest)

    def training_stats(self) -> dict[str, Any]:
        """No training: the weights are the seeded initial ones."""
        return {"trained": False, "weights": f"initial (seed {self.seed})"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(z_dim={self.z_dim!r}, seed={self.seed!r})"


__all__ = ["AlexNetFeatures", "UntrainedAE"]
