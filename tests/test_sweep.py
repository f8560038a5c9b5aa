"""embench sweep: job graph, local and Ray executors, resume after a kill, retries, home check."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from embench.cli import main
from embench.errors import ConfigError
from embench.sweep import (
    HOME_BOARD,
    HomeNotSharedError,
    Job,
    SweepSpec,
    execute_job,
    run_sweep,
    toml_parser,
)

GRID = ["--tasks", "lunarlander", "--z", "4,8", "--preset", "smoke", "--device", "cpu"]
#: The issue's grid (2 encoders x 2 z) is slow on 2 shared cores; the default suite sweeps the
#: same code paths with one cheap encoder, `make test-all` with the autoencoder too.
ENCODERS = [pytest.param("pca", id="pca"),
            pytest.param("pca,ae", id="pca+ae", marks=pytest.mark.slow)]


@pytest.fixture
def smoke_data(_smoke_lunarlander):
    """conftest's smoke LunarLander data (made once a session); each test copies it."""
    return _smoke_lunarlander


def home_with_data(tmp_path, smoke_data, name="home"):
    home = tmp_path / name
    shutil.copytree(smoke_data, home / "datasets")
    return home


def records(home):
    return {p.name: json.loads(p.read_text())
            for p in sorted((home / "results").rglob("*.json"))}


def stable(value):
    """A record without what legitimately differs between two runs: times, dates, cache hits."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()
                if k not in ("timings", "created", "cache") and "second" not in k}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------

def test_spec_expands_into_data_then_run_jobs():
    spec = SweepSpec(encoders=("pca", "ae"), tasks=("lunarlander", "svhn"), z_sizes=(4, 8),
                     seeds=2, preset="smoke")
    jobs = spec.jobs()
    assert jobs[:2] == [Job("data", "lunarlander"), Job("data", "svhn")]
    runs = jobs[2:]
    assert len(runs) == 2 * 2 * 2 * 2 and len(set(runs)) == len(runs)
    assert all(j.depends_on == Job("data", j.task) for j in runs)
    assert {j.seed for j in runs} == {0, 1}
    # no z given: each task's grid in the preset
    default = SweepSpec(encoders=("ae",), tasks=("lunarlander",), preset="quick").jobs()
    assert [j.z for j in default if j.kind == "run"] == [64]


def test_toml_file_and_flags(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('encoders = ["pca", "ae"]\ntasks = ["lunarlander"]\nz = [4, 8]\n'
                    'seeds = 2\npreset = "smoke"\nretry = 1\n')
    spec = SweepSpec.from_toml(path, seeds=3, executor=None)
    assert spec.encoders == ("pca", "ae") and spec.z_sizes == (4, 8)
    assert spec.seeds == 3 and spec.retry == 1 and spec.executor == "local"  # the flag wins


def test_board_is_published_under_the_home_unless_out_says_otherwise(tmp_path):
    spec = SweepSpec(encoders=("pca",), tasks=("lunarlander",))
    assert spec.out is HOME_BOARD and spec.board_dir(tmp_path) == tmp_path / "leaderboard"
    chosen = SweepSpec.from_values({"encoders": "pca", "tasks": "lunarlander", "out": "board"})
    assert chosen.board_dir(tmp_path) == Path("board")
    unpublished = SweepSpec(encoders=("pca",), tasks=("lunarlander",), out=None)
    assert unpublished.board_dir(tmp_path) is None


def test_toml_parser_is_tomllib_and_falls_back_to_tomli(tmp_path, monkeypatch):
    if sys.version_info >= (3, 11):
        import tomllib

        assert toml_parser() is tomllib
    import tomli  # the 3.10 dependency; in the test and dev extras everywhere
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` fails, as on 3.10
    assert toml_parser() is tomli
    path = tmp_path / "sweep.toml"
    path.write_text('encoders = ["pca"]\ntasks = ["lunarlander"]\nz = [4, 8]\n')
    assert SweepSpec.from_toml(path).z_sizes == (4, 8)
    path.write_text('encoders = ["pca"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):  # tomli's error is caught too
        SweepSpec.from_toml(path)


@pytest.mark.parametrize(("text", "needle"), [
    ('encoders = ["pca"]\ntasks = ["lunarlander"]\nworkerz = 2\n', "unknown key(s): workerz"),
    ('encoders = ["pca"]\ntasks = ["lunarlander"]\nz = [0]\n', "Invalid z sizes"),
    ('encoders = ["pca"]\ntasks = ["lunarlander"]\npreset = "huge"\n', "huge"),
    ('encoders = ["pca"]\ntasks = []\n', "no task"),
    ('encoders = ["../x"]\ntasks = ["lunarlander"]\n', "../x"),
    ('encoders = ["pca"\n', "not valid TOML"),
])
def test_bad_sweep_files_are_refused_in_one_line(tmp_path, text, needle):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["sweep", str(path), "--home", str(tmp_path / "h")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "h" / "results").exists()


# ---------------------------------------------------------------------------------------------
# executors give the same records; a killed sweep resumes with only the missing jobs
# ---------------------------------------------------------------------------------------------

@pytest.mark.subprocess
@pytest.mark.ray
@pytest.mark.parametrize("encoders", ENCODERS)
def test_local_and_ray_sweeps_write_identical_records(tmp_path, smoke_data, encoders):
    n_runs = 2 * len(encoders.split(","))
    outcomes = {}
    for executor in ("local", "ray"):
        home = home_with_data(tmp_path, smoke_data, executor)
        result = CliRunner().invoke(main, ["sweep", "--encoders", encoders, *GRID,
                                           "--executor", executor,
                                           "--workers", "2", "--home", str(home),
                                           "--out", str(tmp_path / f"board-{executor}")])
        assert result.exit_code == 0, result.output
        assert f"{n_runs} run(s) computed, 0 reused" in result.output
        outcomes[executor] = records(home)
    assert len(outcomes["local"]) == n_runs
    assert outcomes["local"].keys() == outcomes["ray"].keys()  # same run fingerprints
    for name, record in outcomes["local"].items():
        assert stable(record) == stable(outcomes["ray"][name]), name
    for executor in ("local", "ray"):  # each sweep published its board
        board = (tmp_path / f"board-{executor}" / "README.md").read_text()
        assert all(name in board.lower() for name in encoders.split(","))
        assert len(list((tmp_path / f"board-{executor}" / "results").rglob("*.json"))) == n_runs


@pytest.mark.subprocess
@pytest.mark.parametrize(("encoders", "workers"), [
    pytest.param("pca", 1, id="pca"),
    pytest.param("pca,ae", 2, id="pca+ae", marks=pytest.mark.slow),
])
def test_killed_sweep_reruns_only_the_missing_jobs(tmp_path, smoke_data, encoders, workers):
    n_runs = 2 * len(encoders.split(","))
    home = home_with_data(tmp_path, smoke_data)
    env = dict(os.environ, EMBENCH_HOME=str(home), EMBENCH_CRASH_AT="sweep-job:2")
    killed = subprocess.run(
        [sys.executable, "-m", "embench.cli", "sweep", "--encoders", encoders, *GRID,
         "--workers", str(workers), "--out", str(tmp_path / "board")], env=env,
        capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr  # SIGKILL once data + 1 run had finished
    finished = records(home)
    assert 1 <= len(finished) < n_runs
    before = {name: Path(home / "results" / "lunarlander" / name).stat().st_mtime_ns
              for name in finished}

    spec = SweepSpec.from_values({"encoders": encoders, "tasks": "lunarlander", "z": [4, 8],
                                  "preset": "smoke", "device": "cpu", "workers": workers,
                                  "home": home, "out": tmp_path / "board"})
    outcome = run_sweep(spec)
    assert outcome.count("done") == 1 + n_runs and outcome.count("failed") == 0
    assert len(outcome.computed) == n_runs - len(finished)  # only the missing runs ran
    assert len(outcome.reused) == len(finished)
    assert len(records(home)) == n_runs
    for name, mtime in before.items():  # finished records were not rewritten
        assert (home / "results" / "lunarlander" / name).stat().st_mtime_ns == mtime
    assert outcome.board is not None and outcome.board.exists()


# ---------------------------------------------------------------------------------------------
# failures, retries and the home check
# ---------------------------------------------------------------------------------------------

@pytest.mark.subprocess
def test_failed_job_does_not_stop_the_others_and_is_retried(tmp_path, smoke_data, monkeypatch):
    home = home_with_data(tmp_path, smoke_data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no --out: the board goes to the home, not the folder
    result = CliRunner().invoke(main, [
        "sweep", "--encoders", "pca,no_such_encoder", "--tasks", "lunarlander", "--z", "4",
        "--preset", "smoke", "--device", "cpu", "--retry", "1", "--workers", "1",
        "--home", str(home)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "1 run(s) computed" in result.output and "1 failed" in result.output
    assert "retrying" in result.output  # tried twice
    assert "failed run no_such_encoder z=4" in result.stderr
    assert "Unknown encoder 'no_such_encoder'" in result.stderr
    assert "rerun the same command" in result.stderr
    assert len(records(home)) == 1  # the good job finished and was published
    board = home.resolve() / "leaderboard" / "README.md"
    assert board.exists() and f"leaderboard written to {board}" in result.output
    assert not list(elsewhere.iterdir())


@pytest.mark.subprocess
def test_runs_of_a_task_whose_data_failed_are_blocked(tmp_path):
    home = tmp_path / "home"
    files = home / "datasets" / "stl10" / "stl10_binary"
    files.mkdir(parents=True)
    for name in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"):
        (files / name).write_bytes(b"\x00" * 100)  # all there, so nothing is downloaded
    spec = SweepSpec(encoders=("pca",), tasks=("stl10",), z_sizes=(4,), preset="smoke",
                     device="cpu", workers=1, home=home, out=None)
    outcome = run_sweep(spec)  # the files fail their checksums: the data job fails
    states = {s.job.kind: s for s in outcome.states}
    assert states["data"].status == "failed" and "stl10" in states["data"].errors[0]
    assert states["run"].status == "blocked" and states["run"].attempts == 0


def test_worker_that_cannot_see_the_home_fails_fast(tmp_path):
    other = tmp_path / "driver-home"
    result = execute_job(Job("data", "lunarlander"),
                         {"home": str(tmp_path / "elsewhere"), "token": "abc", "threads": 1,
                          "preset": "smoke", "device": "cpu", "precision": "fp32"})
    assert result.status == "fatal" and "cannot see EMBENCH_HOME" in result.error

    class InProcess:  # an executor whose worker sees another directory than the driver
        def __init__(self):
            self.submitted = 0

        def submit(self, job, settings):
            self.submitted += 1
            handle = type("Handle", (), {})()
            handle.value = execute_job(job, {**settings, "home": str(tmp_path / "elsewhere")})
            return handle

        def wait(self, handles, timeout):
            return list(handles)

        def result(self, handle):
            return handle.value

        def shutdown(self, abort=False):
            self.aborted = abort

    executor = InProcess()
    spec = SweepSpec(encoders=("pca",), tasks=("lunarlander",), z_sizes=(4,), preset="smoke",
                     device="cpu", workers=1, home=other, out=None)
    with pytest.raises(HomeNotSharedError, match="storage every worker mounts"):
        run_sweep(spec, executor=executor)
    assert executor.submitted == 1  # stopped at the first job, nothing else was started
    assert executor.aborted
    assert not list(other.rglob("home-check-*"))  # the driver cleaned its check file


@pytest.mark.ray
def test_ray_executor_reports_a_missing_address_in_one_line(tmp_path):
    result = CliRunner().invoke(main, [
        "sweep", "--encoders", "pca", "--tasks", "lunarlander", "--preset", "smoke",
        "--executor", "ray", "--address", "127.0.0.1:1", "--home", str(tmp_path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "Cannot start or reach Ray at 127.0.0.1:1" in result.stderr


@pytest.mark.subprocess
def test_ctrl_c_stops_running_jobs_at_once(tmp_path, smoke_data):
    home = home_with_data(tmp_path, smoke_data)
    process = subprocess.Popen(
        [sys.executable, "-m", "embench.cli", "sweep", "--encoders", "ae", "--tasks",
         "lunarlander", "--z", "4", "--preset", "smoke", "--device", "cpu", "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, EMBENCH_CRASH_AT=""),
        # a suite started in the background (`make test &`) ignores SIGINT, and children
        # inherit that: give the CLI the disposition a terminal user's process has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list((home / "checkpoints").glob("ae/*.lock")):  # the run job is training
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)  # not after the job would have finished
    assert process.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not list((home / "results").rglob("*.json"))


def test_a_fixed_size_encoder_runs_once_per_seed_at_its_own_size():
    """With the preset's z grid, an encoder without z_dim is not crossed with the grid."""
    from embench.sweep import SweepSpec

    spec = SweepSpec(encoders=("ae", "alexnet_conv2"), tasks=("lunarlander",), seeds=2,
                     preset="smoke")
    runs = [(job.encoder, job.z, job.seed) for job in spec.jobs() if job.kind == "run"]
    assert runs == [("ae", 8, 0), ("ae", 8, 1), ("alexnet_conv2", None, 0),
                    ("alexnet_conv2", None, 1)]
    named = SweepSpec(encoders=("alexnet_conv2",), tasks=("lunarlander",), z_sizes=(8,),
                      preset="smoke")
    assert [(job.encoder, job.z) for job in named.jobs() if job.kind == "run"] == [
        ("alexnet_conv2", 8)]  # asked for by name: the run refuses it with one line
