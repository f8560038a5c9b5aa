"""HDF5 stores keyed by content: written whole or not at all, checked before every use.

A store is one HDF5 file whose root attributes say whether it may be used:

* a fingerprint attribute (``fingerprint``; the embedding cache calls it ``key``): the content
  fingerprint of what the file was made from;
* ``complete``: ``True``, set after everything else was written.

:func:`write_store` writes a store under a temporary name beside its final one and renames it
into place only when the block succeeds, so a killed process never leaves a half-written file
under the final name. :func:`read_store` opens one and checks both attributes, then hands the
file to the caller's reader, which checks the datasets it needs and raises :class:`Unusable`
with the reason when something is wrong; every failure comes back as one short "why" string.
:func:`load_or_build` is the whole cycle for data that several processes may want at once:
read, else take a file lock, read again (another process may have built it meanwhile), warn
about a damaged file, build, and read back.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import h5py

from embench.errors import DataError
from embench.storage import atomic_path, file_lock

T = TypeVar("T")

#: The attribute written last: a store without it set to true is never used.
COMPLETE = "complete"


class Unusable(Exception):
    """A store that is present but cannot serve; the message says why (for a warning)."""


@contextlib.contextmanager
def write_store(
    path: str | os.PathLike, fingerprint: str, *, fingerprint_attr: str = "fingerprint"
) -> Iterator[h5py.File]:
    """Yield a new HDF5 file to fill; on success mark it complete and move it to ``path``.

    The file is written under a temporary name in ``path``'s directory. When the block
    returns, the fingerprint attribute and ``complete`` are set, the file is closed and renamed
    to ``path`` (replacing any older file); when it raises, the temporary file is removed.

    Args:
        path: the store's final name.
        fingerprint: the content fingerprint of what the store is made from.
        fingerprint_attr: the attribute that holds it.

    Raises:
        StorageError: when the file cannot be written (disk full, not writable).

    Example:
        >>> with write_store(home / "datasets" / "x.h5", fp) as h5:
        ...     h5["images"] = images
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        yield h5
        h5.attrs[fingerprint_attr] = fingerprint
        h5.attrs[COMPLETE] = True


def read_store(
    path: str | os.PathLike,
    fingerprint: str,
    read: Callable[[h5py.File], T],
    *,
    fingerprint_attr: str = "fingerprint",
    made_from: str = "",
    keep_open: bool = False,
) -> tuple[T | None, str | None]:
    """Open ``path``, check that it is complete and has ``fingerprint``, and ``read`` it.

    ``read`` gets the open file and returns what the caller wants from it (never ``None``); it
    raises :class:`Unusable` for a file that is not as it should be (missing datasets, wrong
    shapes).
    Errors of a damaged file (``OSError``, ``KeyError``, ``ValueError``, ``TypeError``) are
    caught here and reported as "it cannot be read".

    Args:
        path: the store.
        fingerprint: the fingerprint it must have.
        read: reads (and checks) the open file.
        fingerprint_attr: the attribute that holds the fingerprint.
        made_from: what the fingerprint is of, for the mismatch reason (e.g. "the source
            files").
        keep_open: leave the file open when ``read`` succeeds (``read`` returns something that
            holds it, and the caller closes it); otherwise it is closed before returning.

    Returns:
        ``(value, None)`` when usable, ``(None, why)`` when present but unusable, and
        ``(None, None)`` when there is no file.
    """
    path = Path(path)
    if not path.exists():
        return None, None
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        return None, f"it cannot be read ({_one_line(exc)})"
    try:
        if not bool(h5.attrs.get(COMPLETE, False)):
            raise Unusable("it is incomplete")
        if h5.attrs.get(fingerprint_attr) != fingerprint:
            raise Unusable(f"its {fingerprint_attr} does not match {made_from}".rstrip())
        value = read(h5)
    except Unusable as exc:
        problem = str(exc)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        problem = f"it cannot be read ({_one_line(exc)})"
    except BaseException:
        h5.close()
        raise
    else:
        if not keep_open:
            h5.close()
        return value, None
    h5.close()
    return None, problem


def load_or_build(
    path: str | os.PathLike,
    fingerprint: str,
    read: Callable[[h5py.File], T],
    build: Callable[[h5py.File], object],
    *,
    redo: str = "Rebuilding",
    made_from: str = "",
    keep_open: bool = False,
) -> T:
    """Read the store at ``path``, building it first (once, under a lock) when needed.

    A usable store is read without a lock. Otherwise the lock ``path.with_suffix(".lock")`` is
    taken and the store read again, since another process may have built it meanwhile; if it
    is still unusable a warning says why (``"<redo> <path>: <why>."``), ``build`` fills a new
    one through :func:`write_store`, and it is read back.

    Args:
        path: the store.
        fingerprint: the fingerprint it must have (written by the build).
        read: as for :func:`read_store`.
        build: fills the open, empty file with the store's datasets and attributes.
        redo: the warning's first word for a damaged store ("Rebuilding", "Regenerating").
        made_from: as for :func:`read_store`.
        keep_open: as for :func:`read_store`.

    Returns:
        What ``read`` returns.

    Raises:
        DataError: when the store just built cannot be read back.
        StorageError: when it cannot be written.
        Whatever ``build`` raises (nothing is left under ``path`` then).
    """
    path = Path(path)
    options = {"made_from": made_from, "keep_open": keep_open}
    value, _ = read_store(path, fingerprint, read, **options)
    if value is not None:
        return value
    with file_lock(path.with_suffix(".lock")):
        value, problem = read_store(path, fingerprint, read, **options)
        if value is not None:
            return value
        if problem is not None:
            warnings.warn(f"{redo} {path}: {problem}.", stacklevel=3)
        with write_store(path, fingerprint) as h5:
            build(h5)
        value, problem = read_store(path, fingerprint, read, **options)
    if value is None:
        raise DataError(f"{path} was written but cannot be read back: {problem}.")
    return value


def _one_line(exc: BaseException) -> str:
    """``"Type: message"`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["COMPLETE", "Unusable", "load_or_build", "read_store", "write_store"]
