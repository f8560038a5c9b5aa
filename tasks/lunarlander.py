"""Lander positioning in LunarLander-v3 frames (regression, error in pixels).

The data is generated locally with gymnasium + Box2D and cached as one HDF5 file under
``EMBENCH_HOME/datasets/lunarlander/``. The protocol (DESIGN.md, "LunarLander collection"):

* ``LunarLander-v3`` with ``render_mode="rgb_array"``, driven by a random policy
  (``env.action_space.sample()`` on a seeded action space).
* Every rollout has exactly ``frames`` frames (150 in every preset). Frames are rendered at
  600x400, resized to 64x64 with PIL bicubic and stored as uint8 ``(3, 64, 64)``.
* A frame is paired with the observation of the state it shows: the frame rendered right after
  ``reset()`` with reset's observation, the frame rendered right after ``step()`` with that
  step's observation (the authors' script paired each frame with the next state; we do not).
  The label is the lander position ``observation[:2]``: one normalised unit is 32 px in the
  64x64 frame on both axes.
* Termination: a random policy usually crashes (or flies off the side) before ``frames`` frames.
  The terminal frame is kept (it is a valid state), the environment is reset *without* a new seed
  (its own generator continues, so the rollout stays deterministic) and collection continues in
  the same rollout. Every rollout therefore has exactly ``frames`` frames and may span several
  episodes; ``groups`` identify rollouts, which is what splits are made by.
* Rollouts ``0..U-1`` are "unaltered" and form the autoencoder split (80/20 train/val by
  rollout). Rollouts ``U..U+A-1`` are "altered": frames whose lander is off screen are dropped
  (kept: ``-1 <= x <= 1`` and ``-0.5 <= y <= 1.5``), then 80% of the rollouts form the probe split
  (itself 80/20 train/val by rollout) and 20% the test split. A rollout never appears in two
  splits, and every split gets at least one rollout.
* Everything is deterministic from ``seed``: rollout ``i`` seeds its environment and action
  space from ``(seed, i)``, so the data does not depend on the number of worker processes; the
  rollouts are shuffled into splits with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import h5py
import multiprocessing
import numpy as np

from embench.errors import ConfigError, DataError
from embench.presets import Preset
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
from embench.storage import atomic_path, file_lock, fingerprint, home_dir

ENV_ID = "LunarLander-v3"
IMAGE_SIZE = 64
#: One normalised unit of the observation is this many pixels in the 64x64 frame (both axes).
PIXELS_PER_UNIT = 32.0
#: Inclusive bounds of an on-screen lander in normalised units (the "altered" filter).
X_BOUNDS = (-1.0, 1.0)
Y_BOUNDS = (-0.5, 1.5)
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
#: Bumped when the file layout or the generation procedure changes (part of the fingerprint).
FORMAT_VERSION = 1

_CHUNK_FRAMES = 64
_INSTALL_HINT = "Install them with: pip install 'gymnasium[box2d]' (needs swig to build Box2D)."


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
        import PIL  # noqa: F401
        import pygame  # noqa: F401
    except ImportError as exc:
        raise DataError(
            f"The lunarlander task needs gymnasium with Box2D and pygame, but {exc.name!r} "
            "cannot be imported.",
            _INSTALL_HINT,
        ) from exc


def _make_env() -> Any:
    _require_box2d()
    import gymnasium
    from gymnasium.error import DependencyNotInstalled

    try:
        return gymnasium.make(ENV_ID, render_mode="rgb_array")
    except DependencyNotInstalled as exc:
        raise DataError(f"Cannot create {ENV_ID}: {exc}.", _INSTALL_HINT) from exc


def collect_rollout(job: RolloutJob) -> tuple[np.ndarray, np.ndarray, int]:
    """Collect one rollout (runs in a worker process).

    Args:
        job: seed, rollout index, number of frames and whether the off-screen filter applies.

    Returns:
        ``(images, labels, n_collected)``: uint8 ``(n, 3, 64, 64)``, float32 ``(n, 2)`` and the
        number of frames collected before the filter (``n == n_collected`` when unaltered).
    """
    from PIL import Image

    env = _make_env()
    try:
        env_seed, action_seed = rollout_seeds(job.seed, job.index)
        env.action_space.seed(action_seed)
        observation, _ = env.reset(seed=env_seed)
        episode_over = False
        images = np.empty((job.frames, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        labels = np.empty((job.frames, 2), dtype=np.float32)
        for t in range(job.frames):
            if t > 0 and episode_over:
                # The terminal frame was kept; the rollout continues in a fresh episode.
                observation, _ = env.reset()
                episode_over = False
            elif t > 0:
                observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
                episode_over = terminated or truncated
            # Rendered after reset()/step(): the frame shows the state `observation` describes.
            frame = Image.fromarray(env.render()).resize(
                (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC
            )
            images[t] = np.asarray(frame).transpose(2, 0, 1)
            labels[t] = observation[:2]
    finally:
        env.close()
    if job.altered:
        keep = onscreen_mask(labels)
        return images[keep], labels[keep], job.frames
    return images, labels, job.frames
