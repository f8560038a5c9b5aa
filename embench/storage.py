"""EMBENCH_HOME layout, atomic writes, content fingerprints and safe file names.

Everything embench writes under its home goes through :func:`atomic_path` (or
:func:`atomic_dir`): the data is written under a temporary name in the destination's own
directory and renamed into place, so a killed process never leaves a half-written file under a
final name.

Two versions key what embench stores. :data:`ARTIFACT_VERSION` keys every artifact cache
(datasets, checkpoints and fit states, embeddings, decoder-retraining results);
:data:`CODE_VERSION`, the package version, keys what the board compares (run and protocol
fingerprints, a record's ``embench_version``); ``docs/storage.md`` lists every key and
the version in it. The artifact version is the version of the code that computes the
artifact, so a release that changes only probes, scoring or selection re-keys the records and
reuses every dataset, checkpoint and embedding.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embench import __version__
from embench.errors import ConfigError, StorageError

#: The package version: it keys what the board compares (run and protocol fingerprints, a
#: record's ``embench_version``), so a change to probes, scoring or selection is a package
#: version bump alone. Artifact caches are keyed by :data:`ARTIFACT_VERSION` instead.
CODE_VERSION = f"embench-{__version__}"

#: The version of the code that computes cached artifacts (datasets, perceptual weights,
#: checkpoints and fit states, embeddings, decoder-retraining results); it keys every artifact
#: cache (perceptual weights are checked by their sha256 instead). Bump it, to the package
#: version of the time, whenever a change alters any of those bytes. A literal, not derived
#: from ``__version__``: a release that changes only probes or scoring reuses them all.
ARTIFACT_VERSION = "embench-0.5.0"

SUBDIRS = ("datasets", "weights", "checkpoints", "embeddings", "results")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def default_home() -> Path:
    """The platform's user cache dir for embench (``~/.cache/embench`` on Linux)."""
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "embench"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The home directory: the argument, else ``$EMBENCH_HOME``, else the user cache dir."""
    if home is None:
        home = os.environ.get("EMBENCH_HOME") or default_home()
    return Path(home).expanduser().resolve()


def home_dir(home: Path, sub: str) -> Path:
    """Create (if needed) and return ``home/sub``, turning OS errors into one clear line."""
    path = home / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"Cannot create {path}: {exc.strerror}.",
            "Choose a writable location with --home or EMBENCH_HOME.",
        ) from exc
    return path


def safe_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as one path component; refuse ``../x`` and friends.

    Raises:
        ConfigError: if the name contains a separator, starts with a dot or holds odd characters.
    """
    if not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise ConfigError(
            f"Invalid {what} {name!r}: it would not be safe as a file name.",
            "Use letters, digits, '_', '-' and '.', not starting with '.' or containing '/'.",
        )
    return name


def _storage_error(path: Path, exc: OSError) -> StorageError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "it is not writable"
    else:
        why = exc.strerror or str(exc)
    return StorageError(
        f"Cannot write {path}: {why}.",
        "Free space or choose a writable location with --home or EMBENCH_HOME; "
        "nothing already stored was changed.",
    )


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place if the block succeeds.

    The temporary file is removed when the block raises, so no partial file survives under
    either name.

    Example:
        >>> with atomic_path(home / "results" / "r.json") as tmp:
        ...     tmp.write_text("{}")
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise _storage_error(final, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _storage_error(final, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory; an existing ``final`` is replaced."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise _storage_error(final, exc) from exc
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _storage_error(final, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def fingerprint(*parts: Any, version: str = ARTIFACT_VERSION) -> str:
    """sha256 of JSON-serialisable parts (keys sorted), plus a version.

    ``version`` defaults to :data:`ARTIFACT_VERSION`, the right one for artifact cache keys
    (the default is bound at import). Record-level keys pass :data:`CODE_VERSION`; pass a
    record's own ``artifact_version`` or ``embench_version`` to recheck a fingerprint that
    another version computed.
    """
    blob = json.dumps([version, *parts], sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    """sha256 over arrays' dtype, shape and bytes (order matters)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if absent) for the block.

    Two processes producing the same file take the same lock: the second waits, then finds the
    first one's output and reuses it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError as exc:
        raise _storage_error(path, exc) from exc
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    except ImportError:  # pragma: no cover - Windows: best effort, no lock
        pass
    try:
        yield
    finally:
        fh.close()
