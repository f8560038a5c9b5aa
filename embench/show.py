"""What a run's probe predicted, drawn over the test frames: ``embench show RECORD``.

One PNG per record, ``<record stem>.show.png`` beside it (the board copies it with the record):

* a title line (encoder, z, seed, task, preset, probe, its test metric) and a legend line;
* a grid of test frames, :data:`COLUMNS` per row, upscaled (nearest) so markers are legible:
  first the items the probe got most wrong, then a seeded random sample of the others. Where
  the task's labels are positions in its frames (LunarLander; the task's ``pixels_per_unit``
  and ``label_origin``) the true position is a green circle, the predicted one a red cross,
  joined by a yellow line, with the error in pixels as the caption; on a classification frame
  the caption is ``true -> predicted`` (the task's ``class_names`` where it has them), green
  when right, red when wrong;
* below, the distribution of the per-item errors: a histogram of the distance (regression) or
  the accuracy of each class (classification), with the mean marked (it is the record's test
  metric).

The size is fixed by :func:`picture_size` (``figure inches x`` :data:`DPI`), 1600 x 800 pixels
with the default eight worst and eight random items. :func:`draw_show` draws from arrays held in
memory (the runner calls it as a run ends); :func:`show_record` loads a record, its predictions
sidecar and its test data (checked against the record's data fingerprint) and draws it.

Everything task-specific comes from the task (:mod:`embench.protocols`): the per-item errors
are :func:`~embench.protocols.item_scores` (the task's ``score`` on each item, as ``compare``
takes them), and the class names and label geometry are the task's declared metadata.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embench.errors import ConfigError, DataError
from embench.presets import Preset, get_preset
from embench.protocols import class_names_of, has_position_labels, item_scores, label_pixels
from embench.registry import accepts_keyword, get_plugin, load_task
from embench.results import Predictions, RunRecord, load_record, read_predictions, sidecar_path
from embench.storage import atomic_path, resolve_home
from embench.taskdata import prepare_task

#: The picture's file name is the record's stem plus this suffix.
SHOW_SUFFIX = ".show.png"
#: Resolution of the PNG; every length below is in inches.
DPI = 100
COLUMNS = 8
COLUMN_INCHES = 1.95
LEFT_INCHES = 0.4  # the margin that holds the sections' names
FRAME_INCHES = 1.8  # a 64-px frame is drawn about 2.8x (nearest), a 96-px one 1.9x
ROW_INCHES = 2.2  # frame, caption, gap
HEADER_INCHES = 0.6
HISTOGRAM_INCHES = 3.0

TRUE_COLOUR = "#00ff00"
PREDICTED_COLOUR = "#ff0000"
LINE_COLOUR = "#ffd400"
RIGHT_COLOUR = "#008a00"
WRONG_COLOUR = "#d00000"

#: Labels ``(N, 2)`` -> ``(N, 2)`` ``(column, row)`` in the frame (:func:`label_pixels`).
ToPixels = Callable[[np.ndarray], np.ndarray]
#: The unit of the errors drawn over frames whose labels are positions (the task's metric is
#: then a distance in frame pixels).
POSITION_UNIT = "px"


@dataclass(frozen=True)
class Tile:
    """One drawn test item.

    Attributes:
        row: its row in the predictions sidecar.
        item: its index in the task's test split.
        section: ``"worst"`` or ``"random"``.
        error: its error (:func:`per_item_errors`: pixels for LunarLander, 0 or 1 for
            classification).
        box: where its frame lies in the PNG, ``(left, top, right, bottom)`` in pixels from
            the top-left corner; frame pixel ``(column c, row r)`` of an ``S``-pixel frame
            covers ``left + c * (right - left) / S`` onwards.
    """

    row: int
    item: int
    section: str
    error: float
    box: tuple[float, float, float, float]


@dataclass
class ShowPicture:
    """What :func:`draw_show` wrote.

    Attributes:
        path: the PNG.
        size: its ``(width, height)`` in pixels (:func:`picture_size`).
        probe: whose predictions are drawn.
        tiles: the drawn items, worst first, then the random ones.
        mean_error: the mean per-item error over the whole test split (for classification,
            the error rate; 1 minus it is the accuracy).
    """

    path: Path
    size: tuple[int, int]
    probe: str
    tiles: list[Tile] = field(default_factory=list)
    mean_error: float = math.nan


def show_path(record_file: str | Path) -> Path:
    """The picture beside a record file: ``<record stem>.show.png``."""
    record_file = Path(record_file)
    return record_file.with_name(record_file.stem + SHOW_SUFFIX)


def _section_rows(n: int) -> int:
    return math.ceil(n / COLUMNS) if n > 0 else 0


def picture_size(n_worst: int = 8, n_random: int = 8) -> tuple[int, int]:
    """The PNG's ``(width, height)`` in pixels for these numbers of tiles.

    It depends on nothing else (not the task, the frame size or how many items the test
    split has), so a picture's size is known before it is drawn.

    Example:
        >>> picture_size()
        (1600, 800)
    """
    width, height = _figure_inches(n_worst, n_random)
    return round(width * DPI), round(height * DPI)


def _figure_inches(n_worst: int, n_random: int) -> tuple[float, float]:
    rows = _section_rows(n_worst) + _section_rows(n_random)
    return (LEFT_INCHES + COLUMNS * COLUMN_INCHES,
            HEADER_INCHES + rows * ROW_INCHES + HISTOGRAM_INCHES)


def per_item_errors(task: Any, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Each item's error, larger is worse: the task's per-item metric, flipped where higher wins.

    The values are :func:`embench.protocols.item_scores` (what ``compare`` pairs): kept where
    lower is better (LunarLander's error in pixels), ``1 - value`` where higher is better (0
    for a right class, 1 for a wrong one). Their mean is the task's metric, or 1 minus it.
    """
    values = item_scores(task, y_true, y_pred)
    return values if task.metric_direction == "lower" else 1.0 - values


def select_items(errors: np.ndarray, n_worst: int = 8, n_random: int = 8, seed: int = 0,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows to draw: the ``n_worst`` largest errors, then ``n_random`` others at random.

    The worst come largest first (ties in row order). With ``groups`` (e.g. LunarLander's
    rollout ids), the worst row takes each group's worst item first, and a second item of a
    group only when there are fewer groups than ``n_worst``: the frames of one rollout are
    nearly the same picture, and eight of them would say little.
    The random ones are drawn from the other rows with ``seed`` and listed in row order.

    Example:
        >>> worst, rand = select_items(np.array([0.0, 3.0, 1.0, 2.0]), 2, 1)
        >>> worst.tolist(), len(rand)
        ([1, 3], 1)
        >>> select_items(np.array([0.0, 3.0, 1.0, 2.0]), 2, 0, groups=np.array([0, 1, 0, 1]))[0]
        array([1, 2])
    """
    order = np.argsort(-np.asarray(errors, dtype=np.float64), kind="stable")
    n_worst = max(0, n_worst)
    if groups is not None and len(groups) == len(order):
        group_of = np.asarray(groups)[order]
        _, first = np.unique(group_of, return_index=True)  # each group's worst item
        leaders = order[np.sort(first)]
        others = np.setdiff1d(order, leaders, assume_unique=True)
        others = others[np.argsort(-np.asarray(errors, np.float64)[others], kind="stable")]
        order = np.concatenate([leaders, others])
    worst = order[:n_worst]
    worst = worst[np.argsort(-np.asarray(errors, np.float64)[worst], kind="stable")]
    rest = np.setdiff1d(np.arange(len(errors)), worst)
    take = min(max(0, n_random), len(rest))
    chosen = np.random.default_rng(seed).choice(rest, size=take, replace=False)
    return worst.astype(np.int64), np.sort(chosen).astype(np.int64)


def _read_frames(images: Any, indices: np.ndarray) -> np.ndarray:
    """Frames ``images[indices]`` as ``(n, H, W, 3)`` uint8 (lazy views read once, in order)."""
    if len(indices) == 0:
        return np.zeros((0, 1, 1, 3), np.uint8)
    unique, inverse = np.unique(indices, return_inverse=True)
    frames = np.asarray(images[unique])[inverse]
    if frames.dtype != np.uint8:  # float images in [0, 1]
        frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    return frames.transpose(0, 2, 3, 1)


def draw_show(
    record: RunRecord, images: Any, predictions: Predictions, out_path: str | Path, *,
    probe: str = "mlp", n_worst: int = 8, n_random: int = 8, seed: int = 0,
    class_names: Sequence[str] | None = None, task: Any = None,
) -> ShowPicture:
    """Draw a probe's test predictions over the test frames (see the module docstring).

    Args:
        record: the run (title, task, kind, metric).
        images: the task's test split, ``(N, 3, H, W)`` uint8 (or float in [0, 1]), an array
            or a lazy view indexable by increasing indices; only the drawn frames are read.
        predictions: the run's predictions sidecar; ``predictions.items`` index ``images``.
        out_path: the PNG to write (atomically).
        probe: whose predictions: ``mlp``, ``linear`` or another key of the sidecar.
        n_worst: how many of the worst items open the grid.
        n_random: how many other items, drawn with ``seed``, follow.
        seed: seed of the random sample.
        class_names: names of the classes 0..C-1 (default: the task's ``class_names``).
        task: the record's task, whose ``score`` gives the per-item errors and whose metadata
            the names and the positions (default: the registered task named ``record.task``).

    Returns:
        The picture's path, size, tiles and mean error.

    Raises:
        ConfigError: ``probe`` is not in the sidecar.
        UnknownNameError: no ``task`` was given and no task plugin has the record's name.

    Example:
        >>> draw_show(record, data.splits["test"].images, read_predictions(sidecar),
        ...           "run.show.png", probe="linear")  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if probe not in predictions.predicted:
        raise ConfigError(f"The predictions sidecar has no probe {probe!r}.",
                          f"It has: {', '.join(sorted(predictions.predicted))}.")
    out_path = Path(out_path)
    kind = record.task_kind or ("classification" if np.issubdtype(
        np.asarray(predictions.y_true).dtype, np.integer) else "regression")
    if task is None:
        task = load_task(record.task)
    y_true, y_pred = predictions.y_true, predictions.predicted[probe]
    errors = per_item_errors(task, y_true, y_pred)
    worst, chosen = select_items(errors, n_worst, n_random, seed, groups=predictions.groups)
    rows = np.concatenate([worst, chosen])
    frames = _read_frames(images, np.asarray(predictions.items)[rows])
    names = tuple(class_names) if class_names is not None else class_names_of(task)
    # labels -> (column, row) in the frame, where the task's labels are positions in it
    positions = (functools.partial(label_pixels, task)
                 if kind == "regression" and has_position_labels(task) else None)

    width_in, height_in = _figure_inches(n_worst, n_random)
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    _draw_header(fig, record, probe, kind, positions, height_in)

    sections = [("worst", worst, _section_rows(n_worst)), ("random", chosen,
                                                              _section_rows(n_random))]
    placed: list[tuple[Any, int, str]] = []
    top = height_in - HEADER_INCHES
    k = 0
    for section, section_rows, grid_rows in sections:
        if grid_rows == 0:
            continue
        per_group = ", 1 per group" if predictions.groups is not None else ""
        label = (f"worst {len(section_rows)}{per_group}" if section == "worst"
                 else f"random {len(section_rows)} (seed {seed})")
        fig.text(LEFT_INCHES / 2 / width_in, (top - grid_rows * ROW_INCHES / 2) / height_in,
                 label, rotation=90, ha="center", va="center", fontsize=11)
        for i, row in enumerate(section_rows):
            r, c = divmod(i, COLUMNS)
            left = LEFT_INCHES + c * COLUMN_INCHES + (COLUMN_INCHES - FRAME_INCHES) / 2
            bottom = top - r * ROW_INCHES - FRAME_INCHES - 0.05
            ax = fig.add_axes((left / width_in, bottom / height_in, FRAME_INCHES / width_in,
                               FRAME_INCHES / height_in))
            _draw_tile(ax, frames[k], int(predictions.items[row]), y_true[row], y_pred[row],
                       float(errors[row]), kind, names, positions)
            placed.append((ax, int(row), section))
            k += 1
        top -= grid_rows * ROW_INCHES

    hist = fig.add_axes((0.8 / width_in, 0.55 / height_in, (width_in - 1.2) / width_in,
                         (HISTOGRAM_INCHES - 0.95) / height_in))
    _draw_distribution(hist, kind, errors, y_true, names, positions)

    fig.canvas.draw()
    height_px = fig.bbox.height
    tiles = []
    for ax, row, section in placed:
        extent = ax.get_window_extent()
        tiles.append(Tile(row=row, item=int(predictions.items[row]), section=section,
                          error=float(errors[row]),
                          box=(float(extent.x0), float(height_px - extent.y1),
                               float(extent.x1), float(height_px - extent.y0))))
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return ShowPicture(path=out_path, size=picture_size(n_worst, n_random), probe=probe,
                       tiles=tiles, mean_error=float(errors.mean()) if len(errors) else math.nan)


def _draw_header(fig: Any, record: RunRecord, probe: str, kind: str,
                 positions: ToPixels | None, height_in: float) -> None:
    """The title line and the legend line."""
    metric = record.metric.get("name", "metric")
    value = record.test.get(probe)
    score = f"test {metric} {value:.4g}" if isinstance(value, (int, float)) else ""
    title = (f"{record.encoder} z={record.z_dim} seed {record.seed} on {record.task} "
             f"({record.preset}): {probe} probe, {score}")
    fig.text(0.5, 1 - 0.2 / height_in, title, ha="center", va="center", fontsize=13,
             weight="bold")
    if kind == "classification":
        legend = "caption: #item  true \u2192 predicted (green: right, red: wrong)"
    elif positions is not None:
        legend = (f"green \u25cb true position, red \u00d7 predicted, caption: #item and the "
                  f"error in {POSITION_UNIT}")
    else:
        legend = f"caption: #item and its {metric} (the task's metric on the item alone)"
    fig.text(0.5, 1 - 0.45 / height_in, legend, ha="center", va="center", fontsize=10)


def _draw_tile(ax: Any, frame: np.ndarray, item: int, y_true: Any, y_pred: Any, error: float,
               kind: str, names: Sequence[str] | None,
               positions: ToPixels | None) -> None:
    """One frame, nearest-upscaled, with its markers and caption."""
    h, w = frame.shape[:2]
    ax.imshow(frame, interpolation="nearest", extent=(0, w, h, 0), aspect="auto")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if kind == "classification":
        right = int(y_true) == int(y_pred)
        caption = f"#{item}  {_class_name(y_true, names)} \u2192 {_class_name(y_pred, names)}"
        colour = RIGHT_COLOUR if right else WRONG_COLOUR
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2)
    else:
        unit = POSITION_UNIT if positions is not None else ""
        caption, colour = f"#{item}  {error:.1f} {unit}".rstrip(), "black"
        if positions is not None:
            (tc, tr), (pc, pr) = positions(np.stack([np.asarray(y_true), np.asarray(y_pred)]))
            # the line under the markers, the cross on top: its centre is the prediction
            ax.plot([tc, pc], [tr, pr], color=LINE_COLOUR, linewidth=1, zorder=2)
            ax.plot([tc], [tr], marker="o", markersize=11, markerfacecolor="none",
                    markeredgecolor=TRUE_COLOUR, markeredgewidth=2, zorder=3)
            ax.plot([pc], [pr], marker="x", markersize=10, color=PREDICTED_COLOUR,
                    markeredgewidth=2.5, zorder=4)
            if not (0 <= pc <= w and 0 <= pr <= h):  # the line still points at it
                caption += ", \u00d7 off frame"
    ax.text(0.5, -0.03, caption, transform=ax.transAxes, ha="center", va="top", fontsize=10,
            color=colour, clip_on=False)


def _class_name(label: Any, names: Sequence[str] | None) -> str:
    index = int(label)
    return names[index] if names is not None and 0 <= index < len(names) else str(index)


def _draw_distribution(ax: Any, kind: str, errors: np.ndarray, y_true: np.ndarray,
                       names: Sequence[str] | None, positions: ToPixels | None) -> None:
    """Regression: histogram of the errors; classification: accuracy per class. Mean marked."""
    n = len(errors)
    mean = float(errors.mean()) if n else math.nan
    if kind == "classification":
        labels = np.asarray(y_true).reshape(-1)
        classes = np.unique(labels)
        accuracy = [1.0 - float(errors[labels == c].mean()) for c in classes]
        ax.bar(np.arange(len(classes)), accuracy, color="#4c72b0")
        ax.set_xticks(np.arange(len(classes)),
                      [f"{_class_name(c, names)}\n(n={int(np.sum(labels == c))})"
                       for c in classes], fontsize=8)
        ax.axhline(1.0 - mean, color=WRONG_COLOUR, linestyle="--")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy of the class")
        title = f"accuracy per class; dashed: all {n} test items, {1.0 - mean:.3f}"
    else:
        unit = POSITION_UNIT if positions is not None else "the task's metric"
        ax.hist(errors, bins=min(40, max(5, n // 5)), color="#4c72b0")
        ax.axvline(mean, color=WRONG_COLOUR, linestyle="--")
        ax.set_xlabel(f"error per test item ({unit})")
        ax.set_ylabel("test items")
        title = f"error of all {n} test items; dashed: the mean, {mean:.2f} {unit}"
    ax.set_title(title, fontsize=10)


def show_record(
    record_path: str | Path, *, home: Path | None = None, out: str | Path | None = None,
    probe: str = "mlp", task_options: dict[str, Any] | None = None, progress: Any = None,
    **draw_options: Any,
) -> ShowPicture:
    """Draw a record's predictions over its test frames (what ``embench show`` does).

    The record's test data is prepared (generated, or read from the dataset files) exactly
    as the run did, from the record's task, preset and data seed, and must have the record's
    data fingerprint. Dataset files are never downloaded here (run ``embench data`` first);
    a record of unverified files (``--no-verify-data``) is read without verification.

    Args:
        record_path: the record's JSON file; its predictions sidecar lies beside it.
        home: EMBENCH_HOME holding (or to hold) the task data (default: the usual one).
        out: the PNG to write (default: ``<record stem>.show.png`` beside the record).
        probe: ``mlp`` (the selected MLP) or ``linear`` (or another key of the sidecar).
        task_options: task config such as ``data_dir`` (where the dataset files are).
        progress: a rich Progress for data generation or checksums.
        **draw_options: ``n_worst``, ``n_random``, ``seed`` of :func:`draw_show`.

    Returns:
        The picture written (its ``path``, size and tiles).

    Raises:
        DataError: the record or its sidecar is unreadable, or the test data differs from the
            record's.
        ConfigError: the sidecar has no predictions of ``probe``.

    Example:
        >>> show_record("results/lunarlander/p_ae-z64-seed0-quick-....json").path
        ... # doctest: +SKIP
    """
    record_path = Path(record_path)
    record = load_record(record_path)
    sidecar = (record_path.with_name(record.predictions) if record.predictions
               else sidecar_path(record_path))
    if record.predictions is None and not sidecar.exists():
        raise DataError(f"Result record {record_path} has no predictions sidecar (it was made "
                        "before schema 2).", "Rerun its run (embench run ...) to write one.")
    predictions = read_predictions(sidecar)
    if probe not in predictions.predicted:
        raise ConfigError(f"{sidecar.name} has no predictions of probe {probe!r}.",
                          f"It has: {', '.join(sorted(predictions.predicted))}.")
    recorded = record.fingerprints["data"]
    if predictions.data_fingerprint != recorded:
        raise DataError(f"Predictions sidecar {sidecar} belongs to other data than its record "
                        f"(fingerprint {predictions.data_fingerprint[:12]}, the record's "
                        f"{recorded[:12]}).", "Rerun the record's run to write both again.")

    home = resolve_home(home)
    try:  # the run's own budgets and sizes (a test preset's overrides included)
        preset = Preset(**record.preset_config) if record.preset_config else None
    except TypeError:
        preset = None
    preset = preset or get_preset(record.preset)
    options = dict(task_options or {})
    factory = get_plugin("task", record.task).load()
    if "verify" not in options and record.data_info.get("verified") is False \
            and accepts_keyword(factory, "verify"):
        options["verify"] = False
    if "download" not in options and accepts_keyword(factory, "download"):
        options["download"] = False
    task, data = prepare_task(record.task, preset, home, record.data_seed, options, progress)
    if data.fingerprint != recorded:
        seed = f" --seed {record.data_seed}" if record.data_seed else ""
        raise DataError(
            f"The test data in {home} differs from the record's (fingerprint "
            f"{data.fingerprint[:12]}, the record's {recorded[:12]}).",
            f"Prepare the record's data with `embench data {record.task} --preset "
            f"{record.preset}{seed}` (with the run's --data-dir for dataset files), or pass "
            "the run's --home.")
    test = data.splits["test"]
    if len(predictions.items) and int(np.max(predictions.items)) >= len(test):
        raise DataError(f"Predictions sidecar {sidecar} indexes item "
                        f"{int(np.max(predictions.items))} of a test split of {len(test)}.")
    target = Path(out) if out is not None else show_path(record_path)
    return draw_show(record, test.images, predictions, target, probe=probe, task=task,
                     **draw_options)
