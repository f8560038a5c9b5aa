"""The contracts between embench and its plugins: :class:`Encoder`, :class:`Task`, task data.

Plugins do not subclass anything: any object with these members works (``isinstance`` checks
use the runtime-checkable protocols). ``embench.testing`` runs the conformance battery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

#: Split names of Table I, in the order they are embedded.
AUTOENCODER_TRAIN = "autoencoder_train"
AUTOENCODER_VAL = "autoencoder_val"
PROBE_TRAIN = "probe_train"
PROBE_VAL = "probe_val"
TEST = "test"
SPLITS = (AUTOENCODER_TRAIN, AUTOENCODER_VAL, PROBE_TRAIN, PROBE_VAL, TEST)

TaskKind = Literal["regression", "classification"]


@dataclass
class Split:
    """One split: uint8 images ``(N, 3, H, W)`` (an array or an h5py dataset) and labels.

    ``labels`` is ``(N, k)`` float32 for regression, ``(N,)`` int64 for classification, or
    ``None`` for the unlabeled autoencoder splits. ``groups`` (e.g. rollout ids) is optional.
    """

    images: Any
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class TaskData:
    """A prepared task: its splits, the content fingerprint, and what it was made from."""

    splits: dict[str, Split]
    fingerprint: str
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {name: len(split) for name, split in self.splits.items()}


@runtime_checkable
class Encoder(Protocol):
    """What an encoder plugin provides (sklearn transformer spirit).

    Constructed from keyword config (``z_dim`` at least). ``fit`` trains it on the autoencoder
    split and returns ``self`` (a pretrained encoder may do nothing). ``encode`` maps
    ``uint8 (N, 3, H, W)`` (or float in [0, 1]) to ``(N, D)`` float32. ``fingerprint`` identifies
    weights + config; ``save``/``load`` round-trip it through a directory.
    """

    def fit(self, train_images: Any, val_images: Any, **kwargs: Any) -> Encoder: ...

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def embedding_dim(self) -> int: ...

    def save(self, directory: Path) -> None: ...


@runtime_checkable
class Task(Protocol):
    """What a task plugin provides: metadata, prepared data and its metric."""

    kind: TaskKind
    image_size: int
    metric_name: str
    metric_direction: Literal["lower", "higher"]

    def load(self, home: Path, preset: Any, seed: int, progress: Any = None) -> TaskData: ...

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> float: ...


def patience_for(max_epochs: int) -> int:
    """Early-stopping patience of the paper, as an integer: ``max(10, ceil(epochs / 20))``."""
    return max(10, math.ceil(max_epochs / 20))
