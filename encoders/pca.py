"""PCA on flattened pixels: the simplest honest baseline, and the model for plugin authors.

Everything an encoder plugin needs is here: keyword config in the constructor, ``fit`` on the
autoencoder split, ``encode`` to ``(N, D)`` float32, ``fingerprint``, ``save``/``load``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.decomposition import PCA

from embench.errors import ConfigError, NotFittedError
from embench.storage import fingerprint, sha256_arrays

_ARRAYS = ("components_", "mean_", "explained_variance_")


def as_float_images(images: Any) -> np.ndarray:
    """Images as float32 in [0, 1]: uint8 is divided by 255, floats are taken as they are."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        out = array.astype(np.float32)
        out /= 255.0  # in place: one float copy, not two
        return out
    return array.astype(np.float32, copy=False)


class PCAEncoder:
    """PCA on flattened pixels (sklearn), z_dim components fitted on the autoencoder split.

    Args:
        z_dim: number of principal components (the embedding size).
        seed: random state of the randomized SVD.
        fit_memory_mb: fit on as many training images (evenly spaced) as fit in this many MB
            as float32, which bounds memory on large splits (SVHN extra, STL-10 unlabeled);
            ``None`` uses all of them. At 64x64 the default takes about 20,000 images.

    Example:
        >>> enc = PCAEncoder(z_dim=16).fit(train_images, val_images)
        >>> enc.encode(test_images).shape
        (N, 16)
    """

    def __init__(self, z_dim: int = 64, seed: int = 0, fit_memory_mb: int | None = 1000):
        self.z_dim = z_dim
        self.seed = seed
        self.fit_memory_mb = fit_memory_mb

    def get_config(self) -> dict[str, Any]:
        """Constructor config, JSON-ready."""
        return {"z_dim": self.z_dim, "seed": self.seed, "fit_memory_mb": self.fit_memory_mb}

    def fit(self, train_images: Any, val_images: Any = None, **_: Any) -> PCAEncoder:
        """Fit the components on ``train_images``; report reconstruction MSE on ``val_images``."""
        if not isinstance(self.z_dim, int) or self.z_dim < 1:
            raise ConfigError(f"PCA z_dim must be a positive integer; got {self.z_dim!r}.")
        n = len(train_images)
        if self.z_dim > n:
            raise ConfigError(
                f"PCA z_dim={self.z_dim} exceeds the {n} training images.",
                "Use a smaller --z or a larger preset.",
            )
        index = np.arange(n)
        if self.fit_memory_mb is not None:
            per_image = 4 * int(np.prod(train_images.shape[1:]))
            most = max(self.z_dim, int(self.fit_memory_mb * 1e6 // per_image))
            if n > most:
                index = np.unique(np.linspace(0, n - 1, most).astype(np.int64))
        x = as_float_images(train_images[index] if len(index) < n else train_images[:])
        pca = PCA(n_components=self.z_dim, svd_solver="randomized", random_state=self.seed)
        pca.fit(x.reshape(len(x), -1))
        self.components_ = pca.components_.astype(np.float32)
        self.mean_ = pca.mean_.astype(np.float32)
        self.explained_variance_ = pca.explained_variance_.astype(np.float32)
        self.image_shape_ = tuple(int(s) for s in x.shape[1:])
        self.val_mse_ = None
        del x
        if val_images is not None and len(val_images):
            self.val_mse_ = self._reconstruction_mse(val_images)
        return self

    def _reconstruction_mse(self, images: Any, batch: int = 2048) -> float:
        total, count = 0.0, 0
        for lo in range(0, len(images), batch):
            v = as_float_images(images[lo : lo + batch])
            v = v.reshape(len(v), -1) - self.mean_
            recon = v @ self.components_.T @ self.components_
            total += float(np.sum((recon - v) ** 2, dtype=np.float64))
            count += v.size
        return total / count

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError(self)

    def encode(self, images: Any) -> np.ndarray:
        """Project images (uint8 or float in [0, 1], ``(N, 3, H, W)``) onto the components."""
        self._check_fitted()
        x = as_float_images(images)
        return ((x.reshape(len(x), -1) - self.mean_) @ self.components_.T).astype(np.float32)

    @property
    def embedding_dim(self) -> int:
        """Size of one embedding."""
        return self.z_dim

    @property
    def fingerprint(self) -> str:
        """sha256 of config + fitted arrays."""
        self._check_fitted()
        return fingerprint("pca", self.get_config(), sha256_arrays(*self._arrays().values()))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAYS}

    def save(self, directory: str | Path) -> None:
        """Write ``arrays.safetensors`` and ``config.json`` into ``directory``."""
        self._check_fitted()
        directory = Path(directory)
        save_file(self._arrays(), str(directory / "arrays.safetensors"))
        meta = {"config": self.get_config(), "image_shape": self.image_shape_,
                "val_mse": self.val_mse_}
        (directory / "config.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> PCAEncoder:
        """Rebuild a fitted encoder from :meth:`save`'s directory (no pickle involved)."""
        directory = Path(directory)
        meta = json.loads((directory / "config.json").read_text())
        encoder = cls(**meta["config"])
        for name, array in load_file(str(directory / "arrays.safetensors")).items():
            setattr(encoder, name, array)
        encoder.image_shape_ = tuple(meta["image_shape"])
        encoder.val_mse_ = meta.get("val_mse")
        return encoder

    def training_stats(self) -> dict[str, Any]:
        """What the result record reports about fitting."""
        return {"val_reconstruction_mse": getattr(self, "val_mse_", None)}
