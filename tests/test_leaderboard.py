import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from embench.cli import main
from embench.leaderboard import load_records, mean_ci, render_markdown
from embench.results import SCHEMA_VERSION
from embench.storage import CODE_VERSION, fingerprint

GOLDEN = Path(__file__).parent / "golden" / "leaderboard.md"


def make_record(encoder, z, seed, mlp, linear, baseline=33.0, preset="quick", task="lunarlander",
                version=CODE_VERSION):
    config = {"z_dim": z, "seed": seed}
    spec = f"embench.encoders.x:{encoder}"
    data = f"data-{task}-{preset}"
    train = fingerprint("train", spec, config, data, version=version)
    protocol = {"task": task, "data": data, "preset": {"probe_epochs": 300 if preset == "quick"
                                                       else 500}}
    protocol["fingerprint"] = fingerprint("protocol", protocol, version=version)
    return {
        "schema_version": SCHEMA_VERSION, "embench_version": version,
        "encoder": encoder, "encoder_spec": spec, "task": task, "preset": preset,
        "z_dim": z, "seed": seed, "device": "cpu", "encoder_config": config,
        "fingerprints": {"run": fingerprint("run", train, seed), "train": train,
                         "encoder": f"enc-{encoder}-{z}-{seed}", "data": data,
                         "embeddings": f"emb-{encoder}-{z}-{seed}"},
        "split_sizes": {"probe_train": 100, "test": 30},
        "metric": {"name": "error_px", "direction": "lower"}, "protocol": protocol,
        "probes": {}, "test": {"mlp": mlp, "linear": linear, "baseline": baseline},
        "timings": {}, "versions": {}, "created": "2026-11-25T12:00:00+00:00",
    }


def fixed_records():
    return [
        make_record("ae", 32, 0, 13.0, 14.0), make_record("ae", 64, 0, 12.5, 13.5),
        make_record("p_vae", 32, 0, 2.0, 7.0), make_record("p_vae", 32, 1, 2.4, 7.2),
        make_record("p_vae", 64, 0, 1.5, 6.0), make_record("pca", 32, 0, 9.0, 10.0),
    ]


def test_markdown_matches_golden_file():
    text = render_markdown(fixed_records(), plots={"lunarlander": "lunarlander.png"})
    assert text == GOLDEN.read_text()


def test_golden_content_makes_sense():
    text = GOLDEN.read_text()
    assert "| z size | AE | P. VAE | PCA |" in text
    assert "**1.50** (paper 1.15)" in text      # best cell of the z=64 row, with the paper's value
    assert "2.20 ± 2.54" in text                 # two seeds -> mean ± 95% CI
    assert "trivial baseline | 33.00" in text
    assert "2 seed(s)" in text
    assert "| **Any** | 12.50 (paper 13.22) | **1.50** (paper 1.15) | 9.00 |" in text


def test_mean_ci_uses_student_t():
    mean, ci = mean_ci([1.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(12.706 * 1.0)
    assert mean_ci([5.0]) == (5.0, None)


def _write(directory, records):
    directory.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(records):
        (directory / f"r{i}.json").write_text(json.dumps(record))


def test_merging_overlapping_directories_counts_each_run_once(tmp_path):
    records = fixed_records()
    _write(tmp_path / "a", records[:4])
    _write(tmp_path / "b", records[2:])
    loaded = load_records([tmp_path / "a", tmp_path / "b"])
    assert len(loaded.records) == len(records) and loaded.duplicates == 2
    assert not loaded.problems


def _bad_records():
    good = make_record("ae", 32, 0, 13.0, 14.0)
    missing = dict(good)
    del missing["test"]
    partial = json.loads(json.dumps(good))
    del partial["test"]["linear"]
    edited = json.loads(json.dumps(good))
    edited["encoder_config"]["z_dim"] = 99
    edited["z_dim"] = 99
    mismatch = json.loads(json.dumps(good))
    mismatch["z_dim"] = 64
    proto = json.loads(json.dumps(good))
    proto["protocol"]["task"] = "other"
    wrong_type = json.loads(json.dumps(good))
    wrong_type["seed"] = "zero"
    future = json.loads(json.dumps(good))
    future["schema_version"] = 99
    return {
        "missing field": (missing, "missing field 'test'"),
        "partial": (partial, "test.linear"),
        "edited config": (edited, "fingerprints.train does not match"),
        "z mismatch": (mismatch, "disagrees with encoder_config"),
        "protocol": (proto, "protocol fingerprint does not match"),
        "type": (wrong_type, "field 'seed' should be int"),
        "schema": (future, "schema_version 99"),
    }


@pytest.mark.parametrize("case", list(_bad_records()))
def test_check_refuses_each_kind_of_bad_record(tmp_path, case):
    record, reason = _bad_records()[case]
    _write(tmp_path / "r", [record])
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert reason in result.output and "r0.json" in result.output
    assert "Traceback" not in result.output


def test_records_of_another_version_are_checked_with_their_own_fingerprints(tmp_path):
    """A board published by an older embench stays valid under a newer one (the code version
    is part of every fingerprint), and its records are still checked."""
    older = [make_record("ae", 64, 0, 13.0, 14.0, version="embench-0.0.9"),
             make_record("p_ae", 64, 0, 3.0, 6.0, version="embench-0.0.9")]
    _write(tmp_path / "r", older)
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "2 valid record(s)" in result.output
    assert "embench-0.0.9" in render_markdown(older)
    edited = json.loads(json.dumps(older[0]))
    edited["encoder_config"]["seed"] = 7
    _write(tmp_path / "s", [edited])
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "s")])
    assert result.exit_code == 1 and "fingerprints.train does not match" in result.output


def test_check_refuses_invalid_json(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "bad.json").write_text("{not json")
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "r")])
    assert result.exit_code == 1 and "bad.json: not valid JSON" in result.output


def test_different_protocols_are_grouped_not_ranked(tmp_path):
    records = fixed_records() + [make_record("ae", 32, 0, 11.0, 12.0, preset="paper")]
    text = render_markdown(records)
    assert "2 protocols were found" in text
    assert text.count("| z size |") == 4  # MLP + linear per protocol


def test_leaderboard_command_writes_board_and_plot(tmp_path):
    _write(tmp_path / "r", fixed_records())
    result = CliRunner().invoke(main, ["leaderboard", str(tmp_path / "r"), "--out",
                                       str(tmp_path / "board")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "board" / "README.md").read_text().startswith("# embench leaderboard")
    assert (tmp_path / "board" / "lunarlander.png").read_bytes()[:4] == b"\x89PNG"


def test_an_older_record_of_the_same_cell_is_superseded_not_averaged():
    old = make_record("ae", 32, 0, 20.0, 21.0)
    new = make_record("ae", 32, 0, 13.0, 14.0)
    new["fingerprints"]["run"] = "another-run-of-the-same-cell"
    new["created"] = "2026-11-26T12:00:00+00:00"
    text = render_markdown([old, new])
    assert "| 32 | **13.00** (paper 13.44) |" in text and "20.00" not in text
    assert "1 seed(s) (0) · 1 run(s) (1 older record(s) of the same cells superseded)" in text
