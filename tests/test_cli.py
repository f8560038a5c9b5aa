import json

import pytest
from click.testing import CliRunner

from embench.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_list_shows_builtins_with_distribution(runner):
    result = runner.invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    for name in ("pca", "p_vae", "lunarlander", "embench"):
        assert name in result.output


def test_unknown_encoder_is_one_clear_line(runner):
    result = runner.invoke(main, ["run", "--encoder", "nope", "--task", "lunarlander",
                                  "--preset", "smoke"])
    _one_line_error(result, "Unknown encoder 'nope'", "Available:", "pca")


def test_unknown_task_and_preset(runner):
    result = runner.invoke(main, ["run", "-e", "pca", "-t", "lunarlandr", "--preset", "smoke"])
    _one_line_error(result, "Did you mean 'lunarlander'?")
    result = runner.invoke(main, ["run", "-e", "pca", "-t", "lunarlander", "--preset", "fast"])
    _one_line_error(result, "Unknown preset 'fast'", "smoke")


@pytest.mark.parametrize("z", ["0", "-3", "abc"])
def test_invalid_z_is_refused_by_click(runner, z):
    result = runner.invoke(main, ["run", "-e", "pca", "-t", "lunarlander", "--z", z])
    assert result.exit_code == 2 and "--z" in result.output and "Traceback" not in result.output


def test_smoke_run_twice_reuses_checkpoint_and_embeddings(runner, tmp_path, monkeypatch):
    from embench.encoders.pca import PCAEncoder

    calls = {"encode": 0}
    real_encode = PCAEncoder.encode

    def counting_encode(self, images):
        calls["encode"] += 1
        return real_encode(self, images)

    monkeypatch.setattr(PCAEncoder, "encode", counting_encode)
    args = ["run", "-e", "pca", "-t", "lunarlander", "--preset", "smoke", "--home",
            str(tmp_path)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert calls["encode"] > 0
    assert "best MLP" in first.output and "best linear" in first.output
    assert "error_px" in first.output
    calls["encode"] = 0
    records = list((tmp_path / "results" / "lunarlander").glob("*.json"))
    first_record = records[0].read_bytes()
    second = runner.invoke(main, args)  # finished run: the record is reused as it is
    assert second.exit_code == 0, second.output
    assert calls["encode"] == 0
    assert "result hit" in second.output and "already finished" in second.output
    assert "best MLP" in second.output
    assert records[0].read_bytes() == first_record
    records[0].unlink()  # without the record: checkpoint and embeddings are reused
    third = runner.invoke(main, args)
    assert third.exit_code == 0, third.output
    assert calls["encode"] == 0
    assert "embedding cache hit" in third.output and "checkpoint hit" in third.output
    records = list((tmp_path / "results" / "lunarlander").glob("*.json"))
    assert len(records) == 1  # the same run, the same record
    record = json.loads(records[0].read_text())
    assert record["deterministic"] is True and record["batch_sizes"]["probe"] > 0
    assert record["cache"] == {"checkpoint_hit": True, "embedding_cache_hit": True}
    assert record["test"]["mlp"] >= 0 and record["test"]["baseline"] > 0
    assert record["split_sizes"]["test"] > 0
    assert len(record["probes"]["candidates"]) == 20  # linear, least squares, 18 MLPs


def test_decoder_retraining_option_reuses_the_encoder_and_is_recorded(runner, tmp_path):
    """-o decoder_retraining=... keys the run and Table VIII's result, not the checkpoint."""
    args = ["run", "-e", "ae", "-t", "lunarlander", "--preset", "smoke", "--z", "4",
            "--home", str(tmp_path)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "(finetune)" in first.output
    second = runner.invoke(main, [*args, "-o", "decoder_retraining=reinitialize"])
    assert second.exit_code == 0, second.output
    assert "checkpoint hit" in second.output and "embedding cache hit" in second.output
    assert "(reinitialize)" in second.output
    records = {}
    for path in (tmp_path / "results" / "lunarlander").glob("*.json"):
        record = json.loads(path.read_text())
        records[record["reconstruction"]["decoder_init"]] = record
    assert set(records) == {"finetune", "reinitialize"}
    fine, fresh = records["finetune"], records["reinitialize"]
    assert fresh["evaluation_config"] == {"decoder_retraining": "reinitialize"}
    assert fresh["reconstruction"]["retraining"]["reinitialized"] is True
    assert fine["reconstruction"]["retraining"]["reinitialized"] is False
    assert fine["fingerprints"]["train"] == fresh["fingerprints"]["train"]
    assert fine["fingerprints"]["run"] != fresh["fingerprints"]["run"]
    assert fine["test"] == fresh["test"]  # same embeddings, same probes
    # a pixel-wise encoder names no perceptual weights; the closed-form fit is an extra
    assert fine["perceptual_weights"] is None
    assert set(fine["test"]) == {"mlp", "linear", "baseline", "least_squares"}
    assert fine["probes"]["best_linear"] == "linear"
    bad = runner.invoke(main, [*args, "-o", "decoder_retraining=fresh"])  # refused up front
    _one_line_error(bad, "decoder_retraining", "'finetune', 'reinitialize'")
    assert "checkpoint hit" not in bad.output


def test_data_command_prepares_task(runner, tmp_path):
    result = runner.invoke(main, ["data", "lunarlander", "--preset", "smoke", "--home",
                                  str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "probe_train" in result.output
    assert "off-screen frames dropped from the altered rollouts: " in result.output
    assert "left " in result.output and "below " in result.output
    assert list((tmp_path / "datasets").rglob("*.h5"))


def test_reproduce_publishes_and_verify_checks_the_record(runner, tmp_path):
    """reproduce writes records and a board; verify recomputes the probes from the cache."""
    out, home = tmp_path / "board", tmp_path / "home"
    result = runner.invoke(main, ["reproduce", "-t", "lunarlander", "--preset", "smoke",
                                  "--encoders", "pca", "--z", "4", "--out", str(out),
                                  "--home", str(home)])
    assert result.exit_code == 0, result.output
    records = sorted((out / "results" / "lunarlander").glob("*.json"))
    assert len(records) == 1 and (out / "README.md").is_file()
    assert "PCA" in (out / "README.md").read_text()

    verify = runner.invoke(main, ["verify", str(records[0]), "--home", str(home)])
    assert verify.exit_code == 0, verify.output
    assert "the record reproduces" in verify.output and "note" not in verify.stderr

    # A record made by another version is still checked, with a note about float rounding.
    record = json.loads(records[0].read_text())
    record["embench_version"] = "embench-0.0.1"
    older = tmp_path / "older.json"
    older.write_text(json.dumps(record))
    verify = runner.invoke(main, ["verify", str(older), "--home", str(home)])
    assert verify.exit_code == 0, verify.output
    assert "made by embench-0.0.1" in verify.stderr

    # A stored metric that the probes do not give back fails with one line, exit 1.
    record["test"]["mlp"] += 0.5
    older.write_text(json.dumps(record))
    verify = runner.invoke(main, ["verify", str(older), "--home", str(home)])
    assert verify.exit_code == 1
    assert "differ from the record beyond the tolerance" in verify.stderr
    assert "Traceback" not in verify.output
