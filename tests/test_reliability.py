"""Crash safety, resume and concurrency, through the real CLI in subprocesses."""

import json
import os
import signal
import subprocess
import sys

import h5py
import pytest

pytestmark = pytest.mark.subprocess

SMOKE = ["run", "--encoder", "ae", "--task", "lunarlander", "--preset", "smoke",
         "--device", "cpu"]


def embench(args, home, crash_at=None):
    env = dict(os.environ, EMBENCH_HOME=str(home), OMP_NUM_THREADS="1")
    env.pop("EMBENCH_CRASH_AT", None)
    if crash_at:
        env["EMBENCH_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "embench.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900)


def only_record(home):
    records = list((home / "results").rglob("*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def final_files_are_whole(home):
    """Every HDF5 file under a final (non-temporary) name opens and says it is complete."""
    for path in home.rglob("*.h5"):
        if not path.name.startswith("."):
            with h5py.File(path) as fh:
                assert fh.attrs["complete"], path
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    home = tmp_path_factory.mktemp("reference")
    done = embench(SMOKE, home)
    assert done.returncode == 0, done.stderr
    return only_record(home)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["generate:3", "train-epoch:1", "embed-batch:2",
                                   "probe-epoch:3"])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, reference, point):
    killed = embench(SMOKE, tmp_path, crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not list(tmp_path.rglob("results/**/*.json"))
    assert final_files_are_whole(tmp_path)
    rerun = embench(SMOKE, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    record = only_record(tmp_path)
    assert record["test"] == reference["test"]
    assert record["fingerprints"] == reference["fingerprints"]
    assert record["reconstruction"]["test_l1_after"] == reference["reconstruction"][
        "test_l1_after"]
    if point.startswith("train-epoch"):
        assert record["training"]["n_epochs"] == reference["training"]["n_epochs"]
        assert not list(tmp_path.rglob("*.resume"))  # the resumable state is cleaned up


def test_two_processes_share_one_home(tmp_path):
    args = ["run", "--encoder", "pca", "--task", "lunarlander", "--preset", "smoke"]
    env = dict(os.environ, EMBENCH_HOME=str(tmp_path), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "embench.cli", *args, "--seed", str(seed)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (0, 0, 1)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    datasets = list((tmp_path / "datasets" / "lunarlander").glob("*.h5"))
    assert len(datasets) == 1  # generated once, reused by the others
    caches = list((tmp_path / "embeddings").rglob("*.h5"))
    assert caches
    for cache in caches:
        with h5py.File(cache) as fh:
            assert fh.attrs["complete"]
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert not [p for p in tmp_path.rglob("*.tmp")]
