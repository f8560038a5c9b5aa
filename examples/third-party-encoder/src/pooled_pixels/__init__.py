"""Average-pooled pixels: a fixed encoder whose ``fit`` does nothing (like a pretrained one)."""

from __future__ import annotations

import hashlib
import json

import numpy as np


class PooledPixels:
    """Average-pooled pixels (grid x grid per channel); fit is a no-op, like a pretrained model.

    Args:
        grid: output cells per side; the embedding has ``3 * grid * grid`` values.
    """

    def __init__(self, grid: int = 4):
        self.grid = grid

    def fit(self, train_images, val_images=None, **kwargs):
        """Nothing to learn: returns self."""
        return self

    def encode(self, images):
        """Mean of each cell of a grid x grid partition, per channel, in [0, 1]."""
        x = np.asarray(images)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        n, c, h, w = x.shape
        g = self.grid
        cells = x[:, :, : h - h % g, : w - w % g].reshape(n, c, g, h // g, g, w // g)
        return cells.mean(axis=(3, 5)).reshape(n, c * g * g)

    @property
    def embedding_dim(self):
        """3 * grid * grid."""
        return 3 * self.grid * self.grid

    @property
    def fingerprint(self):
        """Identifies the config (there are no weights)."""
        blob = json.dumps({"encoder": "pooled_pixels", "version": 1, "grid": self.grid})
        return hashlib.sha256(blob.encode()).hexdigest()

    def save(self, directory):
        """Store the config."""
        (directory / "config.json").write_text(json.dumps({"grid": self.grid}))

    @classmethod
    def load(cls, directory):
        """Rebuild from :meth:`save`'s directory."""
        return cls(**json.loads((directory / "config.json").read_text()))
