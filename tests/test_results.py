"""The typed result record: JSON round trip across schemas, fingerprints, predictions sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embench.errors import DataError
from embench.results import (
    SCHEMA_VERSION,
    Predictions,
    RunRecord,
    load_record,
    path_of,
    protocol_fingerprint,
    read_predictions,
    sidecar_path,
    train_fingerprint,
    training_time,
    write_predictions,
    write_record,
)

#: A record as embench 0.1.0 wrote it (schema 1), committed unchanged.
OLD = Path(__file__).parent / "data" / "record-schema1-embench-0.1.0.json"


def test_a_schema_1_record_still_loads_and_checks_out():
    record = load_record(OLD)
    assert record.schema_version == 1 and record.embench_version == "embench-0.1.0"
    assert (record.encoder, record.task, record.z_dim, record.seed) == ("ae", "lunarlander", 64, 0)
    assert record.test["mlp"] == pytest.approx(14.3397, abs=1e-4)
    # fields schema 1 did not have are empty, not invented
    assert record.predictions is None and record.evaluation_config == {}
    assert record.perceptual_weights is None and "least_squares" not in record.test
    assert record.consistency_problems() == []  # fingerprints rechecked with 0.1.0's formula
    assert record.protocol_id == record.protocol["fingerprint"]
    assert record.lower_is_better
    # written back, nothing is lost: the same JSON object
    assert record.to_dict() == json.loads(OLD.read_text())


def test_new_record_round_trips_and_keeps_unknown_fields(tmp_path):
    data = json.loads(OLD.read_text())
    data.update(schema_version=SCHEMA_VERSION, predictions="x.predictions.npz",
                evaluation_config={"decoder_retraining": "finetune"}, future_field=[1, 2])
    data["test"]["least_squares"] = 15.0
    record = RunRecord.from_dict(data)
    assert record.extra == {"future_field": [1, 2]}
    assert record.predictions == "x.predictions.npz"
    path = write_record(tmp_path, record)
    assert path == path_of(tmp_path, record)
    assert path.name == f"ae-z64-seed0-quick-{record.run_key[:12]}.json"
    again = load_record(path)
    assert again == record and again.to_dict() == data


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("test"), "missing field 'test'"),
        (lambda d: d["test"].pop("linear"), "test.linear is missing"),
        (lambda d: d.update(z_dim="64"), "field 'z_dim' should be int"),
        (lambda d: d.update(schema_version=99), "schema_version 99"),
        (lambda d: d["fingerprints"].pop("run"), "fingerprints.run is missing"),
    ],
)
def test_an_invalid_record_is_refused_naming_the_file_and_the_problem(tmp_path, edit, message):
    data = json.loads(OLD.read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"{path}.*{message}"):
        load_record(path)


def test_edited_fields_disagree_with_the_fingerprints():
    data = json.loads(OLD.read_text())
    data["encoder_config"]["lr"] = 0.1
    data["protocol"]["metric"] = {"name": "error_px", "direction": "higher"}
    problems = RunRecord.from_dict(data).consistency_problems()
    assert any("fingerprints.train" in p for p in problems)
    assert any("protocol fingerprint" in p for p in problems)


def test_fingerprint_formulas_are_the_ones_the_record_carries():
    record = load_record(OLD)
    version = record.embench_version
    assert train_fingerprint(record.encoder_spec, record.encoder_config,
                             record.fingerprints["data"], version=version) == \
        record.fingerprints["train"]
    fields = {k: v for k, v in record.protocol.items() if k != "fingerprint"}
    assert protocol_fingerprint(fields, version=version) == record.protocol["fingerprint"]
    assert protocol_fingerprint(fields) != record.protocol["fingerprint"]  # the version counts


def test_predictions_sidecar_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    predictions = Predictions(
        items=np.arange(5), y_true=rng.normal(size=(5, 2)).astype(np.float32),
        predicted={"mlp": rng.normal(size=(5, 2)).astype(np.float32),
                   "linear": rng.normal(size=(5, 2)).astype(np.float32),
                   "baseline": np.zeros((5, 2), np.float32)},
        data_fingerprint="abc123", groups=np.array([3, 3, 4, 4, 9]))
    record_file = tmp_path / "ae-z64-seed0-quick-0123456789ab.json"
    path = write_predictions(sidecar_path(record_file), predictions)
    assert path.name == "ae-z64-seed0-quick-0123456789ab.predictions.npz"
    assert not list(tmp_path.glob("*.tmp"))
    back = read_predictions(path)
    assert back.data_fingerprint == "abc123" and set(back.predicted) == {"mlp", "linear",
                                                                           "baseline"}
    for name, values in predictions.predicted.items():
        np.testing.assert_array_equal(back.predicted[name], values)
    np.testing.assert_array_equal(back.items, predictions.items)
    np.testing.assert_array_equal(back.groups, predictions.groups)
    labels = Predictions(items=np.arange(2), y_true=np.array(["cat", "dog"]),
                         predicted={"mlp": np.array(["dog", "dog"])}, data_fingerprint="f")
    assert read_predictions(write_predictions(tmp_path / "c.npz", labels)).predicted["mlp"][0] \
        == "dog"
    objects = Predictions(items=np.arange(1), y_true=np.array([None], dtype=object),
                          predicted={}, data_fingerprint="f")
    with pytest.raises(AssertionError, match="object array"):
        write_predictions(tmp_path / "o.npz", objects)


def test_a_missing_or_broken_sidecar_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_predictions(tmp_path / "none.predictions.npz")
    broken = tmp_path / "broken.predictions.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot be read"):
        read_predictions(broken)


def test_training_time_counts_a_resumed_fit_over_every_process_and_a_reused_one_as_trained():
    # trained here in one process: the run's training stage
    assert training_time({"train_seconds": 610.0}, {"fit_seconds": 600.0, "train_seconds": 590.0},
                         {}) == (610.0, False)
    # resumed: the last process trained 10 minutes, the history's epochs 44
    assert training_time({"train_seconds": 600.0}, {"fit_seconds": 598.0,
                                                    "train_seconds": 2640.0},
                         {"checkpoint_hit": False}) == (2640.0, True)
    # a reused checkpoint: its stage only loaded it; the stored fit is the training time
    assert training_time({"train_seconds": 1.5}, {"fit_seconds": 1500.0, "train_seconds": 1440.0},
                         {"checkpoint_hit": True}) == (1500.0, False)
    # an encoder that needs no training: the stage's time, and nothing resumed
    assert training_time({"train_seconds": 3.0}, {}, {}) == (3.0, False)
    # the committed P. AE record was resumed once across sessions: 44 minutes, not 22
    board = Path(__file__).parents[1] / "leaderboard" / "results" / "lunarlander"
    seconds, resumed = load_record(next(board.glob("p_ae-z64-seed0-third-*.json"))).training_time
    assert resumed and round(seconds / 60) == 44
