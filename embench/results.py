"""Result records: one JSON file per run, versioned, validated before anyone trusts them."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from embench import __version__
from embench.errors import DataError
from embench.storage import safe_name, write_json

SCHEMA_VERSION = 1

#: Top-level fields every record has, with their JSON types.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "embench_version": str,
    "encoder": str,
    "task": str,
    "preset": str,
    "z_dim": int,
    "seed": int,
    "encoder_config": dict,
    "fingerprints": dict,
    "split_sizes": dict,
    "metric": dict,
    "protocol": dict,
    "probes": dict,
    "test": dict,
    "timings": dict,
    "versions": dict,
    "created": str,
}


def environment_versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    import gymnasium
    import h5py
    import numpy
    import sklearn
    import torch

    return {
        "embench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "h5py": h5py.__version__,
        "gymnasium": gymnasium.__version__,
        "platform": platform.platform(),
    }


def record_path(home: Path, record: dict[str, Any]) -> Path:
    """``home/results/<task>/<encoder>-z<z>-seed<seed>-<run key>.json``."""
    task = safe_name(record["task"], "task name")
    encoder = safe_name(record["encoder"], "encoder name")
    key = record["fingerprints"]["run"][:12]
    name = f"{encoder}-z{record['z_dim']}-seed{record['seed']}-{record['preset']}-{key}.json"
    return home / "results" / task / name


def validate_record(record: Any) -> list[str]:
    """Problems with a record (an empty list means it is valid)."""
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    problems = []
    for name, kind in REQUIRED_FIELDS.items():
        if name not in record:
            problems.append(f"missing field {name!r}")
        elif not isinstance(record[name], kind) or isinstance(record[name], bool):
            problems.append(f"field {name!r} should be {getattr(kind, '__name__', kind)}")
    if problems:
        return problems
    if record["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {record['schema_version']} (this embench reads "
                        f"{SCHEMA_VERSION})")
    for probe in ("mlp", "linear", "baseline"):
        value = record["test"].get(probe)
        if not isinstance(value, (int, float)):
            problems.append(f"test.{probe} is missing or not a number")
    for key in ("run", "encoder", "data", "embeddings"):
        if not isinstance(record["fingerprints"].get(key), str):
            problems.append(f"fingerprints.{key} is missing")
    return problems


def write_record(home: Path, record: dict[str, Any]) -> Path:
    """Validate and atomically write a record; return its path."""
    problems = validate_record(record)
    if problems:  # a bug in embench, not user input
        raise AssertionError(f"refusing to write an invalid record: {problems}")
    return write_json(record_path(home, record), record)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record.

    Raises:
        DataError: naming the file and the reason when it is unreadable or invalid.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"Result record {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Result record {path} is not valid JSON: {exc}.") from None
    problems = validate_record(record)
    if problems:
        raise DataError(f"Result record {path} is invalid: {'; '.join(problems)}.")
    return record
