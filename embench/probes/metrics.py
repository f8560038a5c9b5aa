"""The probe selection loss and the target encoding it is measured on.

Every probe, linear or MLP, is trained and selected on the same quantity: the mean squared
error between its raw outputs and the targets (one-hot vectors for classes), averaged over all
samples and all target dimensions at once. Averaging per batch and then over batches would let
a short last batch weigh as much as a full one (a pitfall of the authors' script).
"""

from __future__ import annotations

import numpy as np

from embench.errors import ConfigError

KINDS = ("regression", "classification")


def check_kind(kind: str, owner: str) -> str:
    """Return ``kind`` if it is a task kind, else raise a :class:`ConfigError` naming ``owner``."""
    if kind not in KINDS:
        raise ConfigError(
            f"{owner} got kind={kind!r}.",
            f"Allowed: {', '.join(map(repr, KINDS))}; use the task's kind.",
        )
    return kind


def one_hot(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Encode ``labels`` as float32 one-hot rows over ``classes`` (sorted, as ``np.unique`` gives).

    Args:
        labels: ``(N,)`` class labels, each one of ``classes``.
        classes: ``(C,)`` sorted unique labels; column ``j`` stands for ``classes[j]``.

    Returns:
        ``(N, C)`` float32 array with a single 1 per row.

    Raises:
        ValueError: if a label is not in ``classes``.
    """
    labels = np.asarray(labels).reshape(-1)
    index = np.searchsorted(classes, labels)
    index = np.clip(index, 0, len(classes) - 1)
    unknown = classes[index] != labels
    if unknown.any():
        raise ValueError(
            f"Labels {sorted(set(labels[unknown].tolist()))[:10]} are not among the classes "
            f"{classes.tolist()[:20]} the probe knows; pass them in `classes` when fitting."
        )
    encoded = np.zeros((len(labels), len(classes)), dtype=np.float32)
    encoded[np.arange(len(labels)), index] = 1.0
    return encoded


def probe_loss(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error over all samples and target dimensions (accumulated in float64).

    Args:
        outputs: ``(N, k)`` raw probe outputs.
        targets: ``(N, k)`` targets (one-hot rows for classification).

    Returns:
        ``mean((outputs - targets) ** 2)`` over all ``N * k`` entries.

    Raises:
        ValueError: if the shapes differ.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if outputs.shape != targets.shape:
        raise ValueError(
            f"Probe outputs have shape {outputs.shape} but targets have shape {targets.shape}."
        )
    diff = outputs - targets
    return float(np.mean(diff * diff))
