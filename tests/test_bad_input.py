"""Every bad input gets one line (what, where, how to fix), a non-zero exit, no traceback,
and leaves everything already written untouched."""

import hashlib
import textwrap
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner

from embench import registry
from embench.cli import main

PLUGINS = textwrap.dedent('''
    import numpy as np

    class _Base:
        embedding_dim = 2
        fingerprint = "fixed"
        def __init__(self, z_dim=2):
            self.z_dim = z_dim
        def fit(self, train, val=None, **kwargs):
            return self

    class NaNEncoder(_Base):
        def encode(self, images):
            return np.full((len(images), 2), np.nan, np.float32)

    class ShortEncoder(_Base):
        def encode(self, images):
            return np.zeros((max(len(images) - 1, 0), 2), np.float32)

    class FlatEncoder(_Base):
        def encode(self, images):
            return np.zeros(len(images), np.float32)

    class OddSizeTask:
        """A task whose images are 50x50."""
        kind = "regression"
        image_size = 50
        metric_name = "mse"
        metric_direction = "lower"
        def load(self, home, preset, seed, progress=None):
            from embench.protocols import SPLITS, Split, TaskData
            rng = np.random.default_rng(0)
            splits = {name: Split(rng.integers(0, 255, (20, 3, 50, 50), dtype=np.uint8),
                                  rng.normal(size=(20, 2)).astype(np.float32))
                      for name in SPLITS}
            return TaskData(splits, "odd-size-task")
        def score(self, y_true, y_pred):
            return float(((y_true - y_pred) ** 2).mean())
''')


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A home with earlier results in it, plus importable bad plugins."""
    home = tmp_path / "home"
    (home / "results" / "lunarlander").mkdir(parents=True)
    (home / "results" / "lunarlander" / "earlier.json").write_text('{"earlier": true}')
    (home / "datasets").mkdir()
    (home / "datasets" / "earlier.h5").write_bytes(b"\x89HDF earlier data")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bad_plugins.py").write_text(PLUGINS)
    (plugins / "raises_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(plugins))
    files = tmp_path / "files"
    files.mkdir()
    (files / "stl10_binary").mkdir()
    for name in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"):
        (files / "stl10_binary" / name).write_bytes(b"\x00" * 100)  # truncated / corrupted
    (files / "weights.safetensors").write_bytes(b"not a weights file")
    (files / "record.json").write_text('{"schema_version": 1}')
    (files / "broken.json").write_text("{nope")
    (files / "a_file").write_text("x")
    return home, files


def snapshot(home):
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file()}


def unchanged(home, before):
    """Nothing written before is changed or lost (new lock files may appear)."""
    after = snapshot(home)
    assert {k: after.get(k) for k in before} == before


RUN = ["run", "--preset", "smoke"]
CASES = {
    "unknown encoder": (RUN + ["-e", "nope", "-t", "lunarlander"], "Unknown encoder 'nope'"),
    "unknown task": (RUN + ["-e", "pca", "-t", "lunar"], "Unknown task 'lunar'"),
    "unknown preset": (["run", "-e", "pca", "-t", "lunarlander", "--preset", "huge"],
                       "Unknown preset 'huge'"),
    "z zero": (RUN + ["-e", "pca", "-t", "lunarlander", "--z", "0"], "--z"),
    "z negative": (RUN + ["-e", "pca", "-t", "lunarlander", "--z", "-4"], "--z"),
    "z not int": (RUN + ["-e", "pca", "-t", "lunarlander", "--z", "ten"], "--z"),
    "image size refused": (RUN + ["-e", "ae", "-t", "bad_plugins:OddSizeTask"],
                           "64+16n pixels"),
    "corrupted dataset": (RUN + ["-e", "pca", "-t", "stl10", "--data-dir", "{files}"],
                          "train_X.bin"),
    "bad weights file": (["weights", "fetch", "alexnet", "--weights",
                          "{files}/weights.safetensors"], "weights.safetensors"),
    "invalid record": (["verify", "{files}/record.json"], "record.json is invalid"),
    "record not json": (["verify", "{files}/broken.json"], "broken.json is not valid JSON"),
    "plugin raises on import": (RUN + ["-e", "raises_on_import:Thing", "-t", "lunarlander"],
                                "boom at import"),
    "encoder returns NaN": (RUN + ["-e", "bad_plugins:NaNEncoder", "-t",
                                   "bad_plugins:OddSizeTask"], "NaN or inf"),
    "encoder returns too few rows": (RUN + ["-e", "bad_plugins:ShortEncoder", "-t",
                                            "bad_plugins:OddSizeTask"], "rows for"),
    "encoder returns 1-D": (RUN + ["-e", "bad_plugins:FlatEncoder", "-t",
                                   "bad_plugins:OddSizeTask"], "expected 2-D"),
    "missing dataset offline": (RUN + ["-e", "pca", "-t", "svhn", "--no-download", "--data-dir",
                                       "{files}/stl10_binary"], "train_32x32.mat"),
    "home not writable": (RUN + ["-e", "pca", "-t", "lunarlander", "--home",
                                 "{files}/a_file/home"], "--home"),
    "option the encoder lacks": (RUN + ["-e", "pca", "-t", "lunarlander", "-o", "depth=3"],
                                 "does not take option"),
    "option for a task that lacks it": (RUN + ["-e", "pca", "-t", "lunarlander",
                                               "--no-verify-data"], "does not take option"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(env, case, monkeypatch):
    home, files = env
    monkeypatch.setenv("EMBENCH_HOME", str(home))
    args, needle = CASES[case]
    args = [a.replace("{files}", str(files)) for a in args]
    before = snapshot(home)
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    if case.startswith("z "):  # click's own usage error: usage line + "Error: Invalid value"
        message = result.stderr
    else:  # progress bars of finished stages may precede it; the error itself is one line
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        message = errors[0]
        assert result.stderr.rstrip().endswith(message)
    assert needle in message, message
    unchanged(home, before)


def test_plugin_name_that_would_escape_its_directory(env, monkeypatch):
    home, _ = env
    monkeypatch.setenv("EMBENCH_HOME", str(home))
    real = registry.entry_points

    def with_evil(group):
        eps = list(real(group=group))
        if group == registry.ENCODER_GROUP:
            eps.append(EntryPoint("../x", "embench.encoders.pca:PCAEncoder", group))
        return eps

    monkeypatch.setattr(registry, "entry_points", with_evil)
    before = snapshot(home)
    result = CliRunner().invoke(main, RUN + ["-e", "../x", "-t", "lunarlander"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "not be safe as a file name" in result.stderr
    unchanged(home, before)
    assert not (home.parent / "x").exists()


def test_debug_shows_the_traceback(env):
    result = CliRunner().invoke(main, ["--debug", "run", "-e", "nope", "-t", "lunarlander"])
    assert result.exit_code != 0 and isinstance(result.exception, Exception)
