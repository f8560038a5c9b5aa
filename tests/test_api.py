"""embench.evaluate and embench.TorchEncoder: the Python API, and the README's example of it."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import embench
from embench.encoders.pca import PCAEncoder
from embench.errors import ConfigError, EncoderContractError, PluginError
from embench.results import load_record, path_of
from embench.runner import RunConfig, run

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tested: tests/test_api.py -->"
SMOKE = {"preset": "smoke", "progress": False}

pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")  # Box2D


@pytest.fixture
def home(_isolated_home, smoke_lunarlander, one_torch_thread):
    """This test's EMBENCH_HOME (conftest's), holding the smoke data already."""
    return smoke_lunarlander(_isolated_home)


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten())


def images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


# -- evaluate, end to end on smoke LunarLander -------------------------------------------------


def test_readme_example_runs_verbatim(home, capsys):
    text = README.read_text()
    assert text.count(MARKER) == 1
    (code,) = re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)
    assert "embench.evaluate(" in code and len(code.strip().splitlines()) < 10
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert "'mlp'" in printed and "'linear'" in printed
    (path,) = (home / "results" / "lunarlander").glob("resnet-z512-*.json")
    assert load_record(path).encoder_config["module"] == "torchvision.models.resnet.ResNet"


def test_registered_name_and_module_factory_return_the_written_record(home):
    record = embench.evaluate("pca", "lunarlander", **SMOKE)
    assert record.encoder == "pca" and record.z_dim == 8 and record.preset == "smoke"
    assert record == load_record(path_of(home, record))
    assert set(record.test) >= {"mlp", "linear", "baseline"}

    other = embench.evaluate("embench.encoders.pca:PCAEncoder", "lunarlander", z=4, **SMOKE)
    assert other.encoder == "PCAEncoder" and other.z_dim == 4
    assert other.encoder_distribution == "(not packaged)"
    assert other == load_record(path_of(home, other))


def test_module_is_wrapped_its_record_reused_and_new_weights_rerun(home):
    net = tiny_net()
    first = embench.evaluate(net, "lunarlander", **SMOKE)
    assert first.encoder == "sequential" and first.z_dim == first.embedding_dim == 16
    assert first.encoder_spec == "python:embench.api.TorchEncoder"
    assert first.encoder_distribution is None
    assert first.encoder_config["module"] == "torch.nn.modules.container.Sequential"
    assert first == load_record(path_of(home, first))

    again = run(RunConfig(encoder=embench.TorchEncoder(net), task="lunarlander",
                          preset="smoke"))
    assert again.record_hit and again.record == first  # same weights: nothing recomputed
    assert embench.evaluate(net, "lunarlander", **SMOKE) == first

    with torch.no_grad():
        net[0].bias += 1
    changed = embench.evaluate(net, "lunarlander", **SMOKE)
    assert changed.fingerprints["encoder"] != first.fingerprints["encoder"]
    assert changed.fingerprints["run"] != first.fingerprints["run"]
    assert len(list((home / "results" / "lunarlander").glob("sequential-z16-*.json"))) == 2

    # verify re-searches the probes on the cached embeddings; a full rerun cannot rebuild
    # an object from its record, and says so
    from embench.verify import verify_record

    checked = verify_record(first, home=home)
    assert checked.recomputed == checked.stored
    with pytest.raises(ConfigError, match="was a Python object.*Verify without --full"):
        verify_record(first, home=home, full=True)


def test_encoder_object_is_used_as_constructed_and_checkpointed(home):
    first = run(RunConfig(encoder=PCAEncoder(z_dim=4), task="lunarlander", preset="smoke"))
    assert first.record.encoder == "pcaencoder" and first.record.z_dim == 4
    assert first.record.encoder_spec == "python:embench.encoders.pca.PCAEncoder"
    path_of(home, first.record).unlink()  # without the record: the fitted object is reused
    second = run(RunConfig(encoder=PCAEncoder(z_dim=4), task="lunarlander", preset="smoke"))
    assert second.checkpoint_hit and second.cache_hit
    assert second.record.test == first.record.test


# -- TorchEncoder -------------------------------------------------------------------------------


class Recorder(nn.Module):
    """Returns its input flattened; remembers batch sizes and whether it ran in train mode."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.inner = nn.Dropout(0.5)
        self.calls = []

    def forward(self, x):
        self.calls.append((len(x), self.training, self.inner.training))
        return (x * self.scale).flatten(1)


def test_batches_scaling_and_eval_mode():
    module = Recorder()
    module.train()
    module.inner.eval()  # a mixed state that must come back as it was
    encoder = embench.TorchEncoder(module, batch_size=4)
    x = images(10, size=2)
    out = encoder.encode(x)
    assert [n for n, _, _ in module.calls] == [4, 4, 2]  # N not a multiple of batch_size
    assert not any(train or inner for _, train, inner in module.calls)
    assert module.training and not module.inner.training
    assert out.dtype == np.float32 and out.shape == (10, 12)
    np.testing.assert_allclose(out, x.reshape(10, -1) / 255.0, rtol=1e-6)
    floats = x.astype(np.float32) / 255  # float images in [0, 1] are taken as they are
    np.testing.assert_allclose(encoder.encode(floats), out, rtol=1e-6)


def test_preprocess_is_applied_and_keys_the_fingerprint():
    plain = embench.TorchEncoder(Recorder())
    doubled = embench.TorchEncoder(Recorder(), preprocess=lambda x: 2 * x)
    x = images(3, size=2)
    np.testing.assert_allclose(doubled.encode(x), 2 * plain.encode(x), rtol=1e-6)
    assert doubled.fingerprint != plain.fingerprint
    assert embench.TorchEncoder(Recorder(), batch_size=8).fingerprint != plain.fingerprint


def test_embedding_dim_is_known_before_fit_and_checked_at_encode():
    assert embench.TorchEncoder(tiny_net()).embedding_dim == 16  # from a zero 64x64 image
    flat = embench.TorchEncoder(nn.Flatten(), image_size=4)
    assert flat.embedding_dim == 48
    with pytest.raises(EncoderContractError, match=r"Pass image_size=8 or embedding_dim=192"):
        flat.encode(images(2, size=8))
    assert embench.TorchEncoder(nn.Flatten(), embedding_dim=192).encode(images(2)).shape == (2, 192)


def test_fit_function_trains_the_module_and_none_means_pretrained():
    seen = []

    def train(module, train_images, val_images):
        seen.append((len(train_images), val_images is None))
        with torch.no_grad():
            module[0].weight.mul_(2)

    net = tiny_net()
    encoder = embench.TorchEncoder(net, fit=train, name="tiny")
    before = encoder.fingerprint
    assert encoder.fit(images(5, 64), None) is encoder and seen == [(5, True)]
    assert encoder.fingerprint != before and encoder.name == "tiny"
    pretrained = embench.TorchEncoder(tiny_net())
    unchanged = pretrained.fingerprint
    assert pretrained.fit(images(5, 64), images(2, 64)) is pretrained
    assert pretrained.fingerprint == unchanged


@pytest.mark.subprocess
def test_fingerprint_follows_the_weights_across_processes():
    net = tiny_net(seed=3)
    copy = tiny_net(seed=4)
    copy.load_state_dict(net.state_dict())
    assert embench.TorchEncoder(copy).fingerprint == embench.TorchEncoder(net).fingerprint
    code = ("import torch, embench\nfrom torch import nn\ntorch.manual_seed(3)\n"
            "net = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU(), "
            "nn.AdaptiveAvgPool2d(2), nn.Flatten())\n"
            "print(embench.TorchEncoder(net).fingerprint)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300, check=True)
    assert child.stdout.strip() == embench.TorchEncoder(net).fingerprint


def test_plain_callable_is_named_and_fingerprinted_by_its_code_and_label():
    def pooled_pixels(x):
        return x.mean(dim=(2, 3))

    encoder = embench.TorchEncoder(pooled_pixels)
    assert encoder.name == "pooled_pixels" and encoder.embedding_dim == 3
    labelled = embench.TorchEncoder(pooled_pixels, fingerprint="v2")
    assert labelled.fingerprint != encoder.fingerprint
    assert embench.TorchEncoder(pooled_pixels).fingerprint == encoder.fingerprint
    np.testing.assert_allclose(encoder.encode(images(2))[0], images(2)[0].mean((1, 2)) / 255,
                               rtol=1e-5)


# -- bad input: one clear error, before any data is made -----------------------------------------


class EncodeOnly:
    def encode(self, images):
        return np.zeros((len(images), 2), np.float32)


class EncodeOnlyModule(nn.Flatten):
    def encode(self, x):
        return x.mean(dim=(2, 3))


def test_bad_encoders_are_refused_with_one_clear_error(_isolated_home):
    with pytest.raises(PluginError, match=r"not an encoder.*registered encoder name"):
        embench.evaluate(42, "lunarlander", **SMOKE)
    with pytest.raises(PluginError, match=r"lacks embedding_dim, fingerprint, fit"):
        embench.evaluate(EncodeOnly(), "lunarlander", **SMOKE)
    with pytest.raises(PluginError, match=r"has encode but lacks .*TorchEncoder\(obj.encode\)"):
        embench.evaluate(EncodeOnlyModule(), "lunarlander", **SMOKE)  # not wrapped: refused
    with pytest.raises(PluginError, match=r"lacks embedding_dim, fingerprint, fit"):
        run(RunConfig(encoder=EncodeOnly(), task="lunarlander", preset="smoke"))
    with pytest.raises(ConfigError, match=r"fixed embedding size 16.*Drop --z"):
        embench.evaluate(tiny_net(), "lunarlander", z=8, **SMOKE)
    with pytest.raises(ConfigError, match=r"is an object, already constructed"):
        embench.evaluate(tiny_net(), "lunarlander", options={"z_dim": 3}, **SMOKE)
    with pytest.raises(ConfigError, match=r"module must be callable"):
        embench.TorchEncoder(42)
    with pytest.raises(ConfigError, match=r"batch_size=0"):
        embench.TorchEncoder(nn.Flatten(), batch_size=0)
    with pytest.raises(ConfigError, match=r"Invalid encoder name"):
        embench.TorchEncoder(nn.Flatten(), name="../x")
    with pytest.raises(PluginError, match=r"could not size its embeddings.*embedding_dim="):
        _ = embench.TorchEncoder(nn.Linear(5, 2)).embedding_dim
    assert not (_isolated_home / "datasets").exists()  # refused before any data was made


@pytest.mark.subprocess
def test_import_embench_stays_cheap():
    code = ("import sys, embench\nassert 'torch' not in sys.modules, 'torch at import'\n"
            "assert {'evaluate', 'TorchEncoder'} <= set(dir(embench))\n"
            "assert callable(embench.evaluate) and embench.TorchEncoder.__name__\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(AttributeError, match="no attribute 'evalute'"):
        embench.evalute  # noqa: B018
