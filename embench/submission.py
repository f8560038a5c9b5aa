"""Submission bundles: a record with the embeddings its probe search saw, and their check.

A board that takes other people's results can only trust a number it can recompute. A
submission bundle is a record file with, beside it, its predictions sidecar and
``<record stem>.embeddings.h5``: the probe-train, probe-validation and test embeddings with
their labels, exactly as the run's probe search read them from its embedding cache (float32,
gzip-compressed HDF5). :func:`write_bundle` writes that file from the run's ``EMBENCH_HOME``
(``embench submit``); :func:`verify_bundle` reruns the record's probe search on it, under the
record's protocol, with the runner's own probe stage and scoring (the code ``embench verify``
uses), and lists every metric, selected probe or prediction that does not come back;
:func:`verify_board` does it for every record under some folders (``embench leaderboard
--check --verify``). A bundle too large for a board in git (:data:`MAX_BUNDLE_MB`) is not
written; the check then reruns such a record's search on an ``EMBENCH_HOME``'s embedding cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embench.cache import KEY_ATTR, cache_path, read_cache
from embench.datastore import Unusable, read_store, write_store
from embench.errors import DataError, EmbenchError
from embench.protocols import PROBE_TRAIN, PROBE_VAL, TEST
from embench.records import BUNDLE_SUFFIX, board_results, files_of, load_records
from embench.registry import load_task
from embench.results import RunRecord, load_record, read_predictions, sidecar_path
from embench.runner import metric_problems, probe_stage, record_probe_settings
from embench.storage import atomic_path, resolve_home

#: The splits the probe search reads (the autoencoder's splits are not needed to verify).
BUNDLE_SPLITS = (PROBE_TRAIN, PROBE_VAL, TEST)
#: Largest allowed difference per test metric: ``verify_record``'s default, the same check.
TOLERANCE = 1e-6
#: Per-item predictions agree when ``np.isclose`` with these says so (float32 rounding).
PREDICTION_RTOL, PREDICTION_ATOL = 1e-4, 1e-4
#: Largest bundle file ``embench submit`` writes by default, in MB: boards live in git, and git
#: hosts refuse big files (GitHub: 100 MB a file). Frozen wide features reach it (AlexNet's conv2
#: pooled to 1,728 numbers an image is about 340 MB compressed at the paper's LunarLander sizes).
MAX_BUNDLE_MB = 95.0
#: What the three names of the selection are called in a record's ``probes``.
SELECTION_KEYS = ("best", "best_mlp", "best_linear")

Log = Callable[[str], None]


def bundle_path(record_file: Path) -> Path:
    """The embeddings file of a record's bundle: ``<record stem>.embeddings.h5`` beside it."""
    record_file = Path(record_file)
    return record_file.with_name(record_file.stem + BUNDLE_SUFFIX)


def bundle_files(record_file: Path) -> list[Path]:
    """The files of a record's bundle that exist: record, sidecar, pictures, embeddings."""
    return files_of(Path(record_file))


def write_bundle(record_file: Path, home: Path | None = None, board: Path | None = None,
                 compression: str = "gzip", max_mb: float | None = MAX_BUNDLE_MB) -> list[Path]:
    """Write a record's submission bundle from its run's embedding cache.

    Args:
        record_file: the record (its predictions sidecar must lie beside it).
        home: the ``EMBENCH_HOME`` the run cached its embeddings in (default: the current one).
        board: also copy the bundle (record, sidecar, pictures, embeddings) into this board's
            ``results/<task>/``, ready for a pull request.
        compression: ``gzip`` (portable) or ``lzf`` (faster, larger).
        max_mb: refuse (and remove) an embeddings file larger than this many MB (``None``:
            no limit). Such a record can still join a board without its bundle; the board's
            check then verifies it from an ``EMBENCH_HOME`` that caches its embeddings.

    Returns:
        The bundle's files (in ``board`` when given).

    Raises:
        DataError: the record is invalid, has no sidecar, its embeddings are not cached
            in ``home``, or the bundle would be larger than ``max_mb``.

    Example:
        >>> write_bundle(Path("results/lunarlander/pca-z4-seed0-smoke-af5fe0ab29a7.json"))
        ... # doctest: +SKIP
    """
    record_file = Path(record_file)
    record = load_record(record_file)
    sidecar = sidecar_path(record_file)
    if not sidecar.exists():
        raise DataError(f"Record {record_file} has no predictions sidecar ({sidecar.name}) "
                        "beside it, and a bundle needs one.",
                        "Submit the record from where its run wrote it (EMBENCH_HOME/results).")
    home = resolve_home(home)
    key = record.fingerprints["embeddings"]
    path = cache_path(home, record.encoder, record.task, key)
    cached = _cached_embeddings(record, home)
    if cached is None:
        raise DataError(f"The embeddings of {record_file.name} ({path.name}) are not cached in "
                        f"{home}.", "Pass --home with the EMBENCH_HOME of the run, or rerun "
                        "the run there (its checkpoint is reused).")
    target_file = bundle_path(record_file)
    with write_store(target_file, key, fingerprint_attr=KEY_ATTR) as h5:
        for split in BUNDLE_SPLITS:
            group = h5.create_group(split)
            for name in ("embeddings", "labels"):
                group.create_dataset(name, data=cached[split][name], compression=compression,
                                     shuffle=True)
        h5.attrs["record"] = record_file.name
        h5.attrs["run"] = record.run_key
        h5.attrs["protocol"] = record.protocol_id
        h5.attrs["data"] = record.fingerprints["data"]
        h5.attrs["encoder"] = record.encoder
    size = target_file.stat().st_size
    if max_mb is not None and size > max_mb * 1e6:
        target_file.unlink()
        rows = sum(int(cached[split]["embeddings"].shape[0]) for split in BUNDLE_SPLITS)
        width = int(cached[TEST]["embeddings"].shape[1])
        raise DataError(
            f"The bundle of {record_file.name} would be {size / 1e6:.0f} MB ({rows:,} rows of "
            f"{width:,} floats), over the {max_mb:g} MB limit for a file on a board in git "
            "(GitHub refuses files over 100 MB); nothing was written.",
            "Publish the record without its bundle (a board checks it with `embench leaderboard "
            "--check --verify --home HOME`, HOME caching its embeddings), or pass --max-mb 0 "
            "for a board that stores large files.")
    files = bundle_files(record_file)
    if board is None:
        return files
    target = board_results(board) / record.task
    copied = []
    for source in files:
        with atomic_path(target / source.name) as tmp:
            tmp.write_bytes(source.read_bytes())
        copied.append(target / source.name)
    return copied


def _split_sizes(record: RunRecord) -> dict[str, int]:
    return {split: int(record.split_sizes[split]) for split in BUNDLE_SPLITS
            if split in record.split_sizes}


def _cached_embeddings(record: RunRecord,
                       home: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """The probe splits of the record's run from ``home``'s embedding cache, or ``None``.

    Embeddings come as float32, as a bundle stores them and the probe search reads them.
    """
    key = record.fingerprints["embeddings"]
    cached = read_cache(cache_path(home, record.encoder, record.task, key), key,
                        _split_sizes(record))
    if cached is None:
        return None
    return {split: {"embeddings": np.asarray(cached[split]["embeddings"], np.float32),
                    "labels": np.asarray(cached[split]["labels"])} for split in BUNDLE_SPLITS}


@dataclass
class BundleCheck:
    """The verdict on one record: accepted, or the reasons, each ``what: claimed vs recomputed``.

    Attributes:
        record: the record file.
        problems: why it is rejected (empty: accepted).
        verified: its probe search was rerun (else: schema only, or rejected before it could
            be).
        source: where the embeddings it was rerun on came from: ``"bundle"``, or the
            embedding cache of an ``EMBENCH_HOME`` (for a record published without a bundle).
        seconds: how long the check took.
    """

    record: Path
    problems: list[str] = field(default_factory=list)
    verified: bool = False
    source: str = "bundle"
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        """Whether the record passed."""
        return not self.problems

    def line(self) -> str:
        """One line: the record, then each reason."""
        return f"{self.record}: {'; '.join(self.problems)}"


def _read_bundle(path: Path, record: RunRecord) -> tuple[dict[str, dict[str, np.ndarray]] | None,
                                                         str | None]:
    """The bundle's splits, or the reason it does not belong to ``record`` or cannot be used."""
    sizes = _split_sizes(record)
    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: (v.decode() if isinstance(v, bytes) else str(v))
                     for k, v in h5.attrs.items()}
    except OSError as exc:
        return None, f"bundle {path.name} cannot be read ({exc})"
    for attr, claimed, what in (
            ("protocol", record.protocol_id, "protocol"),
            ("data", record.fingerprints["data"], "fingerprints.data"),
            (KEY_ATTR, record.fingerprints["embeddings"], "fingerprints.embeddings"),
            ("run", record.run_key, "fingerprints.run")):
        if attrs.get(attr) != claimed:
            return None, (f"{what}: claimed {claimed[:12]} against {attrs.get(attr, '')[:12]} "
                          f"in the bundle (embeddings of another "
                          f"{'protocol' if attr in ('protocol', 'data') else 'run'})")

    def read(h5: h5py.File) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for split, rows in sizes.items():
            if split not in h5 or "embeddings" not in h5[split] or "labels" not in h5[split]:
                raise Unusable(f"split_sizes.{split}: claimed {rows} rows against none in the "
                               "bundle")
            embeddings = h5[split]["embeddings"]
            if embeddings.shape[0] != rows:
                raise Unusable(f"split_sizes.{split}: claimed {rows} against "
                               f"{embeddings.shape[0]} rows in the bundle")
            if embeddings.dtype != np.float32:
                raise Unusable(f"{split} embeddings are {embeddings.dtype}, not float32")
            out[split] = {"embeddings": embeddings[()], "labels": h5[split]["labels"][()]}
        return out

    cached, problem = read_store(path, record.fingerprints["embeddings"], read,
                                 fingerprint_attr=KEY_ATTR)
    if cached is None:
        return None, f"bundle {path.name}: {problem or 'missing'}"
    return cached, None


def verify_bundle(record_file: Path, *, tolerance: float = TOLERANCE, progress: Any = None,
                  schema_only: bool = False, home: Path | None = None) -> BundleCheck:
    """Rerun a record's probe search from its bundle and check every claim it makes.

    The record must be consistent with its own fingerprints; its bundle must hold the
    embeddings it names, made under its protocol; the probe search, rerun with the budgets
    of the record's protocol and its seed (:func:`embench.runner.probe_stage`, the code
    ``embench verify`` runs), must give back every test metric (within ``tolerance``), the
    selected probes, and the predictions in its sidecar.

    Args:
        record_file: a record with its bundle beside it (:func:`bundle_path`).
        tolerance: the largest allowed difference per test metric.
        progress: a rich Progress for the probe search's bars (``None``: silent).
        schema_only: accept a record without a bundle on its schema alone.
        home: for a record without a bundle (one too large to publish, see
            :data:`MAX_BUNDLE_MB`), rerun the search on the embeddings this ``EMBENCH_HOME``
            caches under the record's embeddings fingerprint (``None``: bundles only).

    Returns:
        The verdict, with one reason per claim that did not come back.

    Example:
        >>> verify_bundle(Path("leaderboard/results/lunarlander/x.json")).accepted
        ... # doctest: +SKIP
    """
    start = time.perf_counter()
    check = BundleCheck(Path(record_file))
    try:
        _verify(check, tolerance, progress, schema_only, home)
    except EmbenchError as exc:  # a task that is not installed, a broken sidecar, ...
        check.problems.append(str(exc).splitlines()[0])
    check.seconds = time.perf_counter() - start
    return check


def _verify(check: BundleCheck, tolerance: float, progress: Any, schema_only: bool,
            home: Path | None) -> None:
    record = load_record(check.record)
    problems = record.consistency_problems()
    if problems:
        check.problems += problems
        return
    bundle = bundle_path(check.record)
    if bundle.exists():
        cached, problem = _read_bundle(bundle, record)
        if cached is None:
            check.problems.append(str(problem))
            return
    else:
        cached = None if home is None else _cached_embeddings(record, home)
        if cached is None:
            if not schema_only:
                where = ("" if home is None
                         else f" and {home} does not cache its embeddings")
                check.problems.append(
                    f"no submission bundle ({bundle.name} is missing{where}): run `embench "
                    f"submit {check.record.name}` where its embeddings are cached and add the "
                    "file, pass --home with an EMBENCH_HOME that caches them (rerunning the "
                    "record's run there makes them), or check with --schema-only")
            return
        check.source = f"the embedding cache in {home}"
    settings, problems = record_probe_settings(record)
    check.problems += problems
    sidecar = read_predictions(sidecar_path(check.record))
    task = load_task(record.task)
    search, scores = probe_stage(task, cached, settings, record.seed, record.device, progress)
    check.verified = True
    check.problems += metric_problems(record.test, scores.test, tolerance)
    selected = search.to_dict()
    for key in SELECTION_KEYS:
        if key in record.probes and record.probes[key] != selected.get(key):
            check.problems.append(f"probes.{key}: claimed {record.probes[key]} against "
                                  f"recomputed {selected.get(key)}")
    _check_predictions(check, record, sidecar, cached[TEST]["labels"], scores.predicted)


def _check_predictions(check: BundleCheck, record: RunRecord, sidecar: Any, labels: np.ndarray,
                       predicted: dict[str, np.ndarray]) -> None:
    if sidecar.data_fingerprint != record.fingerprints["data"]:
        check.problems.append(f"predictions.data_fingerprint: claimed "
                              f"{sidecar.data_fingerprint[:12]} against the record's "
                              f"{record.fingerprints['data'][:12]}")
        return
    if sidecar.y_true.shape != labels.shape or not np.array_equal(sidecar.y_true, labels):
        check.problems.append("predictions.y_true: the sidecar's test targets are not the "
                              "bundle's test labels")
        return
    for probe, claimed in sorted(sidecar.predicted.items()):
        recomputed = predicted.get(probe)
        if recomputed is None:
            continue
        claimed, recomputed = np.asarray(claimed), np.asarray(recomputed)
        if claimed.shape != recomputed.shape:
            check.problems.append(f"predictions.{probe}: claimed shape {claimed.shape} against "
                                  f"recomputed {recomputed.shape}")
            continue
        close = np.isclose(claimed, recomputed, rtol=PREDICTION_RTOL, atol=PREDICTION_ATOL)
        bad = ~close.reshape(len(close), -1).all(axis=1)
        if bad.any():
            item = int(np.argmax(bad))
            check.problems.append(
                f"predictions.{probe}: {int(bad.sum())} item(s) differ (item {item}: claimed "
                f"{_array_text(claimed[item])} against recomputed "
                f"{_array_text(recomputed[item])})")


def _array_text(value: np.ndarray) -> str:
    return json.dumps(np.round(np.asarray(value, dtype=float), 4).tolist())


@dataclass
class BoardCheck:
    """The verdict on every record under some folders."""

    checks: list[BundleCheck] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # records that failed the schema
    duplicates: int = 0

    @property
    def rejected(self) -> list[str]:
        """One line per rejected record (schema failures first)."""
        return self.refused + [c.line() for c in self.checks if not c.accepted]

    @property
    def verified(self) -> list[BundleCheck]:
        """The records accepted after their probe search was rerun."""
        return [c for c in self.checks if c.accepted and c.verified]

    @property
    def schema_only(self) -> list[BundleCheck]:
        """The records accepted without a bundle (``schema_only``)."""
        return [c for c in self.checks if c.accepted and not c.verified]


def verify_board(directories: list[Path], *, schema_only: bool = False,
                 tolerance: float = TOLERANCE, progress: Any = None, home: Path | None = None,
                 on_check: Callable[[BundleCheck], None] = lambda check: None) -> BoardCheck:
    """Check every record under ``directories`` against its bundle (a board's CI check).

    Args:
        directories: folders of records (``leaderboard/results``) or record files.
        schema_only: accept records without a bundle on their schema alone.
        tolerance: the largest allowed difference per test metric.
        progress: a rich Progress for the probe searches.
        home: an ``EMBENCH_HOME`` whose embedding cache stands in for missing bundles
            (:func:`verify_bundle`).
        on_check: called with each record's verdict as it comes.

    Returns:
        The verdicts, and the records refused by the schema check.
    """
    loaded = load_records(directories)
    board = BoardCheck(refused=list(loaded.problems), duplicates=loaded.duplicates)
    for path in loaded.paths:
        check = verify_bundle(path, tolerance=tolerance, progress=progress,
                              schema_only=schema_only, home=home)
        board.checks.append(check)
        on_check(check)
    return board
