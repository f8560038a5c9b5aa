"""The runs a comparison reads: a record with its sidecar, and what the command line names.

:func:`load_run` reads a record and the predictions sidecar beside it; :func:`resolve_sides`
turns record files and encoder names (looked up on a board or a home, the newest record per
seed) into the two sides of a comparison. :mod:`embench.compare` compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embench.errors import ConfigError, DataError
from embench.records import load_records
from embench.results import (
    Predictions,
    RunRecord,
    load_record,
    read_predictions,
    sidecar_path,
)


@dataclass
class LoadedRun:
    """A record and its per-item predictions (``None`` when it has no sidecar).

    Attributes:
        record: the run's record.
        predictions: its sidecar's contents, or ``None`` (a record made before schema 2, or a
            sidecar that is not beside it).
        source: where it came from (the record file), for messages.
    """

    record: RunRecord
    predictions: Predictions | None
    source: str
    #: per-item values by probe, computed once (the board compares one run several times)
    values: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


def load_run(path: str | Path) -> LoadedRun:
    """Read a record file and, when it is there, the predictions sidecar beside it.

    Raises:
        DataError: if the record or an existing sidecar cannot be read.
    """
    path = Path(path)
    record = load_record(path)
    sidecar = sidecar_path(path)
    predictions = read_predictions(sidecar) if sidecar.exists() else None
    return LoadedRun(record, predictions, str(path))


def is_record_file(argument: str) -> bool:
    """Whether a command-line argument names a record file (else an encoder name)."""
    return argument.endswith(".json") or Path(argument).is_file()


def resolve_sides(arguments: Sequence[str], *, directory: Path, task: str | None = None,
                  z: int | None = None, preset: str | None = None
                  ) -> tuple[list[LoadedRun], list[LoadedRun]]:
    """Turn record files and encoder names into the two sides of a comparison.

    Record files are grouped by (encoder, z): one side each. An encoder name stands for its
    records of ``task`` under ``directory`` (the newest per seed), narrowed by ``z`` and
    ``preset``; if the sides then share several (z, protocol) combinations, or none, the
    choice is refused rather than guessed.

    Args:
        arguments: record files (``*.json``) and encoder names; two sides in all.
        directory: where names are looked up (searched recursively for records).
        task, z, preset: narrow the records names stand for (``task`` is required with names).

    Returns:
        The runs of side A and of side B, in the order the arguments named them.

    Raises:
        ConfigError: not exactly two sides; a name without ``task``; no single (z, protocol)
            both sides share.
        DataError: a record file that cannot be read; a name without records.
    """
    # each side: a label, and its candidate (record, path) pairs; files are read once here
    labels: list[str] = []
    candidates: list[list[tuple[RunRecord, Path]]] = []
    named: list[bool] = []
    names = [a for a in dict.fromkeys(arguments) if not is_record_file(a)]
    if names and task is None:
        raise ConfigError(f"--task is needed to find the records of {', '.join(names)}.",
                          "Add --task TASK, or pass record files.")
    available = _records_under(directory) if names else []
    for argument in dict.fromkeys(arguments):
        if is_record_file(argument):
            record = load_record(argument)
            label = f"{record.encoder} z{record.z_dim}"
            if label not in labels:
                labels.append(label)
                candidates.append([])
                named.append(False)
            candidates[labels.index(label)].append((record, Path(argument)))
            continue
        matches = [(r, p) for r, p in available if r.encoder == argument and r.task == task
                   and (z is None or r.z_dim == z) and (preset is None or r.preset == preset)]
        if not matches:
            others = sorted({r.encoder for r, _ in available if r.task == task})
            narrowed = "".join(f" {k} {v}" for k, v in (("z", z), ("preset", preset))
                               if v is not None)
            raise DataError(f"No records of {argument} on {task}{narrowed} under {directory} "
                            f"(encoders with {task} records there: {', '.join(others) or 'none'}).",
                            f"Run `embench run -e {argument} -t {task}`, point --board or "
                            "--home at the records, or pass record files.")
        labels.append(argument)
        candidates.append(matches)
        named.append(True)
    if len(labels) != 2:
        raise ConfigError(f"compare needs exactly two encoders, got {len(labels)}: "
                          f"{', '.join(labels) or 'none'}.",
                          "Give two encoder names (with --task), or the record files of two "
                          "encoders (one per seed).")
    if any(named):
        keys = [{(r.protocol_id, r.z_dim) for r, _ in side} for side in candidates]
        common = keys[0] & keys[1]
        if len(common) != 1:
            def listed(options: set[tuple[str, int]]) -> str:
                return ", ".join(f"z{zz} protocol {proto[:12]}" for proto, zz in sorted(options))

            if not common:
                each = "; ".join(f"{label}: {listed(k)}"
                                 for label, k in zip(labels, keys, strict=True))
                raise ConfigError(f"{labels[0]} and {labels[1]} have no records of one z and "
                                  f"protocol in common on {task} ({each}).",
                                  "Choose other records, or rerun one encoder like the other.")
            raise ConfigError(f"{labels[0]} and {labels[1]} have records of several z and "
                              f"protocols in common on {task} ({listed(common)}).",
                              "Choose one with --z or --preset, or pass record files.")
        for i, side in enumerate(candidates):
            if named[i]:
                candidates[i] = _newest_per_seed([(r, p) for r, p in side
                                                  if (r.protocol_id, r.z_dim) in common])
    side_a, side_b = ([load_run(path) for _, path in side] for side in candidates)
    return side_a, side_b


def _records_under(directory: Path) -> list[tuple[RunRecord, Path]]:
    """Every valid record under ``directory`` with its path (validated, de-duplicated)."""
    if not directory.exists():
        return []
    loaded = load_records([directory])
    return list(zip(loaded.records, loaded.paths, strict=True))


def _newest_per_seed(runs: list[tuple[RunRecord, Path]]) -> list[tuple[RunRecord, Path]]:
    """One record per seed, the newest (like the board, which supersedes older ones)."""
    newest: dict[int, tuple[RunRecord, Path]] = {}
    for record, path in runs:
        if record.seed not in newest or record.created > newest[record.seed][0].created:
            newest[record.seed] = (record, path)
    return [newest[seed] for seed in sorted(newest)]
