import copy
import json
import warnings
from importlib.metadata import entry_points

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.progress import Progress

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
SMALL = {"z_dim": Z, "batch_size": 12, "device": "cpu"}
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
def _one_torch_thread():
    """Tiny batches on a shared 2-core box: one thread avoids OpenMP barrier stalls (6x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.mark.parametrize("size", [64, 96])
def test_fast_network_computes_the_textbook_function(size):
    """Channels-last and the 1x1-seed matrix product change float rounding, nothing else:
    same parameters and state dict as the plain NCHW network, same outputs and gradients."""
    torch.manual_seed(0)
    fast = FourLayerCVAE(z_dim=Z, image_size=size)
    torch.manual_seed(0)
    plain = FourLayerCVAE(z_dim=Z, image_size=size, textbook=True)
    fast_state, plain_state = fast.state_dict(), plain.state_dict()
    assert list(fast_state) == list(plain_state)
    assert all(torch.equal(fast_state[k], plain_state[k]) for k in fast_state)
    assert type(plain.decoder[3]) is torch.nn.ConvTranspose2d
    assert fast.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(6, 3, size, size)
    outputs = []
    for net in (fast, plain):
        recon, mu, _ = net(x)
        F.mse_loss(recon, x).backward()
        outputs.append((recon, mu, [p.grad for p in net.parameters()]))
    (recon_a, mu_a, grads_a), (recon_b, mu_b, grads_b) = outputs
    torch.testing.assert_close(recon_a, recon_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(mu_a, mu_b, rtol=0, atol=1e-5)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-3, atol=1e-5)
    # At 64 px the decoder's seed is 1x1 and takes the matrix product; its output is NHWC.
    seed = fast.decoder[:3](mu_a.detach())
    assert seed.shape[-2:] == ((1, 1) if size == 64 else (3, 3))
    assert fast.decoder[3](seed).is_contiguous(memory_format=torch.channels_last)


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
    assert (encoder.precision_, encoder.device_) == ("fp32", "cpu")
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


def test_early_stopping_stops_and_restores_the_best_weights(monkeypatch):
    """After epoch 1, validation is made to look worse; with patience 1 training stops at 2.

    The bump is added only to what the loop sees, so the restored weights (epoch 1's) must
    reproduce ``best_val_loss_`` when their real validation loss is recomputed.
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
        loaded = loader.load(tmp_path / "vae", device="cpu")
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
    encoder.save(tmp_path / "p_vae")
    loaded = PerceptualVAE.load(tmp_path / "p_vae", device="cpu")
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


def test_passes_the_encoder_conformance_battery():
    from embench.testing import check_encoder

    check_encoder(AE, z_dim=Z, max_epochs=1, batch_size=12, device="cpu")


def test_the_perceptual_network_is_part_of_the_fingerprint(fitted):
    encoder = copy.deepcopy(fitted("p_ae"))
    before = encoder.fingerprint
    encoder.perceptual_ = {**encoder.perceptual_, "weights_sha256": "0" * 64}
    assert encoder.fingerprint != before


@pytest.mark.slow
def test_perceptual_encoders_train_with_the_imagenet_weights(tmp_path):
    """The paper's configuration end to end (fetches the AlexNet weights once: ~64 MB)."""
    from embench.encoders.perceptual import fetch_alexnet_weights

    fetch_alexnet_weights(tmp_path)
    encoder = PerceptualVAE(home=tmp_path, **FIT).fit(TRAIN, VAL)
    assert encoder.perceptual_["weights"] == "imagenet"
    assert encoder.perceptual_["layer"] == 5
    losses = [row["train_loss"] for row in encoder.history_]
    assert losses[-1] < losses[0]
    random = PerceptualVAE(home=tmp_path, **FIT, **RANDOM_P).fit(TRAIN, VAL)
    assert random.fingerprint != encoder.fingerprint
