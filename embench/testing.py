"""Conformance checks plugin authors can run on their own encoders and tasks.

Each property of the contract is a named check, as in scikit-learn's
``sklearn.utils.estimator_checks``: :func:`encoder_checks` and :func:`task_checks` yield
``(name, check)`` pairs, :func:`parametrize_with_checks` turns them into one pytest test per
check (its id is the check's name, so a failure says which property broke), and
:func:`check_encoder` / :func:`check_task` run them all in one call.

Only the members of :class:`embench.protocols.Encoder` and :class:`embench.protocols.Task` are
required; each optional hook (``save``/``load``, ``training_stats``, ``retrain_decoder``, ...)
is checked only when the plugin has it. Beyond the contract, the encoder checks cover what
embench's content-keyed caches rely on: the same config (seed included) gives the same
fingerprint and embeddings, ``encode`` does not depend on how the images are batched (within
:data:`ENCODE_RTOL` / :data:`ENCODE_ATOL`) and leaves its input unchanged, and an encoder used
before ``fit`` either fails clearly or was not trainable in the first place. The task checks
cover the optional metadata when a task declares it (``class_names``, ``pixels_per_unit`` and
``label_origin``) and what ``compare`` and ``show`` rely on: the per-item metric
(:func:`embench.protocols.item_scores`) averages to ``score``.

Example:
    >>> from embench.testing import check_encoder, parametrize_with_checks
    >>> check_encoder(MyEncoder, z_dim=8)   # raises AssertionError naming what is wrong
    >>> @parametrize_with_checks(encoders=[(MyEncoder, {"z_dim": 8})])
    ... def test_my_encoder(check):
    ...     check()

The same checks run over every registered plugin in embench's own test suite.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    TaskData,
    item_scores,
    missing_members,
)
from embench.registry import accepts_keyword

#: Two encodings of the same images must agree within these tolerances (``np.allclose``):
#: uint8 against float [0, 1] input, all images at once against the images in two parts, and
#: two fits with the same config. They allow float32 rounding, not a different result.
ENCODE_RTOL = 1e-4
ENCODE_ATOL = 1e-4

#: A named check: called with no arguments, it raises AssertionError naming what is wrong.
Check = Callable[[], None]


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


class _EncoderUnderTest:
    """One encoder factory and config under check: the tiny data, and one fit shared by checks.

    The fit happens when the first check that needs a fitted encoder runs; a fit that failed
    fails every later check that needs it with the same error.
    """

    def __init__(self, factory: Any, config: Mapping[str, Any], image_size: int) -> None:
        self.factory, self.config = factory, dict(config)
        self.label = getattr(factory, "__name__", type(factory).__name__)
        self.image_size = image_size
        self.train = tiny_images(24, image_size, 0)
        self.val = tiny_images(8, image_size, 1)
        self._fitted: Any = None
        self._failure: BaseException | None = None
        self._embeddings: np.ndarray | None = None

    def new(self) -> Any:
        """A freshly constructed, unfitted encoder."""
        return self.factory(**self.config)

    def fit_new(self) -> Any:
        """Construct and fit a new encoder on the tiny data; assert ``fit`` returns ``self``."""
        encoder = self.new()
        fitted = encoder.fit(self.train, self.val)
        assert fitted is encoder, (
            f"{self.label}.fit() must return self, it returned {type(fitted).__name__}")
        return encoder

    def fitted(self) -> Any:
        """The encoder fitted once for every check (the first call fits it)."""
        if self._failure is not None:
            raise self._failure
        if self._fitted is None:
            try:
                self._fitted = self.fit_new()
            except BaseException as exc:
                self._failure = exc
                raise
        return self._fitted

    def embeddings(self) -> np.ndarray:
        """The fitted encoder's embeddings of the validation images, checked as the cache does."""
        if self._embeddings is None:
            self._embeddings = _embeddings(self.label, self.fitted().encode(self.val),
                                           len(self.val))
        return self._embeddings


def _assert_close(actual: np.ndarray, expected: np.ndarray, message: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=ENCODE_RTOL, atol=ENCODE_ATOL,
                               err_msg=message)


def check_required_members(subject: _EncoderUnderTest) -> None:
    """The encoder has every member of the contract; a fixed-size one knows its size unfitted."""
    label, encoder = subject.label, subject.new()
    missing = missing_members(encoder, Encoder)
    assert not missing, (f"{label} lacks the required member(s) {', '.join(missing)} "
                         "of embench.protocols.Encoder")
    if accepts_keyword(subject.factory, "z_dim"):
        return
    try:
        fixed = encoder.embedding_dim
    except Exception as exc:
        raise AssertionError(
            f"{label} takes no z_dim, so its embedding_dim must be known before fit() "
            f"(runs are filed under it), but reading it raised {type(exc).__name__}: {exc}"
        ) from exc
    assert isinstance(fixed, int) and fixed > 0, (
        f"{label}.embedding_dim must be a positive int, got {fixed!r}")


def check_fit_returns_self(subject: _EncoderUnderTest) -> None:
    """``fit`` returns the encoder itself and leaves the images it was given unchanged."""
    subject.fitted()
    unchanged = (np.array_equal(subject.train, tiny_images(24, subject.image_size, 0))
                 and np.array_equal(subject.val, tiny_images(8, subject.image_size, 1)))
    assert unchanged, f"{subject.label}.fit() must not change the images it is given"


def check_encode_output(subject: _EncoderUnderTest) -> None:
    """``encode`` gives finite float32 ``(N, D)`` with ``D == embedding_dim``."""
    label, emb = subject.label, subject.embeddings()
    dim = subject.fitted().embedding_dim
    assert isinstance(dim, int | np.integer) and not isinstance(dim, bool), (
        f"{label}.embedding_dim must be an int, got {type(dim).__name__}")
    assert emb.shape[1] == dim, (
        f"{label}.embedding_dim is {dim} but encode() returned {emb.shape[1]} columns")


def check_uint8_and_float_input_agree(subject: _EncoderUnderTest) -> None:
    """uint8 images and the same images as float in [0, 1] embed alike."""
    label, val = subject.label, subject.val
    emb_float = subject.fitted().encode(val.astype(np.float32) / 255.0)
    _assert_close(_embeddings(label, emb_float, len(val)), subject.embeddings(),
                  f"{label}: uint8 and float [0, 1] inputs must embed alike")


def check_fingerprint_is_stable(subject: _EncoderUnderTest) -> None:
    """The fitted encoder's fingerprint is a non-empty string that does not change when read."""
    label, encoder = subject.label, subject.fitted()
    first = encoder.fingerprint
    assert isinstance(first, str) and first, (
        f"{label}.fingerprint must be a non-empty string, got {first!r}")
    subject.embeddings()
    assert encoder.fingerprint == first, (
        f"{label}.fingerprint must be stable (it changed after encode())")


def check_same_seed_same_embeddings(subject: _EncoderUnderTest) -> None:
    """A second fit with the same config (seed included) gives the same fingerprint and embeddings.

    The embedding cache is keyed by the fingerprint, and a resumed or repeated run fits again:
    a fit that is not reproducible would file different embeddings under one key.
    """
    label, first = subject.label, subject.fitted()
    again = subject.fit_new()
    assert again.fingerprint == first.fingerprint, (
        f"{label}: two fits with the same config (seed included) must give the same "
        "fingerprint; seed every source of randomness in fit() from the config")
    _assert_close(_embeddings(label, again.encode(subject.val), len(subject.val)),
                  subject.embeddings(), f"{label}: two fits with the same config (seed "
                  "included) must give the same embeddings")


def check_encode_independent_of_batch_size(subject: _EncoderUnderTest) -> None:
    """Encoding all images at once equals encoding them in two parts (and one image alone)."""
    label, encoder, val = subject.label, subject.fitted(), subject.val
    cut = len(val) // 2 + 1  # two unequal parts
    parts = np.concatenate([_embeddings(label, encoder.encode(val[:cut]), cut),
                            _embeddings(label, encoder.encode(val[cut:]), len(val) - cut)])
    _assert_close(parts, subject.embeddings(), f"{label}: encode() must not depend on the "
                  f"batch: {len(val)} images at once and in parts of {cut} and "
                  f"{len(val) - cut} must embed alike")
    alone = _embeddings(label, encoder.encode(val[:1]), 1)
    _assert_close(alone, subject.embeddings()[:1], f"{label}: encode() must not depend on the "
                  "batch: one image alone and within a batch must embed alike")


def check_encode_leaves_input_unchanged(subject: _EncoderUnderTest) -> None:
    """``encode`` does not write into the array it is given (uint8 or float)."""
    label, encoder = subject.label, subject.fitted()
    for images in (subject.val.copy(), subject.val.astype(np.float32) / 255.0):
        before = images.copy()
        encoder.encode(images)
        assert np.array_equal(images, before), (
            f"{label}.encode() changed its {images.dtype} input; it must leave the images "
            "it is given as they were (copy before changing them)")


def check_unfitted_encoder_refuses(subject: _EncoderUnderTest) -> None:
    """An encoder used before ``fit`` fails clearly, unless ``fit`` has nothing to learn.

    A clear failure is embench's :class:`~embench.errors.NotFittedError`, sklearn's, or any
    ValueError or AttributeError (as sklearn's ``check_estimators_unfitted`` allows), or an
    error whose message says to call fit. An encoder that embeds before ``fit`` passes only if
    ``fit`` then changes nothing (a pretrained or fixed encoder).
    """
    label, val = subject.label, subject.val
    try:
        before = subject.new().encode(val)
    except (ValueError, AttributeError):
        return
    except Exception as exc:
        assert "fit" in str(exc).lower(), (
            f"{label}.encode() before fit() raised {type(exc).__name__}: {exc}; an encoder used "
            "before fit must say so (raise embench.errors.NotFittedError)")
        return
    same = np.allclose(np.asarray(before, dtype=np.float32), subject.embeddings(),
                       rtol=ENCODE_RTOL, atol=ENCODE_ATOL) if (
        np.shape(before) == subject.embeddings().shape) else False
    assert same, (f"{label}.encode() before fit() returned embeddings that fit() then changed: a "
                  "trainable encoder used before fit must raise embench.errors.NotFittedError")


def check_save_load_round_trip(subject: _EncoderUnderTest) -> None:
    """``save`` then ``load`` keeps embeddings and fingerprint; having only one of them warns."""
    label, encoder = subject.label, subject.fitted()
    has_save = callable(getattr(encoder, "save", None))
    has_load = callable(getattr(subject.factory, "load", None))
    if has_save != has_load:
        present, absent = ("save()", "load()") if has_save else ("load()", "save()")
        warnings.warn(f"{label} has {present} but no {absent}: embench checkpoints only "
                      "encoders with both, so this one is fitted again on every run.",
                      stacklevel=2)
        return
    if not has_save:
        return
    emb, first = subject.embeddings(), encoder.fingerprint
    with tempfile.TemporaryDirectory() as tmp:
        encoder.save(Path(tmp))
        loaded = subject.factory.load(Path(tmp))
    images = subject.val
    np.testing.assert_array_equal(_embeddings(label, loaded.encode(images), len(images)), emb,
                                  err_msg=f"{label}: save -> load must give identical embeddings")
    assert loaded.fingerprint == first, f"{label}: save -> load must keep the fingerprint"


def check_hooks_are_json_ready(subject: _EncoderUnderTest) -> None:
    """``get_config``, ``training_stats``, ``evaluation_config`` (when present) give JSON dicts."""
    encoder = subject.fitted()
    for hook in ("get_config", "training_stats", "evaluation_config"):
        if callable(getattr(encoder, hook, None)):
            _json_dict(subject.label, hook, getattr(encoder, hook)())


def check_decoder_retraining(subject: _EncoderUnderTest) -> None:
    """With ``retrain_decoder``: one epoch of it, then both decoders' errors and reconstructions."""
    label, encoder = subject.label, subject.fitted()
    if not callable(getattr(encoder, "retrain_decoder", None)):
        return
    train, val = subject.train, subject.val
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


#: The encoder checks in the order they run: the contract first, then what the caches rely
#: on, then the optional hooks (decoder retraining last: it adds state to the shared encoder).
#: Each takes the encoder under check that :func:`encoder_checks` builds; call them through it.
ENCODER_CHECKS = (
    check_required_members,
    check_fit_returns_self,
    check_encode_output,
    check_uint8_and_float_input_agree,
    check_fingerprint_is_stable,
    check_same_seed_same_embeddings,
    check_encode_independent_of_batch_size,
    check_encode_leaves_input_unchanged,
    check_unfitted_encoder_refuses,
    check_save_load_round_trip,
    check_hooks_are_json_ready,
    check_decoder_retraining,
)


def _bound(check: Callable[..., None], *subject: Any) -> Check:
    """``check`` applied to ``subject``, named after the check (for ids and tracebacks)."""

    def run() -> None:
        check(*subject)

    run.__name__ = run.__qualname__ = check.__name__
    run.__doc__ = check.__doc__
    return run


def encoder_checks(factory: Any, image_size: int = 64,
                   **config: Any) -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for every encoder check; each ``check()`` raises on a failure.

    The checks share one fit of the encoder on tiny data (made when the first check that needs
    it runs); :func:`check_same_seed_same_embeddings` fits a second one. The names are those
    of :data:`ENCODER_CHECKS`, whatever the encoder.

    Args:
        factory: the encoder class or factory function, as registered.
        image_size: side of the square test images.
        **config: keyword config for the factory (e.g. ``z_dim=8``).

    Yields:
        ``(check name, zero-argument callable)``, in :data:`ENCODER_CHECKS`' order.

    Example:
        >>> for name, check in encoder_checks(MyEncoder, z_dim=8):
        ...     check()
    """
    subject = _EncoderUnderTest(factory, config, image_size)
    for check in ENCODER_CHECKS:
        yield check.__name__, _bound(check, subject)


def _run_all(checks: Iterable[tuple[str, Check]]) -> None:
    """Run named checks in order; the first failure is re-raised prefixed with its name."""
    for name, check in checks:
        try:
            check()
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def check_encoder(factory: Any, image_size: int = 64, **config: Any) -> Any:
    """Run every check of :func:`encoder_checks` on an encoder factory; return the fitted encoder.

    Required (:class:`embench.protocols.Encoder`): ``fit`` returns the encoder; ``encode``
    gives finite float32 ``(N, D)`` with ``D == embedding_dim`` for uint8 and float input
    alike; the fingerprint is a stable, non-empty string. A factory that takes no ``z_dim``
    has a fixed size, so its ``embedding_dim`` must be known before ``fit``. What the caches
    rely on: two fits with the same config give the same fingerprint and embeddings, ``encode``
    does not depend on the batch and leaves its input unchanged, and a trainable encoder used
    before ``fit`` fails clearly.

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
        AssertionError: starting with the failed check's name, naming the encoder and the
            broken part of the contract.

    Example:
        >>> check_encoder(MyEncoder, z_dim=8)
    """
    subject = _EncoderUnderTest(factory, config, image_size)
    _run_all((check.__name__, _bound(check, subject)) for check in ENCODER_CHECKS)
    return subject.fitted()


class _TaskUnderTest:
    """One task under check, and its prepared data (loaded when a check first needs it)."""

    def __init__(self, task: Any, data: TaskData | Callable[[], TaskData] | None) -> None:
        self.task, self.label = task, type(task).__name__
        self._data = data

    def data(self) -> Any:
        """The task data; a loader given instead is called once, here."""
        if callable(self._data):
            self._data = self._data()
        return self._data


def check_task_members(subject: _TaskUnderTest) -> None:
    """The task has every member of :class:`embench.protocols.Task`."""
    missing = missing_members(subject.task, Task)
    assert not missing, (f"task {subject.label} lacks the required member(s) "
                         f"{', '.join(missing)} of embench.protocols.Task")


def check_task_metadata(subject: _TaskUnderTest) -> None:
    """``kind``, ``metric_direction``, ``metric_name``; the optional metadata when present.

    Optional: ``name``, ``image_size``, ``class_names`` (distinct non-empty strings, on a
    classification task), ``pixels_per_unit`` with ``label_origin`` (a positive scale and a
    ``(column, row)`` pair, both finite, on a regression task).
    """
    task, label = subject.task, subject.label
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
    _check_class_names(task, label)
    _check_label_geometry(task, label)


def _check_class_names(task: Any, label: str) -> None:
    """``class_names``, when present: distinct non-empty strings naming a classifier's labels."""
    names = getattr(task, "class_names", None)
    if names is None:
        return
    assert task.kind == "classification", (
        f"task {label}: class_names is for classification tasks, but kind is {task.kind!r}")
    assert isinstance(names, tuple | list) and names, (
        f"task {label}: class_names must be a non-empty tuple of strings, got {names!r}")
    assert all(isinstance(name, str) and name for name in names), (
        f"task {label}: class_names must be non-empty strings, got {names!r}")
    assert len(set(names)) == len(names), (
        f"task {label}: class_names must be distinct, got {names!r}")


def _check_label_geometry(task: Any, label: str) -> None:
    """``pixels_per_unit`` and ``label_origin``, when present: together, finite, positive scale."""
    scale = getattr(task, "pixels_per_unit", None)
    origin = getattr(task, "label_origin", None)
    if scale is None and origin is None:
        return
    assert scale is not None and origin is not None, (
        f"task {label}: pixels_per_unit and label_origin go together (embench.protocols."
        f"PositionLabels), got {scale!r} and {origin!r}")
    assert task.kind == "regression", (
        f"task {label}: label positions are for regression tasks, but kind is {task.kind!r}")
    assert (isinstance(scale, int | float) and not isinstance(scale, bool)
            and math.isfinite(scale) and scale > 0), (
        f"task {label}: pixels_per_unit must be a positive finite number, got {scale!r}")
    assert (isinstance(origin, tuple | list) and len(origin) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in origin)), (
        f"task {label}: label_origin must be a finite (column, row) pair, got {origin!r}")


def _labels_and_worse(subject: _TaskUnderTest) -> tuple[np.ndarray, np.ndarray]:
    """Six labels of the task's kind, and predictions that are wrong on some of them."""
    task, data = subject.task, subject.data()
    if task.kind == "classification":
        y = np.array([0, 1, 2, 1, 0, 2])
        return y, np.roll(y, 1)
    # regression targets are (N, k); the task's own labels say k
    y = (np.asarray(data.splits[TEST].labels[:6], dtype=np.float32) if data is not None
         else np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2))
    return y, y + np.float32(0.5)


def check_perfect_prediction_scores_best(subject: _TaskUnderTest) -> None:
    """``score`` gives finite floats, and a perfect prediction beats a wrong one."""
    task, label = subject.task, subject.label
    y, worse = _labels_and_worse(subject)
    perfect, imperfect = task.score(y, y), task.score(y, worse)
    for value in (perfect, imperfect):
        assert isinstance(value, float | np.floating) and math.isfinite(value), (
            f"task {label}: score() must return a finite float, got {value!r}")
    better = perfect < imperfect if task.metric_direction == "lower" else perfect > imperfect
    assert better, (f"task {label}: a perfect prediction must score best "
                    f"({task.metric_direction} is better), but scored {perfect} against "
                    f"{imperfect} for a wrong one")


def check_item_scores_average_to_score(subject: _TaskUnderTest) -> None:
    """The metric item by item (:func:`~embench.protocols.item_scores`) averages to ``score``.

    ``compare`` pairs these per-item values and ``show`` draws them, so the task's metric must
    be a mean over items.
    """
    task, label = subject.task, subject.label
    y, predicted = _labels_and_worse(subject)
    predicted = predicted.copy()
    predicted[::2] = y[::2]  # some items right, some wrong
    values = item_scores(task, y, predicted)
    whole = float(task.score(y, predicted))
    assert values.shape == (len(y),) and np.isclose(values.mean(), whole, rtol=1e-6,
                                                    atol=1e-12), (
        f"task {label}: score() on each item alone averages to {values.mean()!r}, but "
        f"score() on all of them is {whole!r}; compare and show need a metric that is a mean "
        "over items")


def check_task_data_is_ready(subject: _TaskUnderTest) -> None:
    """The prepared data passes :func:`check_task_data` (skipped when no data was given)."""
    data = subject.data()
    if data is not None:
        check_task_data(data, subject.task.kind, getattr(subject.task, "image_size", None))


#: The task checks, in the order they run; each takes the task under check that
#: :func:`task_checks` builds.
TASK_CHECKS = (
    check_task_members,
    check_task_metadata,
    check_task_data_is_ready,
    check_perfect_prediction_scores_best,
    check_item_scores_average_to_score,
)


def task_checks(task: Any, data: TaskData | Callable[[], TaskData] | None = None,
                ) -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for every task check; each ``check()`` raises on a failure.

    Args:
        task: the task object.
        data: what ``task.load(...)`` returned, or a function returning it (called once, by
            the first check that needs the data: collecting the checks loads nothing);
            ``None`` checks no data.

    Yields:
        ``(check name, zero-argument callable)``, in :data:`TASK_CHECKS`' order.
    """
    subject = _TaskUnderTest(task, data)
    for check in TASK_CHECKS:
        yield check.__name__, _bound(check, subject)


def check_task(task: Any, data: Any = None) -> None:
    """Run every check of :func:`task_checks` on a task object (and its data, when given).

    Required (:class:`embench.protocols.Task`): ``kind``, ``metric_name``,
    ``metric_direction``, ``load`` and ``score``; a perfect prediction scores best in the
    metric's direction, and ``score`` is a mean over items. ``name``, ``image_size``,
    ``class_names``, ``pixels_per_unit`` and ``label_origin`` are checked when present.

    Args:
        task: the task object.
        data: what ``task.load(...)`` returned, checked with :func:`check_task_data` (its
            test labels also feed the metric check); ``None`` prepares nothing.

    Raises:
        AssertionError: starting with the failed check's name, naming the task and the broken
            part of the contract.
    """
    _run_all(task_checks(task, data))


def parametrize_with_checks(encoders: Iterable[Any] = (), tasks: Iterable[Any] = (), *,
                            image_size: int = 64) -> Any:
    """A ``pytest.mark.parametrize`` over every named check of the given plugins.

    Like scikit-learn's ``parametrize_with_checks``: each check becomes its own test, whose id
    is ``<plugin>-<check name>``, and the test calls it.

    Args:
        encoders: encoder factories, or ``(factory, config)`` pairs (config: a dict of keyword
            arguments for the factory).
        tasks: task objects, or ``(task, data)`` pairs (data: as in :func:`task_checks`).
        image_size: side of the square test images of the encoder checks.

    Returns:
        A pytest mark that parametrizes the test's ``check`` argument.

    Example:
        >>> @parametrize_with_checks(encoders=[(MyEncoder, {"z_dim": 8})])
        ... def test_my_encoder(check):
        ...     check()
    """
    import pytest  # deferred: optional, only a test suite that uses this decorator needs it

    params = []
    for item in encoders:
        factory, config = item if isinstance(item, tuple) else (item, {})
        label = getattr(factory, "__name__", type(factory).__name__)
        params += [pytest.param(check, id=f"{label}-{name}")
                   for name, check in encoder_checks(factory, image_size, **config)]
    for item in tasks:
        task, data = item if isinstance(item, tuple) else (item, None)
        params += [pytest.param(check, id=f"{type(task).__name__}-{name}")
                   for name, check in task_checks(task, data)]
    return pytest.mark.parametrize("check", params)


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
