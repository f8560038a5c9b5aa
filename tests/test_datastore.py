import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from embench.datastore import Unusable, load_or_build, read_store, write_store
from embench.errors import DataError

FP = "f" * 64


def _images(h5):
    return h5["images"][...]


def _write(path, fingerprint=FP, **kwargs):
    with write_store(path, fingerprint, **kwargs) as h5:
        h5["images"] = np.arange(6, dtype=np.uint8).reshape(2, 3)
        h5.attrs["meta"] = "{}"


def test_a_written_store_reads_back_and_is_marked_complete(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["complete"] and h5.attrs["fingerprint"] == FP and h5.attrs["meta"] == "{}"
    value, problem = read_store(path, FP, _images)
    assert problem is None
    np.testing.assert_array_equal(value, np.arange(6).reshape(2, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_an_absent_store_is_no_problem(tmp_path):
    assert read_store(tmp_path / "none.h5", FP, _images) == (None, None)


def test_the_file_is_closed_unless_kept_open(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    closed, _ = read_store(path, FP, lambda h5: h5)
    assert not closed.id.valid
    kept, _ = read_store(path, FP, lambda h5: h5, keep_open=True)
    assert kept.id.valid and kept["images"].shape == (2, 3)
    kept.close()


def _clear_complete(path):
    with h5py.File(path, "r+") as h5:
        h5.attrs["complete"] = False


def _refuse(h5):
    raise Unusable("images have the wrong shape")


@pytest.mark.parametrize(
    ("damage", "fingerprint", "read", "why"),
    [
        (_clear_complete, FP, _images, "it is incomplete"),
        (None, "other", _images, "its fingerprint does not match the source files"),
        (None, FP, _refuse, "images have the wrong shape"),
        (None, FP, lambda h5: h5["labels"][...], "it cannot be read (KeyError"),
        (lambda path: path.write_bytes(b"not hdf5"), FP, _images, "it cannot be read (OSError"),
    ],
)
def test_an_unusable_store_says_why(tmp_path, damage, fingerprint, read, why):
    path = tmp_path / "s.h5"
    _write(path)
    if damage is not None:
        damage(path)
    seen = []

    def reading(h5):
        seen.append(h5)
        return read(h5)

    value, problem = read_store(path, fingerprint, reading, made_from="the source files")
    assert value is None and problem.startswith(why), problem
    assert all(not h5.id.valid for h5 in seen), "an unusable store must be closed"


def test_the_fingerprint_attribute_can_be_named(tmp_path):
    path = tmp_path / "cache.h5"
    _write(path, fingerprint_attr="key")
    with h5py.File(path, "r") as h5:
        assert h5.attrs["key"] == FP and "fingerprint" not in h5.attrs
    assert read_store(path, FP, _images, fingerprint_attr="key")[1] is None
    assert read_store(path, "other", _images, fingerprint_attr="key")[1] == (
        "its key does not match"
    )


def test_a_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), write_store(path, FP) as h5:
        h5["images"] = np.zeros(3)
        raise RuntimeError("the build failed")
    assert not list(tmp_path.iterdir())

    _write(path)  # an older store stays as it was when a rebuild fails
    with pytest.raises(RuntimeError), write_store(path, "new") as h5:
        raise RuntimeError("the build failed")
    assert read_store(path, FP, _images)[1] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_sigkill_while_writing_leaves_no_file_under_the_final_name(tmp_path):
    path = tmp_path / "s.h5"
    script = (
        "import os, signal, sys\n"
        "from embench.datastore import write_store\n"
        "with write_store(sys.argv[1], 'fp') as h5:\n"
        "    h5['images'] = list(range(1000))\n"
        "    h5.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert not path.exists()
    assert read_store(path, "fp", _images) == (None, None)


def test_load_or_build_builds_once_then_reuses(tmp_path):
    path = tmp_path / "s.h5"
    builds = []

    def build(h5):
        builds.append(1)
        h5["images"] = np.ones((2, 2), np.uint8)

    first = load_or_build(path, FP, _images, build)
    second = load_or_build(path, FP, _images, build)
    assert len(builds) == 1
    np.testing.assert_array_equal(first, second)
    assert (tmp_path / "s.lock").exists()


def test_load_or_build_rebuilds_a_damaged_store_with_a_warning(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    _clear_complete(path)

    def build(h5):
        h5["images"] = np.full((1, 1), 7, np.uint8)

    with pytest.warns(UserWarning, match=r"^Regenerating .*s\.h5: it is incomplete\.$"):
        value = load_or_build(path, FP, _images, build, redo="Regenerating")
    assert value.tolist() == [[7]]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_load_or_build_failures(tmp_path):
    path = tmp_path / "s.h5"

    def fail(h5):
        raise DataError("no source files")

    with pytest.raises(DataError, match="no source files"):
        load_or_build(path, FP, _images, fail)
    assert not path.exists()

    with pytest.raises(DataError, match="was written but cannot be read back: .*wrong shape"):
        load_or_build(path, FP, _refuse, lambda h5: None)


def test_concurrent_builders_share_one_build(tmp_path):
    path = tmp_path / "s.h5"
    builds, results = [], []

    def build(h5):
        builds.append(1)
        time.sleep(0.3)  # long enough for the other thread to find no store and wait
        h5["images"] = np.arange(4, dtype=np.uint8)

    threads = [
        threading.Thread(target=lambda: results.append(load_or_build(path, FP, _images, build)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(results) == 2
    np.testing.assert_array_equal(results[0], results[1])
