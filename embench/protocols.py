"""The contracts between embench and its plugins: :class:`Encoder`, :class:`Task`, task data.

Plugins do not subclass anything: any object with the required members works (``isinstance``
checks use the runtime-checkable protocols). :class:`Encoder` and :class:`Task` list only what
every plugin must have; the optional hooks embench uses when present have their own protocols
(:class:`Checkpointable`, :class:`Configurable`, :class:`ReportsTraining`,
:class:`HasEvaluationConfig`, :class:`RetrainsDecoder`), and so does a task's optional
metadata (:class:`HasClassNames`, :class:`PositionLabels`), read through
:func:`class_names_of` and :func:`label_pixels`. :func:`item_scores`, the task's metric item by
item, is the one per-item formula that ``show`` and ``compare`` use. ``embench.testing`` runs
the conformance battery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
    """The members every encoder plugin must have (sklearn transformer spirit).

    Constructed from keyword config; embench passes ``z_dim``, ``seed``, ``max_epochs``, ...
    only to factories that accept them. An encoder that takes no ``z_dim`` has a fixed size:
    it must know ``embedding_dim`` once constructed, and its runs are filed under that size.
    ``fit`` trains it on the autoencoder split and returns ``self`` (a pretrained encoder may
    do nothing); it may also accept ``progress`` (a rich Progress) and ``resume_dir`` (where a
    checkpointable encoder keeps epoch-end states), which embench passes only when accepted.
    ``encode`` maps ``uint8 (N, 3, H, W)`` (or float in [0, 1]) to ``(N, D)`` float32.
    ``fingerprint`` identifies weights + config (it keys the embedding cache).

    Everything else is optional; see :class:`Checkpointable`, :class:`Configurable`,
    :class:`ReportsTraining`, :class:`HasEvaluationConfig` and :class:`RetrainsDecoder`.
    """

    def fit(self, train_images: Any, val_images: Any, **kwargs: Any) -> Encoder: ...

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def embedding_dim(self) -> int: ...


@runtime_checkable
class Checkpointable(Protocol):
    """Optional: ``save(directory)`` on the encoder and classmethod ``load`` on its factory.

    With both, a trained encoder is checkpointed and reused by later runs; with neither it is
    fitted on every run (fine for a pretrained or cheap encoder). ``load`` receives the
    directory and, where its signature accepts them, ``device``, ``home`` and the settings of
    :meth:`HasEvaluationConfig.evaluation_config`.
    """

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path, **options: Any) -> Any: ...


@runtime_checkable
class Configurable(Protocol):
    """Optional: the constructor config that determines the embeddings, JSON-ready.

    It keys the checkpoint and is recorded in results. Without it sklearn's ``get_params`` is
    used, and without either the keyword config embench passed to the factory.
    """

    def get_config(self) -> dict[str, Any]: ...


@runtime_checkable
class ReportsTraining(Protocol):
    """Optional: what ``fit`` did (epochs, losses, ...), JSON-ready; stored in the record."""

    def training_stats(self) -> dict[str, Any]: ...


@runtime_checkable
class HasEvaluationConfig(Protocol):
    """Optional: settings that change how the encoder is evaluated, not what it embeds.

    They key the run (not the checkpoint or the embedding cache) and are recorded.
    """

    def evaluation_config(self) -> dict[str, Any]: ...


@runtime_checkable
class RetrainsDecoder(Protocol):
    """Optional: an autoencoder whose decoder can be retrained alone (Table VIII).

    With ``retrain_decoder`` the run adds the reconstruction stage, which also calls
    ``reconstruction_error`` and ``reconstruct``: all three are needed together.
    """

    def retrain_decoder(self, train_images: Any, val_images: Any, *, max_epochs: int,
                        progress: Any = None) -> dict[str, Any]: ...

    def reconstruction_error(self, images: Any, *, decoder: str = "original",
                             metric: str = "l1") -> float: ...

    def reconstruct(self, images: Any, *, decoder: str = "original") -> np.ndarray: ...


@runtime_checkable
class Task(Protocol):
    """The members every task plugin must have: its metric and its prepared data.

    ``load`` prepares (generates, downloads or verifies) the data and returns it with every
    split of :data:`SPLITS`. Optional: ``name`` and ``image_size`` (side of the square images),
    checked by ``embench.testing`` when present; ``PRESET_SIZES`` (per preset name, the task's
    own sizes, read in ``load`` with :func:`embench.presets.task_sizes`) and ``Z_SIZES`` (per
    preset name, the z grid; ``(64,)`` where absent); the metadata of :class:`HasClassNames`
    and :class:`PositionLabels`. ``score`` must be a mean over items for ``compare`` and
    ``show`` (:func:`item_scores`).
    """

    kind: TaskKind
    metric_name: str
    metric_direction: Literal["lower", "higher"]

    def load(self, home: Path, preset: Any, seed: int, progress: Any = None) -> TaskData: ...

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> float: ...



@runtime_checkable
class HasClassNames(Protocol):
    """Optional: a classification task's class names, ``class_names[i]`` naming label ``i``.

    ``embench show`` writes them in its captions and under its per-class bars; a task without
    them (or with ``class_names = None``) has its labels shown as numbers.
    """

    class_names: tuple[str, ...]


@runtime_checkable
class PositionLabels(Protocol):
    """Optional: a regression task whose labels ``(x, y)`` are positions in its frames.

    ``pixels_per_unit`` is one label unit in frame pixels, on both axes; ``label_origin`` is
    the ``(column, row)`` of the label ``(0, 0)``, measured from the frame's top-left corner
    (pixel ``i`` spans ``[i, i + 1)``). ``x`` grows to the right and ``y`` upwards, rows
    downwards (:func:`label_pixels`). ``embench show`` draws the true and predicted positions
    on the frame from them; a task without them gets no markers, only the error.
    """

    pixels_per_unit: float
    label_origin: tuple[float, float]


def class_names_of(task: Any) -> tuple[str, ...] | None:
    """A task's class names (:class:`HasClassNames`), or ``None`` where it declares none.

    Example:
        >>> class Digits: class_names = [str(d) for d in range(10)]
        >>> class_names_of(Digits())[:3]
        ('0', '1', '2')
    """
    names = getattr(task, "class_names", None)
    return None if names is None else tuple(str(name) for name in names)


def has_position_labels(task: Any) -> bool:
    """Whether a task declares the label geometry of :class:`PositionLabels` (both attributes)."""
    return (getattr(task, "pixels_per_unit", None) is not None
            and getattr(task, "label_origin", None) is not None)


def label_pixels(task: Any, labels: np.ndarray) -> np.ndarray | None:
    """Labels ``(N, 2)`` -> ``(N, 2)`` ``(column, row)`` in the frame (:class:`PositionLabels`).

    ``column = origin_column + pixels_per_unit * x`` and ``row = origin_row -
    pixels_per_unit * y``; ``None`` for a task that does not declare both attributes.

    Example:
        >>> class Board: pixels_per_unit, label_origin = 10.0, (32.0, 32.0)
        >>> label_pixels(Board(), np.array([[1.0, 1.0]])).tolist()
        [[42.0, 22.0]]
    """
    if not has_position_labels(task):
        return None
    scale, origin = task.pixels_per_unit, task.label_origin
    labels = np.asarray(labels, dtype=np.float64)
    return np.stack([origin[0] + scale * labels[:, 0], origin[1] - scale * labels[:, 1]], axis=1)


def item_scores(task: Any, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """The task's metric of each item alone: ``task.score`` on one item at a time.

    This is the only per-item formula: ``compare``'s paired values and ``show``'s per-item
    errors are these, so they cannot drift from the task's metric. Their mean is the task's
    score wherever the metric is a mean over items (an error in pixels, an accuracy).

    Args:
        task: the task (anything with :class:`Task`'s ``score``).
        y_true: ``(N, ...)`` true labels.
        y_pred: ``(N, ...)`` predictions.

    Returns:
        ``(N,)`` float64 values (``(0,)`` for no items).

    Example:
        >>> class Accuracy:
        ...     def score(self, y_true, y_pred): return float(np.mean(y_true == y_pred))
        >>> item_scores(Accuracy(), np.array([1, 2, 3]), np.array([1, 0, 3])).tolist()
        [1.0, 0.0, 1.0]
    """
    return np.array([task.score(y_true[i:i + 1], y_pred[i:i + 1]) for i in range(len(y_true))],
                    dtype=np.float64)


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks, found without calling any property.

    Unlike ``isinstance(obj, protocol)``, this never evaluates a property (an encoder's
    ``fingerprint`` may raise before ``fit``) and it says which members are missing.
    """
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name in vars(protocol) if not name.startswith("_")}
    present = set(dir(type(obj))) | set(getattr(obj, "__dict__", {}))
    return sorted(names - present)


def patience_for(max_epochs: int) -> int:
    """Early-stopping patience of the paper, as an integer: ``max(10, ceil(epochs / 20))``."""
    return max(10, math.ceil(max_epochs / 20))


#: ``still_improving`` holds when the cap ended training and the best validation loss fell by
#: more than this fraction over the last patience window.
STILL_IMPROVING_THRESHOLD = 0.01


def convergence_verdict(
    history: list[Mapping[str, float]], max_epochs: int, patience: int | None = None
) -> dict[str, Any]:
    """Say whether training converged or the epoch cap cut it short while it still improved.

    Args:
        history: one row per epoch run, with ``train_loss`` and ``val_loss`` (the training
            loop's :attr:`~embench.training.TrainResult.history`).
        max_epochs: the run's epoch cap.
        patience: its early-stopping patience (default: the paper's :func:`patience_for`).

    Returns:
        JSON-ready ``{"stop_reason", "still_improving", "final_window_improvement",
        "generalization_gap"}``: ``stop_reason`` is ``"early_stopping"`` when patience ran out
        before the cap, else ``"epoch_cap"``; ``final_window_improvement`` is the relative fall
        of the best validation loss over the last ``patience`` epochs, ``(best before the
        window - best at the end) / best before the window`` (with fewer epochs than that, the
        first epoch's loss stands for "before"); ``still_improving`` is whether the cap ended
        training and that fall exceeds :data:`STILL_IMPROVING_THRESHOLD`;
        ``generalization_gap`` is the last epoch's validation loss over its training loss.
        Values that cannot be computed (no history, a zero loss) are ``None``.

    Example:
        >>> rows = [{"train_loss": 1.0 / e, "val_loss": 1.2 / e} for e in range(1, 16)]
        >>> convergence_verdict(rows, max_epochs=15)["still_improving"]
        True
    """
    if patience is None:
        patience = patience_for(max_epochs)
    n = len(history)
    verdict: dict[str, Any] = {
        "stop_reason": "epoch_cap" if n >= max_epochs else "early_stopping",
        "still_improving": False,
        "final_window_improvement": None,
        "generalization_gap": None,
    }
    if not n:
        return verdict
    val = [float(row["val_loss"]) for row in history]
    before = min(val[:n - patience]) if n > patience else val[0]
    if math.isfinite(before) and before > 0:
        improvement = (before - min(val)) / before
        verdict["final_window_improvement"] = improvement
        verdict["still_improving"] = bool(
            verdict["stop_reason"] == "epoch_cap" and improvement > STILL_IMPROVING_THRESHOLD)
    last_train = float(history[-1]["train_loss"])
    if math.isfinite(last_train) and last_train > 0:
        verdict["generalization_gap"] = val[-1] / last_train
    return verdict
