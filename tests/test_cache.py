import h5py
import numpy as np
import pytest

from embench.cache import cache_path, check_embeddings, embed_splits, read_cache, write_cache
from embench.errors import ConfigError, EncoderContractError
from embench.protocols import SPLITS, Split, TaskData


@pytest.mark.parametrize(("out", "match"), [
    (np.full((3, 2), np.nan), "NaN or inf"),
    (np.array([[1.0, np.inf], [0, 0], [0, 0]]), "NaN or inf"),
    (np.zeros((2, 2)), "2 rows for 3 images"),
    (np.zeros(3), "expected 2-D"),
    (np.zeros((3, 2, 2)), "expected 2-D"),
    (np.array([["a"], ["b"], ["c"]]), "dtype"),
])
def test_contract_violations_name_the_encoder(out, match):
    with pytest.raises(EncoderContractError, match=match) as info:
        check_embeddings("mine", out, 3)
    assert "'mine'" in str(info.value)


def test_good_output_becomes_float32():
    assert check_embeddings("x", np.ones((3, 2), np.float64), 3).dtype == np.float32


def _data(n=5):
    images = np.zeros((n, 3, 8, 8), np.uint8)
    splits = {name: Split(images + i, np.arange(n, dtype=np.float32)[:, None])
              for i, name in enumerate(SPLITS)}
    return TaskData(splits, "data-fp")


class _Mean:
    calls = 0

    def encode(self, images):
        type(self).calls += 1
        return images.reshape(len(images), 3, -1).mean(axis=2).astype(np.float32)


def test_embed_write_read_round_trip(tmp_path):
    data = _data()
    emb, _ = embed_splits(_Mean(), "mean", data, batch_size=2)
    assert _Mean.calls == len(SPLITS) * 3  # batches of 2, 2, 1 per split
    path = cache_path(tmp_path, "mean", "t", "k" * 64)
    labels = {name: data.splits[name].labels for name in SPLITS}
    write_cache(path, "k" * 64, emb, labels, {})
    back = read_cache(path, "k" * 64, data.sizes())
    for i, name in enumerate(SPLITS):
        np.testing.assert_array_equal(back[name]["embeddings"], np.full((5, 3), i, np.float32))


def test_incomplete_or_mismatched_cache_is_ignored_with_warning(tmp_path):
    data = _data()
    emb, _ = embed_splits(_Mean(), "mean", data)
    path = cache_path(tmp_path, "mean", "t", "k" * 64)
    write_cache(path, "k" * 64, emb, {}, {})
    with pytest.warns(UserWarning, match="key does not match"):
        assert read_cache(path, "other", data.sizes()) is None
    with pytest.warns(UserWarning, match="wrong row count"):
        assert read_cache(path, "k" * 64, {**data.sizes(), "test": 6}) is None
    with h5py.File(path, "a") as fh:
        fh.attrs["complete"] = False
    with pytest.warns(UserWarning, match="incomplete"):
        assert read_cache(path, "k" * 64, data.sizes()) is None
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert read_cache(path, "k" * 64, data.sizes()) is None


def test_cache_path_refuses_escaping_names(tmp_path):
    with pytest.raises(ConfigError):
        cache_path(tmp_path, "../x", "t", "k" * 64)
