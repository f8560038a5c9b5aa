"""The embedding cache: every split of a task embedded once, in one HDF5 file.

One file per (encoder fingerprint x task data fingerprint), keyed by content, never by time
(mteb's cache-wrapper idea). The file holds each split's embeddings and labels and the
attributes ``key``, ``complete`` and row counts; it is an :mod:`embench.datastore` store whose
fingerprint attribute is ``key``. A file that fails these checks is treated as absent (with a
warning) and recomputed.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embench.datastore import Unusable, read_store, write_store
from embench.errors import EncoderContractError
from embench.faults import crash_point
from embench.progress import stage
from embench.protocols import SPLITS, TaskData
from embench.storage import fingerprint, safe_name

DEFAULT_BATCH = 1024
#: The attribute holding a cache file's key (its fingerprint).
KEY_ATTR = "key"


def embedding_key(encoder_fingerprint: str, data_fingerprint: str) -> str:
    """Cache key of one encoder on one task's data."""
    return fingerprint("embeddings", encoder_fingerprint, data_fingerprint)


def cache_path(home: Path, encoder_name: str, task_name: str, key: str) -> Path:
    """Where the cache file of ``key`` lives under ``home/embeddings``."""
    enc = safe_name(encoder_name, "encoder name")
    task = safe_name(task_name, "task name")
    return home / "embeddings" / enc / f"{task}-{key[:16]}.h5"


def check_embeddings(encoder_name: str, out: Any, n_rows: int) -> np.ndarray:
    """Return ``out`` as float32 ``(n_rows, D)`` or raise naming the encoder.

    Raises:
        EncoderContractError: not an array, not 2-D, the wrong row count, or NaN/inf values.
    """
    try:
        array = np.asarray(out)
    except Exception as exc:  # objects numpy cannot convert
        raise EncoderContractError(
            f"Encoder {encoder_name!r} returned {type(out).__name__}, not an array."
        ) from exc
    if array.ndim != 2:
        raise EncoderContractError(
            f"Encoder {encoder_name!r} returned an array of shape {array.shape}; "
            f"expected 2-D (N, D).",
            "encode() must return one row per image.",
        )
    if array.shape[0] != n_rows:
        raise EncoderContractError(
            f"Encoder {encoder_name!r} returned {array.shape[0]} rows for {n_rows} images.",
            "encode() must return one row per image.",
        )
    if not np.issubdtype(array.dtype, np.number):
        raise EncoderContractError(
            f"Encoder {encoder_name!r} returned dtype {array.dtype}; expected float32."
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise EncoderContractError(
            f"Encoder {encoder_name!r} returned NaN or inf in {bad} of {n_rows} embeddings.",
            "Check the encoder's weights and input scaling.",
        )
    return array


def embed_splits(
    encoder: Any,
    encoder_name: str,
    data: TaskData,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Any = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Embed every split in batches, checking each batch against the contract.

    Returns:
        The embeddings per split and the seconds spent encoding.
    """
    total = sum(len(split) for split in data.splits.values())
    out: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    with stage(progress, f"embed {encoder_name}", total=total) as bar:
        for name in (s for s in SPLITS if s in data.splits):
            images = data.splits[name].images
            n = len(data.splits[name])
            chunks = []
            width = None
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                emb = check_embeddings(encoder_name, encoder.encode(images[lo:hi]), hi - lo)
                if width is not None and emb.shape[1] != width:
                    raise EncoderContractError(
                        f"Encoder {encoder_name!r} returned {emb.shape[1]} columns after "
                        f"{width} for earlier images."
                    )
                width = emb.shape[1]
                chunks.append(emb)
                bar.advance(hi - lo)
                crash_point("embed-batch")
            out[name] = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return out, time.perf_counter() - start


def write_cache(
    path: Path,
    key: str,
    embeddings: dict[str, np.ndarray],
    labels: dict[str, np.ndarray | None],
    meta: dict[str, Any],
) -> None:
    """Atomically write the cache file (temp name, then rename)."""
    with write_store(path, key, fingerprint_attr=KEY_ATTR) as fh:
        for name, emb in embeddings.items():
            group = fh.create_group(name)
            group.create_dataset("embeddings", data=emb)
            if labels.get(name) is not None:
                group.create_dataset("labels", data=labels[name])
            group.attrs["rows"] = len(emb)
        fh.attrs["meta"] = json.dumps(meta, sort_keys=True)


def read_cache(
    path: Path, key: str, expected_rows: dict[str, int]
) -> dict[str, dict[str, np.ndarray]] | None:
    """Read a cache file if it is complete and matches ``key`` and the row counts.

    Returns:
        ``{split: {"embeddings": ..., "labels": ...}}``, or ``None`` when absent or unusable
        (an unusable file gets a warning and will be recomputed).
    """

    def read(fh: h5py.File) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for name, rows in expected_rows.items():
            if name not in fh or fh[name]["embeddings"].shape[0] != rows:
                raise Unusable(f"split {name!r} is missing or has the wrong row count")
            out[name] = {k: fh[name][k][()] for k in fh[name]}
        return out

    cached, problem = read_store(path, key, read, fingerprint_attr=KEY_ATTR)
    if problem is not None:
        warnings.warn(f"Ignoring embedding cache {path}: {problem}; recomputing.", stacklevel=2)
    return cached
