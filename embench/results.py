"""Result records: one typed object per run, its JSON file, its predictions sidecar.

:class:`RunRecord` is the record the runner builds (:meth:`RunRecord.build`) and everyone else
(CLI, leaderboard, sweep, Python API) reads by attribute. On disk it is one JSON file with a
schema version (:meth:`RunRecord.to_dict` / :meth:`RunRecord.from_dict`; records of every
earlier schema still load) and, beside it, a predictions sidecar (``<record>.predictions.npz``)
holding the selected probes' per-item test predictions, so encoders can be compared item by
item on the same test set without recomputing anything.

The fingerprint formulas that identify a run live here too (:func:`train_fingerprint`,
:func:`run_fingerprint`, :func:`protocol_fingerprint`), so the runner that computes them and
the leaderboard that rechecks them cannot drift apart. The training fingerprint keys an
artifact (the checkpoint), so it carries the artifact version; the run and protocol
fingerprints key what the board compares, so they carry the package version (see
:mod:`embench.storage`).
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embench import __version__
from embench.errors import DataError
from embench.protocols import convergence_verdict
from embench.storage import (
    ARTIFACT_VERSION,
    CODE_VERSION,
    atomic_path,
    fingerprint,
    safe_name,
    write_json,
)

#: 2: evaluation_config, perceptual_weights, test.least_squares and the predictions sidecar.
#: Records of schema 1 load with those fields empty.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

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

#: The test metrics every record has: best MLP, best linear probe, trivial baseline.
TEST_METRICS = ("mlp", "linear", "baseline")
#: Which predictions the sidecar keeps, one array each (``least_squares`` when recorded).
PREDICTION_KEYS = ("mlp", "linear", "baseline", "least_squares")


# --------------------------------------------------------------------------------------------
# Fingerprint formulas
# --------------------------------------------------------------------------------------------


def train_fingerprint(encoder_spec: str, encoder_config: dict[str, Any], data_fingerprint: str,
                      version: str = ARTIFACT_VERSION) -> str:
    """What keys a trained encoder: its factory, its config and the data it was fitted on."""
    return fingerprint("train", encoder_spec, encoder_config, data_fingerprint, version=version)


def run_fingerprint(train_key: str, embeddings_key: str, preset: dict[str, Any], seed: int,
                    evaluation: dict[str, Any] | None = None,
                    version: str = CODE_VERSION) -> str:
    """What keys a whole run: the encoder, its embeddings, the budgets, the seed, evaluation.

    Keyed by the package version (:data:`CODE_VERSION`), not the artifact version: a release
    that changes only the probe search reruns the run on the stored embeddings.
    """
    extra = [evaluation] if evaluation else []
    return fingerprint("run", train_key, embeddings_key, preset, seed, *extra, version=version)


def protocol_fingerprint(fields: dict[str, Any], version: str = CODE_VERSION) -> str:
    """What makes two records comparable (task, data, splits, budgets, probes, metric).

    Keyed by the package version (:data:`CODE_VERSION`): records of different releases never
    share a table.
    """
    return fingerprint("protocol", fields, version=version)


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


#: How the run table and the board mark a probe no better than the trivial baseline, and why.
NOT_A_RESULT_MARK = "✗"
NOT_A_RESULT = ("no better than the trivial baseline: not a result (the probe learned nothing "
                "usable from these embeddings)")


def beats_baseline(value: float, baseline: float, lower_is_better: bool) -> bool:
    """Whether a probe's test metric is better than the trivial baseline's.

    A probe that does not beat predicting the probe-train mean (or the majority class) learned
    nothing usable from the embeddings (e.g. too few epochs for unscaled features): its number
    is not a result, and the run table and the board mark it.

    Example:
        >>> beats_baseline(104.0, 17.6, lower_is_better=True)
        False
    """
    return value < baseline if lower_is_better else value > baseline


@dataclass
class RunRecord:
    """One run of one encoder on one task: what ran, how, and what it scored.

    Attributes mirror the JSON fields (``docs/records.md`` lists them); the most used:

    Attributes:
        encoder, task, preset, z_dim, seed: the cell of the board this run fills.
        test: test metric per probe: ``mlp``, ``linear``, ``baseline`` (and, since schema
            2, the ``least_squares`` extra).
        metric: ``{"name", "direction"}`` of the task's metric.
        fingerprints: ``run``, ``train``, ``encoder``, ``data``, ``embeddings``.
        protocol: the fields that make records comparable, and their ``fingerprint``.
        reconstruction: Table VIII's result for autoencoders (``None`` otherwise).
        predictions: file name of the per-item predictions sidecar, beside the record
            (``None`` for records made before schema 2).
        pictures: file names of the pictures beside the record, by role (``{"show":
            "<stem>.show.png"}``, see :mod:`embench.show`), or ``None``.
        artifact_version: the version that keyed the run's artifacts and its training
            fingerprint (:data:`embench.storage.ARTIFACT_VERSION`); ``None`` for records
            made before it was split from ``embench_version``, whose artifacts that keyed.
        extra: fields this version does not know (kept, and written back).

    Example:
        >>> record = load_record("leaderboard/results/lunarlander/ae-z64-....json")
        >>> record.test["mlp"], record.protocol_id  # doctest: +SKIP
    """

    schema_version: int
    embench_version: str
    encoder: str
    task: str
    preset: str
    z_dim: int
    seed: int
    encoder_config: dict[str, Any]
    fingerprints: dict[str, str]
    split_sizes: dict[str, int]
    metric: dict[str, str]
    protocol: dict[str, Any]
    probes: dict[str, Any]
    test: dict[str, float]
    timings: dict[str, float]
    versions: dict[str, str]
    created: str
    encoder_spec: str | None = None
    encoder_distribution: str | None = None
    task_kind: str | None = None
    preset_config: dict[str, Any] = field(default_factory=dict)
    data_seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    deterministic: bool | None = None
    threads: int | None = None
    batch_sizes: dict[str, int] = field(default_factory=dict)
    evaluation_config: dict[str, Any] = field(default_factory=dict)
    perceptual_weights: dict[str, Any] | None = None
    embedding_dim: int | None = None
    data_info: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, bool] = field(default_factory=dict)
    reconstruction: dict[str, Any] | None = None
    predictions: str | None = None
    pictures: dict[str, str] | None = None
    artifact_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Fields an older record did not have: written back only if they were set since.
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    # -- construction and JSON --------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "record") -> RunRecord:
        """Build a record from its JSON object (any readable schema).

        Raises:
            DataError: naming ``source`` and every problem, for an invalid object.
        """
        problems = validate_record(data)
        if problems:
            raise DataError(f"{source} is invalid: {'; '.join(problems)}.")
        names = {f.name for f in dataclasses.fields(cls)} - _BOOKKEEPING
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra, absent=frozenset(names - set(data)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field, and a loaded record's unknown fields.

        Fields an older record lacked stay out unless they were set since, so a record that
        is read and written back is the same JSON object.
        """
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING
                    else f.default for f in dataclasses.fields(self)}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in _BOOKKEEPING}
        out = {k: v for k, v in out.items() if not (k in self.absent and v == defaults[k])}
        return {**self.extra, **json.loads(json.dumps(out, default=_json_default))}

    # -- what the board and the CLI ask ----------------------------------------------------

    @property
    def run_key(self) -> str:
        """The run fingerprint (what a rerun of the same run would compute)."""
        return self.fingerprints["run"]

    @property
    def protocol_id(self) -> str:
        """The protocol fingerprint: records with the same one may share a table."""
        stored = self.protocol.get("fingerprint")
        if stored:
            return str(stored)
        return fingerprint("protocol", self.task, self.fingerprints["data"], self.preset_config,
                           self.metric, version=self.embench_version)

    @property
    def training_time(self) -> tuple[float, bool]:
        """Seconds its encoder took to train, and whether the fit was resumed.

        See :func:`training_time`, which reads the same fields of a record's JSON.
        """
        return training_time(self.timings, self.training, self.cache)

    @property
    def still_improving(self) -> bool:
        """Whether the encoder's training was still improving when its epoch cap stopped it.

        The record's ``training.still_improving`` (since 0.5.0); for an older record, the
        same verdict computed from its training history and epoch cap
        (:func:`embench.protocols.convergence_verdict`). ``False`` for an encoder that was
        not trained here (a reused checkpoint keeps its training's verdict).
        """
        training = self.training or {}
        if "still_improving" in training:
            return bool(training["still_improving"])
        history, cap = training.get("history"), self.encoder_config.get("max_epochs")
        if not history or not isinstance(cap, int):
            return False
        return bool(convergence_verdict(history, cap)["still_improving"])

    @property
    def lower_is_better(self) -> bool:
        """Whether the task's metric decreases as results improve."""
        return self.metric.get("direction") == "lower"

    def beats_baseline(self, probe: str) -> bool:
        """Whether ``test[probe]`` is better than the trivial baseline's (else: not a result)."""
        return beats_baseline(float(self.test[probe]), float(self.test["baseline"]),
                              self.lower_is_better)

    def consistency_problems(self) -> list[str]:
        """Where the record's fields disagree with its own fingerprints (an edited record).

        Fingerprints are rechecked with the version that computed them (the record's own):
        the training fingerprint with its ``artifact_version`` (``embench_version`` for records
        made before the split), the protocol fingerprint with its ``embench_version``.
        """
        problems = []
        version = self.embench_version
        artifact_version = self.artifact_version or self.embench_version
        if "z_dim" in self.encoder_config and self.encoder_config["z_dim"] != self.z_dim:
            problems.append(f"z_dim {self.z_dim} disagrees with encoder_config.z_dim "
                            f"{self.encoder_config['z_dim']}")
        if self.encoder_spec is not None:
            train = train_fingerprint(self.encoder_spec, self.encoder_config,
                                      self.fingerprints["data"], version=artifact_version)
            if train != self.fingerprints.get("train"):
                problems.append("fingerprints.train does not match encoder_config and the data "
                                "fingerprint (edited config?)")
        if "fingerprint" in self.protocol:
            fields = {k: v for k, v in self.protocol.items() if k != "fingerprint"}
            if protocol_fingerprint(fields, version=version) != self.protocol["fingerprint"]:
                problems.append("protocol fingerprint does not match its fields")
        if self.metric.get("name") == "accuracy":
            for key in TEST_METRICS:
                if not 0 <= self.test[key] <= 1:
                    problems.append(f"test.{key} accuracy {self.test[key]} outside [0, 1]")
        return problems


_BOOKKEEPING = frozenset({"extra", "absent"})


def training_time(timings: dict[str, Any] | None, training: dict[str, Any] | None,
                  cache: dict[str, Any] | None) -> tuple[float, bool]:
    """Seconds the record's encoder took to train, and whether its fit was resumed.

    The fit's own wall time: the run's training stage (``timings.train_seconds``) when it
    trained here, or the stored ``training.fit_seconds`` when it reused a checkpoint (its
    training stage then only loaded it). A fit resumed after an interruption timed only its
    last process; its history's epochs (``training.train_seconds``) count every process, so
    the larger of the two is the fit's time and the fit is reported as resumed.

    Takes the record's JSON fields, so records read as plain JSON (any schema) share the rule
    with :attr:`RunRecord.training_time`.

        >>> training_time({"train_seconds": 600.0}, {"train_seconds": 1500.0}, {})
        (1500.0, True)
        >>> training_time({"train_seconds": 2.0}, {"fit_seconds": 900.0, "train_seconds": 880.0},
        ...               {"checkpoint_hit": True})
        (900.0, False)
    """
    timings, training = timings or {}, training or {}
    hit = bool((cache or {}).get("checkpoint_hit"))
    own = float((training.get("fit_seconds") if hit else timings.get("train_seconds")) or 0.0)
    epochs = float(training.get("train_seconds") or 0.0)
    return max(own, epochs), epochs > own


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def environment_versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    import gymnasium
    import h5py
    import sklearn
    import torch

    return {
        "embench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "h5py": h5py.__version__,
        "gymnasium": gymnasium.__version__,
        "platform": platform.platform(),
    }


def validate_record(record: Any) -> list[str]:
    """Problems with a record's JSON object (an empty list means it is valid)."""
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
    if record["schema_version"] not in READABLE_SCHEMAS:
        problems.append(f"schema_version {record['schema_version']} (this embench reads "
                        f"{', '.join(map(str, READABLE_SCHEMAS))})")
    for probe in TEST_METRICS:
        value = record["test"].get(probe)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"test.{probe} is missing or not a number")
    for key in ("run", "encoder", "data", "embeddings"):
        if not isinstance(record["fingerprints"].get(key), str):
            problems.append(f"fingerprints.{key} is missing")
    if not isinstance(record.get("artifact_version"), (str, type(None))):  # optional field
        problems.append("field 'artifact_version' should be str")
    return problems


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def record_path(home: Path, *, task: str, encoder: str, z_dim: int, seed: int, preset: str,
                run_key: str) -> Path:
    """``home/results/<task>/<encoder>-z<z>-seed<seed>-<preset>-<run key>.json``."""
    task = safe_name(task, "task name")
    encoder = safe_name(encoder, "encoder name")
    name = f"{encoder}-z{z_dim}-seed{seed}-{preset}-{run_key[:12]}.json"
    return home / "results" / task / name


def path_of(home: Path, record: RunRecord) -> Path:
    """Where :func:`write_record` puts ``record`` under ``home``."""
    return record_path(home, task=record.task, encoder=record.encoder, z_dim=record.z_dim,
                       seed=record.seed, preset=record.preset, run_key=record.run_key)


def sidecar_path(record_file: Path) -> Path:
    """The predictions sidecar beside a record file: ``<name>.predictions.npz``."""
    return record_file.with_name(record_file.stem + ".predictions.npz")


def write_record(home: Path, record: RunRecord) -> Path:
    """Validate and atomically write a record under ``home/results``; return its path."""
    data = record.to_dict()
    problems = validate_record(data)
    if problems:  # a bug in embench, not user input
        raise AssertionError(f"refusing to write an invalid record: {problems}")
    return write_json(path_of(home, record), data)


def load_record(path: str | Path) -> RunRecord:
    """Read and validate one record.

    Raises:
        DataError: naming the file and the reason when it is unreadable or invalid.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"Result record {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Result record {path} is not valid JSON: {exc}.") from None
    return RunRecord.from_dict(data, source=f"Result record {path}")


@dataclass
class Predictions:
    """The selected probes' test predictions of one run, item by item.

    Attributes:
        items: ``(N,)`` int64 index of each item in the task's test split.
        groups: ``(N,)`` the items' groups (LunarLander: rollout ids), or ``None``.
        y_true: ``(N, ...)`` the test targets (labels or positions).
        predicted: per probe (``mlp``, ``linear``, ``baseline``, maybe ``least_squares``),
            ``(N, ...)`` predictions in the targets' layout.
        data_fingerprint: the task data they belong to (items compare only within it).
    """

    items: np.ndarray
    y_true: np.ndarray
    predicted: dict[str, np.ndarray]
    data_fingerprint: str
    groups: np.ndarray | None = None


def write_predictions(path: Path, predictions: Predictions) -> Path:
    """Write a predictions sidecar atomically (``.npz``, no pickled objects)."""
    arrays = {"items": predictions.items, "y_true": predictions.y_true,
              "data_fingerprint": np.array(predictions.data_fingerprint)}
    if predictions.groups is not None:
        arrays["groups"] = predictions.groups
    for name, values in predictions.predicted.items():
        arrays[f"predicted_{name}"] = values
    for name, values in arrays.items():
        if values.dtype == object:  # a bug in embench: never write what only pickle reads
            raise AssertionError(f"refusing to write object array {name!r}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def read_predictions(path: str | Path) -> Predictions:
    """Read a predictions sidecar (never unpickles: ``allow_pickle=False``).

    Raises:
        DataError: naming the file when it is missing, unreadable or incomplete.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise DataError(f"Predictions sidecar {path} does not exist.",
                        "Rerun the record's run (embench run ...) to write it.") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"Predictions sidecar {path} cannot be read: {exc}.") from None
    missing = [k for k in ("items", "y_true", "data_fingerprint") if k not in arrays]
    if missing:
        raise DataError(f"Predictions sidecar {path} lacks {', '.join(missing)}.")
    predicted = {k.removeprefix("predicted_"): v for k, v in arrays.items()
                 if k.startswith("predicted_")}
    return Predictions(items=arrays["items"], y_true=arrays["y_true"], predicted=predicted,
                       data_fingerprint=str(arrays["data_fingerprint"]),
                       groups=arrays.get("groups"))
