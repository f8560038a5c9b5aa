import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from embench.cli import main
from embench.protocols import class_names_of, label_pixels
from embench.registry import load_task
from embench.results import Predictions, RunRecord, load_record, read_predictions
from embench.show import (
    PREDICTED_COLOUR,
    draw_show,
    picture_size,
    show_path,
    show_record,
)


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _record_file(home, task):
    (path,) = (home / "results" / task).glob("*.json")
    return path


@pytest.fixture(scope="module")
def lunar(runner, tmp_path_factory, one_torch_thread, _smoke_lunarlander):
    """One real smoke run of pca on LunarLander: (home, record file)."""
    home = tmp_path_factory.mktemp("lunar-home")
    shutil.copytree(_smoke_lunarlander, home / "datasets")  # the session's smoke data
    result = runner.invoke(main, ["run", "-e", "pca", "-t", "lunarlander", "--preset", "smoke",
                                  "--home", str(home)])
    assert result.exit_code == 0, result.output
    return home, _record_file(home, "lunarlander")


@pytest.fixture(scope="module")
def stl10_run(runner, tmp_path_factory, stl10_dir, one_torch_thread):
    """One real smoke run of pca on STL-10 files (official format): (home, record file)."""
    home = tmp_path_factory.mktemp("stl10-home")
    result = runner.invoke(main, ["run", "-e", "pca", "-t", "stl10", "--preset", "smoke",
                                  "--data-dir", str(stl10_dir), "--no-verify-data",
                                  "--no-download", "--home", str(home)])
    assert result.exit_code == 0, result.output
    return home, _record_file(home, "stl10")


def test_a_smoke_run_leaves_its_show_picture_beside_the_record(lunar):
    _, record_file = lunar
    picture = show_path(record_file)
    assert picture.name == record_file.stem + ".show.png" and picture.exists()
    assert load_record(record_file).pictures == {"show": picture.name}
    assert Image.open(picture).size == picture_size() == (1600, 800)


def test_show_redraws_a_record_from_its_home(lunar, runner, tmp_path):
    home, record_file = lunar
    record = load_record(record_file)
    shown = show_record(record_file, home=home, out=tmp_path / "mlp.png")
    assert Image.open(shown.path).size == (1600, 800)
    # the mean per-item error is the record's metric, in pixels; the worst item comes first
    assert shown.mean_error == pytest.approx(record.test["mlp"], rel=1e-5)
    errors = [tile.error for tile in shown.tiles]
    assert [t.section for t in shown.tiles] == ["worst"] * 8 + ["random"] * 8
    assert errors[:8] == sorted(errors[:8], reverse=True)
    assert errors[0] == pytest.approx(max(errors)) and errors[0] >= max(errors[8:])
    assert len({t.item for t in shown.tiles}) == 16
    out = tmp_path / "linear.png"
    result = runner.invoke(main, ["show", str(record_file), "--probe", "linear", "--out",
                                  str(out), "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    assert Image.open(out).size == (1600, 800)
    assert out.read_bytes() != shown.path.read_bytes()


def test_markers_sit_on_the_true_and_predicted_positions(lunar, tmp_path):
    """Black frames: the red cross's centre and the green circle are where the labels say."""
    _, record_file = lunar
    record = load_record(record_file)
    n = 12
    y_true = np.zeros((n, 2), np.float32)
    y_true[:, 1] = 0.5
    y_pred = y_true.copy()
    y_pred[5] = (0.6, 1.1)  # the one big error: it must come first
    y_pred[3] = (-0.3, 0.2)
    predictions = Predictions(items=np.arange(n), y_true=y_true, predicted={"mlp": y_pred},
                              data_fingerprint=record.fingerprints["data"])
    images = np.zeros((n, 3, 64, 64), np.uint8)
    shown = draw_show(record, images, predictions, tmp_path / "markers.png", n_worst=2,
                      n_random=3)
    assert Image.open(shown.path).size == picture_size(2, 3) == (1600, 800)
    assert [t.item for t in shown.tiles[:2]] == [5, 3]
    assert shown.tiles[0].error == pytest.approx(32 * np.hypot(0.6, 0.6), rel=1e-5)
    pixels = _rgb(shown.path)
    red = tuple(int(PREDICTED_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    for tile in shown.tiles[:2]:
        left, top, right, bottom = tile.box
        scale = (right - left) / 64

        def at(col_row, box=(left, top), scale=scale):
            return int(box[0] + col_row[0] * scale), int(box[1] + col_row[1] * scale)

        (tc, tr), (pc, pr) = label_pixels(load_task("lunarlander"),
                                          np.stack([y_true[tile.item], y_pred[tile.item]]))
        x, y = at((pc, pr))
        assert np.abs(pixels[y, x] - red).max() < 40, pixels[y, x]
        x, y = at((tc, tr))  # a ring centred on the true position
        around = pixels[y - 12:y + 13, x - 12:x + 13]
        green = (around[..., 1] > 180) & (around[..., 0] < 90) & (around[..., 2] < 90)
        assert green.sum() > 20
        rows, cols = np.nonzero(green)
        assert abs(rows.mean() - 12) < 2 and abs(cols.mean() - 12) < 2
        corner = at((2, 62))
        assert pixels[corner[1], corner[0]].max() < 30


def test_the_builtin_tasks_declare_what_show_draws():
    """Names and geometry come from the tasks, not from show.py."""
    lunar = load_task("lunarlander")
    assert label_pixels(lunar, np.array([[0.0, 0.0], [1.0, -0.5]])).tolist() == [
        [32.0, 45.12], [64.0, 61.12]]  # 32 px per unit, y upwards
    assert class_names_of(lunar) is None
    assert class_names_of(load_task("stl10"))[:3] == ("airplane", "bird", "car")
    assert class_names_of(load_task("svhn")) == tuple("0123456789")
    assert label_pixels(load_task("stl10"), np.zeros((1, 2))) is None


class _PlainRegression:
    """A third-party task without show's optional metadata; its metric is the L1 error."""

    kind, metric_name, metric_direction = "regression", "l1", "lower"

    def load(self, home, preset, seed, progress=None): ...

    def score(self, y_true, y_pred):
        return float(np.abs(np.asarray(y_pred) - np.asarray(y_true)).sum(axis=1).mean())


def test_a_task_without_metadata_is_drawn_with_its_own_metric_and_no_markers(lunar, tmp_path):
    _, record_file = lunar
    record = dataclasses.replace(load_record(record_file), task="plain")
    n = 10
    y_true = np.zeros((n, 2), np.float32)
    y_pred = y_true.copy()
    y_pred[4] = (0.5, -0.25)
    predictions = Predictions(items=np.arange(n), y_true=y_true, predicted={"mlp": y_pred},
                              data_fingerprint=record.fingerprints["data"])
    shown = draw_show(record, np.zeros((n, 3, 64, 64), np.uint8), predictions,
                      tmp_path / "plain.png", n_worst=2, n_random=3, task=_PlainRegression())
    assert shown.tiles[0].item == 4 and shown.tiles[0].error == pytest.approx(0.75)
    assert shown.mean_error == pytest.approx(0.075)
    pixels = _rgb(shown.path)
    red = np.array([int(PREDICTED_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    for tile in shown.tiles:  # no markers: the frames stay black
        left, top, right, bottom = (int(v) for v in tile.box)
        frame = pixels[top + 3:bottom - 3, left + 3:right - 3]
        assert np.abs(frame - red).max(axis=-1).min() > 60 and frame.max() < 30


def test_a_classification_record_shows_class_names_and_is_refused_on_other_data(
        stl10_run, runner, tmp_path, official_files, stl10_dir, one_line_error):
    home, record_file = stl10_run
    drawn = show_path(record_file)
    assert Image.open(drawn).size == (1600, 800)
    assert load_record(record_file).pictures == {"show": drawn.name}
    record = load_record(record_file)
    predictions = read_predictions(record_file.with_name(record.predictions))
    shown = draw_show(record, np.zeros((20, 3, 96, 96), np.uint8), predictions,
                      tmp_path / "classes.png")
    wrong = predictions.predicted["mlp"] != predictions.y_true
    assert shown.mean_error == pytest.approx(wrong.mean())
    assert 1 - shown.mean_error == pytest.approx(record.test["mlp"])
    worst = [t for t in shown.tiles if t.section == "worst"]
    assert [t.error for t in worst] == sorted((t.error for t in worst), reverse=True)
    pixels = _rgb(shown.path)
    for tile in shown.tiles:  # the frame's border: red when wrong, green when right
        left, top, _, bottom = tile.box
        r, g, _ = pixels[int((top + bottom) / 2), int(round(left))]
        assert (r > 150 > g) if tile.error else (g > 100 > r), (tile, r, g)

    result = runner.invoke(main, ["show", str(record_file), "--data-dir", str(stl10_dir),
                                  "--home", str(home)])
    assert result.exit_code == 0, result.output
    other = tmp_path / "other-stl10"
    official_files.write_stl10(other, {"train": 50, "test": 25, "unlabeled": 80})
    result = runner.invoke(main, ["show", str(record_file), "--data-dir", str(other),
                                  "--home", str(home)])
    one_line_error(result, "differs from the record's", "embench data stl10 --preset smoke",
                   after_progress=True)


def test_a_failed_picture_keeps_the_run(monkeypatch, tmp_path, stl10_dir, one_torch_thread):
    import embench.show
    from embench.runner import RunConfig, run

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(embench.show, "draw_show", broken)
    with pytest.warns(UserWarning, match="no fonts today"):
        outcome = run(RunConfig(encoder="pca", task="stl10", preset="smoke", device="cpu",
                                home=tmp_path, task_options={"data_dir": stl10_dir,
                                                             "verify": False,
                                                             "download": False}))
    assert outcome.record_path.exists() and outcome.record.pictures is None
    assert not show_path(outcome.record_path).exists()
    assert load_record(outcome.record_path).predictions is not None


def test_pictures_round_trip_and_stay_out_of_older_records(lunar):
    _, record_file = lunar
    data = json.loads(record_file.read_text())
    assert RunRecord.from_dict(data).to_dict() == data
    older = {k: v for k, v in data.items() if k != "pictures"}
    record = RunRecord.from_dict(older)
    assert record.pictures is None and "pictures" not in record.to_dict()
    again = dataclasses.replace(record, pictures={"show": "x.show.png"})
    assert again.to_dict()["pictures"] == {"show": "x.show.png"}
