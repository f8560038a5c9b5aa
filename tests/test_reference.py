"""The reference encoders: frozen AlexNet conv2 features and the untrained autoencoder."""

import numpy as np
import pytest
import torch

from embench.encoders.autoencoder import FourLayerCVAE
from embench.encoders.perceptual import build_perceptual_network
from embench.encoders.reference import AlexNetFeatures, UntrainedAE
from embench.errors import ConfigError, NotFittedError
from embench.testing import check_encoder

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (6, 3, 64, 64), dtype=np.uint8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Tiny forward passes: one torch thread."""


def test_alexnet_features_are_the_pooled_perceptual_map(tmp_path):
    encoder = AlexNetFeatures(perceptual_weights="random", device="cpu", home=tmp_path)
    assert encoder.embedding_dim == 192 * 3 * 3  # known before fit (runs are filed under it)
    embeddings = encoder.fit(IMAGES).encode(IMAGES)
    network = build_perceptual_network("alexnet", 5, "random", home=tmp_path)
    with torch.no_grad():
        maps = network(torch.from_numpy(IMAGES).float() / 255)
    want = torch.nn.functional.adaptive_avg_pool2d(maps, 3).flatten(1).numpy()
    assert embeddings.shape == (6, 1728) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, want, rtol=1e-5, atol=1e-6)
    assert AlexNetFeatures(pool=7, perceptual_weights="random").embedding_dim == 192 * 49


def test_alexnet_features_identity_follows_pool_and_weights(tmp_path):
    def fitted(**config):
        return AlexNetFeatures(device="cpu", home=tmp_path, **config).fit(IMAGES)

    base = fitted(perceptual_weights="random")
    assert base.fingerprint == fitted(perceptual_weights="random").fingerprint
    assert base.fingerprint != fitted(perceptual_weights="random", pool=2).fingerprint
    assert base.training_stats()["perceptual"]["weights"] == "random"


def test_untrained_ae_is_where_a_trained_one_starts():
    encoder = UntrainedAE(z_dim=8, seed=3, device="cpu").fit(IMAGES)
    torch.manual_seed(3)
    start = FourLayerCVAE(8, 64).eval()
    with torch.no_grad():
        want = start.encode(torch.from_numpy(IMAGES).float() / 255)[0].numpy()
    np.testing.assert_allclose(encoder.encode(IMAGES), want, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)  # the weights are the seed's, whatever the global RNG did before
    assert UntrainedAE(z_dim=8, seed=3).fit(IMAGES).fingerprint == encoder.fingerprint
    other = UntrainedAE(z_dim=8, seed=4, device="cpu").fit(IMAGES)
    assert other.fingerprint != encoder.fingerprint
    assert encoder.training_stats()["trained"] is False


@pytest.mark.parametrize("factory, config", [
    (AlexNetFeatures, {"perceptual_weights": "random", "device": "cpu"}),
    (UntrainedAE, {"z_dim": 4, "device": "cpu"}),
])
def test_reference_encoders_meet_the_encoder_contract(factory, config, tmp_path):
    check_encoder(factory, **config)


@pytest.mark.parametrize("factory", [AlexNetFeatures, UntrainedAE])
def test_before_fit_they_say_so(factory):
    with pytest.raises(NotFittedError):
        factory().encode(IMAGES)


def test_bad_pool_is_refused():
    with pytest.raises(ConfigError, match="pool must be an integer >= 1"):
        _ = AlexNetFeatures(pool=0, perceptual_weights="random").embedding_dim
