import numpy as np
import pytest

from embench.encoders.pca import PCAEncoder
from embench.errors import ConfigError, NotFittedError
from embench.testing import tiny_images


def test_pca_matches_sklearn_projection():
    from sklearn.decomposition import PCA

    train = tiny_images(40, 64, 3)
    enc = PCAEncoder(z_dim=5, seed=0).fit(train, train[:8])
    flat = train.reshape(40, -1).astype(np.float32) / 255
    ref = PCA(5, svd_solver="randomized", random_state=0).fit(flat)
    np.testing.assert_allclose(np.abs(enc.encode(train[:8])),
                               np.abs(ref.transform(flat[:8])), rtol=1e-3, atol=1e-3)
    assert enc.val_mse_ is not None and enc.val_mse_ < flat.var()


def test_unfitted_and_bad_z():
    with pytest.raises(NotFittedError, match="not fitted yet. Call 'fit' first"):
        PCAEncoder().encode(tiny_images(2))
    with pytest.raises(ConfigError, match="exceeds"):
        PCAEncoder(z_dim=100).fit(tiny_images(10), None)


def test_fingerprint_depends_on_data():
    a = PCAEncoder(z_dim=3).fit(tiny_images(20, seed=1))
    b = PCAEncoder(z_dim=3).fit(tiny_images(20, seed=2))
    assert a.fingerprint != b.fingerprint
