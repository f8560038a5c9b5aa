"""Conformance checks plugin authors can run on their own encoders and tasks.

Only the members of :class:`embench.protocols.Encoder` and :class:`embench.protocols.Task` are
required; each optional hook (``save``/``load``, ``training_stats``, ``retrain_decoder``, ...)
is checked only when the plugin has it.

Example:
    >>> from embench.testing import check_encoder
    >>> check_encoder(MyEncoder, z_dim=8)   # raises AssertionError naming what is wrong

The same battery runs over every registered plugin in embench's own test suite.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embench.cache import check_embeddings
from embench.errors import EncoderContractError
from embench.protocols import (
    AUTOENCODER_TRAIN,
    AUTOENCODER_VAL,
    SPLITS,
    TEST,
    Encoder,
    RetrainsDecoder,
    Task,
    missing_members,
)
from embench.registry import accepts_keyword


def tiny_images(n: int = 24, size: int = 64, seed: int = 0) -> np.ndarray:
    """Random-but-structured uint8 images ``(n, 3, size, size)`` (a bright square per image)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        x, y = rng.integers(0, size - size // 4, size=2)
        images[i, :, y : y + size // 4, x : x + size // 4] = 220
    return images


def _embeddings(label: str, out: Any, n_rows: int) -> np.ndarray:
    """``check_embeddings`` for the battery: its contract errors become AssertionErrors."""
    try:
        return check_embeddings(label, out, n_rows)
    except EncoderContractError as exc:
        raise AssertionError(str(exc)) from exc


def _json_dict(label: str, hook: str, value: Any) -> None:
    """Assert that a hook returned a dict that ``json.dumps(..., default=str)`` accepts."""
    assert isinstance(value, dict), (
        f"{label}.{hook}() must return a dict, got {type(value).__name__}")
    try:
        json.dumps(value, default=str)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{label}.{hook}() must be JSON-ready: {exc}") from exc


def check_encoder(factory: Any, image_size: int = 64, **config: Any) -> Any:
    """Check an encoder factory against the contract on tiny data; return the fitted encoder.

    Required (:class:`embench.protocols.Encoder`): ``fit`` returns the encoder; ``encode``
    gives finite float32 ``(N, D)`` with ``D == embedding_dim`` for uint8 and float input
    alike; the fingerprint is a stable, non-empty string. A factory that takes no ``z_dim``
    has a fixed size, so its ``embedding_dim`` must be known before ``fit``.

    Optional, checked only when present: ``save`` with the factory's ``load`` (a round trip
    gives identical embeddings and fingerprint; one without the other only warns, as embench
    then never checkpoints the encoder), ``get_config``, ``training_stats`` and
    ``evaluation_config`` (JSON-ready dicts), and ``retrain_decoder`` with
    ``reconstruction_error`` and ``reconstruct`` (one epoch of decoder retraining).

    Args:
        factory: the encoder class or factory function, as registered.
        image_size: side of the square test images.
        **config: keyword config for the factory (e.g. ``z_dim=8``).

    Returns:
        The fitted encoder.

    Raises:
        AssertionError: naming the encoder and the broken part of the contract.

    Example:
        >>> check_encoder(MyEncoder, z_dim=8)
    """
    label = getattr(factory, "__name__", type(factory).__name__)
    train, val = tiny_images(24, image_size, 0), tiny_images(8, image_size, 1)
    encoder = factory(**config)
    missing = missing_members(encoder, Encoder)
    assert not missing, (f"{label} lacks the required member(s) {', '.join(missing)} "
                         "of embench.protocols.Encoder")
    if not accepts_keyword(factory, "z_dim"):
        try:
            fixed = encoder.embedding_dim
        except Exception as exc:
            raise AssertionError(
                f"{label} takes no z_dim, so its embedding_dim must be known before fit() "
                f"(runs are filed under it), but reading it raised {type(exc).__name__}: {exc}"
            ) from exc
        assert isinstance(fixed, int) and fixed > 0, (
            f"{label}.embedding_dim must be a positive int, got {fixed!r}")
    fitted = encoder.fit(train, val)
    assert fitted is encoder, (
        f"{label}.fit() must return self, it returned {type(fitted).__name__}")
    emb = _embeddings(label, encoder.encode(val), len(val))
    dim = encoder.embedding_dim
    assert isinstance(dim, int | np.integer) and not isinstance(dim, bool), (
        f"{label}.embedding_dim must be an int, got {type(dim).__name__}")
    assert emb.shape[1] == dim, (
        f"{label}.embedding_dim is {dim} but encode() returned {emb.shape[1]} columns")
    emb_float = encoder.encode(val.astype(np.float32) / 255.0)
    np.testing.assert_allclose(_embeddings(label, emb_float, len(val)), emb, rtol=1e-4,
                               atol=1e-4, err_msg=f"{label}: uint8 and float [0, 1] inputs "
                                                  "must embed alike")
    first = encoder.fingerprint
    assert isinstance(first, str) and first, (
        f"{label}.fingerprint must be a non-empty string, got {first!r}")
    assert encoder.fingerprint == first, f"{label}.fingerprint must be stable"
    _check_checkpointing(label, factory, encoder, val, emb, first)
    for hook in ("get_config", "training_stats", "evaluation_config"):
        if callable(getattr(encoder, hook, None)):
            _json_dict(label, hook, getattr(encoder, hook)())
    _check_decoder_retraining(label, encoder, train, val)
    return encoder


def _check_checkpointing(label: str, factory: Any, encoder: Any, images: np.ndarray,
                         emb: np.ndarray, first: str) -> None:
    """Round-trip through ``save``/``load`` when both exist; warn when only one does."""
    has_save = callable(getattr(encoder, "save", None))
    has_load = callable(getattr(factory, "load", None))
    if has_save != has_load:
        present, absent = ("save()", "load()") if has_save else ("load()", "save()")
        warnings.warn(f"{label} has {present} but no {absent}: embench checkpoints only "
                      "encoders with both, so this one is fitted again on every run.",
                      stacklevel=3)
        return
    if not has_save:
        return
    with tempfile.TemporaryDirectory() as tmp:
        encoder.save(Path(tmp))
        loaded = factory.load(Path(tmp))
    np.testing.assert_array_equal(_embeddings(label, loaded.encode(images), len(images)), emb,
                                  err_msg=f"{label}: save -> load must give identical embeddings")
    assert loaded.fingerprint == first, f"{label}: save -> load must keep the fingerprint"


def _check_decoder_retraining(label: str, encoder: Any, train: np.ndarray,
                              val: np.ndarray) -> None:
    """One epoch of decoder retraining, then both decoders' errors and reconstructions."""
    if not callable(getattr(encoder, "retrain_decoder", None)):
        return
    missing = missing_members(encoder, RetrainsDecoder)
    assert not missing, (f"{label} has retrain_decoder() but lacks {', '.join(missing)}: the "
                         "reconstruction stage needs all three (embench.protocols.RetrainsDecoder)")
    stats = encoder.retrain_decoder(train, val, max_epochs=1)
    _json_dict(label, "retrain_decoder", stats)
    for decoder in ("original", "retrained"):
        error = encoder.reconstruction_error(val, decoder=decoder, metric="l1")
        assert isinstance(error, float) and math.isfinite(error), (
            f"{label}.reconstruction_error(decoder={decoder!r}) must be a finite float, "
            f"got {error!r}")
        out = np.asarray(encoder.reconstruct(val, decoder=decoder))
        assert out.shape == val.shape and np.all((out >= 0) & (out <= 1)), (
            f"{label}.reconstruct(decoder={decoder!r}) must give floats in [0, 1] of shape "
            f"{val.shape}, got shape {out.shape}")


def check_task(task: Any, data: Any = None) -> None:
    """Check a task object's metadata and metric, and its prepared data when given.

    Required (:class:`embench.protocols.Task`): ``kind``, ``metric_name``,
    ``metric_direction``, ``load`` and ``score``; a perfect prediction scores best in the
    metric's direction. ``name`` and ``image_size`` are checked when present.

    Args:
        task: the task object.
        data: what ``task.load(...)`` returned, checked with :func:`check_task_data` (its
            test labels also feed the metric check); ``None`` prepares nothing.

    Raises:
        AssertionError: naming the task and the broken part of the contract.
    """
    label = type(task).__name__
    missing = missing_members(task, Task)
    assert not missing, (f"task {label} lacks the required member(s) {', '.join(missing)} "
                         "of embench.protocols.Task")
    assert task.kind in {"regression", "classification"}, (
        f"task {label}: kind must be 'regression' or 'classification', got {task.kind!r}")
    assert task.metric_direction in {"lower", "higher"}, (
        f"task {label}: metric_direction must be 'lower' or 'higher', "
        f"got {task.metric_direction!r}")
    assert isinstance(task.metric_name, str) and task.metric_name, (
        f"task {label}: metric_name must be a non-empty string, got {task.metric_name!r}")
    if hasattr(task, "name"):
        assert isinstance(task.name, str) and task.name, (
            f"task {label}: name must be a non-empty string, got {task.name!r}")
    size = getattr(task, "image_size", None)
    if size is not None:
        assert isinstance(size, int) and not isinstance(size, bool) and size > 0, (
            f"task {label}: image_size must be a positive int, got {size!r}")
    if data is not None:
        check_task_data(data, task.kind, size)
    if task.kind == "classification":
        y = np.array([0, 1, 2, 1, 0, 2])
        worse = np.roll(y, 1)
    else:  # regression targets are (N, k); the task's own labels say k
        y = (np.asarray(data.splits[TEST].labels[:6], dtype=np.float32) if data is not None
             else np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2))
        worse = y + np.float32(0.5)
    perfect, imperfect = task.score(y, y), task.score(y, worse)
    for value in (perfect, imperfect):
        assert isinstance(value, float | np.floating) and math.isfinite(value), (
            f"task {label}: score() must return a finite float, got {value!r}")
    better = perfect < imperfect if task.metric_direction == "lower" else perfect > imperfect
    assert better, (f"task {label}: a perfect prediction must score best "
                    f"({task.metric_direction} is better), but scored {perfect} against "
                    f"{imperfect} for a wrong one")


def check_task_data(data: Any, kind: str, image_size: int | None = None) -> None:
    """Check prepared task data: every split present, uint8 images, labels where needed.

    Args:
        data: what the task's ``load`` returned.
        kind: the task's kind.
        image_size: the task's ``image_size``, if it has one: every image must be that square.

    Raises:
        AssertionError: naming the split and what is wrong with it.
    """
    missing = sorted(set(SPLITS) - set(data.splits))
    assert not missing, f"task data lacks the split(s) {', '.join(missing)}"
    assert isinstance(data.fingerprint, str) and data.fingerprint, (
        "task data needs a non-empty string fingerprint (it keys every cache)")
    for name in SPLITS:
        split = data.splits[name]
        images = split.images
        assert len(split) > 0, f"split {name} is empty"
        assert images.dtype == np.uint8 and len(images.shape) == 4 and images.shape[1] == 3, (
            f"split {name}: images must be uint8 (N, 3, H, W), got {images.dtype} "
            f"{tuple(images.shape)}")
        if image_size is not None:
            assert tuple(images.shape[2:]) == (image_size, image_size), (
                f"split {name}: images are {tuple(images.shape[2:])}, the task says "
                f"{image_size}x{image_size}")
        if name in (AUTOENCODER_TRAIN, AUTOENCODER_VAL):
            continue
        assert split.labels is not None and len(split.labels) == len(split), (
            f"split {name} needs one label per image")
        if kind == "classification":
            assert np.issubdtype(split.labels.dtype, np.integer), (
                f"split {name}: classification labels must be integers, "
                f"got {split.labels.dtype}")
