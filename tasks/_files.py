"""Shared machinery of the tasks built on official dataset files (STL-10, SVHN).

A task of this kind finds the official files (``data_dir``, then ``EMBENCH_HOME/datasets/<task>``,
then a download with torchvision), checks them against the official md5 checksums, converts them
once into an HDF5 store of uint8 images at their native size, and serves its splits as lazy
:class:`~embench.tasks.h5_images.H5Images` views over that store (that generic view is
:mod:`embench.tasks.h5_images`). Nothing here holds a whole split in memory.

The steps, in the order :meth:`OfficialFilesTask.load` runs them:

1. **Files.** Each file is looked up in ``data_dir`` (laid out as torchvision lays it, or flat),
   then in ``EMBENCH_HOME/datasets/<task>/``. Missing files are downloaded with torchvision into
   a temporary directory there and moved into place (only when ``download`` is true). Files
   still missing give one :class:`~embench.errors.DataError` line naming each file, its URL and
   where to put it.
2. **Checksums.** Every file's md5 is computed (remembered in ``checksums.json`` beside the store,
   keyed by path, size and modification time, so an unchanged file is hashed once). With
   ``verify`` a file whose md5 differs from the official one is refused. Without it any file in
   the official format is accepted and the task data's info says so.
3. **Store.** ``EMBENCH_HOME/datasets/<task>/<fingerprint16>.h5`` holds, per official split, uint8
   images ``(N, 3, h, w)`` at the native size and int64 labels 0..9. Its fingerprint is the
   files' md5s plus the format version. It is an :mod:`embench.datastore` store: written
   atomically under a lock, checked on every read (fingerprint, completeness, shapes, label
   range) and rebuilt with a warning when wrong.
4. **Splits.** The first ``N`` rows of each official split (``N`` from the preset; ``None`` = all)
   are used. The autoencoder and probe splits are divided 80/20 into train/val by a permutation
   seeded with ``seed``; each part keeps its rows in increasing file order, so reads stay
   near-sequential (trainers shuffle batches themselves). The test split is the first ``N``
   test rows in file order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from embench.datastore import Unusable, load_or_build
from embench.errors import ConfigError, DataError
from embench.presets import Preset, task_sizes
from embench.progress import stage
from embench.protocols import (
    AUTOENCODER_TRAIN,
    AUTOENCODER_VAL,
    PROBE_TRAIN,
    PROBE_VAL,
    TEST,
    Split,
    TaskData,
)
from embench.storage import file_lock, fingerprint, home_dir, write_json

# The HDF5 image view lives in h5_images; re-exported here, where the tests import it.
from embench.tasks.h5_images import READ_BLOCK_BYTES, H5Images  # noqa: F401 - re-exported

#: Bumped when the store's layout or the conversion changes (part of every fingerprint).
FORMAT_VERSION = 1
VAL_FRACTION = 0.2
NUM_CLASSES = 10
#: Rows of one conversion step.
CONVERT_CHUNK_ROWS = 4096

_MD5_BLOCK = 1 << 20
_SPLIT_METHOD = (
    "first N rows of each official split; autoencoder and probe divided 80/20 into train/val by "
    "a permutation seeded with the data seed; rows of every split in increasing file order"
)


@dataclass(frozen=True)
class SourceFile:
    """One official file of a dataset.

    Attributes:
        relpath: path relative to the dataset directory, as torchvision lays it out.
        md5: the official md5 checksum (from torchvision's dataset class).
        url: where the file comes from (an archive URL when the file is inside one).
        size: the official size in bytes when known (sharpens the "truncated" message).
    """

    relpath: str
    md5: str
    url: str
    size: int | None = None


# -- helpers ----------------------------------------------------------------------------------


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions.

    Args:
        y_true: ``(N,)`` integer classes.
        y_pred: ``(N,)`` predicted classes, or ``(N, C)`` scores (their argmax is the class).

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: if the lengths differ, ``N == 0`` or the shapes are not as above.

    Example:
        >>> accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
        0.75
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2 and y_true.ndim == 1:
        y_pred = y_pred.argmax(axis=1)
    if y_true.ndim != 1 or y_pred.shape != y_true.shape:
        raise ValueError(
            f"score() needs y_true (N,) and y_pred (N,) or (N, C), got {y_true.shape} and "
            f"{np.shape(y_pred)}."
        )
    if len(y_true) == 0:
        raise ValueError("score() needs at least one sample, got 0.")
    return float(np.mean(y_true == y_pred))


def split_train_val(n: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Divide rows ``0..n-1`` into 80/20 train/val by a seeded permutation.

    Args:
        n: number of rows, at least 2.
        seed: the data seed.
        stream: distinguishes the autoencoder (0) and probe (1) divisions.

    Returns:
        ``(train_rows, val_rows)``, each sorted; ``val`` has ``round(0.2 n)`` rows, at least 1.
    """
    permutation = np.random.default_rng([seed, stream]).permutation(n)
    n_val = min(max(1, math.floor(VAL_FRACTION * n + 0.5)), n - 1)
    return np.sort(permutation[n_val:]), np.sort(permutation[:n_val])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def md5_checksums(
    paths: dict[str, Path], memo_path: Path, on_bytes: Callable[[int], None] | None = None
) -> dict[str, str]:
    """md5 of each file, reusing ``memo_path``'s entries for files whose size and mtime match.

    Args:
        paths: name -> file.
        memo_path: JSON memo (created or updated atomically).
        on_bytes: called with the number of bytes hashed, for progress bars.

    Returns:
        name -> md5 hex digest.
    """
    from torchvision.datasets.utils import calculate_md5

    with file_lock(memo_path.with_suffix(".lock")):
        try:
            memo = json.loads(memo_path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            memo = {}
        result, changed = {}, False
        for name, path in paths.items():
            stat = path.stat()
            key = str(path.resolve())
            entry = memo.get(key)
            if (
                isinstance(entry, dict)
                and entry.get("size") == stat.st_size
                and entry.get("mtime_ns") == stat.st_mtime_ns
            ):
                result[name] = entry["md5"]
            else:
                result[name] = calculate_md5(path, chunk_size=_MD5_BLOCK)
                memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                             "md5": result[name]}
                changed = True
            if on_bytes is not None:
                on_bytes(stat.st_size)
        if changed:
            write_json(memo_path, {"version": 1, "files": memo})
    return result


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking socket operation of the block (torchvision passes no timeout)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# -- the task ---------------------------------------------------------------------------------


class OfficialFilesTask:
    """Base of the classification tasks read from official files (see the module docstring).

    Subclasses set the class attributes below and implement :meth:`source_files`,
    :meth:`_download_into` and :meth:`_convert`.

    Args:
        data_dir: a directory holding the official files (laid out as torchvision lays them);
            searched before ``EMBENCH_HOME/datasets/<task>/``.
        verify: refuse files whose md5 is not the official one. Turn off for subsets and test
            fixtures in the official formats; the task data's info then says ``verified: False``.
        download: download missing files with torchvision into ``EMBENCH_HOME/datasets/<task>``.
    """

    name: str = ""
    title: str = ""
    kind: Literal["classification"] = "classification"
    image_size: int = 0
    native_size: int = 0
    tile: int = 1
    metric_name = "accuracy"
    metric_direction: Literal["higher"] = "higher"
    #: Names of the classes 0..9 (embench.protocols.HasClassNames), shown by ``embench show``.
    class_names: tuple[str, ...] | None = None
    #: Role -> official split the role's rows come from.
    sources: dict[str, str] = {}
    #: How the files sit in a directory, for messages.
    layout: str = ""
    label_mapping: str = ""
    #: Seconds any one network operation of a download may block.
    download_timeout: float = 60.0

    def __init__(
        self, data_dir: str | os.PathLike | None = None, verify: bool = True, download: bool = True
    ) -> None:
        self.data_dir = None if data_dir is None else Path(data_dir).expanduser()
        self.verify = bool(verify)
        self.download = bool(download)

    # -- hooks ------------------------------------------------------------------------------

    def source_files(self) -> tuple[SourceFile, ...]:
        """The official files, their checksums and URLs (read from torchvision's class)."""
        raise NotImplementedError

    def _download_into(self, directory: Path, missing: list[SourceFile]) -> None:
        """Download ``missing`` into ``directory``, laid out as :attr:`layout` says."""
        raise NotImplementedError

    def _convert(self, files: dict[str, Path], h5: h5py.File, progress: Any) -> dict[str, int]:
        """Write ``<split>/images`` (and ``<split>/labels``) for every official split."""
        raise NotImplementedError

    # -- public API -------------------------------------------------------------------------

    def load(self, home: Path, preset: Preset, seed: int, progress: Any = None) -> TaskData:
        """Find, check and convert the official files (once), and return the task's splits.

        Args:
            home: the EMBENCH_HOME directory; files and store live in ``home/datasets/<task>``.
            preset: its sizes for this task (``autoencoder``, ``probe``, ``test``) select the
                first N rows of each official split; ``None`` (or absent) selects all.
            seed: non-negative seed of the 80/20 train/val divisions.
            progress: optional :class:`rich.progress.Progress` for checksum and conversion bars.

        Returns:
            TaskData with the five splits as lazy uint8 views ``(N, 3, S, S)`` with
            ``S = image_size``, int64 labels 0..9 (``None`` for the autoencoder splits), the data
            fingerprint, the store path and info (files, checksums, verification, subset sizes).

        Raises:
            ConfigError: if the preset's sizes or the seed are not usable.
            DataError: if files are missing (one line naming each, its URL and where to put it),
                fail their checksum, or are not in the official format.
            StorageError: if ``home`` cannot be written.
        """
        wanted = self._wanted_sizes(preset)
        seed = _check_seed(seed, self.name)
        directory = home_dir(Path(home), "datasets") / self.name
        directory.mkdir(parents=True, exist_ok=True)
        sources = self.source_files()
        files = self._find_files(directory, sources)
        md5s = self._check_files(directory, sources, files, progress)
        store_fingerprint = fingerprint(
            {"task": self.name, "format_version": FORMAT_VERSION, "files": md5s}
        )
        path = directory / f"{store_fingerprint[:16]}.h5"
        h5 = load_or_build(
            path,
            store_fingerprint,
            self._check_store,
            lambda out: self._build_store(files, out, progress),
            made_from="the source files",
            keep_open=True,
        )
        return self._task_data(h5, path, store_fingerprint, sources, md5s, wanted, seed)

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Accuracy: the fraction of test images whose class is predicted correctly.

        Args:
            y_true: ``(N,)`` true classes 0..9.
            y_pred: ``(N,)`` predicted classes, or ``(N, C)`` scores (argmax taken).

        Returns:
            Accuracy in ``[0, 1]`` (higher is better).

        Raises:
            ValueError: if the shapes disagree or ``N == 0``.
        """
        return accuracy(y_true, y_pred)

    # -- files ------------------------------------------------------------------------------

    def _candidates(self, directory: Path, source: SourceFile) -> list[Path]:
        places = []
        if self.data_dir is not None:
            places += [self.data_dir / source.relpath, self.data_dir / Path(source.relpath).name]
        places.append(directory / source.relpath)
        return places

    def _locate(
        self, directory: Path, sources: tuple[SourceFile, ...]
    ) -> tuple[dict[str, Path], list[SourceFile]]:
        found, missing = {}, []
        for source in sources:
            path = next((p for p in self._candidates(directory, source) if p.is_file()), None)
            if path is None:
                missing.append(source)
            else:
                found[source.relpath] = path
        return found, missing

    def _find_files(self, directory: Path, sources: tuple[SourceFile, ...]) -> dict[str, Path]:
        """Locate every file, downloading what is missing when allowed; else one clear error."""
        found, missing = self._locate(directory, sources)
        if not missing:
            return found
        reason = "downloading is off"
        if self.download:
            with file_lock(directory / ".download.lock"):
                found, missing = self._locate(directory, sources)  # another process's download?
                if missing:
                    try:
                        self._download_missing(directory, missing)
                    except Exception as exc:  # every network failure means the same to the user
                        reason = f"tried to download: {_one_line(exc)}"
                    found, missing = self._locate(directory, sources)
        if missing:
            raise DataError(self._missing_message(directory, missing, reason))
        return found

    def _download_missing(self, directory: Path, missing: list[SourceFile]) -> None:
        """Download into a temporary directory beside the files, then move them into place."""
        tmp = Path(tempfile.mkdtemp(prefix=".partial-download-", dir=directory))
        try:
            with _socket_timeout(self.download_timeout):
                self._download_into(tmp, missing)
            for source in missing:
                downloaded = tmp / source.relpath
                if downloaded.is_file():
                    final = directory / source.relpath
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(downloaded, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _missing_message(self, directory: Path, missing: list[SourceFile], reason: str) -> str:
        by_url: dict[str, list[str]] = {}
        for source in missing:
            by_url.setdefault(source.url, []).append(source.relpath)
        listed = "; ".join(f"{', '.join(names)} (from {url})" for url, names in by_url.items())
        places = []
        if self.data_dir is not None:
            gone = "" if self.data_dir.is_dir() else " (which does not exist)"
            places.append(f"{self.data_dir}{gone}")
        places.append(f"{directory}{os.sep}")
        return (
            f"{self.title} files not found: {listed}. Looked in {' and '.join(places)}. "
            f"{self._placement_hint(directory)} ({reason[:1].upper()}{reason[1:]}.)"
        )

    def _placement_hint(self, directory: Path) -> str:
        return (
            f"Download them into {directory}{os.sep} or pass --data-dir DIR with {self.layout}."
        )

    def _check_files(
        self,
        directory: Path,
        sources: tuple[SourceFile, ...],
        files: dict[str, Path],
        progress: Any,
    ) -> dict[str, str]:
        """Every file's md5; with :attr:`verify`, refuse one that is not the official file."""
        total = sum(files[s.relpath].stat().st_size for s in sources)
        with stage(progress, f"checksum {self.name}", total=math.ceil(total / 2**20)) as bar:
            md5s = md5_checksums(
                files, directory / "checksums.json", lambda n: bar.advance(n / 2**20)
            )
        if self.verify:
            for source in sources:
                if md5s[source.relpath] != source.md5:
                    raise DataError(self._checksum_message(source, files[source.relpath],
                                                           md5s[source.relpath]))
        return md5s

    def _checksum_message(self, source: SourceFile, path: Path, md5: str) -> str:
        size = path.stat().st_size
        if source.size is not None and size < source.size:
            what = f"it is truncated ({size:,} of {source.size:,} bytes)"
        elif source.size is not None and size != source.size:
            what = f"it has {size:,} bytes, not {source.size:,}"
        else:
            what = "it is truncated or altered"
        return (
            f"{self.title} file {source.relpath} ({path}) fails the official checksum "
            f"(md5 {md5}, expected {source.md5}): {what}. Delete it and download it again "
            f"(from {source.url}), or pass --no-verify-data to use other files in the official "
            "format (subsets, fixtures)."
        )

    # -- store ------------------------------------------------------------------------------

    def _build_store(self, files: dict[str, Path], out: h5py.File, progress: Any) -> None:
        """Convert the official files into the new store ``out``."""
        rows = self._convert(files, out, progress)
        out.attrs["format_version"] = FORMAT_VERSION
        out.attrs["rows"] = json.dumps(rows, sort_keys=True)

    def _check_store(self, h5: h5py.File) -> h5py.File:
        """Return the store ``h5`` if it holds every split as it should; else :class:`Unusable`."""
        rows = json.loads(h5.attrs["rows"])
        expected = set(self.sources.values())
        if set(rows) != expected:
            raise Unusable(f"it holds splits {sorted(rows)}, not {sorted(expected)}")
        native = (3, self.native_size, self.native_size)
        for split, n in rows.items():
            images = h5[f"{split}/images"]
            if images.shape != (n, *native) or images.dtype != np.uint8:
                raise Unusable(
                    f"{split}/images is {images.dtype} {images.shape}, not uint8 {(n, *native)}"
                )
            if f"{split}/labels" in h5:
                labels = h5[f"{split}/labels"][...]
                if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= 10)):
                    raise Unusable(f"{split}/labels are not {n} classes in 0..9")
            elif split != self.sources["autoencoder"]:
                raise Unusable(f"{split}/labels are missing")
        return h5

    # -- splits -----------------------------------------------------------------------------

    def _wanted_sizes(self, preset: Preset) -> dict[str, int | None]:
        sizes = task_sizes(self, preset)
        wanted: dict[str, int | None] = {}
        for role in ("autoencoder", "probe", "test"):
            value = sizes.get(role)
            minimum = 1 if role == "test" else 2
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer))
                or value < minimum
            ):
                raise ConfigError(
                    f"Preset {preset.name!r} asks for {value!r} {role} images of {self.name}.",
                    f"Use an integer >= {minimum}, or None for the whole official split.",
                )
            wanted[role] = None if value is None else int(value)
        return wanted

    def _task_data(
        self,
        h5: h5py.File,
        path: Path,
        store_fingerprint: str,
        sources: tuple[SourceFile, ...],
        md5s: dict[str, str],
        wanted: dict[str, int | None],
        seed: int,
    ) -> TaskData:
        available = json.loads(h5.attrs["rows"])
        used, splits = {}, {}
        for role, official in self.sources.items():
            n = available[official]
            if wanted[role] is not None:
                n = min(n, wanted[role])
            if n < (1 if role == "test" else 2):
                raise DataError(
                    f"{self.title} split {official!r} has {available[official]} images; the "
                    f"{role} split needs at least {1 if role == 'test' else 2}.",
                    "Use files with more images (they may be subsets with --no-verify-data).",
                )
            used[role] = n
        labels = {
            official: h5[f"{official}/labels"][...].astype(np.int64)
            for role, official in self.sources.items() if role != "autoencoder"
        }

        def view(official: str, rows: np.ndarray) -> H5Images:
            return H5Images(path, f"{official}/images", rows=rows, tile=self.tile, file=h5)

        ae = self.sources["autoencoder"]
        train, val = split_train_val(used["autoencoder"], seed, stream=0)
        splits[AUTOENCODER_TRAIN] = Split(images=view(ae, train))
        splits[AUTOENCODER_VAL] = Split(images=view(ae, val))
        probe = self.sources["probe"]
        train, val = split_train_val(used["probe"], seed, stream=1)
        splits[PROBE_TRAIN] = Split(images=view(probe, train), labels=labels[probe][train])
        splits[PROBE_VAL] = Split(images=view(probe, val), labels=labels[probe][val])
        test = self.sources["test"]
        rows = np.arange(used["test"], dtype=np.int64)
        splits[TEST] = Split(images=view(test, rows), labels=labels[test][rows])

        official_files = all(md5s[s.relpath] == s.md5 for s in sources)
        subset = {
            role: f"{official}[:{used[role]}]" if used[role] < available[official] else official
            for role, official in self.sources.items()
        }
        info = {
            "task": self.name,
            "format_version": FORMAT_VERSION,
            "source": f"{self.title} official files ({self.layout})",
            "verified": self.verify,
            "official_files": official_files,
            "files": {
                s.relpath: {"md5": md5s[s.relpath], "official": md5s[s.relpath] == s.md5}
                for s in sources
            },
            "official_rows": dict(available),
            "rows_used": used,
            "subset": subset,
            "subset_rule": "the first N rows of each official split, in file order",
            "split_method": _SPLIT_METHOD,
            "val_fraction": VAL_FRACTION,
            "seed": seed,
            "native_size": self.native_size,
            "image_size": self.image_size,
            "tiling": f"{self.tile}x{self.tile}" if self.tile > 1 else None,
            "label_mapping": self.label_mapping,
        }
        if not self.verify:
            info["note"] = (
                "files not checked against the official checksums (--no-verify-data); "
                + ("they match them anyway" if official_files else "they are not the official "
                   "files")
            )
        data_fingerprint = fingerprint(
            {"store": store_fingerprint, "rows_used": used, "seed": seed,
             "val_fraction": VAL_FRACTION, "split_method": _SPLIT_METHOD,
             "image_size": self.image_size, "tile": self.tile}
        )
        return TaskData(splits=splits, fingerprint=data_fingerprint, path=path, info=info)


def _check_seed(seed: Any, task: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"Invalid seed {seed!r}: {task} needs an integer >= 0.")
    return int(seed)

