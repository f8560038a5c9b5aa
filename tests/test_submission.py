"""Submission bundles (embench submit) and the board's check of them (leaderboard --verify).

Three tiny smoke runs share one home: PCA and the untrained autoencoder on the same data and
protocol, and PCA again under another protocol (the smoke preset with fewer probe epochs).
Each test copies the bundles it needs onto a board of its own and tampers with that copy.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from embench.cli import main
from embench.submission import BUNDLE_SPLITS, TOLERANCE, bundle_path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _smoke_lunarlander):
    """``{name: record file}`` of three smoke runs in one home (``home`` is the home)."""
    from embench.presets import get_preset, registered
    from embench.runner import RunConfig, run

    home = tmp_path_factory.mktemp("submission-home")
    shutil.copytree(_smoke_lunarlander, home / "datasets")
    out = {"home": home}
    for name, encoder in (("pca", "pca"), ("other_encoder", "untrained_ae")):
        config = RunConfig(encoder=encoder, task="lunarlander", preset="smoke", z=4, home=home,
                           device="cpu")
        out[name] = run(config).record_path
    other = dataclasses.replace(get_preset("smoke"), probe_epochs=10)
    with registered(other):  # the same data under other probe budgets: another protocol
        out["other_protocol"] = run(RunConfig(encoder="pca", task="lunarlander", preset="smoke",
                                              z=4, home=home, device="cpu")).record_path
    return out


def _submit(runs, name: str, board: Path) -> Path:
    """``embench submit`` one run onto ``board``; return the record's path there."""
    result = CliRunner().invoke(main, ["submit", str(runs[name]), "--home", str(runs["home"]),
                                       "--board", str(board)])
    assert result.exit_code == 0, result.output
    return board / "results" / "lunarlander" / runs[name].name


def _check(board: Path, *extra: str):
    return CliRunner().invoke(main, ["leaderboard", "--check", "--verify",
                                     str(board / "results"), *extra])


def _rejection(result, record: Path, *needles: str) -> str:
    """The check failed with exactly one rejection line, naming the record and each needle."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("rejected:")]
    assert len(lines) == 1, result.stderr
    assert record.name in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_an_untouched_bundle_is_accepted(runs, tmp_path):
    board = tmp_path / "board"
    record = _submit(runs, "pca", board)
    bundle = bundle_path(record)
    names = sorted(p.name for p in record.parent.iterdir())
    stem = record.stem
    assert names == sorted([f"{stem}.json", f"{stem}.predictions.npz", f"{stem}.show.png",
                            f"{stem}.embeddings.h5"])
    data = json.loads(record.read_text())
    with h5py.File(bundle, "r") as h5:  # the three probe splits, float32, compressed
        assert sorted(h5) == sorted(BUNDLE_SPLITS)
        for split in BUNDLE_SPLITS:
            embeddings = h5[split]["embeddings"]
            assert embeddings.dtype == np.float32 and embeddings.compression == "gzip"
            assert embeddings.shape == (data["split_sizes"][split], 4)
            assert len(h5[split]["labels"]) == data["split_sizes"][split]
    result = _check(board)
    assert result.exit_code == 0, result.output
    assert "1 record(s) verified from their bundles" in result.output
    assert "0 rejected" in result.output


def test_a_hand_edited_metric_is_rejected(runs, tmp_path):
    record = _submit(runs, "pca", tmp_path / "board")
    data = json.loads(record.read_text())
    claimed = data["test"]["mlp"]
    data["test"]["mlp"] = claimed - 0.01  # a better number than the probes give
    record.write_text(json.dumps(data))
    line = _rejection(_check(tmp_path / "board"), record, "test.mlp: claimed",
                      "against recomputed", f"{claimed:.8g}")
    assert "test.linear" not in line  # only the edited metric is named


def test_probe_budgets_other_than_the_protocols_are_refused_by_both_checks(runs, tmp_path):
    """The bundle check and `embench verify` read a record's probe budgets the same way."""
    record = _submit(runs, "pca", tmp_path / "board")
    data = json.loads(record.read_text())
    epochs = data["probes"]["settings"]["max_epochs"]
    data["probes"]["settings"]["max_epochs"] = epochs + 5  # claims a longer search
    record.write_text(json.dumps(data))
    _rejection(_check(tmp_path / "board"), record,
               f"probes.settings.max_epochs: claimed {epochs + 5} against {epochs}")
    result = CliRunner().invoke(main, ["verify", str(record), "--home", str(runs["home"])])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "did not use its protocol's budgets" in result.output
    assert f"probes.settings.max_epochs: claimed {epochs + 5}" in result.output


def test_an_edited_prediction_is_rejected(runs, tmp_path):
    record = _submit(runs, "pca", tmp_path / "board")
    sidecar = record.with_name(record.stem + ".predictions.npz")
    with np.load(sidecar) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["predicted_mlp"][3] += 5.0
    np.savez_compressed(sidecar, **arrays)
    _rejection(_check(tmp_path / "board"), record, "predictions.mlp: 1 item(s) differ",
               "item 3: claimed", "against recomputed")


def test_embeddings_swapped_for_another_encoders_are_rejected(runs, tmp_path):
    record = _submit(runs, "pca", tmp_path / "board")
    _submit(runs, "other_encoder", tmp_path / "elsewhere")  # its bundle, beside its record
    bundle, theirs, own = bundle_path(record), bundle_path(runs["other_encoder"]), \
        tmp_path / "own.h5"
    shutil.copy(bundle, own)
    # The other encoder's file as it is: its fingerprint names another run.
    shutil.copy(theirs, bundle)
    _rejection(_check(tmp_path / "board"), record, "fingerprints.embeddings: claimed",
               "embeddings of another run")
    # Its numbers under this record's fingerprints: the probe search gives other metrics.
    shutil.copy(own, bundle)
    with h5py.File(theirs, "r") as source, h5py.File(bundle, "r+") as target:
        for split in BUNDLE_SPLITS:
            target[split]["embeddings"][...] = source[split]["embeddings"][()]
    _rejection(_check(tmp_path / "board"), record, "test.mlp: claimed", "against recomputed")


def test_a_record_of_another_protocol_is_rejected(runs, tmp_path):
    board = tmp_path / "board"
    record = _submit(runs, "pca", board)
    other = board / "results" / "lunarlander" / runs["other_protocol"].name
    shutil.copy(runs["other_protocol"], other)
    shutil.copy(runs["other_protocol"].with_name(runs["other_protocol"].stem
                                                 + ".predictions.npz"),
                other.with_name(other.stem + ".predictions.npz"))
    bundle_path(record).rename(bundle_path(other))  # this protocol's bundle, that record
    record.unlink()
    _rejection(_check(board), other, "protocol: claimed", "embeddings of another protocol")


def test_a_record_without_a_bundle_is_rejected_unless_schema_only(runs, tmp_path):
    board = tmp_path / "board"
    record = _submit(runs, "pca", board)
    bundle_path(record).unlink()
    _rejection(_check(board), record, "no submission bundle", "embench submit",
               "--schema-only")
    result = _check(board, "--schema-only")
    assert result.exit_code == 0, result.output
    assert "1 accepted on their schema only" in result.output


def test_a_record_without_a_bundle_is_verified_from_a_home_caching_its_embeddings(runs,
                                                                                  tmp_path):
    board = tmp_path / "board"
    record = _submit(runs, "pca", board)
    bundle_path(record).unlink()  # published without it, as a bundle over the size limit is
    result = _check(board, "--home", str(runs["home"]))
    assert result.exit_code == 0, result.output
    assert f"verified from the embedding cache in {runs['home']}" in result.output
    assert "1 record(s) verified" in result.output
    empty = tmp_path / "empty-home"
    empty.mkdir()
    _rejection(_check(board, "--home", str(empty)), record, "no submission bundle",
               "does not cache its embeddings", "--home")
    data = json.loads(record.read_text())  # the cache is checked like a bundle: a claim that
    data["test"]["mlp"] += 0.5  # does not come back is rejected
    record.write_text(json.dumps(data))
    _rejection(_check(board, "--home", str(runs["home"])), record, "test.mlp: claimed")


def test_a_bundle_over_the_size_limit_is_refused_and_nothing_is_left(runs, tmp_path,
                                                                      one_line_error):
    from embench.submission import MAX_BUNDLE_MB

    board = tmp_path / "board"
    result = CliRunner().invoke(main, ["submit", str(runs["pca"]), "--home", str(runs["home"]),
                                       "--board", str(board), "--max-mb", "0.001"])
    one_line_error(result, runs["pca"].name, "MB limit", "GitHub", "--max-mb 0")
    assert not bundle_path(runs["pca"]).exists()
    assert not (board / "results").exists()
    option = next(p for p in main.commands["submit"].params if p.name == "max_mb")
    assert option.default == MAX_BUNDLE_MB
    _submit(runs, "pca", board)  # under the default limit, the same record goes through


def test_submit_without_the_cached_embeddings_says_where_to_look(runs, tmp_path,
                                                                 one_line_error):
    result = CliRunner().invoke(main, ["submit", str(runs["pca"]), "--home",
                                       str(tmp_path / "empty-home")])
    one_line_error(result, "are not cached in", "--home")


def test_the_tolerance_is_the_one_verify_uses():
    from embench.verify import verify_record

    assert TOLERANCE == inspect.signature(verify_record).parameters["tolerance"].default


def test_publishing_a_submitted_record_carries_its_bundle(runs, tmp_path):
    """`embench submit` beside the run's record, then `embench leaderboard`: the board verifies."""
    home = tmp_path / "home"
    shutil.copytree(runs["home"], home)
    record = home / "results" / "lunarlander" / runs["pca"].name
    submitted = CliRunner().invoke(main, ["submit", str(record), "--home", str(home)])
    assert submitted.exit_code == 0, submitted.output
    assert bundle_path(record).exists()
    board = tmp_path / "board"
    published = CliRunner().invoke(main, ["leaderboard", str(record.parent.parent), "--out",
                                          str(board), "--no-html"])
    assert published.exit_code == 0, published.output
    assert bundle_path(board / "results" / "lunarlander" / record.name).exists()
    result = _check(board)
    rejected = [line for line in result.stderr.splitlines() if line.startswith("rejected:")]
    assert rejected  # the other runs of that home have no bundle
    assert not [line for line in rejected if runs["pca"].name in line], rejected
