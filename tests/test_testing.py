"""embench.testing: the conformance battery, over every registered plugin and on broken ones."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
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
from embench.testing import (
    ENCODER_CHECKS,
    TASK_CHECKS,
    check_encoder,
    check_task,
    check_task_data,
    encoder_checks,
    parametrize_with_checks,
    task_checks,
)

BUILTIN_ENCODERS = {"pca", "ae", "vae", "p_ae", "p_vae", "alexnet_conv2", "untrained_ae"}
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


class NamedClasses(MinimalTask):
    class_names = ("cat", "dog", "bird")


class Positions:
    kind, metric_name, metric_direction = "regression", "error_px", "lower"
    pixels_per_unit, label_origin = 10.0, (32.0, 32.0)

    def load(self, home, preset, seed, progress=None): ...

    def score(self, y_true, y_pred):
        return float(10.0 * np.linalg.norm(np.asarray(y_pred) - y_true, axis=1).mean())


def test_tasks_with_the_optional_metadata_pass():
    check_task(NamedClasses())
    check_task(Positions())


@pytest.mark.parametrize(("changes", "match"), [
    ({"class_names": ("cat", "cat")}, "class_names must be distinct"),
    ({"class_names": ("cat", "")}, "class_names must be non-empty strings"),
    ({"class_names": "cat"}, "class_names must be a non-empty tuple"),
    ({"kind": "regression", "class_names": ("a", "b")}, "class_names is for classification"),
])
def test_bad_class_names_are_refused_by_name(changes, match):
    task = type("Odd", (NamedClasses,), changes)()
    with pytest.raises(AssertionError, match=f"check_task_metadata.*task Odd: {match}"):
        check_task(task)


@pytest.mark.parametrize(("changes", "match"), [
    ({"label_origin": None}, "pixels_per_unit and label_origin go together"),
    ({"pixels_per_unit": -1.0}, "pixels_per_unit must be a positive finite number"),
    ({"pixels_per_unit": float("nan")}, "pixels_per_unit must be a positive finite number"),
    ({"label_origin": (1.0,)}, "label_origin must be a finite .column, row. pair"),
    ({"kind": "classification"}, "label positions are for regression tasks"),
])
def test_bad_label_geometry_is_refused_by_name(changes, match):
    task = type("Odd", (Positions,), changes)()
    with pytest.raises(AssertionError, match=f"check_task_metadata.*task Odd: {match}"):
        check_task(task)


def test_a_metric_that_is_not_a_mean_over_items_is_refused():
    class WorstItem(Positions):
        def score(self, y_true, y_pred):  # the largest error, not a mean over items
            return float(np.linalg.norm(np.asarray(y_pred) - y_true, axis=1).max())

    with pytest.raises(AssertionError, match="check_item_scores_average_to_score.*task "
                                             "WorstItem: score.. on each item alone"):
        check_task(WorstItem())


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


# -- the named checks: each property fails under its own name ----------------------------------


class Unseeded(ReadmeEncoder):
    """Draws its projection from fresh entropy: two fits with one config disagree."""

    def fit(self, train_images, val_images, progress=None):
        super().fit(train_images, val_images)
        self.projection_ = np.random.default_rng().standard_normal(self.projection_.shape,
                                                                   np.float32)
        return self


class BatchNormalized(ReadmeEncoder):
    """Standardises each call's batch: the embedding of an image depends on its neighbours."""

    def encode(self, images):
        z = super().encode(images)
        return (z - z.mean(axis=0)) / (z.std(axis=0) + 1e-6)


class InPlace(ReadmeEncoder):
    """Scales float input in place."""

    def encode(self, images):
        if images.dtype != np.uint8:
            images *= 255.0
            images /= 255.0 + 1e-3
        return super().encode(images)


class SilentlyUnfitted(ReadmeEncoder):
    """Embeds before fit with an all-zero projection instead of refusing."""

    def __init__(self, z_dim: int = 8, seed: int = 0):
        super().__init__(z_dim, seed)
        self.mean_ = np.zeros(3 * 64, np.float32)
        self.projection_ = np.zeros((3 * 64, z_dim), np.float32)


class UnclearlyUnfitted(ReadmeEncoder):
    """Fails before fit with an error that does not say to fit."""

    def encode(self, images):
        if not hasattr(self, "mean_"):
            raise TypeError("unsupported operand type(s) for -: 'ndarray' and 'NoneType'")
        return super().encode(images)


@pytest.mark.parametrize(("factory", "name", "match"), [
    (Unseeded, "check_same_seed_same_embeddings", "Unseeded: two fits with the same config"),
    (BatchNormalized, "check_encode_independent_of_batch_size",
     "BatchNormalized: encode.. must not depend on the batch: 8 images at once and in parts "
     "of 5 and 3"),
    (InPlace, "check_encode_leaves_input_unchanged", r"InPlace.encode\(\) changed its float32"),
    (SilentlyUnfitted, "check_unfitted_encoder_refuses",
     "SilentlyUnfitted.encode.. before fit.. returned embeddings that fit.. then changed"),
    (UnclearlyUnfitted, "check_unfitted_encoder_refuses",
     "UnclearlyUnfitted.encode.. before fit.. raised TypeError"),
])
def test_each_cache_property_fails_under_its_own_name(factory, name, match):
    checks = dict(encoder_checks(factory))
    with pytest.raises(AssertionError, match=match):
        checks[name]()
    others = [other for other in checks if other != name]
    for other in others:  # only the broken property fails
        checks[other]()
    with pytest.raises(AssertionError, match=f"^{name}: "):  # the one-call form names it too
        check_encoder(factory)


def test_a_pretrained_encoder_may_embed_before_fit(example_on_path):
    from pooled_pixels import PooledPixels

    dict(encoder_checks(PooledPixels, grid=2))["check_unfitted_encoder_refuses"]()


def test_the_checks_have_the_same_names_whatever_the_plugin():
    names = [name for name, _ in encoder_checks(NoEncode)]
    assert names == [check.__name__ for check in ENCODER_CHECKS] == [
        name for name, _ in encoder_checks(ReadmeEncoder, z_dim=3)]
    assert len(set(names)) == len(names) and all(n.startswith("check_") for n in names)
    assert [name for name, _ in task_checks(MinimalTask())] == [
        check.__name__ for check in TASK_CHECKS]


def test_parametrize_with_checks_gives_one_test_per_check_named_by_it():
    mark = parametrize_with_checks(encoders=[(ReadmeEncoder, {"z_dim": 3}), FixedSizeEncoder],
                                   tasks=[MinimalTask()])
    assert mark.args[0] == "check"
    ids = [param.id for param in mark.args[1]]
    assert ids == ([f"ReadmeEncoder-{c.__name__}" for c in ENCODER_CHECKS]
                   + [f"FixedSizeEncoder-{c.__name__}" for c in ENCODER_CHECKS]
                   + [f"MinimalTask-{c.__name__}" for c in TASK_CHECKS])
    for param in mark.args[1]:
        (check,) = param.values
        check()


def test_task_data_is_loaded_once_and_only_when_a_check_needs_it():
    loads = []

    def load():
        loads.append(1)
        raise AssertionError("no data here")

    checks = dict(task_checks(MinimalTask(), data=load))
    checks["check_task_metadata"]()
    assert not loads
    with pytest.raises(AssertionError, match="no data here"):
        checks["check_task_data_is_ready"]()
    assert loads == [1]


# -- the named checks over every registered plugin, and over the example plugin ---------------

TINY_TRAINING = {"z_dim": 4, "max_epochs": 1, "batch_size": 12, "device": "cpu"}
# Random loss-network weights, ONLY for these checks: the contract does not depend on them and
# they spare the ImageNet AlexNet download. Real runs use "imagenet".
RANDOM_PERCEPTUAL = {"perceptual_weights": "random"}
ENCODER_CONFIG = {
    "pca": {"z_dim": 4},
    "ae": TINY_TRAINING,
    "vae": TINY_TRAINING,
    "p_ae": {**TINY_TRAINING, **RANDOM_PERCEPTUAL},
    "p_vae": {**TINY_TRAINING, **RANDOM_PERCEPTUAL},
    "alexnet_conv2": {"device": "cpu", **RANDOM_PERCEPTUAL},
    "untrained_ae": {"z_dim": 4, "device": "cpu"},
}
ENCODERS = sorted(registry.discover("encoder"))
TASKS = sorted(registry.discover("task"))
# Smaller than the smoke preset: the checks test the contract, not the numbers.
TASK_PRESET = Preset(name="conformance", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
                     overrides={"lunarlander": {"unaltered_rollouts": 2, "altered_rollouts": 3,
                                                "frames": 10},
                                "stl10": {"autoencoder": 10, "probe": 10, "test": 5},
                                "svhn": {"autoencoder": 10, "probe": 10, "test": 5}})


def test_the_checks_cover_every_builtin():
    assert BUILTIN_ENCODERS <= set(ENCODERS) and BUILTIN_TASKS <= set(TASKS)
    assert set(ENCODERS) <= set(ENCODER_CONFIG)  # each registered encoder at a tiny size


def test_the_autoencoders_have_the_optional_hooks_the_checks_run():
    for name in ("ae", "vae", "p_ae", "p_vae"):
        encoder = registry.get_plugin("encoder", name).load()(**ENCODER_CONFIG[name])
        assert isinstance(encoder, Checkpointable) and isinstance(encoder, RetrainsDecoder)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module runs its tiny fits on one torch thread."""


@pytest.mark.parametrize("check", [
    pytest.param(check, id=f"{name}-{check_name}")
    for name in ENCODERS
    for check_name, check in encoder_checks(registry.get_plugin("encoder", name).load(),
                                            **ENCODER_CONFIG.get(name, {}))])
def test_every_registered_encoder_passes_the_named_checks(check):
    check()


def _example_plugin():
    """The example plugin's module, imported from its file (it is not installed here)."""
    spec = importlib.util.spec_from_file_location(
        "pooled_pixels_example", EXAMPLE / "src" / "pooled_pixels" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@parametrize_with_checks(encoders=[(_example_plugin().PooledPixels, {"grid": 2})])
def test_the_example_plugin_passes_the_named_checks(check):
    check()


@pytest.fixture(scope="module")
def task_options(stl10_dir, svhn_dir):
    files = {"verify": False, "download": False}  # fixture files are not the official ones
    return {"lunarlander": {"workers": 1}, "stl10": {"data_dir": stl10_dir, **files},
            "svhn": {"data_dir": svhn_dir, **files}}


@pytest.fixture(scope="module")
def task_data(task_options, tmp_path_factory):
    """``task_data(name)``: the task's data at TASK_PRESET, prepared once for this module."""
    prepared = {}

    def data(name):
        if name not in prepared:
            task = load_task(name, task_options.get(name, {}))
            prepared[name] = task.load(tmp_path_factory.mktemp(name), TASK_PRESET, seed=0)
        return prepared[name]

    return data


@pytest.mark.parametrize(("name", "check_name"), [
    pytest.param(name, check.__name__, id=f"{name}-{check.__name__}")
    for name in TASKS for check in TASK_CHECKS])
def test_every_registered_task_passes_the_named_checks(name, check_name, task_options,
                                                       task_data):
    task = load_task(name, task_options.get(name, {}))
    dict(task_checks(task, data=lambda: task_data(name)))[check_name]()
