import errno
import os

import pytest

from embench.errors import ConfigError, StorageError
from embench.storage import (
    atomic_dir,
    atomic_path,
    fingerprint,
    resolve_home,
    safe_name,
    sha256_arrays,
    write_json,
)


def test_resolve_home_prefers_argument_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBENCH_HOME", str(tmp_path / "env"))
    assert resolve_home() == (tmp_path / "env").resolve()
    assert resolve_home(tmp_path / "arg") == (tmp_path / "arg").resolve()


def test_atomic_path_renames_on_success_only(tmp_path):
    final = tmp_path / "out.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("hello")
        assert not final.exists()
    assert final.read_text() == "hello"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert final.read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_replaces_existing(tmp_path):
    final = tmp_path / "ckpt"
    for content in ("one", "two"):
        with atomic_dir(final) as tmp:
            (tmp / "f").write_text(content)
    assert (final / "f").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_unwritable_location_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="Cannot write") as info:
        write_json(blocker / "x.json", {})
    assert "--home" in str(info.value) and "\n" not in str(info.value)
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "disk is full"),
                                             (errno.EROFS, "not writable"),
                                             (errno.EACCES, "not writable")])
def test_os_errors_are_named(tmp_path, code, words):
    from embench.storage import _storage_error

    error = _storage_error(tmp_path / "f", OSError(code, os.strerror(code)))
    assert words in str(error)


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", "..", "x\\y"])
def test_safe_name_refuses_escapes(bad):
    with pytest.raises(ConfigError, match="not be safe"):
        safe_name(bad)


def test_fingerprints_are_content_keys():
    import numpy as np

    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    a = np.arange(6, dtype=np.float32)
    assert sha256_arrays(a) == sha256_arrays(a.copy())
    assert sha256_arrays(a) != sha256_arrays(a.reshape(2, 3))
