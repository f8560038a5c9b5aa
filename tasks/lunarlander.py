"""Lander positioning in LunarLander-v3 frames (regression, error in pixels).

The data is generated locally with gymnasium + Box2D and cached as one HDF5 file under
``EMBENCH_HOME/datasets/lunarlander/``. The protocol (``docs/protocol.md``, "The tasks"):

* ``LunarLander-v3`` with ``render_mode="rgb_array"``, driven by a random policy
  (``env.action_space.sample()`` on a seeded action space).
* Every rollout has exactly ``frames`` frames (150 in every preset) from one ``reset()``: the
  simulation steps on after the episode ends and is never reset inside a rollout, as the
  authors' generator (``gym_datagenerator.py``) did. A lander that crashed or came to rest stays
  on the ground; one that flew off the side keeps flying (those frames are what the altered
  filter removes). gymnasium's wrappers neither refuse nor warn about steps after the end
  (a test checks that no warning is printed).
* Frames are rendered at 600x400 and resized to 64x64 like OpenCV's ``INTER_CUBIC`` (bicubic
  with a = -0.75, half-pixel centres, edge pixels repeated, *no* anti-aliasing), rounded and
  clipped to uint8 ``(3, 64, 64)``: see :func:`resize_like_opencv_cubic`. PIL's ``BICUBIC``
  anti-aliases when shrinking and leaves the lander ~8 body-colour pixels instead of ~13.
* A frame is paired with the observation of the state it shows: the frame rendered right after
  ``reset()`` with reset's observation, the frame rendered right after ``step()`` with that
  step's observation (the authors' script paired each frame with the next state; we do not).
  The label is the lander position ``observation[:2]``: one normalised unit is 32 px in the
  64x64 frame on both axes.
* Rollouts ``0..U-1`` are "unaltered" and form the autoencoder split (80/20 train/val by
  rollout). Rollouts ``U..U+A-1`` are "altered": frames whose lander is off screen are dropped
  (kept: ``-1 <= x <= 1`` and ``-0.5 <= y <= 1.5``), then 80% of the rollouts form the probe split
  (itself 80/20 train/val by rollout) and 20% the test split. A rollout never appears in two
  splits, and every split gets at least one rollout. The file's info records how many altered
  frames were dropped and why (``left``, ``right``, ``above``, ``below``: a frame off two
  edges counts for both), and how many rollouts' episodes ended before their last frame.
* Everything is deterministic from ``seed``: rollout ``i`` seeds its environment and action
  space from ``(seed, i)``, so the data does not depend on the number of worker processes; the
  rollouts are shuffled into splits with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from embench.datastore import Unusable, load_or_build
from embench.errors import ConfigError, DataError
from embench.faults import crash_point
from embench.presets import Preset, task_sizes
from embench.progress import stage
from embench.protocols import (
    AUTOENCODER_TRAIN,
    AUTOENCODER_VAL,
    PROBE_TRAIN,
    PROBE_VAL,
    SPLITS,
    TEST,
    Split,
    TaskData,
)
from embench.storage import fingerprint, home_dir
from embench.workers import exit_with_parent, process_pool, usable_cpus

ENV_ID = "LunarLander-v3"
IMAGE_SIZE = 64
#: One normalised unit of the observation is this many pixels in the 64x64 frame (both axes).
PIXELS_PER_UNIT = 32.0
#: The ``(column, row)`` of the position ``(0, 0)`` in the 64x64 frame, from its top-left corner.
#: gymnasium's observation is ``x = (px - 300) / 300`` and ``y = (py - (100 + 18)) / 200`` in
#: the 600x400 screen with ``py`` upwards (helipad at H/4, legs 18 px down); the frame is that
#: screen flipped to rows downwards and shrunk 64/600 x 64/400, so ``column = 32 + 32 x`` and
#: ``row = 64 * 282/400 - 32 y = 45.12 - 32 y`` (pixel ``i`` spans ``[i, i + 1)``); the
#: centroid of the lander's body pixels lands within about 0.2 px of it.
LABEL_ORIGIN = (32.0, 45.12)
#: Inclusive bounds of an on-screen lander in normalised units (the "altered" filter).
X_BOUNDS = (-1.0, 1.0)
Y_BOUNDS = (-0.5, 1.5)
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
#: Bumped when the file layout or the generation procedure changes (part of the fingerprint).
FORMAT_VERSION = 2
#: The resize's cubic coefficient (OpenCV's and torch's bicubic; Keys' classic is -0.5).
CUBIC_A = -0.75

_CHUNK_FRAMES = 64
_INSTALL_HINT = "Install them with: pip install 'gymnasium[box2d]'."


@dataclass(frozen=True)
class RolloutJob:
    """What one worker needs to collect one rollout."""

    seed: int
    index: int
    frames: int
    altered: bool


def onscreen_mask(labels: np.ndarray) -> np.ndarray:
    """Which lander positions are on screen (the filter of the "altered" rollouts).

    Args:
        labels: ``(N, 2)`` lander positions ``(x, y)`` in normalised units.

    Returns:
        ``(N,)`` bool, true where ``-1 <= x <= 1`` and ``-0.5 <= y <= 1.5`` (bounds inclusive).

    Example:
        >>> onscreen_mask(np.array([[1.0, 1.5], [1.0001, 0.0]])).tolist()
        [True, False]
    """
    labels = np.asarray(labels)
    x, y = labels[:, 0], labels[:, 1]
    return (x >= X_BOUNDS[0]) & (x <= X_BOUNDS[1]) & (y >= Y_BOUNDS[0]) & (y <= Y_BOUNDS[1])


def rollout_seeds(seed: int, index: int) -> tuple[int, int]:
    """The environment seed and the action-space seed of rollout ``index``.

    Both derive from ``(seed, index)`` only, so a rollout is the same whichever process
    collects it.

    Args:
        seed: the run's seed (non-negative).
        index: the rollout's index (unaltered first, then altered).

    Returns:
        ``(env_seed, action_seed)`` as Python ints.
    """
    env_seed, action_seed = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(env_seed), int(action_seed)


def _split_off(n: int, fraction: float) -> tuple[int, int]:
    """Split ``n`` items into ``(rest, part)`` with ``part ~ fraction * n``, both at least 1."""
    part = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    return n - part, part


def assign_splits(seed: int, unaltered: int, altered: int) -> dict[str, np.ndarray]:
    """Shuffle rollout indices into the five splits (sorted indices per split).

    Args:
        seed: the run's seed.
        unaltered: number of unaltered rollouts (indices ``0..unaltered-1``), at least 2.
        altered: number of altered rollouts (the following indices), at least 3.

    Returns:
        Split name -> sorted int64 rollout indices.

    Raises:
        ConfigError: if the counts are too small to give every split one rollout.
    """
    if unaltered < 2 or altered < 3:
        raise ConfigError(
            f"LunarLander needs at least 2 unaltered and 3 altered rollouts, got {unaltered} "
            f"and {altered}.",
            "Raise 'unaltered_rollouts'/'altered_rollouts' in the preset's lunarlander sizes.",
        )
    rng = np.random.default_rng(seed)
    unaltered_ids = rng.permutation(unaltered)
    altered_ids = unaltered + rng.permutation(altered)
    ae_train, _ = _split_off(unaltered, VAL_FRACTION)
    probe, _ = _split_off(altered, TEST_FRACTION)
    probe_train, _ = _split_off(probe, VAL_FRACTION)
    parts = {
        AUTOENCODER_TRAIN: unaltered_ids[:ae_train],
        AUTOENCODER_VAL: unaltered_ids[ae_train:],
        PROBE_TRAIN: altered_ids[:probe_train],
        PROBE_VAL: altered_ids[probe_train:probe],
        TEST: altered_ids[probe:],
    }
    return {name: np.sort(ids).astype(np.int64) for name, ids in parts.items()}


def _require_box2d() -> None:
    """Import what generation needs, or raise one clear DataError."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import Box2D  # noqa: F401
        import gymnasium  # noqa: F401
        import pygame  # noqa: F401
    except ImportError as exc:
        raise DataError(
            f"The lunarlander task needs gymnasium with Box2D and pygame, but {exc.name!r} "
            "cannot be imported.",
            _INSTALL_HINT,
        ) from exc


def _make_env() -> Any:
    """A fresh ``LunarLander-v3`` rendering to arrays."""
    _require_box2d()
    import gymnasium
    from gymnasium.error import DependencyNotInstalled

    try:
        return gymnasium.make(ENV_ID, render_mode="rgb_array")
    except DependencyNotInstalled as exc:
        raise DataError(f"Cannot create {ENV_ID}: {exc}.", _INSTALL_HINT) from exc


@functools.lru_cache(maxsize=8)
def cubic_resize_weights(in_size: int, out_size: int, a: float = CUBIC_A) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of OpenCV's ``INTER_CUBIC`` along one axis.

    Output pixel ``i`` samples the input at ``(i + 0.5) * in_size / out_size - 0.5`` (pixel
    centres aligned) with the four taps of the cubic convolution kernel of coefficient ``a``;
    taps outside the image read the nearest edge pixel. The kernel is never widened when
    shrinking, i.e. there is no anti-aliasing, exactly as OpenCV (and
    ``torch.nn.functional.interpolate(mode="bicubic", antialias=False)``) compute it.
    """
    position = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    first = np.floor(position).astype(np.int64)
    fraction = position - first
    weights = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    for offset in (-1, 0, 1, 2):
        distance = np.abs(fraction - offset)
        near = ((a + 2) * distance - (a + 3)) * distance**2 + 1
        far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
        kernel = np.where(distance <= 1, near, np.where(distance < 2, far, 0.0))
        np.add.at(weights, (rows, np.clip(first + offset, 0, in_size - 1)), kernel)
    return weights


def resize_like_opencv_cubic(frame: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 frame to uint8 ``(3, size, size)`` like ``INTER_CUBIC``.

    Separable bicubic (a = -0.75, half-pixel centres, replicated edges, no anti-aliasing) in
    float64, rounded to the nearest integer and clipped to [0, 255]. It agrees with
    ``cv2.resize(frame, (size, size), interpolation=cv2.INTER_CUBIC)`` to within 1 on every
    pixel (OpenCV rounds its weights to 11-bit fixed point).

    Example:
        >>> resize_like_opencv_cubic(np.zeros((400, 600, 3), np.uint8)).shape
        (3, 64, 64)
    """
    height, width = frame.shape[:2]
    rows = cubic_resize_weights(height, size)
    cols = cubic_resize_weights(width, size)
    # Contiguous planes and one large product per axis: numpy's batched matmul on a
    # transposed view skips BLAS and took ~100x longer (250 vs 2 ms per frame).
    planes = np.ascontiguousarray(np.asarray(frame).transpose(2, 0, 1), dtype=np.float64)
    across = (planes.reshape(-1, width) @ cols.T).reshape(planes.shape[0], height, size)
    resized = np.matmul(rows, across)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def offscreen_reasons(labels: np.ndarray) -> dict[str, int]:
    """How many positions lie past each edge of the on-screen bounds (one may count twice).

    Example:
        >>> offscreen_reasons(np.array([[-1.5, 1.6], [0.0, 0.0]]))
        {'left': 1, 'right': 0, 'above': 1, 'below': 0}
    """
    labels = np.asarray(labels)
    x, y = labels[:, 0], labels[:, 1]
    return {
        "left": int((x < X_BOUNDS[0]).sum()),
        "right": int((x > X_BOUNDS[1]).sum()),
        "above": int((y > Y_BOUNDS[1]).sum()),
        "below": int((y < Y_BOUNDS[0]).sum()),
    }


@dataclass
class Rollout:
    """One collected rollout (after the off-screen filter, for an altered one).

    Attributes:
        images: uint8 ``(n, 3, 64, 64)``.
        labels: float32 ``(n, 2)`` lander positions.
        collected: frames collected before the filter (the rollout's length).
        dropped: frames the filter removed, by edge (zeros for an unaltered rollout).
        ended_at: the frame index at which the episode terminated (the simulation then
            stepped on), or ``None`` if it was still running at the last frame.
    """

    images: np.ndarray
    labels: np.ndarray
    collected: int
    dropped: dict[str, int]
    ended_at: int | None


def collect_rollout(job: RolloutJob) -> Rollout:
    """Collect one rollout (runs in a worker process): one reset, then ``frames - 1`` steps.

    The episode's end does not stop or reset the simulation (see the module docstring).

    Args:
        job: seed, rollout index, number of frames and whether the off-screen filter applies.

    Returns:
        The rollout's frames and labels, and what the filter dropped.
    """
    env = _make_env()
    try:
        env_seed, action_seed = rollout_seeds(job.seed, job.index)
        env.action_space.seed(action_seed)
        observation, _ = env.reset(seed=env_seed)
        ended_at = None
        images = np.empty((job.frames, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        labels = np.empty((job.frames, 2), dtype=np.float32)
        for t in range(job.frames):
            if t > 0:
                # Past the episode's end too, as the authors' generator did (gymnasium's
                # wrappers neither refuse nor warn about it; a test keeps it so).
                observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
                if (terminated or truncated) and ended_at is None:
                    ended_at = t
            # Rendered after reset()/step(): the frame shows the state `observation` describes.
            images[t] = resize_like_opencv_cubic(env.render())
            labels[t] = observation[:2]
    finally:
        env.close()
    if job.altered:
        keep = onscreen_mask(labels)
        return Rollout(images[keep], labels[keep], job.frames, offscreen_reasons(labels[~keep]),
                       ended_at)
    return Rollout(images, labels, job.frames, offscreen_reasons(labels[:0]), ended_at)


def _run_rollouts(
    jobs: list[RolloutJob],
    workers: int,
    on_result: Callable[[RolloutJob, Rollout], None],
) -> None:
    """Collect ``jobs`` (in-process or in a worker pool) and hand results over in job order.

    The pool's workers never run the caller's main module, and in a daemonic process (a
    ``multiprocessing.Pool`` worker) the rollouts are collected in this process
    (:func:`embench.workers.process_pool`); a worker that dies raises ``WorkerDiedError``.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_result(job, collect_rollout(job))
        return
    executor = process_pool(min(workers, len(jobs)), "generate lunarlander",
                            initializer=exit_with_parent, initargs=(os.getpid(),))
    try:
        for job, result in zip(jobs, executor.map(collect_rollout, jobs), strict=True):
            on_result(job, result)
    finally:
        # On error or Ctrl-C, do not wait for the rollouts nobody will use.
        executor.shutdown(wait=True, cancel_futures=True)


class LunarLanderTask:
    """Lander positioning in LunarLander-v3 frames (regression, error in pixels).

    Images are 64x64 frames of a random policy; labels are the lander's ``(x, y)`` in
    normalised units; the metric is the mean Euclidean error in pixels of the 64x64 frame.
    See the module docstring for the full protocol.

    Args:
        workers: processes that generate rollouts; ``None`` uses one per usable CPU
            (``os.cpu_count()`` unless the process is pinned to fewer), ``1`` generates in this
            process. The data does not depend on it. The workers never run the
            caller's main module, so any caller works (a script without a main guard,
            standard input, a notebook); a daemonic process generates in-process.

    Example:
        >>> task = LunarLanderTask(workers=2)
        >>> data = task.load(resolve_home(), get_preset("smoke"), seed=0)
        >>> data.splits["test"].labels.shape[1]
        2
    """

    name = "lunarlander"
    kind: Literal["regression"] = "regression"
    image_size = IMAGE_SIZE
    metric_name = "error_px"
    metric_direction: Literal["lower"] = "lower"
    #: Labels are positions in the frame (embench.protocols.PositionLabels): ``embench show``
    #: draws them at ``LABEL_ORIGIN + PIXELS_PER_UNIT * (x, -y)``.
    pixels_per_unit = PIXELS_PER_UNIT
    label_origin = LABEL_ORIGIN
    #: Rollouts and frames per rollout at each preset (Table I: 700 + 700 rollouts of 150).
    PRESET_SIZES = {
        "smoke": {"unaltered_rollouts": 4, "altered_rollouts": 6, "frames": 150},
        "demo": {"unaltered_rollouts": 12, "altered_rollouts": 20, "frames": 150},
        "quick": {"unaltered_rollouts": 120, "altered_rollouts": 180, "frames": 150},
        "third": {"unaltered_rollouts": 233, "altered_rollouts": 233, "frames": 150},
        "half": {"unaltered_rollouts": 350, "altered_rollouts": 350, "frames": 150},
        "paper": {"unaltered_rollouts": 700, "altered_rollouts": 700, "frames": 150},
    }
    #: The z grid at each preset (the paper's: 32, 64, 128, 256).
    Z_SIZES = {"smoke": (8,), "demo": (64,), "quick": (64,), "third": (64,), "half": (64,),
               "paper": (32, 64, 128, 256)}

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    # -- public API -------------------------------------------------------------------------

    def load(
        self,
        home: Path,
        preset: Preset,
        seed: int,
        progress: Any = None,
    ) -> TaskData:
        """Return the task's splits, generating and caching them first if needed.

        Args:
            home: the EMBENCH_HOME directory; data lives in ``home/datasets/lunarlander``.
            preset: supplies ``unaltered_rollouts``, ``altered_rollouts`` and ``frames``.
            seed: non-negative seed; the data is a pure function of it and the sizes.
            progress: optional :class:`rich.progress.Progress` for the generation bar.

        Returns:
            TaskData with the five splits (uint8 images ``(N, 3, 64, 64)``, float32 labels
            ``(N, 2)``, rollout ids as groups), the data fingerprint, the HDF5 path and info
            (generation parameters, rollouts and frames per split, frames dropped).

        Raises:
            ConfigError: if the preset's sizes or the seed are not usable.
            DataError: if gymnasium, Box2D or pygame are missing.
            StorageError: if ``home`` cannot be written.
        """
        params = self._params(preset, seed)
        workers = usable_cpus() if self.workers is None else self.workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(
                f"Invalid workers={self.workers!r} for lunarlander.",
                "Use an integer >= 1, or None for one per CPU.",
            )
        data_fingerprint = fingerprint(params)
        directory = home_dir(Path(home), "datasets") / self.name
        path = directory / f"{data_fingerprint[:16]}.h5"
        return load_or_build(
            path,
            data_fingerprint,
            functools.partial(_read_file, path=path, data_fingerprint=data_fingerprint),
            lambda h5: _generate(h5, params, workers, progress),
            redo="Regenerating",
            made_from="the generation parameters",
        )

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Mean Euclidean distance between predicted and true positions, in pixels.

        Args:
            y_true: ``(N, 2)`` true positions in normalised units.
            y_pred: ``(N, 2)`` predicted positions in normalised units.

        Returns:
            ``32 * mean(||y_pred - y_true||_2)``: pixels in the 64x64 frame (lower is better).

        Raises:
            ValueError: if the shapes differ, are not ``(N, 2)`` or ``N == 0``.

        Example:
            >>> LunarLanderTask().score(np.zeros((1, 2)), np.array([[0.1, 0.0]]))
            3.2
        """
        y_true = np.asarray(y_true, dtype=np.float64)
        y_pred = np.asarray(y_pred, dtype=np.float64)
        if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1:] != (2,):
            raise ValueError(
                f"score() needs y_true and y_pred of the same shape (N, 2), got "
                f"{y_true.shape} and {y_pred.shape}."
            )
        if len(y_true) == 0:
            raise ValueError("score() needs at least one sample, got 0.")
        distances = np.linalg.norm(y_pred - y_true, axis=1)
        return float(PIXELS_PER_UNIT * distances.mean())

    # -- helpers ----------------------------------------------------------------------------

    def _params(self, preset: Preset, seed: int) -> dict[str, Any]:
        """Every generation parameter: the fingerprint's input and the file's ``params``."""
        sizes = task_sizes(self, preset)
        missing = [
            k for k in ("unaltered_rollouts", "altered_rollouts", "frames") if not sizes.get(k)
        ]
        if missing:
            raise ConfigError(
                f"Preset {preset.name!r} gives no {', '.join(missing)} for lunarlander "
                f"(got {sizes}).",
                "Set positive 'unaltered_rollouts', 'altered_rollouts' and 'frames' in its sizes.",
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"Invalid seed {seed!r}: LunarLander needs an integer >= 0.")
        unaltered, altered = int(sizes["unaltered_rollouts"]), int(sizes["altered_rollouts"])
        frames = int(sizes["frames"])
        if frames < 1:
            raise ConfigError(f"Preset {preset.name!r} asks for {frames} frames per rollout.")
        assign_splits(int(seed), unaltered, altered)  # validates the counts early
        try:
            gymnasium_version = metadata.version("gymnasium")
        except metadata.PackageNotFoundError:
            raise DataError(
                "The lunarlander task needs gymnasium, which is not installed.", _INSTALL_HINT
            ) from None
        return {
            "task": self.name,
            "format_version": FORMAT_VERSION,
            "env_id": ENV_ID,
            "gymnasium_version": gymnasium_version,
            "seed": int(seed),
            "unaltered_rollouts": unaltered,
            "altered_rollouts": altered,
            "frames": frames,
            "frame_size": IMAGE_SIZE,
            "resample": "bicubic a=-0.75, half-pixel centres, no anti-aliasing (OpenCV "
                        "INTER_CUBIC), 600x400 to 64x64, rounded to uint8",
            "policy": "random: action_space.sample()",
            "pairing": "frame with the observation of the same state",
            "on_termination": "never reset inside a rollout: the simulation steps on after the "
                              "episode ends (as the authors' generator did)",
            "onscreen_bounds": {"x": list(X_BOUNDS), "y": list(Y_BOUNDS)},
            "val_fraction": VAL_FRACTION,
            "test_fraction": TEST_FRACTION,
        }


def _generate(h5: h5py.File, params: dict[str, Any], workers: int, progress: Any) -> None:
    """Collect every rollout and write it into the new store ``h5``, split after split."""
    _require_box2d()
    seed, unaltered = params["seed"], params["unaltered_rollouts"]
    assignment = assign_splits(seed, unaltered, params["altered_rollouts"])
    jobs = [
        RolloutJob(seed, int(index), params["frames"], altered=bool(index >= unaltered))
        for split in SPLITS
        for index in assignment[split]
    ]
    split_of = {int(i): code for code, split in enumerate(SPLITS) for i in assignment[split]}
    offsets = {name: [0, 0] for name in SPLITS}
    counts: dict[str, Any] = {
        "collected": 0, "altered_collected": 0, "altered_kept": 0, "episodes_ended": 0,
        "end_frames": [], "dropped_by_edge": {"left": 0, "right": 0, "above": 0, "below": 0},
    }
    start = time.perf_counter()

    with stage(progress, "generate lunarlander", total=len(jobs)) as bar:
        frame_shape = (3, IMAGE_SIZE, IMAGE_SIZE)
        images = h5.create_dataset(
            "images",
            shape=(0, *frame_shape),
            maxshape=(None, *frame_shape),
            dtype=np.uint8,
            chunks=(_CHUNK_FRAMES, *frame_shape),
            # Frames are mostly flat colour: gzip level 1 stores them ~30x smaller and, measured,
            # reads faster than lzf (~800 vs ~400 MB/s decoded), and every HDF5 reader has it.
            compression="gzip",
            compression_opts=1,
        )
        labels = h5.create_dataset("labels", (0, 2), maxshape=(None, 2), dtype=np.float32)
        rollout = h5.create_dataset("rollout", (0,), maxshape=(None,), dtype=np.int32)
        split = h5.create_dataset("split", (0,), maxshape=(None,), dtype=np.int8)

        def append(job: RolloutJob, result: Rollout) -> None:
            n, stop = len(result.labels), images.shape[0] + len(result.labels)
            if n:  # never 0 in practice: every episode starts on screen
                for dataset in (images, labels, rollout, split):
                    dataset.resize(stop, axis=0)
                images[stop - n : stop] = result.images
                labels[stop - n : stop] = result.labels
                rollout[stop - n : stop] = job.index
                split[stop - n : stop] = split_of[job.index]
            offsets[SPLITS[split_of[job.index]]][1] += n
            counts["collected"] += result.collected
            if result.ended_at is not None:
                counts["episodes_ended"] += 1
                counts["end_frames"].append(result.ended_at)
            if job.altered:
                counts["altered_collected"] += result.collected
                counts["altered_kept"] += n
                for reason, dropped in result.dropped.items():
                    counts["dropped_by_edge"][reason] += dropped
            rate = counts["collected"] / (time.perf_counter() - start)
            bar.advance(1, info=f"{rate:.0f} frames/s")
            crash_point("generate")

        _run_rollouts(jobs, workers, append)
        position = 0
        for name in SPLITS:
            offsets[name] = [position, position + offsets[name][1]]
            position = offsets[name][1]
        h5.attrs["params"] = json.dumps(params, sort_keys=True)
        h5.attrs["offsets"] = json.dumps(offsets)
        h5.attrs["counts"] = json.dumps(counts)
        h5.attrs["n_frames"] = int(images.shape[0])


def _read_file(h5: h5py.File, path: Path, data_fingerprint: str) -> TaskData:
    """Load the checked store ``h5`` (at ``path``) into memory; :class:`Unusable` if it is wrong."""
    n_frames = int(h5.attrs["n_frames"])
    shapes = {name: h5[name].shape for name in ("images", "labels", "rollout", "split")}
    if any(shape[0] != n_frames for shape in shapes.values()):
        raise Unusable(f"row counts {shapes} disagree with n_frames={n_frames}")
    if shapes["images"][1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise Unusable(f"images have shape {shapes['images']}")
    offsets = json.loads(h5.attrs["offsets"])
    params = json.loads(h5.attrs["params"])
    counts = json.loads(h5.attrs["counts"])
    images = h5["images"][...]
    labels = h5["labels"][...]
    rollout = h5["rollout"][...].astype(np.int64)
    split_codes = h5["split"][...]

    position, splits, info_rollouts, info_frames = 0, {}, {}, {}
    for code, name in enumerate(SPLITS):
        start, stop = offsets.get(name, (-1, -1))
        if start != position or stop < start or np.any(split_codes[start:stop] != code):
            raise Unusable(f"split {name!r} is not where the file says")
        position = stop
        groups = rollout[start:stop]
        splits[name] = Split(images=images[start:stop], labels=labels[start:stop], groups=groups)
        info_rollouts[name] = int(len(np.unique(groups)))
        info_frames[name] = int(stop - start)
    if position != n_frames:
        raise Unusable(f"the splits cover {position} of {n_frames} frames")

    collected = counts["altered_collected"]
    rollouts = params["unaltered_rollouts"] + params["altered_rollouts"]
    ends = counts.get("end_frames", [])
    info = {
        **params,
        "rollouts_per_split": info_rollouts,
        "frames_per_split": info_frames,
        "altered_frames_collected": collected,
        "altered_frames_kept": counts["altered_kept"],
        "altered_dropped_fraction": 1 - counts["altered_kept"] / collected if collected else 0.0,
        # An off-screen frame past two edges (a corner) counts for both.
        "altered_dropped_by_edge": counts.get("dropped_by_edge", {}),
        "episodes_ended_within_rollout": counts.get("episodes_ended", 0),
        "episodes_ended_fraction": counts.get("episodes_ended", 0) / rollouts,
        "median_episode_end_frame": float(np.median(ends)) if ends else None,
    }
    return TaskData(splits=splits, fingerprint=data_fingerprint, path=path, info=info)
