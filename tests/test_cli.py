import json

import pytest
from click.testing import CliRunner

from embench.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_list_shows_builtins_with_distribution(runner):
    result = runner.invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    for name in ("pca", "p_vae", "lunarlander", "embench"):
        assert name in result.output


def test_unknown_encoder_is_one_clear_line(runner, one_line_error):
    result = runner.invoke(main, ["run", "--encoder", "nope", "--task", "lunarlander",
                                  "--preset", "smoke"])
    one_line_error(result, "Unknown encoder 'nope'", "Available:", "pca")


def test_unknown_task_and_preset(runner, one_line_error):
    result = runner.invoke(main, ["run", "-e", "pca", "-t", "lunarlandr", "--preset", "smoke"])
    one_line_error(result, "Did you mean 'lunarlander'?")
    result = runner.invoke(main, ["run", "-e", "pca", "-t", "lunarlander", "--preset", "fast"])
    one_line_error(result, "Unknown preset 'fast'", "smoke")


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


def test_decoder_retraining_option_reuses_the_encoder_and_is_recorded(runner, tmp_path,
                                                                     one_line_error):
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
    one_line_error(bad, "decoder_retraining", "'finetune', 'reinitialize'")
    assert "checkpoint hit" not in bad.output


def test_a_z_dim_option_files_the_run_under_that_size(runner, tmp_path, smoke_lunarlander,
                                                      one_line_error):
    """-o z_dim=N sizes the encoder, so the record is filed under N (as --z N would)."""
    home = smoke_lunarlander(tmp_path)
    args = ["run", "-e", "pca", "-t", "lunarlander", "--preset", "smoke", "--home", str(home)]
    result = runner.invoke(main, [*args, "-o", "z_dim=4"])
    assert result.exit_code == 0, result.output
    (path,) = (home / "results" / "lunarlander").glob("*.json")
    record = json.loads(path.read_text())
    assert path.name.startswith("pca-z4-") and record["z_dim"] == record["embedding_dim"] == 4
    one_line_error(runner.invoke(main, [*args, "--z", "8", "-o", "z_dim=4"]),
                    "--z 8 and the encoder option z_dim=4 disagree")
    one_line_error(runner.invoke(main, [*args, "-o", "z_dim=four"]),
                    "Invalid encoder option z_dim='four'")


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

    # The per-item predictions travel with the record onto the board.
    from embench.results import load_record, read_predictions, sidecar_path

    record = load_record(records[0])
    sidecar = sidecar_path(records[0])
    assert record.predictions == sidecar.name and sidecar.is_file()
    predictions = read_predictions(sidecar)
    n_test = record.split_sizes["test"]
    assert predictions.items.tolist() == list(range(n_test))
    assert predictions.data_fingerprint == record.fingerprints["data"]
    assert set(predictions.predicted) == {"mlp", "linear", "baseline", "least_squares"}
    assert predictions.predicted["mlp"].shape == predictions.y_true.shape == (n_test, 2)
    task = __import__("embench.runner", fromlist=["load_task"]).load_task("lunarlander")
    for probe, value in record.test.items():  # the sidecar gives back the recorded scores
        assert task.score(predictions.y_true, predictions.predicted[probe]) == \
            pytest.approx(value, rel=1e-6)

    # A cell already on the board is not run again, even from an empty home.
    again = runner.invoke(main, ["reproduce", "-t", "lunarlander", "--preset", "smoke",
                                 "--encoders", "pca", "--z", "4", "--out", str(out),
                                 "--home", str(tmp_path / "fresh-home")])
    assert again.exit_code == 0, again.output
    assert "on the board already" in again.output
    assert not (tmp_path / "fresh-home" / "results").exists()

    # The board's check takes records with or without their sidecar.
    sidecar.rename(tmp_path / "aside.npz")
    check = runner.invoke(main, ["leaderboard", "--check", str(out / "results")])
    assert check.exit_code == 0 and "1 valid record(s)" in check.output
    (tmp_path / "aside.npz").rename(sidecar)

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


REQUIRED = {"sweep": ["--encoders", "pca", "--tasks", "lunarlander"],
            "reproduce": ["--task", "lunarlander"]}


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
@pytest.mark.parametrize(("flags", "sizes"), [
    (["--z", "32,64"], (32, 64)),
    (["--z", "32", "--z", "64"], (32, 64)),
    (["--z", "32, 64", "--z", "128"], (32, 64, 128)),
    ([], ()),
])
def test_z_sizes_are_comma_separated_or_repeated(command, flags, sizes):
    context = main.commands[command].make_context(command, [*REQUIRED[command], *flags])
    assert context.params["z_sizes"] == sizes


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
@pytest.mark.parametrize(("value", "needle"), [
    ("32,x", "'x' is not an integer"), ("32,0", "0 is not a positive integer"),
    ("32,", "'' is not an integer"), ("-4", "-4 is not a positive integer"),
])
def test_bad_z_sizes_get_clicks_error(runner, tmp_path, command, value, needle):
    result = runner.invoke(main, [command, *REQUIRED[command], "--z", value,
                                  "--home", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: Invalid value for '--z': {needle}")
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_device_precision_and_data_options_are_shared():
    from embench.devices import DEVICES, PRECISIONS

    def option(command, name):
        return next(p for p in main.commands[command].params if p.name == name)

    for name, choices, commands in (("device", DEVICES, ("run", "reproduce", "sweep")),
                                    ("precision", PRECISIONS, ("run", "reproduce", "sweep")),
                                    ("data_dir", None, ("data", "run")),
                                    ("download", None, ("data", "run"))):
        options = [option(command, name) for command in commands]
        assert len({(o.opts[0], o.help.split(" [default")[0]) for o in options}) == 1, name
        if choices is not None:
            assert all(tuple(o.type.choices) == choices for o in options)
    assert option("sweep", "device").default is None  # a sweep file's value stands
    assert option("run", "device").default == "auto"


def test_no_download_names_the_missing_files_without_network(runner, tmp_path,
                                                             one_line_error):
    result = runner.invoke(main, ["data", "svhn", "--no-download", "--home", str(tmp_path),
                                  "--data-dir", str(tmp_path / "none")])
    one_line_error(result, "SVHN files not found", "train_32x32.mat", "Downloading is off")
    assert not list((tmp_path / "datasets" / "svhn").glob(".partial-download-*"))


@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")  # Box2D
@pytest.mark.parametrize("direction", ["lower", "higher"])
def test_run_table_marks_probes_no_better_than_the_baseline(smoke_lunarlander, _isolated_home,
                                                             capsys, direction):
    import dataclasses

    import embench
    from embench.cli import print_summary
    from embench.results import NOT_A_RESULT

    record = embench.evaluate("pca", "lunarlander", preset="smoke", progress=False,
                              home=smoke_lunarlander(_isolated_home))
    base = record.test["baseline"]
    worse, better = (2 * base, base / 2) if direction == "lower" else (base / 2, 2 * base)
    record = dataclasses.replace(
        record, metric={**record.metric, "direction": direction},
        test={**record.test, "mlp": better, "linear": worse, "least_squares": better})
    print_summary(record, _isolated_home / "r.json")
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    assert "✗" in rows["best linear"]  # worse than the baseline: marked
    assert "✗" not in rows["best MLP"] and "✗" not in rows["extra: least squares"]
    assert "✗" not in rows["trivial baseline"]
    assert f"✗ {NOT_A_RESULT}" in " ".join(out.split())
    record = dataclasses.replace(record, test={**record.test, "linear": better})
    print_summary(record, _isolated_home / "r.json")
    assert "✗" not in capsys.readouterr().out  # nothing to mark: no mark, no legend


def test_a_run_records_its_convergence_and_warns_when_the_cap_cut_it_short(
        runner, tmp_path, smoke_lunarlander):
    """A tiny real run stopped by its epoch cap records the verdict; the table warns on it."""
    home = smoke_lunarlander(tmp_path)
    args = ["run", "-e", "ae", "-t", "lunarlander", "--preset", "smoke", "--home", str(home)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    (path,) = (home / "results" / "lunarlander").glob("*.json")
    record = json.loads(path.read_text())
    training = record["training"]
    assert training["stop_reason"] == "epoch_cap" and training["n_epochs"] == 2
    val = [row["val_loss"] for row in training["history"]]
    assert training["final_window_improvement"] == pytest.approx((val[0] - min(val)) / val[0])
    last = training["history"][-1]
    assert training["generalization_gap"] == pytest.approx(last["val_loss"] / last["train_loss"])
    assert training["still_improving"] == (training["final_window_improvement"] > 0.01)
    warning = "training was still improving when the epoch cap"
    assert (warning in first.output) == training["still_improving"]
    for improving in (True, False):  # the summary of the finished run is read from the record
        record["training"].update(still_improving=improving, final_window_improvement=0.25)
        path.write_text(json.dumps(record))
        again = runner.invoke(main, args, env={"COLUMNS": "200"})
        assert again.exit_code == 0 and "already finished" in again.output, again.output
        assert (warning in again.output) == improving
        if improving:
            assert "fell 25.0% over the last patience window" in again.output
