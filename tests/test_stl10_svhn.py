"""STL-10 and SVHN tasks: official-format fixtures read exactly as torchvision reads them."""

from __future__ import annotations

import gc
import json
import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from torchvision.datasets import STL10, SVHN
from torchvision.datasets.utils import calculate_md5

from embench.cli import main
from embench.errors import ConfigError, DataError
from embench.presets import Preset, get_preset, task_sizes
from embench.protocols import (
    AUTOENCODER_TRAIN,
    AUTOENCODER_VAL,
    PROBE_TRAIN,
    PROBE_VAL,
    SPLITS,
    TEST,
)
from embench.testing import check_task, check_task_data

# isort: split
# (isort cannot map embench.tasks to tasks/, the package-dir; keep it with embench.)
from embench.tasks import h5_images, stl10, svhn
from embench.tasks._files import H5Images, SourceFile
from embench.tasks.stl10 import STL10Task
from embench.tasks.svhn import SVHNTask

ALL = Preset(name="all", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
             overrides={"stl10": {"autoencoder": None, "probe": None, "test": None},
                        "svhn": {"autoencoder": None, "probe": None, "test": None}})


@pytest.fixture(scope="module")
def stl10_data(stl10_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return STL10Task(data_dir=stl10_dir, verify=False, download=False).load(home, ALL, seed=0)


@pytest.fixture(scope="module")
def svhn_data(svhn_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return SVHNTask(data_dir=svhn_dir, verify=False, download=False).load(home, ALL, seed=0)


@pytest.fixture
def no_integrity_check(monkeypatch):
    """torchvision's readers refuse files that are not the official ones: skip that for fixtures."""
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# -- agreement with torchvision's readers -----------------------------------------------------


def rows_of(data, *names):
    return np.concatenate([data.splits[name].images.rows for name in names])


@pytest.mark.parametrize(
    ("split", "parts"),
    [("unlabeled", (AUTOENCODER_TRAIN, AUTOENCODER_VAL)), ("train", (PROBE_TRAIN, PROBE_VAL)),
     ("test", (TEST,))],
)
def test_stl10_matches_torchvision(stl10_dir, stl10_data, no_integrity_check, split, parts,
                                   official_files):
    reference = STL10(stl10_dir, split=split, download=False)
    rows = rows_of(stl10_data, *parts)
    # every image, once
    assert sorted(rows.tolist()) == list(range(official_files.stl10_rows[split]))
    for name in parts:
        view = stl10_data.splits[name].images
        np.testing.assert_array_equal(view[:], reference.data[view.rows])
        if split != "unlabeled":
            np.testing.assert_array_equal(stl10_data.splits[name].labels,
                                          reference.labels[view.rows])
        else:
            assert stl10_data.splits[name].labels is None


@pytest.mark.parametrize(
    ("split", "parts"),
    [("extra", (AUTOENCODER_TRAIN, AUTOENCODER_VAL)), ("train", (PROBE_TRAIN, PROBE_VAL)),
     ("test", (TEST,))],
)
def test_svhn_matches_torchvision_tiled(svhn_dir, svhn_data, no_integrity_check, split, parts,
                                        official_files):
    reference = SVHN(svhn_dir, split=split, download=False)
    rows = rows_of(svhn_data, *parts)
    assert sorted(rows.tolist()) == list(range(official_files.svhn_rows[split]))
    for name in parts:
        view = svhn_data.splits[name].images
        native = reference.data[view.rows]
        np.testing.assert_array_equal(view[:], np.tile(native, (1, 1, 2, 2)))
        if split != "extra":
            np.testing.assert_array_equal(svhn_data.splits[name].labels,
                                          reference.labels[view.rows])


def test_svhn_tiling_is_a_2x2_grid_of_the_image(svhn_data, official_files):
    images = svhn_data.splits[TEST].images[:]
    assert images.shape == (official_files.svhn_rows["test"], 3, 64, 64)
    corner = images[:, :, :32, :32]
    for top, left in ((0, 32), (32, 0), (32, 32)):
        np.testing.assert_array_equal(images[:, :, top : top + 32, left : left + 32], corner)


def test_label_mapping(stl10_data, svhn_data, official_files):
    # Fixture labels cycle 1..10 over the file's rows; test rows are in file order.
    official = np.arange(official_files.svhn_rows["test"]) % 10 + 1
    np.testing.assert_array_equal(svhn_data.splits[TEST].labels, np.where(official == 10, 0,
                                                                          official))
    official = np.arange(official_files.stl10_rows["test"]) % 10 + 1
    np.testing.assert_array_equal(stl10_data.splits[TEST].labels, official - 1)
    for data in (stl10_data, svhn_data):
        labels = data.splits[TEST].labels
        assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))


def test_svhn_label_reader_maps_ten_to_zero(tmp_path):
    scipy.io.savemat(tmp_path / "t.mat", {"X": np.zeros((32, 32, 3, 3), np.uint8),
                                          "y": np.array([[10.0], [1.0], [9.0]])})
    assert svhn.read_svhn_labels(tmp_path / "t.mat").tolist() == [0, 1, 9]


# -- splits and presets -----------------------------------------------------------------------


def test_split_sizes_all_rows(stl10_data, svhn_data, official_files):
    for data, rows, ae in ((stl10_data, official_files.stl10_rows, "unlabeled"),
                           (svhn_data, official_files.svhn_rows, "extra")):
        assert data.sizes() == {
            AUTOENCODER_TRAIN: rows[ae] - rows[ae] // 5, AUTOENCODER_VAL: rows[ae] // 5,
            PROBE_TRAIN: rows["train"] - rows["train"] // 5, PROBE_VAL: rows["train"] // 5,
            TEST: rows["test"],
        }
        assert data.info["subset"] == {"autoencoder": ae, "probe": "train", "test": "test"}


@pytest.mark.parametrize("task_class", [STL10Task, SVHNTask])
def test_smoke_preset_uses_the_first_n_rows(task_class, stl10_dir, svhn_dir, tmp_path):
    data_dir = stl10_dir if task_class is STL10Task else svhn_dir
    preset = get_preset("smoke")
    sizes = task_sizes(task_class, preset)
    data = task_class(data_dir=data_dir, verify=False, download=False).load(tmp_path, preset, 0)
    assert len(data.splits[AUTOENCODER_TRAIN]) + len(data.splits[AUTOENCODER_VAL]) == sizes[
        "autoencoder"]
    assert len(data.splits[PROBE_TRAIN]) + len(data.splits[PROBE_VAL]) == sizes["probe"]
    assert len(data.splits[TEST]) == sizes["test"]
    for names, role in (((AUTOENCODER_TRAIN, AUTOENCODER_VAL), "autoencoder"),
                        ((PROBE_TRAIN, PROBE_VAL), "probe"), ((TEST,), "test")):
        assert sorted(rows_of(data, *names).tolist()) == list(range(sizes[role]))
    assert data.info["rows_used"] == sizes
    assert data.info["subset_rule"] == "the first N rows of each official split, in file order"
    assert data.info["subset"]["test"] == f"test[:{sizes['test']}]"


def test_preset_larger_than_the_files_takes_them_all(stl10_dir, tmp_path):
    preset = Preset(name="big", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
                    overrides={"stl10": {"autoencoder": 10**6, "probe": 10**6, "test": 10**6}})
    data = STL10Task(data_dir=stl10_dir, verify=False, download=False).load(tmp_path, preset, 0)
    assert data.info["rows_used"] == {"autoencoder": 80, "probe": 50, "test": 30}


def test_splits_follow_the_seed(stl10_dir, tmp_path):
    task = STL10Task(data_dir=stl10_dir, verify=False, download=False)
    first, again, other = (task.load(tmp_path, ALL, seed) for seed in (0, 0, 1))
    assert first.fingerprint == again.fingerprint != other.fingerprint
    np.testing.assert_array_equal(first.splits[PROBE_VAL].images.rows,
                                  again.splits[PROBE_VAL].images.rows)
    assert not np.array_equal(first.splits[PROBE_VAL].images.rows,
                              other.splits[PROBE_VAL].images.rows)
    np.testing.assert_array_equal(first.splits[TEST].images.rows, other.splits[TEST].images.rows)
    assert first.path == other.path  # one store whatever the seed


@pytest.mark.parametrize("bad", [{"probe": 1}, {"test": 0}, {"autoencoder": "all"}])
def test_unusable_preset_sizes_are_refused(stl10_dir, tmp_path, bad):
    preset = Preset(name="bad", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
                    overrides={"stl10": bad})
    with pytest.raises(ConfigError, match="Preset 'bad' asks for"):
        STL10Task(data_dir=stl10_dir, verify=False, download=False).load(tmp_path, preset, 0)


def test_bad_seed_is_refused(stl10_dir, tmp_path):
    with pytest.raises(ConfigError, match="seed"):
        STL10Task(data_dir=stl10_dir, verify=False).load(tmp_path, ALL, -1)


# -- verification -----------------------------------------------------------------------------


@pytest.mark.parametrize("task_class", [STL10Task, SVHNTask])
def test_verify_refuses_fixture_files(task_class, stl10_dir, svhn_dir, tmp_path):
    data_dir = stl10_dir if task_class is STL10Task else svhn_dir
    with pytest.raises(DataError) as exc_info:
        task_class(data_dir=data_dir, download=False).load(tmp_path, ALL, 0)
    message = one_line(exc_info)
    first = task_class().source_files()[0]
    assert f"file {first.relpath} (" in message and "fails the official checksum" in message
    assert first.md5 in message and "--no-verify-data" in message


def test_no_verify_accepts_fixtures_and_says_so(stl10_data, svhn_data):
    for data in (stl10_data, svhn_data):
        assert data.info["verified"] is False and data.info["official_files"] is False
        assert "not checked against the official checksums" in data.info["note"]
        assert all(not entry["official"] for entry in data.info["files"].values())
        json.dumps(data.info)  # goes into the result record


def official_is_fixture(monkeypatch, module, data_dir):
    """Pretend the fixture files are the official ones (same names and URLs, fixture md5s)."""
    name = f"{module.__name__.rsplit('.', 1)[1]}_source_files"
    fixtures = tuple(
        SourceFile(s.relpath, calculate_md5(data_dir / s.relpath), s.url, None)
        for s in getattr(module, name)()
    )
    monkeypatch.setattr(module, name, lambda: fixtures)


def test_verified_files_are_accepted_and_a_truncated_one_refused(stl10_dir, tmp_path,
                                                                 monkeypatch, official_files):
    data_dir = tmp_path / "data"
    official_files.write_stl10(data_dir)
    official_is_fixture(monkeypatch, stl10, data_dir)
    task = STL10Task(data_dir=data_dir, download=False)
    data = task.load(tmp_path / "home", ALL, 0)
    assert data.info["verified"] is True and data.info["official_files"] is True
    assert "note" not in data.info
    target = data_dir / "stl10_binary" / "train_X.bin"
    target.write_bytes(target.read_bytes()[:-1000])
    with pytest.raises(DataError) as exc_info:
        task.load(tmp_path / "home", ALL, 0)
    message = one_line(exc_info)
    assert "stl10_binary/train_X.bin" in message and "truncated or altered" in message
    assert "download it again" in message


def test_truncated_stl10_file_states_its_size_against_the_official_one(tmp_path, official_files):
    data_dir = tmp_path / "data"
    official_files.write_stl10(data_dir)
    task = STL10Task(data_dir=data_dir, download=False)
    with pytest.raises(DataError, match=r"train_X\.bin .*truncated \(1,382,400 of 138,240,000"):
        task.load(tmp_path / "home", ALL, 0)


def test_unverified_but_malformed_files_are_refused(tmp_path, official_files):
    data_dir = tmp_path / "stl"
    official_files.write_stl10(data_dir)
    target = data_dir / "stl10_binary" / "test_X.bin"
    target.write_bytes(target.read_bytes()[:-7])
    with pytest.raises(DataError) as exc_info:
        STL10Task(data_dir=data_dir, verify=False).load(tmp_path / "h1", ALL, 0)
    assert "test_X.bin" in one_line(exc_info) and "not a whole number" in one_line(exc_info)

    data_dir = tmp_path / "svhn"
    official_files.write_svhn(data_dir)
    target = data_dir / "train_32x32.mat"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(DataError) as exc_info:
        SVHNTask(data_dir=data_dir, verify=False).load(tmp_path / "h2", ALL, 0)
    assert "train_32x32.mat" in one_line(exc_info) and "truncated" in one_line(exc_info)


def test_stl10_labels_must_match_images(tmp_path, official_files):
    data_dir = tmp_path / "stl"
    official_files.write_stl10(data_dir)
    (data_dir / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(DataError, match="holds 3 labels for 50 images"):
        STL10Task(data_dir=data_dir, verify=False).load(tmp_path / "home", ALL, 0)


# -- missing files ----------------------------------------------------------------------------


def unreachable(monkeypatch, module):
    """Point every URL at a closed local port: the download fails at once, never hangs."""
    name = f"{module.__name__.rsplit('.', 1)[1]}_source_files"
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda: tuple(
        SourceFile(s.relpath, s.md5, f"http://127.0.0.1:9/{Path(s.relpath).name}", s.size)
        for s in real()))


def test_missing_stl10_files_offline_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(STL10, "url", "http://127.0.0.1:9/stl10_binary.tar.gz")
    home = tmp_path / "home"
    start = time.perf_counter()
    with pytest.raises(DataError) as exc_info:
        STL10Task(data_dir=tmp_path / "nothing").load(home, ALL, 0)
    assert time.perf_counter() - start < 30
    message = one_line(exc_info)
    for name in ("train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin"):
        assert f"stl10_binary/{name}" in message
    assert message.count("(from http://127.0.0.1:9/stl10_binary.tar.gz)") == 1
    assert str(home / "datasets" / "stl10") in message and "--data-dir" in message
    assert f"{tmp_path / 'nothing'} (which does not exist)" in message
    assert "Tried to download: " in message
    assert not list((home / "datasets" / "stl10").glob(".partial-download-*"))  # cleaned up


def test_missing_svhn_files_name_each_url(tmp_path, monkeypatch, official_files):
    official_files.write_svhn(tmp_path / "partial", {"train": 20})
    with pytest.raises(DataError) as exc_info:
        SVHNTask(data_dir=tmp_path / "partial", download=False).load(tmp_path / "home", ALL, 0)
    message = one_line(exc_info)
    assert "train_32x32.mat" not in message
    for split in ("test", "extra"):
        url = dict((f, u) for u, f, _ in SVHN.split_list.values())[f"{split}_32x32.mat"]
        assert f"{split}_32x32.mat (from {url})" in message
    assert "Downloading is off." in message
    assert str(tmp_path / "home" / "datasets" / "svhn") in message

    unreachable(monkeypatch, svhn)
    with pytest.raises(DataError, match="Tried to download: .*URLError"):
        SVHNTask(data_dir=tmp_path / "partial").load(tmp_path / "home", ALL, 0)


def test_files_in_home_are_found_without_data_dir(tmp_path, official_files):
    home = tmp_path / "home"
    official_files.write_svhn(home / "datasets" / "svhn")
    data = SVHNTask(verify=False, download=False).load(home, ALL, 0)
    assert len(data.splits[TEST]) == official_files.svhn_rows["test"]


def test_flat_data_dir_is_accepted_for_stl10(tmp_path, official_files):
    official_files.write_stl10(tmp_path / "d")
    data = STL10Task(data_dir=tmp_path / "d" / "stl10_binary", verify=False).load(
        tmp_path / "home", ALL, 0)
    assert len(data.splits[TEST]) == official_files.stl10_rows["test"]


# -- the store --------------------------------------------------------------------------------


def test_store_is_built_once_and_reused(svhn_dir, tmp_path, monkeypatch, official_files):
    calls = []
    real = SVHNTask._convert

    def counting(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(SVHNTask, "_convert", counting)
    task = SVHNTask(data_dir=svhn_dir, verify=False, download=False)
    first = task.load(tmp_path, ALL, 0)
    second = task.load(tmp_path, get_preset("smoke"), 3)
    assert len(calls) == 1 and first.path == second.path
    assert first.path.parent == tmp_path / "datasets" / "svhn"
    with h5py.File(first.path, "r") as h5:
        assert h5.attrs["complete"] and h5["extra/images"].shape == (80, 3, 32, 32)  # native
        assert json.loads(h5.attrs["rows"]) == official_files.svhn_rows
    checksums = json.loads((tmp_path / "datasets" / "svhn" / "checksums.json").read_text())
    assert len(checksums["files"]) == 3


def test_damaged_store_is_rebuilt_with_a_warning(stl10_dir, tmp_path, official_files):
    task = STL10Task(data_dir=stl10_dir, verify=False, download=False)
    path = task.load(tmp_path, ALL, 0).path
    with h5py.File(path, "a") as h5:
        h5.attrs["complete"] = False
    with pytest.warns(UserWarning, match="Rebuilding .*incomplete"):
        data = task.load(tmp_path, ALL, 0)
    assert len(data.splits[TEST]) == official_files.stl10_rows["test"]
    del data  # HDF5 would keep serving the open file from memory
    gc.collect()
    path.write_bytes(b"not hdf5")
    with pytest.warns(UserWarning, match="Rebuilding .*cannot be read"):
        task.load(tmp_path, ALL, 0)


def test_other_files_get_another_store(tmp_path, official_files):
    official_files.write_svhn(tmp_path / "a")
    official_files.write_svhn(tmp_path / "b", {"train": 20, "test": 10, "extra": 30})
    a = SVHNTask(data_dir=tmp_path / "a", verify=False).load(tmp_path / "home", ALL, 0)
    b = SVHNTask(data_dir=tmp_path / "b", verify=False).load(tmp_path / "home", ALL, 0)
    assert a.path != b.path and a.fingerprint != b.fingerprint
    assert len(b.splits[TEST]) == 10


# -- lazy views -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, official_files):
    images = official_files.random_images(40, 8, 5)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as h5:
        h5["x"] = images
    return path, images


@pytest.mark.parametrize("tile", [1, 2])
def test_h5images_indexing_matches_numpy(store, tile):
    path, images = store
    rows = np.array([0, 1, 2, 5, 9, 10, 11, 30, 39])
    view = H5Images(path, "x", rows=rows, tile=tile)
    expected = np.tile(images[rows], (1, 1, tile, tile))
    assert view.shape == expected.shape and len(view) == len(rows)
    assert view.dtype == np.uint8 and view.ndim == 4
    keys = [slice(None), slice(2, 7), slice(None, None, -2), slice(1, 8, 3), 3, -1,
            np.array([8, 0, 3, 3, -2]), [1, 2], np.arange(9) % 2 == 0, np.array([], int),
            (slice(0, 4), 0), (2, slice(None), 0), Ellipsis]
    for key in keys:
        got = view[key]
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected[key], err_msg=repr(key))
    np.testing.assert_array_equal(np.asarray(view), expected)
    with pytest.raises(IndexError):
        view[9]
    with pytest.raises(IndexError):
        view[np.array([0, 9])]


def test_h5images_reads_dense_and_sparse_rows(store, monkeypatch):
    path, images = store
    monkeypatch.setattr(h5_images, "READ_BLOCK_BYTES", 3 * 8 * 8 * 6)  # blocks of 6 rows
    for rows in (np.arange(40), np.arange(0, 40, 2), np.arange(0, 40, 7), np.array([3, 4, 39])):
        view = H5Images(path, "x", rows=rows)
        np.testing.assert_array_equal(view[:], images[rows])
        np.testing.assert_array_equal(view[1:-1], images[rows[1:-1]])


def test_h5images_pickles_and_refuses_bad_rows(store):
    path, images = store
    view = H5Images(path, "x", rows=slice(10, 20), tile=2)
    clone = pickle.loads(pickle.dumps(view))
    np.testing.assert_array_equal(clone[:], view[:])
    np.testing.assert_array_equal(view.untiled()[:], images[10:20])
    assert "tile=2" in repr(view)
    with pytest.raises(ValueError, match="increasing"):
        H5Images(path, "x", rows=np.array([3, 1]))
    with pytest.raises(ValueError, match="increasing"):
        H5Images(path, "x", rows=np.array([0, 40]))


def test_autoencoder_trains_on_the_svhn_views_as_on_arrays(svhn_data, monkeypatch):
    """The tiled extra split is held at 32x32 (or streamed), with the arrays' exact weights."""
    import torch

    from embench.encoders import autoencoder

    train = svhn_data.splits[AUTOENCODER_TRAIN].images
    val = svhn_data.splits[AUTOENCODER_VAL].images
    held = autoencoder._training_splits(train, val, torch.device("cpu"))
    assert [h.resident_bytes for h in held] == [len(train) * 3 * 32 * 32, len(val) * 3 * 32 * 32]
    np.testing.assert_array_equal(held[0].take(torch.tensor([1, 5, 6])).numpy(), train[[1, 5, 6]])
    config = {"z_dim": 4, "batch_size": 16, "max_epochs": 1, "device": "cpu"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches on shared cores: one thread is several times faster
    try:
        reference = autoencoder.AE(**config).fit(np.asarray(train), np.asarray(val))
        assert autoencoder.AE(**config).fit(train, val).fingerprint == reference.fingerprint
        monkeypatch.setattr(autoencoder, "RESIDENT_BYTES", 0)  # read from the store per batch
        assert autoencoder.AE(**config).fit(train, val).fingerprint == reference.fingerprint
    finally:
        torch.set_num_threads(threads)


# -- metric, contract, CLI --------------------------------------------------------------------


def test_accuracy():
    task = SVHNTask()
    assert task.score(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3])) == 0.75
    scores = np.eye(10)[[0, 1, 2, 3]]
    assert task.score(np.array([0, 1, 2, 4]), scores) == 0.75
    with pytest.raises(ValueError, match="same|needs"):
        task.score(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="at least one"):
        task.score(np.array([], int), np.array([], int))


def test_conformance(stl10_data, svhn_data):
    for task, data in ((STL10Task(), stl10_data), (SVHNTask(), svhn_data)):
        check_task(task)
        check_task_data(data, task.kind)
        assert set(data.splits) == set(SPLITS)
        assert data.splits[TEST].images.shape[2:] == (task.image_size, task.image_size)
        assert data.splits[AUTOENCODER_TRAIN].labels is None
    first_line = STL10Task.__doc__.splitlines()[0]
    assert first_line == "STL-10 classification (96x96, 10 classes, accuracy)."
    assert (SVHNTask.metric_name, SVHNTask.metric_direction) == ("accuracy", "higher")
    assert (STL10Task.image_size, SVHNTask.image_size) == (96, 64)


def test_official_files_come_from_torchvision():
    names = {s.relpath: s.md5 for s in STL10Task().source_files()}
    assert names == {f"stl10_binary/{f}": md5 for f, md5 in STL10.train_list + STL10.test_list}
    assert {s.relpath: (s.url, s.md5) for s in SVHNTask().source_files()} == {
        f: (u, md5) for u, f, md5 in SVHN.split_list.values()}


@pytest.mark.parametrize("task", ["stl10", "svhn"])
def test_cli_smoke_run_on_fixture_files(task, stl10_dir, svhn_dir, tmp_path):
    data_dir = stl10_dir if task == "stl10" else svhn_dir
    args = ["run", "--encoder", "pca", "--task", task, "--data-dir", str(data_dir),
            "--no-verify-data", "--preset", "smoke", "--home", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    (record_path,) = (tmp_path / "results" / task).glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["metric"] == {"name": "accuracy", "direction": "higher"}
    assert 0 <= record["test"]["mlp"] <= 1
    assert record["data_info"]["verified"] is False
    task_class = {"stl10": STL10Task, "svhn": SVHNTask}[task]
    assert record["data_info"]["rows_used"] == task_sizes(task_class, "smoke")


def test_cli_without_files_or_network_is_one_line(tmp_path, monkeypatch):
    unreachable(monkeypatch, svhn)
    result = CliRunner().invoke(main, ["data", "svhn", "--home", str(tmp_path),
                                       "--data-dir", str(tmp_path / "none")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SVHN files not found" in lines[0], result.stderr
