"""Conformance checks plugin authors can run on their own encoders and tasks.

Example:
    >>> from embench.testing import check_encoder
    >>> check_encoder(MyEncoder, z_dim=8)   # raises AssertionError naming what is wrong

The same battery runs over every registered plugin in embench's own test suite.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from embench.cache import check_embeddings
from embench.protocols import SPLITS, Encoder, Task


def tiny_images(n: int = 24, size: int = 64, seed: int = 0) -> np.ndarray:
    """Random-but-structured uint8 images ``(n, 3, size, size)`` (a bright square per image)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        x, y = rng.integers(0, size - size // 4, size=2)
        images[i, :, y : y + size // 4, x : x + size // 4] = 220
    return images


def check_encoder(factory: Any, image_size: int = 64, **config: Any) -> Any:
    """Check an encoder factory against the contract on tiny data; return the fitted encoder.

    Checks: ``fit`` returns the encoder, ``encode`` gives finite float32 ``(N, D)`` with
    ``D == embedding_dim`` for uint8 and for float input alike, the fingerprint is a stable
    string, and (when ``save``/``load`` exist) a round trip gives identical embeddings.

    Raises:
        AssertionError: naming the broken part of the contract.
    """
    train, val = tiny_images(24, image_size, 0), tiny_images(8, image_size, 1)
    encoder = factory(**config)
    fitted = encoder.fit(train, val)
    assert fitted is encoder, "fit() must return self"
    assert isinstance(encoder, Encoder), "the encoder lacks members of embench.protocols.Encoder"
    emb = check_embeddings(type(encoder).__name__, encoder.encode(val), len(val))
    assert emb.shape[1] == encoder.embedding_dim, "embedding_dim disagrees with encode()"
    emb_float = encoder.encode(val.astype(np.float32) / 255.0)
    np.testing.assert_allclose(emb, emb_float, rtol=1e-4, atol=1e-4,
                               err_msg="uint8 and float [0, 1] inputs must embed alike")
    first = encoder.fingerprint
    assert isinstance(first, str) and first, "fingerprint must be a non-empty string"
    assert encoder.fingerprint == first, "fingerprint must be stable"
    if callable(getattr(factory, "load", None)):
        with tempfile.TemporaryDirectory() as tmp:
            encoder.save(Path(tmp))
            loaded = factory.load(Path(tmp))
        np.testing.assert_array_equal(loaded.encode(val), emb,
                                      err_msg="save -> load must give identical embeddings")
        assert loaded.fingerprint == first, "save -> load must keep the fingerprint"
    return encoder


def check_task(task: Any) -> None:
    """Check a task object's metadata and metric (no data is prepared).

    Raises:
        AssertionError: naming the broken part of the contract.
    """
    assert isinstance(task, Task), "the task lacks members of embench.protocols.Task"
    assert task.kind in {"regression", "classification"}, f"bad kind {task.kind!r}"
    assert task.metric_direction in {"lower", "higher"}
    assert isinstance(task.image_size, int) and task.image_size > 0
    if task.kind == "classification":
        y = np.array([0, 1, 2, 1])
        assert task.score(y, y) == max(task.score(y, y), task.score(y, y[::-1]))


def check_task_data(data: Any, kind: str) -> None:
    """Check prepared task data: every split present, uint8 images, labels where needed."""
    assert set(SPLITS) <= set(data.splits), f"missing splits: {set(SPLITS) - set(data.splits)}"
    for name in SPLITS:
        split = data.splits[name]
        assert len(split) > 0, f"split {name} is empty"
        assert split.images.dtype == np.uint8 and len(split.images.shape) == 4
        if name not in ("autoencoder_train", "autoencoder_val"):
            assert split.labels is not None and len(split.labels) == len(split)
            if kind == "classification":
                assert np.issubdtype(split.labels.dtype, np.integer)
