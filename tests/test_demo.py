"""Newcomer paths: progress lines in logs, the plan and estimate, ``embench demo``."""

import io

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from rich.progress import Progress

import embench.estimate
from embench.cli import main
from embench.demo import demo_entries, demo_preset
from embench.errors import ConfigError, WeightsError
from embench.presets import PRESETS
from embench.progress import LineProgress, format_seconds, make_progress, stage
from embench.results import NOT_A_RESULT_MARK, load_record
from embench.runner import RunConfig
from embench.training.loop import fit_module

# Box2D's SWIG bindings emit DeprecationWarnings on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")


def _lines(console: Console) -> list[str]:
    return [line for line in console.file.getvalue().splitlines() if line.strip()]


def _log_console() -> Console:
    return Console(file=io.StringIO(), width=80)  # not a terminal, like a CI log


# -- progress ----------------------------------------------------------------------------------


def test_make_progress_draws_bars_on_a_terminal_and_lines_elsewhere():
    assert isinstance(make_progress(_log_console()), LineProgress)
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    assert isinstance(make_progress(terminal), Progress)
    assert isinstance(make_progress(_log_console(), live=True), Progress)
    assert isinstance(make_progress(_log_console(), disable=True), Progress)  # silent


def test_training_writes_one_line_per_epoch_with_losses_speed_and_eta():
    console = _log_console()
    data = torch.rand(64, 4)
    model = torch.nn.Linear(4, 4)

    def loss(batch):
        return torch.nn.functional.mse_loss(model(data[batch]), data[batch])

    with make_progress(console) as progress:
        fit_module(model, loss, loss, n_train=48, n_val=16,
                   optimizer=torch.optim.Adam(model.parameters()), batch_size=8, max_epochs=3,
                   progress=progress, description="train lin")
    lines = _lines(console)
    assert lines[0].endswith("train lin: started (3 to do)")
    epochs = [line for line in lines if ": epoch " in line]
    assert len(epochs) == 3 and len(lines) == 5  # start, 3 epochs, end: no 10% lines
    assert "train lin: epoch 1/3 train " in epochs[0] and " val " in epochs[0]
    assert "img/s" in epochs[0] and "ETA" in epochs[0] and "elapsed" in epochs[0]
    assert "ETA" not in epochs[-1]  # nothing left
    assert "train lin: done in" in lines[-1]


def test_a_long_stage_reports_every_tenth_and_a_failed_one_where_it_stopped():
    console = _log_console()
    progress = LineProgress(console)
    with stage(progress, "embed pca", total=1000) as bar:
        for _ in range(100):
            bar.advance(10, info="900 img/s")
    lines = _lines(console)
    assert len(lines) == 11  # start, 10%..90%, end
    assert "embed pca: 100/1000 (10%) 900 img/s (" in lines[1] and "ETA" in lines[1]
    assert "embed pca: done in" in lines[-1]
    with pytest.raises(RuntimeError), stage(progress, "probe search", total=300) as bar:
        bar.advance(40)
        raise RuntimeError("boom")
    assert "probe search: stopped after" in _lines(console)[-1]
    assert _lines(console)[-1].endswith("at 40/300")


def test_a_stage_without_news_for_a_while_reports_anyway():
    console = _log_console()
    progress = LineProgress(console, every_seconds=0.0)
    with stage(progress, "generate lunarlander", total=None) as bar:
        bar.advance(1)
    assert "generate lunarlander: 1 (" in _lines(console)[1]


def test_format_seconds():
    assert [format_seconds(s) for s in (0.04, 3.25, 42, 75.4, 3725)] == [
        "0.0 s", "3.2 s", "42 s", "1:15", "1:02:05"]


# -- embench run: plan, estimate, lines, pointers ----------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One home for the run tests: the smoke data is generated once."""
    return tmp_path_factory.mktemp("demo-home")


def test_run_prints_the_plan_progress_lines_and_where_to_go_next(home):
    result = CliRunner().invoke(main, ["run", "-e", "pca", "-t", "lunarlander", "--preset",
                                       "smoke", "--home", str(home), "--estimate"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "plan: pca on lunarlander, preset smoke, z=8, seed 0" in out
    for stage_name in ("data", "encoder", "embedding", "probe search"):
        assert f"  {stage_name} " in out
    assert "generate 10 lunarlander rollouts (1,500 frames" in out
    assert "total" in out and "roughly, on this machine" in out and "fit on" in out
    assert "finished in" in out and "(estimated ~" in out
    assert "next:" in out and "  record   " in out and "embench leaderboard --home" in out
    log = result.stderr  # CliRunner's stderr is no terminal: lines, one per event
    assert "generate lunarlander: started (10 to do)" in log
    assert "generate lunarlander: done in" in log
    assert "probe search: done in" in log and "embed pca: done in" in log

    again = CliRunner().invoke(main, ["run", "-e", "pca", "-t", "lunarlander", "--preset",
                                      "smoke", "--home", str(home)])
    assert again.exit_code == 0, again.output
    assert "already finished, nothing to compute" in again.stdout


def test_a_tiny_ae_run_logs_each_epoch_and_its_estimate(home):
    result = CliRunner().invoke(main, ["run", "-e", "ae", "-t", "lunarlander", "--preset",
                                       "smoke", "--home", str(home), "--device", "cpu",
                                       "--estimate"])
    assert result.exit_code == 0, result.output
    out, log = result.stdout, result.stderr
    assert "reuse the stored lunarlander data" in out
    assert "train ae: up to 2 epochs of ~480 images, batch 512" in out
    assert "decoder" in out and "retrain the decoder alone, up to 2 epochs" in out
    assert "training " in out and "img/s over 1 step(s) of batch 480 on random images" in out
    assert "train ae: epoch 1/2 train " in log and "train ae: epoch 2/2 train " in log
    assert "img/s" in log


def test_the_estimate_is_skippable(home, monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(embench.estimate, "measure_throughput", no_probe)
    args = ["run", "-e", "pca", "-t", "lunarlander", "--preset", "smoke", "--seed", "1",
            "--home", str(home)]
    result = CliRunner().invoke(main, [*args, "--no-estimate"])
    assert result.exit_code == 0, result.output
    assert "no time estimate (skipped" in result.stdout and "(estimated" not in result.stdout
    assert "  data " in result.stdout  # the stages are still listed
    monkeypatch.setenv("EMBENCH_ESTIMATE", "0")
    again = CliRunner().invoke(main, [*args, "--retrain"])  # a run to plan, by the variable
    assert again.exit_code == 0, again.output
    assert "no time estimate (skipped" in again.stdout


def test_a_probe_that_fails_never_stops_the_run(home, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no luck")

    monkeypatch.setattr(embench.estimate, "measure_throughput", broken)
    plan = embench.estimate.plan_run(RunConfig(encoder="pca", task="lunarlander",
                                               preset="smoke", seed=2, home=home))
    assert plan.note == "no estimate: the throughput probe failed (RuntimeError: no luck)"
    assert plan.total_seconds is None and not plan.finished


# -- embench demo ------------------------------------------------------------------------------


def test_demo_entries_name_the_untrained_baseline_honestly():
    entries = demo_entries(3)
    assert [entry.label for entry in entries] == [
        "pca (on pixels)", "untrained ae (random weights, no training)",
        "ae, pixel loss (3 epochs)", "p_ae, perceptual loss (3 epochs)"]
    assert [entry.optional for entry in entries] == [False, False, False, True]
    assert entries[1].encoder == "untrained_ae"  # the board's registered reference row
    with pytest.raises(ConfigError):
        demo_entries(0)


def test_demo_runs_end_to_end_then_reuses_everything(tmp_path, monkeypatch):
    import embench.encoders.perceptual as perceptual

    def offline(*args, **kwargs):  # tests never download: p_ae's row is skipped, not fatal
        raise WeightsError("AlexNet weights unreachable (test).")

    monkeypatch.setattr(perceptual, "load_imagenet_weights", offline)
    args = ["demo", "--home", str(tmp_path), "--rollouts", "3,3", "--frames", "50",
            "--ae-epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for column in ("encoder", "MLP px", "linear px", "baseline px", "wall s"):
        assert column in out
    for label in ("pca (on pixels)", "untrained ae", "random weights", "ae, pixel loss (1 "):
        assert label in out  # (a narrow terminal wraps the long labels)
    assert "skipped p_ae, perceptual loss (1 epoch): AlexNet weights unreachable" in out
    assert "best MLP probe:" in out and "make demo" in out and "embench reproduce" in out
    assert "embench leaderboard --home" in out
    assert "train ae: epoch 1/1" in result.stderr
    assert PRESETS["demo"] == demo_preset()  # its own sizes were registered only meanwhile
    records = sorted((tmp_path / "results" / "lunarlander").glob("*-demo-*.json"))
    assert [r.name.split("-z")[0] for r in records] == ["ae", "pca", "untrained_ae"]
    # a probe no better than the baseline is marked, as on the board, and the mark explained
    unbeaten = sum(not load_record(r).beats_baseline(p) for r in records for p in ("mlp", "linear"))
    table = out.split("best MLP probe:")[0]
    assert table.count(NOT_A_RESULT_MARK) == unbeaten
    assert (f"{NOT_A_RESULT_MARK} no better than the trivial baseline" in out) == (unbeaten > 0)
    mlp_beats = [load_record(r).beats_baseline("mlp") for r in records]
    assert ("so no MLP probe beat the baseline here" in out) == (not any(mlp_beats))
    # a full rerun rebuilds the demo's sizes and the ae's batch of 64 from the record
    record = load_record(records[0])
    assert record.preset_config["overrides"]["lunarlander"]["frames"] == 50
    assert record.encoder_config["batch_size"] == 64
    verified = CliRunner().invoke(main, ["verify", str(records[0]), "--full"])
    assert verified.exit_code == 0, verified.output
    assert "match" in verified.stdout

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert again.stdout.count("cached") >= 3
