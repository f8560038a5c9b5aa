"""A third-party encoder, installed with pip as its own distribution, runs like a built-in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess  # the CLI runs in child processes, as a user runs it

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third-party-encoder"


def _embench(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "embench.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    return target, env


@pytest.mark.installs
def test_installed_plugin_lists_runs_and_reaches_the_board(installed, tmp_path):
    _, env = installed
    env = dict(env, EMBENCH_HOME=str(tmp_path / "home"))
    listed = _embench(["list", "encoders"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "pooled_pixels" in listed.stdout and "embench-pooled-pixels" in listed.stdout

    ran = _embench(["run", "--encoder", "pooled_pixels", "--task", "lunarlander",
                    "--preset", "smoke"], env, tmp_path)
    assert ran.returncode == 0, ran.stderr
    records = list((tmp_path / "home" / "results").rglob("*.json"))
    record = json.loads(records[0].read_text())
    assert record["encoder"] == "pooled_pixels"
    assert record["encoder_distribution"] == "embench-pooled-pixels"
    assert record["embedding_dim"] == 48
    assert record["z_dim"] == 48  # it takes no z_dim: filed under its real size, not smoke's 8

    board = _embench(["leaderboard", "--out", str(tmp_path / "board")], env, tmp_path)
    assert board.returncode == 0, board.stderr
    assert "pooled_pixels" in (tmp_path / "board" / "README.md").read_text()


def test_unpackaged_encoder_by_module_path(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(EXAMPLE / "src"), EMBENCH_HOME=str(tmp_path / "h"))
    ran = _embench(["run", "--encoder", "pooled_pixels:PooledPixels", "--task", "lunarlander",
                    "--preset", "smoke", "-o", "grid=2", "--z", "12"], env, tmp_path)
    assert ran.returncode == 0, ran.stderr  # --z equal to its fixed size is accepted
    (path,) = (tmp_path / "h" / "results").rglob("*.json")
    record = json.loads(path.read_text())
    assert record["encoder"] == "PooledPixels" and record["embedding_dim"] == 12
    assert record["z_dim"] == 12 and path.name.startswith("PooledPixels-z12-")
