"""Presets hold budgets only; every task says its own sizes and z grid per preset."""

import numpy as np
import pytest

from embench.errors import ConfigError
from embench.presets import PRESETS, Preset, get_preset, task_sizes, task_z_sizes
from embench.protocols import SPLITS, Split, TaskData
from embench.runner import RunConfig, prepare_task, run
from embench.sweep import SweepSpec

# isort: split
from embench.tasks.lunarlander import LunarLanderTask
from embench.tasks.stl10 import STL10Task
from embench.tasks.svhn import SVHNTask


class CountingTask:
    """A third-party task that declares its own quick and paper sizes and z grids."""

    name = "counting"
    kind = "classification"
    metric_name = "accuracy"
    metric_direction = "higher"
    PRESET_SIZES = {"quick": {"images": 30}, "paper": {"images": 50}}
    Z_SIZES = {"quick": (3,), "paper": (2, 5)}

    def load(self, home, preset, seed, progress=None):
        n = task_sizes(self, preset)["images"]
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % 2
        images = (rng.random((n, 3, 8, 8)) * 100 + labels[:, None, None, None] * 100)
        images = images.astype(np.uint8)
        parts = np.array_split(np.arange(n), len(SPLITS))
        splits = {name: Split(images[rows], None if name.startswith("autoencoder")
                              else labels[rows].astype(np.int64))
                  for name, rows in zip(SPLITS, parts, strict=True)}
        return TaskData(splits, f"counting-{n}-{seed}", info={"images": n})

    def score(self, y_true, y_pred):
        return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


class NoGridTask(CountingTask):
    """Sizes for one preset only, and no z grid."""

    name = "nogrid"
    PRESET_SIZES = {"quick": {"images": 30}}
    Z_SIZES = {}


SPEC = f"{__name__}:CountingTask"


@pytest.mark.parametrize(("task_class", "preset", "sizes", "z_sizes"), [
    (LunarLanderTask, "smoke", {"unaltered_rollouts": 4, "altered_rollouts": 6, "frames": 150},
     (8,)),
    (LunarLanderTask, "quick", {"unaltered_rollouts": 120, "altered_rollouts": 180,
                                "frames": 150}, (64,)),
    (LunarLanderTask, "paper", {"unaltered_rollouts": 700, "altered_rollouts": 700,
                                "frames": 150}, (32, 64, 128, 256)),
    (STL10Task, "smoke", {"autoencoder": 64, "probe": 40, "test": 20}, (8,)),
    (STL10Task, "quick", {"autoencoder": 10_000, "probe": 5_000, "test": 8_000}, (128,)),
    (STL10Task, "paper", {"autoencoder": None, "probe": None, "test": None},
     (64, 128, 256, 512)),
    (SVHNTask, "smoke", {"autoencoder": 64, "probe": 40, "test": 20}, (8,)),
    (SVHNTask, "quick", {"autoencoder": 20_000, "probe": 10_000, "test": 5_000}, (64,)),
    (SVHNTask, "paper", {"autoencoder": None, "probe": None, "test": None}, (32, 64, 128)),
])
def test_builtin_tasks_keep_their_sizes_and_z_grids(task_class, preset, sizes, z_sizes):
    assert task_sizes(task_class, preset) == sizes
    assert task_sizes(task_class(), get_preset(preset)) == sizes  # an object or the class
    assert task_z_sizes(task_class, get_preset(preset)) == z_sizes


def test_presets_hold_only_generic_budgets():
    for preset in PRESETS.values():
        assert set(preset.to_dict()) == {"name", "autoencoder_epochs", "probe_epochs",
                                         "decoder_epochs", "batch_size", "overrides"}
        assert preset.overrides == {}


def test_a_third_party_task_loads_its_own_sizes(tmp_path):
    for preset, n in (("quick", 30), ("paper", 50)):
        task, data = prepare_task(SPEC, get_preset(preset), tmp_path)
        assert isinstance(task, CountingTask) and sum(data.sizes().values()) == n


def test_a_third_party_task_sweeps_its_own_z_grid():
    for preset, grid in (("quick", (3,)), ("paper", (2, 5))):
        spec = SweepSpec(encoders=("pca",), tasks=(SPEC,), preset=preset)
        assert sorted({job.z for job in spec.jobs() if job.kind == "run"}) == list(grid)


def test_a_third_party_task_runs_at_its_own_first_z_and_records_its_sizes(tmp_path):
    outcome = run(RunConfig(encoder="pca", task=SPEC, preset="quick", device="cpu",
                            home=tmp_path))
    record = outcome.record
    assert record.z_dim == 3 and record.embedding_dim == 3
    assert record.protocol["task_sizes"] == {"images": 30}
    assert "overrides" not in record.protocol["preset"]


def test_a_task_without_sizes_for_the_preset_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        prepare_task(SPEC, get_preset("smoke"), tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "Task 'counting' has no sizes for preset 'smoke' (it has sizes for: paper, quick)" \
        in message
    with pytest.raises(ConfigError, match="'nogrid' has no sizes for preset 'paper'"):
        task_sizes(NoGridTask, "paper")


def test_a_task_that_declares_no_sizes_has_none():
    class FixedFiles:  # e.g. a third-party task reading whole files: nothing to scale
        name = "fixed"

    assert task_sizes(FixedFiles, "quick") == {} == task_sizes(FixedFiles(), "paper")


def test_the_default_z_grid_is_64():
    assert task_z_sizes(NoGridTask, "quick") == (64,)
    assert task_z_sizes(CountingTask, "smoke") == (64,)  # a preset its grid does not name


def test_a_preset_can_override_one_tasks_sizes():
    tiny = Preset(name="quick", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
                  overrides={"counting": {"images": 12}})
    assert task_sizes(CountingTask, tiny) == {"images": 12}
    assert task_sizes(NoGridTask, tiny) == {"images": 30}  # other tasks keep their own
    assert task_z_sizes(CountingTask, tiny) == (3,)
