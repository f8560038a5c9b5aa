"""embench.testing: the conformance battery, over every registered plugin and on broken ones."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from embench import registry
from embench.errors import ConfigError
from embench.presets import Preset, task_z_sizes
from embench.protocols import Checkpointable, Encoder, RetrainsDecoder, Task
from embench.runner import RunConfig, load_task, run
from embench.testing import check_encoder, check_task, check_task_data

BUILTIN_ENCODERS = {"pca", "ae", "vae", "p_ae", "p_vae"}
BUILTIN_TASKS = {"lunarlander", "stl10", "svhn"}

# Box2D's SWIG bindings emit DeprecationWarnings on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")


def pooled(images, cells: int = 8) -> np.ndarray:
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    n, c, h, w = x.shape
    return x.reshape(n, c, cells, h // cells, cells, w // cells).mean(axis=(3, 5)).reshape(n, -1)


class ReadmeEncoder:
    """Random projection of 8x8-pooled pixels, written from the README's table alone.

    It has exactly the members the README requires, and none of the optional ones: no
    save/load, get_config, training_stats or decoder retraining.
    """

    def __init__(self, z_dim: int = 8, seed: int = 0):
        self.z_dim = z_dim
        self.seed = seed

    def fit(self, train_images, val_images, progress=None):
        features = pooled(train_images)
        self.mean_ = features.mean(axis=0)
        rng = np.random.default_rng(self.seed)
        self.projection_ = rng.standard_normal((features.shape[1], self.z_dim), np.float32)
        return self

    def encode(self, images):
        return (pooled(images) - self.mean_) @ self.projection_

    @property
    def embedding_dim(self):
        return self.z_dim

    @property
    def fingerprint(self):
        config = json.dumps({"z_dim": self.z_dim, "seed": self.seed}).encode()
        return hashlib.sha256(config + self.mean_.tobytes()).hexdigest()


# -- an encoder written as the README describes ------------------------------------------------


def test_the_readme_encoder_without_save_or_load_passes():
    assert not hasattr(ReadmeEncoder, "save") and not hasattr(ReadmeEncoder, "load")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning: checkpointing is optional
        encoder = check_encoder(ReadmeEncoder, z_dim=5)
    assert encoder.embedding_dim == 5
    assert isinstance(encoder, Encoder) and not isinstance(encoder, Checkpointable)


def test_the_readme_encoder_runs_end_to_end(stl10_dir, tmp_path):
    # STL-10 from the small official-format files: LunarLander's smoke data takes minutes here
    config = RunConfig(encoder=f"{__name__}:ReadmeEncoder", task="stl10", preset="smoke",
                       device="cpu", home=tmp_path,
                       task_options={"data_dir": stl10_dir, "verify": False, "download": False})
    record = run(config).record
    assert record.encoder == "ReadmeEncoder" and record.z_dim == 8
    assert record.embedding_dim == 8 and 0 <= record.test["mlp"] <= 1
    assert not any((tmp_path / "checkpoints").rglob("embench.json"))  # nothing to store
    again = run(config)
    assert again.record_hit and not again.checkpoint_hit  # refitted: nothing to load from


# -- encoders of a fixed size (no z_dim) --------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third-party-encoder"


class FixedSizeEncoder(ReadmeEncoder):
    """Takes no z_dim, like a pretrained third-party encoder: it always embeds in 6."""

    def __init__(self, seed: int = 0):
        super().__init__(z_dim=6, seed=seed)


def test_fixed_size_encoder_is_filed_under_its_real_size(stl10_dir, tmp_path):
    options = {"data_dir": stl10_dir, "verify": False, "download": False}
    config = RunConfig(encoder=f"{__name__}:FixedSizeEncoder", task="stl10", preset="smoke",
                       device="cpu", home=tmp_path, task_options=options)
    outcome = run(config)
    assert outcome.record.z_dim == 6 != task_z_sizes(load_task("stl10"), "smoke")[0]
    assert outcome.record_path.name.startswith("FixedSizeEncoder-z6-")
    again = run(dataclasses.replace(config, z=6))  # its own size is accepted: the same run
    assert again.record_hit and again.record_path == outcome.record_path


@pytest.fixture
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))


def test_the_example_plugin_passes_the_battery(example_on_path):
    from pooled_pixels import PooledPixels

    assert check_encoder(PooledPixels, grid=2).embedding_dim == 12


def test_fixed_size_encoder_refuses_another_z_before_any_data(example_on_path, tmp_path):
    config = RunConfig(encoder="pooled_pixels:PooledPixels", task="lunarlander",
                       preset="smoke", z=8, encoder_options={"grid": 2}, home=tmp_path)
    with pytest.raises(ConfigError) as info:
        run(config)
    assert str(info.value) == ("Encoder 'PooledPixels' has a fixed embedding size 12 (it takes "
                               "no z_dim), so --z 8 cannot apply. Drop --z: its runs are filed "
                               "under z=12.")
    assert not (tmp_path / "datasets" / "lunarlander").exists()


# -- what the battery rejects, and how it says so ----------------------------------------------


class NoEncode:
    def __init__(self, z_dim: int = 8):
        self.z_dim = z_dim

    def fit(self, train_images, val_images, progress=None):
        return self

    embedding_dim = 8
    fingerprint = "no-encode"


class FitReturnsNone(ReadmeEncoder):
    def fit(self, train_images, val_images, progress=None):
        super().fit(train_images, val_images)


class WrongDim(ReadmeEncoder):
    @property
    def embedding_dim(self):
        return self.z_dim + 1


class SaveOnly(ReadmeEncoder):
    def save(self, directory):
        (directory / "mean.npy").write_bytes(self.mean_.tobytes())


class HalfReconstruction(ReadmeEncoder):
    def retrain_decoder(self, train_images, val_images, *, max_epochs, progress=None):
        return {}


class LazyFixedSize(ReadmeEncoder):
    def __init__(self):  # no z_dim: a fixed size, only known after fit here
        super().__init__(z_dim=4)

    @property
    def embedding_dim(self):
        return self.projection_.shape[1]


@pytest.mark.parametrize(("factory", "match"), [
    (NoEncode, "NoEncode lacks the required member.s. encode of embench.protocols.Encoder"),
    (FitReturnsNone, r"FitReturnsNone.fit\(\) must return self, it returned NoneType"),
    (WrongDim, r"WrongDim.embedding_dim is 9 but encode\(\) returned 8 columns"),
    (HalfReconstruction, "HalfReconstruction has retrain_decoder.. but lacks reconstruct, "
                         "reconstruction_error"),
    (LazyFixedSize, "LazyFixedSize takes no z_dim, so its embedding_dim must be known before"),
])
def test_broken_encoders_are_refused_by_name(factory, match):
    with pytest.raises(AssertionError, match=match):
        check_encoder(factory)


def test_save_without_load_only_warns():
    with pytest.warns(UserWarning, match=r"SaveOnly has save\(\) but no load\(\)"):
        check_encoder(SaveOnly)


def test_non_finite_embeddings_are_an_assertion_naming_the_encoder():
    class Nan(ReadmeEncoder):
        def encode(self, images):
            return np.full((len(images), self.z_dim), np.nan, np.float32)

    with pytest.raises(AssertionError, match="'Nan'.*NaN"):
        check_encoder(Nan)


class MinimalTask:
    """A task with only the required members (no name, no image_size)."""

    kind = "classification"
    metric_name = "accuracy"
    metric_direction = "higher"

    def load(self, home, preset, seed, progress=None):
        raise NotImplementedError

    def score(self, y_true, y_pred):
        return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def test_a_task_with_only_the_required_members_passes():
    task = MinimalTask()
    check_task(task)
    assert isinstance(task, Task)


def test_task_whose_metric_points_the_wrong_way_is_refused():
    class Backwards(MinimalTask):
        metric_direction = "lower"

    with pytest.raises(AssertionError, match="Backwards: a perfect prediction must score best"):
        check_task(Backwards())


def test_task_lacking_members_is_refused_by_name():
    class NoScore:
        kind = "regression"
        metric_name = "error"
        metric_direction = "lower"

        def load(self, home, preset, seed, progress=None): ...

    with pytest.raises(AssertionError, match="task NoScore lacks the required member.s. score"):
        check_task(NoScore())


def test_missing_split_is_named():
    from embench.protocols import Split, TaskData

    data = TaskData({"test": Split(np.zeros((2, 3, 8, 8), np.uint8), np.zeros(2, int))}, "fp")
    with pytest.raises(AssertionError, match="lacks the split.s. autoencoder_train, "
                                             "autoencoder_val, probe_train, probe_val"):
        check_task_data(data, "classification")


# -- the battery over every registered plugin --------------------------------------------------

TINY_TRAINING = {"z_dim": 4, "max_epochs": 1, "batch_size": 12, "device": "cpu"}
ENCODER_CONFIG = {
    "pca": {"z_dim": 4},
    "ae": TINY_TRAINING,
    "vae": TINY_TRAINING,
    # Random loss-network weights, ONLY for this contract check: the contract does not depend
    # on them and they spare the ImageNet AlexNet download. Real runs use "imagenet".
    "p_ae": {**TINY_TRAINING, "perceptual_weights": "random"},
    "p_vae": {**TINY_TRAINING, "perceptual_weights": "random"},
}
ENCODERS = sorted(registry.discover("encoder"))
TASKS = sorted(registry.discover("task"))
# Smaller than the smoke preset: the battery checks the contract, not the numbers.
TASK_PRESET = Preset(name="conformance", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
                     overrides={"lunarlander": {"unaltered_rollouts": 2, "altered_rollouts": 3,
                                                "frames": 10},
                                "stl10": {"autoencoder": 10, "probe": 10, "test": 5},
                                "svhn": {"autoencoder": 10, "probe": 10, "test": 5}})


def test_the_battery_covers_every_builtin():
    assert BUILTIN_ENCODERS <= set(ENCODERS) and BUILTIN_TASKS <= set(TASKS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module runs its tiny fits on one torch thread."""


@pytest.mark.parametrize("name", ENCODERS)
def test_every_registered_encoder_passes_the_battery(name):
    factory = registry.get_plugin("encoder", name).load()
    encoder = check_encoder(factory, **ENCODER_CONFIG.get(name, {}))
    if name in ("ae", "vae", "p_ae", "p_vae"):  # the battery did run their optional hooks
        assert isinstance(encoder, Checkpointable) and isinstance(encoder, RetrainsDecoder)


@pytest.fixture(scope="module")
def task_options(stl10_dir, svhn_dir):
    files = {"verify": False, "download": False}  # fixture files are not the official ones
    return {"lunarlander": {"workers": 1}, "stl10": {"data_dir": stl10_dir, **files},
            "svhn": {"data_dir": svhn_dir, **files}}


@pytest.mark.parametrize("name", TASKS)
def test_every_registered_task_passes_the_battery(name, task_options, tmp_path):
    task = load_task(name, task_options.get(name, {}))
    check_task(task, task.load(tmp_path, TASK_PRESET, seed=0))
