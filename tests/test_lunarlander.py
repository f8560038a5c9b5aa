"""LunarLander task: frame/label pairing, splits, off-screen filter, determinism, cache, metric."""

from __future__ import annotations

import os
import shutil
import sys

import cv2
import h5py
import numpy as np
import pytest
from rich.progress import Progress

import embench.tasks.lunarlander as lunarlander
from embench.errors import ConfigError, DataError
from embench.presets import Preset
from embench.protocols import (
    AUTOENCODER_TRAIN,
    AUTOENCODER_VAL,
    PROBE_TRAIN,
    PROBE_VAL,
    SPLITS,
    TEST,
    Task,
)
from embench.tasks.lunarlander import (
    LunarLanderTask,
    RolloutJob,
    assign_splits,
    collect_rollout,
    offscreen_reasons,
    onscreen_mask,
    resize_like_opencv_cubic,
    rollout_seeds,
)
from embench.testing import check_task, check_task_data

# Box2D's SWIG bindings emit DeprecationWarnings on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")

UNALTERED, ALTERED, FRAMES = 3, 5, 20


def make_preset(**sizes: int) -> Preset:
    base = {"unaltered_rollouts": UNALTERED, "altered_rollouts": ALTERED, "frames": FRAMES}
    return Preset(
        name="t",
        autoencoder_epochs=1,
        probe_epochs=1,
        decoder_epochs=1,
        overrides={"lunarlander": {**base, **sizes}},
    )


PRESET = make_preset()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def data(home):
    return LunarLanderTask(workers=1).load(home, PRESET, seed=0)


@pytest.fixture(scope="module")
def long_rollouts():
    """150-frame unaltered rollouts: 1 ends its episode early, 10 leaves the screen."""
    return {
        i: collect_rollout(RolloutJob(seed=0, index=i, frames=150, altered=False)) for i in (1, 10)
    }


# -- frame/label pairing -------------------------------------------------------------------------


def lander_centroid(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (column, row) of the purple lander pixels per frame, and how many there are."""
    rgb = images.astype(np.int16)
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    mask = (blue > red + 40) & (blue > green + 40)
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    count = mask.sum(axis=(1, 2))
    safe = np.maximum(count, 1)
    centre = np.stack([(mask * cols).sum((1, 2)) / safe, (mask * rows).sum((1, 2)) / safe], 1)
    return centre, count


def label_to_pixel(labels: np.ndarray) -> np.ndarray:
    # In the 600x400 render x=0 is the centre column and y=0 lies 118 px above the bottom
    # (helipad at 100 px + legs 18 px); one unit is 300 px across and 200 px up, i.e. 32 px in
    # the 64x64 frame on both axes.
    col = 32.0 * (labels[:, 0] + 1.0)
    row = 64.0 - (32.0 * labels[:, 1] + 118 * 64 / 400)
    return np.stack([col, row], 1)


def test_frame_shows_the_state_of_its_own_label(long_rollouts):
    images, labels = long_rollouts[10].images, long_rollouts[10].labels
    centre, count = lander_centroid(images)
    expected = label_to_pixel(labels)
    # Frames with the whole lander in view (it starts half cut off by the top edge).
    inside = np.all((expected > 4) & (expected < 60), axis=1) & (count > 3)
    assert inside.sum() > 30
    same = np.linalg.norm(centre - expected, axis=1)[inside]
    # What the authors' script did: frame t labelled with the state one step later.
    following = np.linalg.norm(centre[:-1] - expected[1:], axis=1)[inside[:-1]]
    assert same.mean() < 0.4 and same.max() < 1.0
    assert following.mean() > 2 * same.mean()


def rendered_frames(n: int = 40, seed: int = 3) -> list[np.ndarray]:
    """Real 600x400 LunarLander renders of a random flight (lander, flags, terrain, flames)."""
    import gymnasium

    env = gymnasium.make("LunarLander-v3", render_mode="rgb_array")
    env.action_space.seed(seed)
    env.reset(seed=seed)
    frames = []
    for _ in range(n):
        frames.append(env.render())
        env.unwrapped.step(env.action_space.sample())
    env.close()
    return frames


def test_frames_are_resized_like_opencv_inter_cubic():
    frames = rendered_frames()
    ours = np.stack([resize_like_opencv_cubic(f) for f in frames]).astype(np.int16)
    reference = np.stack(
        [cv2.resize(f, (64, 64), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1) for f in frames]
    ).astype(np.int16)
    assert ours.shape == (40, 3, 64, 64)
    assert np.abs(ours - reference).max() <= 1
    # PIL's bicubic anti-aliases when it shrinks: it would fail the bound above by far, and it
    # blurs the small lander into the sky (fewer pixels keep the body's colour).
    from PIL import Image

    smoothed = np.stack(
        [np.asarray(Image.fromarray(f).resize((64, 64), Image.Resampling.BICUBIC))
         .transpose(2, 0, 1) for f in frames]
    ).astype(np.int16)
    assert np.abs(ours - smoothed).max() > 40
    assert body_pixels(ours).mean() > 1.4 * body_pixels(smoothed).mean()


def body_pixels(images: np.ndarray) -> np.ndarray:
    """Pixels per frame within a small distance of the lander body's colour (128, 102, 230)."""
    body = np.array([128, 102, 230]).reshape(1, 3, 1, 1)
    return (np.abs(images.astype(np.int16) - body).sum(axis=1) < 40).sum(axis=(1, 2))


def test_resize_is_exact_on_constant_and_upsampled_images():
    flat = np.full((400, 600, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(resize_like_opencv_cubic(flat), 77)
    ramp = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for size in (3, 64):
        expected = cv2.resize(ramp, (size, size), interpolation=cv2.INTER_CUBIC)
        got = resize_like_opencv_cubic(ramp, size).transpose(1, 2, 0).astype(np.int16)
        assert np.abs(got - expected).max() <= 1


def test_rollout_matches_a_run_by_hand(long_rollouts):
    """One reset, then steps on past the episode's end: frames and labels as done by hand."""
    import gymnasium

    rollout = long_rollouts[1]
    assert rollout.collected == 150 and rollout.images.shape == (150, 3, 64, 64)
    assert rollout.labels.shape == (150, 2)
    assert rollout.ended_at is not None and rollout.ended_at < 140, "pick an index that ends"
    env = gymnasium.make("LunarLander-v3", render_mode="rgb_array")
    env_seed, action_seed = rollout_seeds(0, 1)
    env.action_space.seed(action_seed)
    env.reset(seed=env_seed)
    lander = env.unwrapped
    expected_images, expected_labels, ended = [], [], None
    for t in range(150):
        if t:
            _, _, terminated, truncated, _ = lander.step(env.action_space.sample())
            ended = t if ended is None and (terminated or truncated) else ended
        expected_images.append(
            cv2.resize(lander.render(), (64, 64), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
        )
        pos = lander.lander.position  # what this very frame shows
        expected_labels.append([(pos.x - 10.0) / 10.0, (pos.y - lander.helipad_y - 0.6) / (20 / 3)])
    env.close()
    assert rollout.ended_at == ended
    difference = np.abs(rollout.images.astype(np.int16) - np.stack(expected_images))
    assert difference.max() <= 1
    np.testing.assert_allclose(rollout.labels, np.array(expected_labels), atol=1e-5)
    # Sanity: the check above would catch labels shifted by one step.
    assert np.abs(rollout.labels[:-1] - np.array(expected_labels)[1:]).max() > 1e-3
    # Never reset: no jump back to the start position (top centre) after the episode ended.
    jumps = np.linalg.norm(np.diff(rollout.labels, axis=0), axis=1)
    assert jumps.max() < 0.2


def test_stepping_past_the_end_warns_nothing(recwarn):
    rollout = collect_rollout(RolloutJob(seed=0, index=1, frames=150, altered=False))
    assert rollout.ended_at is not None
    ours = [w for w in recwarn if "gymnasium" in str(w.filename) or "step" in str(w.message)]
    assert not ours, [str(w.message) for w in ours]


# -- splits -------------------------------------------------------------------------------------


def test_splits_are_made_by_rollout_from_the_right_pool(data):
    groups = {name: set(data.splits[name].groups.tolist()) for name in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not groups[a] & groups[b], f"{a} and {b} share rollouts"
    unaltered = set(range(UNALTERED))
    assert groups[AUTOENCODER_TRAIN] | groups[AUTOENCODER_VAL] == unaltered
    assert groups[PROBE_TRAIN] | groups[PROBE_VAL] | groups[TEST] == set(
        range(UNALTERED, UNALTERED + ALTERED)
    )
    sizes = data.sizes()
    assert all(sizes[name] > 0 for name in SPLITS)
    assert sizes[AUTOENCODER_TRAIN] + sizes[AUTOENCODER_VAL] == UNALTERED * FRAMES
    assert data.info["frames_per_split"] == sizes
    assert sum(data.info["rollouts_per_split"].values()) == UNALTERED + ALTERED
    kept = data.info["altered_frames_kept"]
    assert sizes[PROBE_TRAIN] + sizes[PROBE_VAL] + sizes[TEST] == kept
    assert data.info["altered_frames_collected"] == ALTERED * FRAMES
    for split in data.splits.values():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (3, 64, 64)
        assert split.labels.dtype == np.float32 and split.labels.shape == (len(split), 2)
        assert split.groups.shape == (len(split),) and split.groups.dtype.kind == "i"


@pytest.mark.parametrize(
    ("unaltered", "altered", "expected"),
    [
        (2, 3, (1, 1, 1, 1, 1)),
        (4, 6, (3, 1, 4, 1, 1)),  # smoke
        (120, 180, (96, 24, 115, 29, 36)),  # quick
        (700, 700, (560, 140, 448, 112, 140)),  # paper
    ],
)
def test_assign_splits_gives_every_split_a_rollout(unaltered, altered, expected):
    splits = assign_splits(0, unaltered, altered)
    assert tuple(len(splits[name]) for name in SPLITS) == expected
    everything = np.concatenate([splits[name] for name in SPLITS])
    assert sorted(everything.tolist()) == list(range(unaltered + altered))


def test_too_few_rollouts_or_missing_sizes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 unaltered and 3 altered"):
        LunarLanderTask().load(tmp_path, make_preset(altered_rollouts=2), seed=0)
    bare = Preset(name="bare", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1)
    with pytest.raises(ConfigError, match="no sizes for preset 'bare'"):
        LunarLanderTask().load(tmp_path, bare, seed=0)
    partial = Preset(name="partial", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
                     overrides={"lunarlander": {"frames": 10}})
    with pytest.raises(ConfigError, match="unaltered_rollouts"):
        LunarLanderTask().load(tmp_path, partial, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        LunarLanderTask().load(tmp_path, PRESET, seed=-1)
    with pytest.raises(ConfigError, match="workers"):
        LunarLanderTask(workers=0).load(tmp_path, PRESET, seed=0)


# -- off-screen filter --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_onscreen_mask_keeps_exactly_the_bounds(dtype):
    points = [
        ((1.0, 0.0), True),
        ((1.0001, 0.0), False),
        ((-1.0, 0.0), True),
        ((-1.0001, 0.0), False),
        ((0.0, -0.5), True),
        ((0.0, -0.5001), False),
        ((0.0, 1.5), True),
        ((0.0, 1.5001), False),
        ((1.0, 1.5), True),
        ((-1.0, -0.5), True),
        ((2.0, 3.0), False),
    ]
    labels = np.array([p for p, _ in points], dtype=dtype)
    assert onscreen_mask(labels).tolist() == [keep for _, keep in points]


def test_altered_rollouts_drop_exactly_the_off_screen_frames(data, long_rollouts):
    for name in (PROBE_TRAIN, PROBE_VAL, TEST):
        assert onscreen_mask(data.splits[name].labels).all()
    images, labels = long_rollouts[10].images, long_rollouts[10].labels
    keep = onscreen_mask(labels)
    assert 0 < keep.sum() < len(keep), "this rollout should leave the screen; pick another index"
    altered = collect_rollout(RolloutJob(seed=0, index=10, frames=150, altered=True))
    assert altered.collected == 150
    np.testing.assert_array_equal(altered.labels, labels[keep])
    np.testing.assert_array_equal(altered.images, images[keep])
    assert altered.dropped == offscreen_reasons(labels[~keep])
    assert sum(altered.dropped.values()) >= (~keep).sum() > 0
    assert long_rollouts[10].dropped == {"left": 0, "right": 0, "above": 0, "below": 0}


def test_offscreen_reasons_name_each_edge():
    labels = np.array([[-1.01, 0.0], [1.01, 0.0], [0.0, 1.51], [0.0, -0.51], [1.2, -0.6],
                       [1.0, 1.5]])
    assert offscreen_reasons(labels) == {"left": 1, "right": 2, "above": 1, "below": 2}


# -- determinism --------------------------------------------------------------------------------


def test_same_seed_and_any_worker_count_give_identical_data(data, tmp_path):
    with Progress(disable=True) as progress:
        again = LunarLanderTask(workers=2).load(tmp_path, PRESET, seed=0, progress=progress)
        (bar,) = progress.tasks
    assert bar.description == "generate lunarlander"
    assert bar.total == bar.completed == UNALTERED + ALTERED
    assert again.fingerprint == data.fingerprint
    assert again.path.name == data.path.name
    for name in SPLITS:
        np.testing.assert_array_equal(again.splits[name].images, data.splits[name].images)
        np.testing.assert_array_equal(again.splits[name].labels, data.splits[name].labels)
        np.testing.assert_array_equal(again.splits[name].groups, data.splits[name].groups)


def test_another_seed_gives_other_data(data, tmp_path):
    other = LunarLanderTask(workers=1).load(tmp_path, PRESET, seed=1)
    assert other.fingerprint != data.fingerprint
    assert other.path.name != data.path.name
    assert not np.array_equal(other.splits[TEST].labels, data.splits[TEST].labels)
    assert rollout_seeds(0, 3) != rollout_seeds(1, 3) != rollout_seeds(0, 4)


# -- cache --------------------------------------------------------------------------------------


def test_second_load_reuses_the_file(data, home, monkeypatch):
    before = os.stat(data.path)

    def no_generation(*args, **kwargs):
        raise AssertionError("load() regenerated a valid file")

    monkeypatch.setattr(lunarlander, "_generate", no_generation)
    again = LunarLanderTask().load(home, PRESET, seed=0)
    after = os.stat(data.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.fingerprint == data.fingerprint
    np.testing.assert_array_equal(again.splits[TEST].images, data.splits[TEST].images)


def copy_dataset(data, home):
    target = home / "datasets" / "lunarlander" / data.path.name
    target.parent.mkdir(parents=True)
    shutil.copy(data.path, target)
    return target


def break_by_truncation(path):
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def break_by_clearing_complete(path):
    with h5py.File(path, "r+") as h5:
        h5.attrs["complete"] = False


def break_by_dropping_rows(path):
    with h5py.File(path, "r+") as h5:
        h5["labels"].resize(h5["labels"].shape[0] - 1, axis=0)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (break_by_truncation, "cannot be read"),
        (break_by_clearing_complete, "incomplete"),
        (break_by_dropping_rows, "row counts"),
    ],
)
def test_a_damaged_file_is_regenerated_with_a_warning(data, tmp_path, damage, reason):
    path = copy_dataset(data, tmp_path)
    damage(path)
    with pytest.warns(UserWarning, match=f"Regenerating .*{reason}"):
        again = LunarLanderTask(workers=1).load(tmp_path, PRESET, seed=0)
    assert again.path == path
    with h5py.File(path, "r") as h5:
        assert h5.attrs["complete"] and h5.attrs["fingerprint"] == data.fingerprint
    for name in SPLITS:
        np.testing.assert_array_equal(again.splits[name].images, data.splits[name].images)
        np.testing.assert_array_equal(again.splits[name].labels, data.splits[name].labels)
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


def test_file_layout_and_info(data):
    with h5py.File(data.path, "r") as h5:
        assert h5.attrs["complete"]
        assert h5.attrs["fingerprint"] == data.fingerprint
        assert h5.attrs["n_frames"] == sum(data.sizes().values())
        assert h5["images"].dtype == np.uint8 and h5["labels"].dtype == np.float32
    assert data.path.name == f"{data.fingerprint[:16]}.h5"
    assert data.path.parent.name == "lunarlander"
    info = data.info
    assert info["env_id"] == "LunarLander-v3" and info["seed"] == 0
    assert (info["unaltered_rollouts"], info["altered_rollouts"], info["frames"]) == (3, 5, 20)
    assert 0.0 <= info["altered_dropped_fraction"] < 1.0
    dropped = info["altered_frames_collected"] - info["altered_frames_kept"]
    assert set(info["altered_dropped_by_edge"]) == {"left", "right", "above", "below"}
    assert sum(info["altered_dropped_by_edge"].values()) >= dropped
    assert 0 <= info["episodes_ended_within_rollout"] <= UNALTERED + ALTERED
    assert "never reset" in info["on_termination"] and "INTER_CUBIC" in info["resample"]
    assert info["format_version"] == 2


def test_missing_box2d_is_one_clear_data_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "Box2D", None)
    with pytest.raises(DataError, match=r"Box2D.*pip install 'gymnasium\[box2d\]'"):
        LunarLanderTask(workers=1).load(tmp_path, PRESET, seed=0)
    assert not list((tmp_path / "datasets" / "lunarlander").glob("*.h5"))


# -- metadata and metric ------------------------------------------------------------------------


def test_metadata_and_conformance(data):
    task = LunarLanderTask()
    check_task(task)
    check_task_data(data, task.kind)
    assert isinstance(task, Task)
    assert (task.name, task.kind, task.image_size) == ("lunarlander", "regression", 64)
    assert (task.metric_name, task.metric_direction) == ("error_px", "lower")
    first_line = LunarLanderTask.__doc__.splitlines()[0]
    assert (
        first_line == "Lander positioning in LunarLander-v3 frames (regression, error in pixels)."
    )


def test_score_is_mean_distance_in_pixels():
    task = LunarLanderTask()
    y_true = np.random.default_rng(0).uniform(-1, 1, size=(50, 2)).astype(np.float32)
    assert task.score(y_true, y_true) == 0.0
    assert task.score(y_true, y_true + np.float32([0.1, 0.0])) == pytest.approx(3.2, rel=1e-5)
    assert task.score(y_true, y_true - np.float32([0.3, 0.4])) == pytest.approx(16.0, rel=1e-5)
    # A mean over samples, not over coordinates: half the rows off by (0, 1) -> 16 px.
    off = y_true.copy()
    off[::2, 1] += 1.0
    assert task.score(y_true, off) == pytest.approx(16.0, rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        task.score(y_true, y_true[:, :1])
    with pytest.raises(ValueError, match="at least one"):
        task.score(np.zeros((0, 2)), np.zeros((0, 2)))
