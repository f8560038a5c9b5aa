"""Folders of records: reading them all, and where a board keeps each one.

A home's ``results/`` and a published board's ``results/`` hold the same kind of tree,
``<task>/<record>.json`` with each record's predictions sidecar and pictures beside it
(:mod:`embench.results` names the files of one record). This module owns what concerns many
records at once: :func:`load_records` reads every record under some folders, refusing invalid
or edited ones with the reason and counting duplicates once, and the board's layout
(:func:`board_results`, :func:`record_file`, :func:`files_of`, :func:`record_on_board`) that the
runner, the board and ``embench compare`` all follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from embench.errors import EmbenchError
from embench.results import RunRecord, load_record, path_of, sidecar_path, validate_record
from embench.storage import safe_name

#: The folder of a board (``leaderboard/``) that holds its records, by task.
BOARD_RESULTS = "results"


@dataclass
class LoadedRecords:
    """Valid, de-duplicated records and the problems found in the rest."""

    records: list[RunRecord] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0


def load_records(directories: list[Path]) -> LoadedRecords:
    """Read every ``*.json`` record under the directories, validating and merging duplicates.

    A record is refused (with the reason) when its JSON is invalid or its fields disagree
    with its own fingerprints. A record seen twice (same run fingerprint, which includes the
    seed) counts once. A record may come with or without its predictions sidecar.
    """
    out = LoadedRecords()
    seen: set[str] = set()
    for directory in directories:
        files = [directory] if directory.is_file() else sorted(directory.rglob("*.json"))
        for path in files:
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                out.problems.append(f"{path}: not valid JSON ({exc})")
                continue
            problems = validate_record(data)
            if problems:
                out.problems.append(f"{path}: {'; '.join(problems)}")
                continue
            record = RunRecord.from_dict(data, source=str(path))
            problems = record.consistency_problems()
            if problems:
                out.problems.append(f"{path}: {'; '.join(problems)}")
                continue
            key = f"{record.run_key}:{record.seed}"
            if key in seen:
                out.duplicates += 1
                continue
            seen.add(key)
            out.records.append(record)
            out.paths.append(path)
    return out


def board_results(board: Path) -> Path:
    """The folder of a board's records: ``<board>/results`` (``<task>/<record>.json`` inside)."""
    return board / BOARD_RESULTS


def record_file(results_dir: Path, record: RunRecord) -> Path:
    """Where a board keeps ``record``: ``results_dir/<task>/<record file name>``."""
    if record.predictions:  # the sidecar is named after the record file it was written beside
        stem = record.predictions.removesuffix(".predictions.npz")
        return results_dir / record.task / f"{stem}.json"
    return results_dir / record.task / path_of(Path(), record).name


#: A record's submission bundle keeps its probe embeddings in ``<record stem>`` + this.
BUNDLE_SUFFIX = ".embeddings.h5"


def files_of(record_file: Path) -> list[Path]:
    """A record file and the files beside it that exist (sidecar, pictures, bundle).

    Publishing copies all of them, so a record submitted with its bundle reaches the board
    with it (``embench leaderboard --check --verify`` reruns its probe search from it).
    """
    stem = record_file.stem
    beside = [sidecar_path(record_file), record_file.with_suffix(".png"),
              *sorted(record_file.parent.glob(f"{stem}.*.png")),
              record_file.with_name(stem + BUNDLE_SUFFIX)]
    return [record_file, *(p for p in dict.fromkeys(beside) if p.exists())]


def record_on_board(out_dir: Path, task: str, encoder: str, z: int, seed: int, protocol: str,
                    device: str, precision: str) -> Path | None:
    """The board's record of this (encoder, z, seed) cell under ``protocol``, if there is one.

    A record counts when it is valid, consistent with its own fingerprints, of the same
    protocol fingerprint (task, data, sizes, budgets, probes, metric and embench version),
    device and precision. Anything else (an older protocol, another version) is run again.
    """
    directory = board_results(out_dir) / safe_name(task, "task name")
    pattern = f"{safe_name(encoder, 'encoder name')}-z{z}-seed{seed}-*.json"
    for path in sorted(directory.glob(pattern)):
        try:
            record = load_record(path)
        except EmbenchError:
            continue
        if (record.protocol_id == protocol and record.device == device
                and record.precision == precision and not record.consistency_problems()):
            return path
    return None
