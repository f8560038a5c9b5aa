"""Paired comparisons from the predictions sidecars: statistics, refusals, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embench.cli import main
from embench.compare import (
    compare_records,
    item_values,
    load_run,
    paired_test,
    resolve_sides,
)
from embench.errors import ConfigError, DataError
from embench.results import (
    SCHEMA_VERSION,
    Predictions,
    RunRecord,
    path_of,
    protocol_fingerprint,
    sidecar_path,
    train_fingerprint,
    write_predictions,
    write_record,
)
from embench.storage import ARTIFACT_VERSION, CODE_VERSION, fingerprint
from embench.tasks.lunarlander import LunarLanderTask

BOARD = Path(__file__).parents[1] / "leaderboard" / "results" / "lunarlander"
ARCHIVE = (Path(__file__).parents[1] / "leaderboard" / "archive" / "quick-0.4.0" / "results"
           / "lunarlander")
N_ROLLOUTS, FRAMES = 12, 10  # 120 test items in 12 groups


def _targets(n=N_ROLLOUTS * FRAMES, data_seed=0):
    rng = np.random.default_rng(data_seed)
    return rng.uniform(-1, 1, (n, 2)).astype(np.float32)


def _predict(y_true, errors_px, seed):
    """Predictions whose per-item error is ``errors_px`` pixels, in random directions."""
    angle = np.random.default_rng(1000 + seed).uniform(0, 2 * np.pi, len(y_true))
    step = np.stack([np.cos(angle), np.sin(angle)], axis=1) * (errors_px / 32.0)[:, None]
    return y_true.astype(np.float64) + step


def write_run(home, encoder, seed, errors, *, z=64, task="lunarlander", preset="quick",
              data="data-lunarlander-quick", y_true=None, predicted=None, groups="rollouts",
              items=None, sidecar=True, created="2026-11-25T12:00:00+00:00", training=None):
    """Write a record (and its sidecar) whose test metrics are the predictions' scores."""
    y_true = _targets() if y_true is None else y_true
    if predicted is None:
        mlp = _predict(y_true, np.asarray(errors, dtype=np.float64), seed)
        predicted = {"mlp": mlp, "linear": mlp + 0.01, "baseline": np.zeros_like(mlp)}
    if task == "lunarlander":
        metric = {"name": "error_px", "direction": "lower"}
        score = LunarLanderTask().score
    else:
        metric = {"name": "accuracy", "direction": "higher"}

        def score(y, p):
            return float(np.mean(np.asarray(y) == np.asarray(p)))
    config = {"z_dim": z, "seed": seed}
    spec = f"embench.encoders.x:{encoder}"
    train = train_fingerprint(spec, config, data)
    protocol = {"task": task, "data": data, "preset": {"probe_epochs": 300}}
    protocol["fingerprint"] = protocol_fingerprint(protocol)
    record = RunRecord.from_dict({
        "schema_version": SCHEMA_VERSION, "embench_version": CODE_VERSION,
        "artifact_version": ARTIFACT_VERSION,
        "encoder": encoder, "encoder_spec": spec, "task": task, "preset": preset,
        "z_dim": z, "seed": seed, "device": "cpu", "encoder_config": config,
        "fingerprints": {"run": fingerprint("run", train, seed, created), "train": train,
                         "encoder": f"enc-{encoder}", "data": data, "embeddings": "emb"},
        "split_sizes": {"test": len(y_true)}, "metric": metric, "protocol": protocol,
        "probes": {}, "test": {k: score(y_true, v) for k, v in predicted.items()},
        "timings": {}, "versions": {}, "created": created, "training": training or {},
    })
    path = path_of(home, record)
    if sidecar:
        n = len(y_true)
        group_ids = (np.repeat(np.arange(n // FRAMES), FRAMES) if isinstance(groups, str)
                     else groups)
        write_predictions(sidecar_path(path), Predictions(
            items=np.arange(n) if items is None else items, y_true=y_true,
            predicted=predicted, data_fingerprint=data, groups=group_ids))
        record.predictions = sidecar_path(path).name
    return write_record(home, record)


def _errors(base=10.0, seed=0, spread=2.0, n=N_ROLLOUTS * FRAMES):
    return base + np.abs(np.random.default_rng(seed).normal(0, spread, n))


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


# -- statistics ----------------------------------------------------------------------------


def test_identical_predictions_differ_by_nothing(home):
    a = write_run(home, "p_ae", 0, _errors())
    b = write_run(home, "ae", 0, _errors())
    result = compare_records([a], [b]).pooled
    assert result.diff == 0 and result.ci_low <= 0 <= result.ci_high
    assert result.p_value == 1.0 and result.ratio == pytest.approx(1.0)
    assert not result.significant
    assert "not significantly different" in compare_records([a], [b]).verdict()


def test_a_clearly_better_encoder_is_significant(home):
    a = write_run(home, "p_ae", 0, _errors(3.0, seed=1))
    b = write_run(home, "ae", 0, _errors(12.0, seed=2))
    comparison = compare_records([a], [b])
    result = comparison.pooled
    assert result.ci_high < 0 and result.p_value < 0.01
    assert result.ratio_high < 1
    assert comparison.better() == "P. AE"
    assert comparison.verdict().startswith("P. AE is better than AE: difference P. AE − AE −")
    # from B's side the verdict names the same winner, the difference still better − worse
    flipped = compare_records([b], [a])
    assert flipped.pooled.diff == pytest.approx(-result.diff)
    assert flipped.verdict().startswith("P. AE is better than AE: difference P. AE − AE −")


def test_the_same_seed_gives_the_same_numbers(home):
    a = write_run(home, "p_ae", 0, _errors(9.0, seed=1))
    b = write_run(home, "ae", 0, _errors(10.0, seed=2))
    first = compare_records([a], [b], seed=3).to_dict()
    assert compare_records([a], [b], seed=3).to_dict() == first
    assert compare_records([a], [b], seed=4).pooled.ci_low != first["pooled"]["ci_low"]


def test_per_item_values_average_to_the_record_metric(home):
    run = load_run(write_run(home, "ae", 0, _errors()))
    for probe in ("mlp", "linear", "baseline"):
        values = item_values(run, probe)
        assert values.shape == (N_ROLLOUTS * FRAMES,)
        assert values.mean() == pytest.approx(run.record.test[probe], rel=1e-12)
    assert item_values(run, "mlp") == pytest.approx(_errors(), rel=1e-5)


def test_per_item_values_reproduce_the_published_records():
    """The board's committed records (with sidecars since 0.3.0) are scored item by item."""
    runs = [load_run(path) for path in sorted([*BOARD.glob("*.json"), *ARCHIVE.glob("*.json")])]
    with_predictions = [run for run in runs if run.predictions is not None]
    assert with_predictions, f"no committed records with predictions in {BOARD} or {ARCHIVE}"
    for run in with_predictions:
        assert item_values(run, "mlp").mean() == pytest.approx(run.record.test["mlp"],
                                                               rel=1e-12, abs=0)


def test_classification_compares_correctness_item_by_item(home):
    labels = np.arange(200) % 10
    right = labels.copy()
    wrong = labels.copy()
    wrong[::3] = (wrong[::3] + 1) % 10  # a third wrong
    kw = {"task": "svhn", "data": "data-svhn", "y_true": labels, "groups": None}
    a = write_run(home, "p_vae", 0, None, predicted={"mlp": right, "linear": right,
                                                     "baseline": right * 0}, **kw)
    b = write_run(home, "vae", 0, None, predicted={"mlp": wrong, "linear": right,
                                                   "baseline": right * 0}, **kw)
    assert set(item_values(load_run(b), "mlp")) == {0.0, 1.0}
    comparison = compare_records([a], [b])
    assert comparison.resampling == "items" and comparison.n_groups == 200
    assert comparison.pooled.mean_a == 1.0
    assert comparison.pooled.diff == pytest.approx(load_run(a).record.test["mlp"]
                                                   - load_run(b).record.test["mlp"])
    assert comparison.better() == "P. VAE" and "pp" in comparison.verdict()


def test_groups_are_resampled_whole():
    # every rollout shares one offset: items within a rollout are perfectly correlated
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 50)
    offsets = rng.normal(0, 1, 10)[groups]
    a, b = 5 + offsets + rng.normal(0, 0.01, 500), np.full(500, 5.0)
    clustered = paired_test(a, b, groups)
    naive = paired_test(a, b)
    assert (clustered.n_groups, naive.n_groups) == (10, 500)
    # the naive interval pretends there are 500 independent items
    assert clustered.ci_high - clustered.ci_low > 5 * (naive.ci_high - naive.ci_low)
    assert clustered.p_value > 0.05 > naive.p_value


def test_few_groups_get_an_exact_permutation_test():
    groups = np.repeat(np.arange(4), 3)
    a = np.arange(12.0) + 1
    result = paired_test(a, a - 1, groups, n_resamples=100)
    assert result.p_value == pytest.approx(2 / 16)  # all-plus and all-minus of 2**4 patterns


def test_per_seed_pairs_and_the_pooled_comparison(home):
    a = [write_run(home, "p_ae", s, _errors(6.0 + s, seed=s)) for s in (0, 1, 2)]
    b = [write_run(home, "ae", s, _errors(9.0, seed=10 + s)) for s in (0, 1)]
    comparison = compare_records(a, b)
    assert [r.label for r in comparison.per_seed] == ["seed 0", "seed 1"]
    assert all(r.seeds_a == r.seeds_b for r in comparison.per_seed)
    pooled = comparison.pooled
    assert (pooled.seeds_a, pooled.seeds_b) == ([0, 1, 2], [0, 1])
    tests_a = [load_run(p).record.test["mlp"] for p in a]
    assert pooled.mean_a == pytest.approx(np.mean(tests_a), rel=1e-12)
    data = json.loads(json.dumps(comparison.to_dict()))
    assert data["pooled"]["seeds_a"] == [0, 1, 2] and len(data["per_seed"]) == 2
    assert data["resampling"] == "groups" and data["n_groups"] == N_ROLLOUTS


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, error, needle", [
    ({"data": "data-lunarlander-other"}, DataError, "different test data"),
    ({"task": "svhn", "data": "data-svhn", "y_true": np.arange(120) % 10, "groups": None,
      "predicted": {k: np.arange(120) % 10 for k in ("mlp", "linear", "baseline")}},
     ConfigError, "different tasks"),
    ({"items": np.arange(120) + 1}, DataError, "different test items"),
    ({"y_true": _targets(data_seed=5)}, DataError, "different labels"),
    ({"groups": np.arange(120) % 7}, DataError, "group the test items differently"),
    ({"sidecar": False}, DataError, "Rerun it with this version"),
])
def test_incomparable_records_are_refused(home, change, error, needle):
    a = write_run(home, "p_ae", 0, _errors())
    b = write_run(home, "ae", 0, _errors(), **change)
    with pytest.raises(error, match=needle):
        compare_records([a], [b])


def test_a_protocol_mismatch_is_refused(home):
    a = write_run(home, "p_ae", 0, _errors())
    b = load_run(write_run(home, "ae", 0, _errors()))
    b.record.protocol["fingerprint"] = "another-protocol"
    with pytest.raises(ConfigError, match="different protocols"):
        compare_records([a], [b])


def test_a_side_is_one_encoder_with_one_record_per_seed(home):
    a = write_run(home, "p_ae", 0, _errors())
    again = write_run(home, "p_ae", 0, _errors(), created="2026-11-26T12:00:00+00:00")
    b = write_run(home, "ae", 0, _errors())
    with pytest.raises(ConfigError, match="several records of seed"):
        compare_records([a, again], [b])
    with pytest.raises(ConfigError, match="mixes encoders"):
        compare_records([a, b], [b])


# -- the command line ----------------------------------------------------------------------


def test_cli_prints_the_table_and_the_verdict(home):
    for seed in (0, 1):
        write_run(home, "p_ae", seed, _errors(3.0, seed=seed))
        write_run(home, "ae", seed, _errors(12.0, seed=5 + seed))
    result = CliRunner().invoke(main, ["compare", "p_ae", "ae", "--task", "lunarlander",
                                       "--home", str(home)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for needle in ("P. AE (A) vs AE (B) on lunarlander", "seed 0", "seed 1", "pooled",
                   "120 test items in 12 groups", "cluster bootstrap",
                   "P. AE is better than AE: difference P. AE − AE −", "p < 0.001"):
        assert needle in result.output


def test_cli_json_parses_and_record_files_work(home):
    a = write_run(home, "p_ae", 0, _errors())
    b = write_run(home, "ae", 0, _errors())
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--json", "--probe",
                                       "linear", "--resamples", "500"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["probe"] == "linear" and data["n_resamples"] == 500
    assert data["pooled"]["diff"] == 0 and "not significantly different" in data["verdict"]


def test_cli_refuses_mismatched_test_data_in_one_line(home, one_line_error):
    a = write_run(home, "p_ae", 0, _errors())
    b = write_run(home, "ae", 0, _errors(), data="data-lunarlander-other")
    result = CliRunner().invoke(main, ["compare", str(a), str(b)])
    one_line_error(result, "different test data")


def test_cli_needs_two_encoders_and_a_task_for_names(home, one_line_error):
    write_run(home, "p_ae", 0, _errors())
    runner = CliRunner()
    one_line_error(runner.invoke(main, ["compare", "p_ae", "ae", "--home", str(home)]),
                    "--task is needed")
    one_line_error(runner.invoke(main, ["compare", "p_ae", "-t", "lunarlander", "--home",
                                         str(home)]), "exactly two encoders")
    one_line_error(runner.invoke(main, ["compare", "p_ae", "vae", "-t", "lunarlander",
                                         "--home", str(home)]), "No records of vae")


def test_names_resolve_to_the_newest_record_per_seed_of_a_shared_z(home):
    write_run(home, "p_ae", 0, _errors(), z=32)
    write_run(home, "p_ae", 0, _errors(), z=64)
    write_run(home, "ae", 0, _errors(), z=64, created="2026-11-24T12:00:00+00:00")
    newest = write_run(home, "ae", 0, _errors(), z=64)
    side_a, side_b = resolve_sides(["p_ae", "ae"], directory=home / "results",
                                   task="lunarlander")
    assert [r.record.z_dim for r in side_a] == [64]
    assert [r.source for r in side_b] == [str(newest)]
    write_run(home, "ae", 0, _errors(), z=32)
    with pytest.raises(ConfigError, match="several z and protocols"):
        resolve_sides(["p_ae", "ae"], directory=home / "results", task="lunarlander")
    side_a, _ = resolve_sides(["p_ae", "ae"], directory=home / "results",
                              task="lunarlander", z=32)
    assert side_a[0].record.z_dim == 32


def test_compare_notes_a_side_whose_training_the_cap_cut_short(home):
    """Seeds still improving at their epoch cap get one note each side; others none."""
    capped = {"stop_reason": "epoch_cap", "still_improving": True}
    early = {"stop_reason": "early_stopping", "still_improving": False}
    for seed in (0, 1):
        write_run(home, "p_vae", seed, _errors(3.0, seed=seed),
                  training=capped if seed == 1 else early)
        write_run(home, "ae", seed, _errors(12.0, seed=5 + seed), training=early)
    result = CliRunner().invoke(main, ["compare", "p_vae", "ae", "--task", "lunarlander",
                                       "--home", str(home)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert ("note: P. VAE (seed 1) was still improving when its epoch cap stopped training, so "
            "this comparison may understate P. VAE.") in result.output
    assert "note: AE" not in result.output
    quiet = CliRunner().invoke(main, ["compare", "ae", "ae", "--task", "lunarlander",
                                      "--home", str(home)])
    assert "still improving" not in quiet.output


def test_one_group_of_test_items_is_never_called_significant(home):
    """A smoke-sized test split (one rollout) gives a point interval: no verdict from it."""
    n = FRAMES  # one rollout
    y_true = _targets(n)
    a = write_run(home, "p_ae", 0, _errors(3.0, n=n), y_true=y_true)
    b = write_run(home, "ae", 0, _errors(12.0, n=n, seed=5), y_true=y_true)
    comparison = compare_records([a], [b])
    assert comparison.n_groups == 1 and not comparison.pooled.significant
    assert comparison.better() is None
    assert "cannot be told apart on a test split of one group" in comparison.verdict()
