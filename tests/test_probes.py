import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console
from rich.progress import Progress
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import estimator_checks_generator
from sklearn.utils.validation import check_is_fitted

from embench.errors import ConfigError, NotFittedError
from embench.probes import (
    LeastSquaresProbe,
    LinearProbe,
    MLPProbe,
    SearchResult,
    one_hot,
    probe_grid,
    probe_loss,
    search_probes,
)
from embench.probes.search import mlp_name


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The data here is tiny: a second thread only adds synchronisation, which stalls badly
    when the machine is busy (e.g. a parallel test run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def regression_data(n=300, d=6, seed=0):
    """Two smooth nonlinear targets of Gaussian inputs: learnable, not linear."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.stack([np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2], np.tanh(X[:, 3]) - 0.3 * X[:, 4]], 1)
    return X, y.astype(np.float32)


def noise_data(n=120, d=6, seed=0):
    """Targets unrelated to the inputs: a big network overfits and early-stops quickly."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)


def blobs(n_per_class=60, d=5, seed=0, labels=("cat", "dog", "eel")):
    """Well separated Gaussian blobs with string labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(len(labels), d))
    X = np.concatenate([c + rng.normal(size=(n_per_class, d)) for c in centres])
    y = np.repeat(np.array(labels), n_per_class)
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


def split(X, y, n_train):
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


SMALL = {"max_epochs": 6, "batch_size": 64, "lr": 1e-2}


# ------------------------------------------------------------------------------------------
# sklearn contract
# ------------------------------------------------------------------------------------------

#: Checks of MLPProbe that train only once or twice (the others run with `-m slow`).
FAST_MLP_CHECKS = {
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_dont_overwrite_parameters",
    "check_fit_check_is_fitted",
    "check_estimators_unfitted",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_fit2d_1sample",
    "check_estimators_nan_inf",
    "check_estimators_empty_data_messages",
    "check_estimators_pickle",
    "check_valid_tag_types",
    "check_estimator_tags_renamed",
}
EXPECTED_FAILURES = {
    "check_regressor_multioutput": "predictions are float32 by design (embeddings are float32)",
}


def _sklearn_checks():
    estimators = [
        LeastSquaresProbe(),
        LeastSquaresProbe(kind="classification"),
        # enough Adam steps for the checks' R^2 > 0.5 and accuracy > 0.83 (30 at 1e-2 are not)
        LinearProbe(max_epochs=100, lr=3e-2),
        LinearProbe(kind="classification", max_epochs=100, lr=3e-2),
        MLPProbe(hidden=(16,), max_epochs=30, lr=1e-2),
        MLPProbe(hidden=(16,), kind="classification", max_epochs=30, lr=1e-2),
    ]
    for estimator in estimators:
        for instance, check in estimator_checks_generator(estimator):
            name = check.func.__name__
            marks = []
            if name in EXPECTED_FAILURES:
                marks.append(pytest.mark.xfail(reason=EXPECTED_FAILURES[name], strict=True))
            # LinearProbe subclasses MLPProbe but trains in a blink: all its checks run by default
            if type(estimator) is MLPProbe and name not in FAST_MLP_CHECKS:
                marks.append(pytest.mark.slow)
            yield pytest.param(instance, check, id=f"{estimator!r}-{name}", marks=marks)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("estimator", "check"), list(_sklearn_checks()))
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_clone_and_params_round_trip():
    probe = MLPProbe(hidden=(32, 16), activation="sigmoid", kind="classification", patience=3)
    copy = clone(probe)
    assert copy is not probe and copy.get_params() == probe.get_params()
    assert copy.set_params(hidden=(8,), lr=0.1) is copy
    assert copy.get_params()["hidden"] == (8,) and copy.get_params()["lr"] == 0.1
    assert probe.get_params()["hidden"] == (32, 16)
    X, y = regression_data(n=80)
    fitted = MLPProbe(hidden=(8,), **SMALL).fit(X, y)
    assert not hasattr(clone(fitted), "coefs_")
    assert is_classifier(MLPProbe(kind="classification")) and is_regressor(MLPProbe())
    assert is_classifier(LinearProbe(kind="classification")) and is_regressor(LinearProbe())
    assert clone(LinearProbe(patience=4)).get_params()["patience"] == 4


@pytest.mark.parametrize("probe", [LeastSquaresProbe(), LinearProbe(), MLPProbe()],
                         ids=lambda p: type(p).__name__)
def test_unfitted_probe_says_so(probe):
    name = type(probe).__name__
    message = rf"^This {name} instance is not fitted yet\. Call 'fit' first\.$"
    for method in (probe.predict, probe.predict_outputs):
        with pytest.raises(NotFittedError, match=message):
            method(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):  # embench's error is a ValueError, as sklearn's is
        probe.predict(np.zeros((2, 3), np.float32))
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(probe)


def test_grid_search_cv_drives_mlp_probes():
    X, y = regression_data(n=160)
    search = GridSearchCV(
        MLPProbe(max_epochs=8, batch_size=32, lr=1e-2),
        {"hidden": [(8,), (16, 8)], "activation": ["relu", "sigmoid"]},
        cv=2,
    ).fit(X, y)
    assert search.best_params_["hidden"] in [(8,), (16, 8)]
    assert search.best_estimator_.predict(X).shape == y.shape
    X, y = blobs(n_per_class=20)
    search = GridSearchCV(
        MLPProbe(kind="classification", max_epochs=8, batch_size=32, lr=1e-2),
        {"output": ["none", "softmax"]},
        cv=2,
    ).fit(X, y)
    assert set(search.best_estimator_.predict(X)) <= set(y)


# ------------------------------------------------------------------------------------------
# LinearProbe (trained like the MLPs), LeastSquaresProbe (closed form) and the loss
# ------------------------------------------------------------------------------------------


def torch_linear_regressor(X, y, X_val, y_val, *, epochs, batch_size, lr, patience, seed):
    """The paper's linear regressor written plainly: nn.Linear, MSE, Adam, early stopping."""
    from embench.probes.estimators import epoch_order, init_linear, seed_streams

    init_seed, shuffle_seed, _ = seed_streams(seed)
    layer = torch.nn.Linear(X.shape[1], y.shape[1])
    weight, bias = init_linear(X.shape[1], y.shape[1], torch.Generator().manual_seed(init_seed))
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(shuffle_seed)
    x, t = torch.from_numpy(X), torch.from_numpy(y)
    best, best_state, waited = np.inf, None, 0
    for _ in range(epochs):
        order = epoch_order(len(x), shuffle)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            loss = torch.nn.functional.mse_loss(layer(x[batch]), t[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = float(((layer(torch.from_numpy(X_val)) - torch.from_numpy(y_val)) ** 2).mean())
        if val < best:
            best, waited = val, 0
            best_state = (layer.weight.detach().clone(), layer.bias.detach().clone())
        else:
            waited += 1
            if waited >= patience:
                break
    return best_state[0].T.numpy(), best_state[1].numpy(), best


def test_linear_probe_is_one_layer_trained_with_adam_and_early_stopping():
    X, y = noise_data(n=300)  # noise: validation loss turns up, so early stopping acts
    X_train, y_train, X_val, y_val = split(X, y, 220)
    settings = {"max_epochs": 60, "batch_size": 64, "lr": 3e-2, "patience": 3, "seed": 4}
    probe = LinearProbe(**settings).fit(X_train, y_train, X_val, y_val)
    weight, bias, best = torch_linear_regressor(
        X_train, y_train, X_val, y_val, epochs=60, batch_size=64, lr=3e-2, patience=3, seed=4)
    assert len(probe.coefs_) == 1 and probe.coefs_[0].shape == (X.shape[1], y.shape[1])
    np.testing.assert_allclose(probe.coefs_[0], weight, atol=1e-6)
    np.testing.assert_allclose(probe.intercepts_[0], bias, atol=1e-6)
    assert probe.best_val_loss_ == pytest.approx(best, rel=1e-5)
    assert probe.n_epochs_ < 60 and probe.n_epochs_ == probe.best_epoch_ + 3
    # Stopped early, so it is not the least-squares fit (which over-fits the noise).
    closed = LeastSquaresProbe().fit(X_train, y_train)
    assert probe.loss(X_val, y_val) < closed.loss(X_val, y_val)


def test_linear_probe_trained_long_reaches_least_squares():
    X, y = regression_data(n=400)
    X_train, y_train, X_val, y_val = split(X, y, 300)
    # full batches, so that Adam settles instead of hopping around the minimum
    probe = LinearProbe(max_epochs=1500, batch_size=512, lr=1e-2, patience=1500, seed=0)
    probe.fit(X_train, y_train, X_val, y_val)
    closed = LeastSquaresProbe().fit(X_train, y_train)
    np.testing.assert_allclose(probe.predict(X_val), closed.predict(X_val), atol=0.01)


@pytest.mark.parametrize("one_dimensional", [False, True])
def test_least_squares_probe_equals_sklearn_least_squares(one_dimensional):
    X, y = regression_data(n=200)
    y = y[:, 0] if one_dimensional else y
    probe = LeastSquaresProbe().fit(X, y)
    reference = LinearRegression().fit(X.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(
        probe.coefs_[0], reference.coef_.T.reshape(X.shape[1], -1), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(
        probe.intercepts_[0], np.atleast_1d(reference.intercept_), rtol=1e-6, atol=1e-8
    )
    assert probe.predict(X).shape == y.shape and probe.predict(X).dtype == np.float32
    np.testing.assert_allclose(probe.predict(X), reference.predict(X), rtol=1e-5, atol=1e-5)


def test_linear_classifier_is_least_squares_on_one_hot_targets():
    X, y = blobs()
    probe = LeastSquaresProbe(kind="classification").fit(X, y)
    targets = one_hot(y, np.unique(y))
    reference = LinearRegression().fit(X.astype(np.float64), targets)
    np.testing.assert_allclose(probe.predict_outputs(X), reference.predict(X), atol=1e-5)
    assert list(probe.classes_) == ["cat", "dog", "eel"]
    assert (probe.predict(X) == y).mean() > 0.95
    assert probe.loss(X, y) == pytest.approx(probe_loss(reference.predict(X), targets), rel=1e-5)


def test_probe_loss_averages_over_all_samples_and_dims():
    outputs = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 1.0]])
    targets = np.zeros((3, 2))
    assert probe_loss(outputs, targets) == pytest.approx((1 + 9 + 1) / 6)
    with pytest.raises(ValueError, match="shape"):
        probe_loss(outputs, targets[:, :1])
    with pytest.raises(ValueError, match="not among the classes"):
        one_hot(np.array(["x"]), np.array(["a", "b"]))


# ------------------------------------------------------------------------------------------
# MLPProbe
# ------------------------------------------------------------------------------------------


def test_mlp_probe_learns():
    X, y = regression_data(n=400)
    X_train, y_train, X_val, y_val = split(X, y, 300)
    probe = MLPProbe(hidden=(32,), max_epochs=40, batch_size=32, lr=1e-2, patience=40)
    probe.fit(X_train, y_train, X_val, y_val)
    assert probe.train_loss_curve_[-1] < 0.5 * probe.train_loss_curve_[0]
    assert probe.best_val_loss_ < 0.5 * float(np.mean((y_val - y_train.mean(0)) ** 2))
    assert probe.predict(X_val).shape == y_val.shape and probe.predict(X_val).dtype == np.float32
    assert probe.score(X_val, y_val) > 0.5
    assert probe.n_epochs_ == 40 == len(probe.val_loss_curve_)


def test_mlp_probe_stops_early_and_keeps_its_best_weights():
    X, y = noise_data()
    X_train, y_train, X_val, y_val = split(X, y, 80)
    probe = MLPProbe(hidden=(128, 128), max_epochs=200, batch_size=16, lr=1e-2, patience=3)
    probe.fit(X_train, y_train, X_val, y_val)
    assert probe.n_epochs_ < 200
    assert probe.n_epochs_ == probe.best_epoch_ + 3 == len(probe.val_loss_curve_)
    assert probe.best_val_loss_ == min(probe.val_loss_curve_) < probe.val_loss_curve_[-1]
    # The returned weights are the best epoch's, not the last epoch's.
    assert probe.loss(X_val, y_val) == pytest.approx(probe.best_val_loss_, rel=1e-6)


def test_mlp_probe_holds_out_a_validation_split_deterministically():
    X, y = regression_data(n=100)
    first = MLPProbe(hidden=(8,), **SMALL).fit(X, y)
    again = MLPProbe(hidden=(8,), **SMALL).fit(X, y)
    other = MLPProbe(hidden=(8,), seed=1, **SMALL).fit(X, y)
    np.testing.assert_array_equal(first.coefs_[0], again.coefs_[0])
    assert not np.array_equal(first.coefs_[0], other.coefs_[0])
    with pytest.raises(ValueError, match="n_samples=1"):
        MLPProbe().fit(X[:1], y[:1])


def test_one_dimensional_regression_targets():
    X, y = regression_data(n=100)
    probe = MLPProbe(hidden=(8,), **SMALL).fit(X, y[:, 0])
    assert probe.predict(X).shape == (100,)
    assert probe.predict_outputs(X).shape == (100, 1)


def test_softmax_and_unknown_settings_are_refused():
    X, y = regression_data(n=40)
    with pytest.raises(ConfigError, match="only for classification"):
        MLPProbe(output="softmax").fit(X, y)
    with pytest.raises(ConfigError, match="activation='tanh'.*'relu', 'sigmoid'"):
        MLPProbe(activation="tanh").fit(X, y)
    with pytest.raises(ConfigError, match="kind='ranking'"):
        LeastSquaresProbe(kind="ranking").fit(X, y)
    with pytest.raises(ConfigError, match="hidden"):
        MLPProbe(hidden=()).fit(X, y)
    softmax = [{"hidden": (8,), "activation": "relu", "output": "softmax"}]
    with pytest.raises(ConfigError, match="only for classification"):
        search_probes(X, y, X, y, kind="regression", grid=softmax, max_epochs=1)


# ------------------------------------------------------------------------------------------
# The batched search
# ------------------------------------------------------------------------------------------


def test_paper_grid_sizes_and_names():
    regression, classification = probe_grid("regression"), probe_grid("classification")
    assert len(regression) == 18 and len(classification) == 36
    names = {mlp_name(tuple(e["hidden"]), e["activation"], e["output"]) for e in classification}
    assert len(names) == 36 and "mlp-128x64-relu-softmax" in names
    assert all(
        len(e["hidden"]) in (1, 2) and e["hidden"][-1] <= e["hidden"][0] for e in classification
    )
    assert {e["output"] for e in regression} == {"none"}


def test_search_selects_the_lowest_validation_loss():
    X, y = regression_data(n=300)
    X_train, y_train, X_val, y_val = split(X, y, 220)
    result = search_probes(X_train, y_train, X_val, y_val, kind="regression", **SMALL)
    assert isinstance(result, SearchResult)
    assert len(result.candidates) == 20 and result.candidates[0]["name"] == "linear"
    assert result.candidates[1]["name"] == "least_squares"
    mlps = [c for c in result.candidates if c["family"] == "mlp"]
    assert result.best_mlp_name == min(mlps, key=lambda c: c["val_loss"])["name"]
    selectable = [c for c in result.candidates if c["family"] != "least_squares"]
    assert result.best_name == min(selectable, key=lambda c: c["val_loss"])["name"]
    assert result.best_linear_name == "linear"
    assert isinstance(result.best_linear, LinearProbe)
    assert isinstance(result.least_squares, LeastSquaresProbe)
    best = result.candidate(result.best_mlp_name)
    assert isinstance(result.best_mlp, MLPProbe)
    assert result.best_mlp.get_params()["hidden"] == tuple(best["params"]["hidden"])
    # One loss for every candidate: MSE over all validation samples and dims.
    assert result.best_mlp.loss(X_val, y_val) == pytest.approx(best["val_loss"], rel=1e-5)
    linear_loss = result.candidate("linear")["val_loss"]
    assert result.best_linear.loss(X_val, y_val) == pytest.approx(linear_loss, rel=1e-6)
    assert result.least_squares.loss(X_val, y_val) == result.candidate("least_squares")["val_loss"]
    assert result.best_mlp.predict(X_val).shape == y_val.shape
    record = json.loads(json.dumps(result.to_dict()))
    assert record["best_mlp"] == result.best_mlp_name and len(record["candidates"]) == 20
    assert record["settings"]["patience"] == 10


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_batched_probes_equal_standalone_probes(kind):
    """Every probe of the batched grid reproduces MLPProbe trained alone with the same seed.

    The grid fuses the first layers of all probes of an activation into one matrix and runs
    a hand-written backward pass, so this also shows that the probes do not leak into each
    other and that the backward pass is the gradient, for ReLU and sigmoid alike.
    """
    if kind == "regression":
        X, y = regression_data(n=300)
    else:
        X, y = blobs(n_per_class=100)
    X_train, y_train, X_val, y_val = split(X, y, 220)  # 220 = 3 batches of 64 + 28
    settings = {"max_epochs": 4, "batch_size": 64, "lr": 1e-2, "seed": 3}
    result = search_probes(X_train, y_train, X_val, y_val, kind=kind, **settings)
    assert len(result.candidates) == 2 + (18 if kind == "regression" else 36)
    linear = LinearProbe(kind=kind, **settings).fit(X_train, y_train, X_val, y_val)
    for mine, theirs in zip(result.best_linear.coefs_ + result.best_linear.intercepts_,
                            linear.coefs_ + linear.intercepts_, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert result.candidate("linear")["val_loss"] == linear.best_val_loss_
    for entry in result.candidates[2:]:
        params = entry["params"]
        alone = MLPProbe(
            hidden=tuple(params["hidden"]),
            activation=params["activation"],
            output=params["output"],
            kind=kind,
            **settings,
        ).fit(X_train, y_train, X_val, y_val)
        batched = result.estimators[entry["name"]]
        for mine, theirs in zip(
            batched.coefs_ + batched.intercepts_, alone.coefs_ + alone.intercepts_, strict=True
        ):
            # Float rounding differs (fused first layers, transposed output layers and
            # torch's fused Adam kernel, against nn.Linear and single-tensor Adam);
            # observed <= 5e-6.
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=5e-5, err_msg=entry["name"])
        assert entry["val_loss"] == pytest.approx(alone.best_val_loss_, rel=1e-4)
        assert (entry["epochs_run"], entry["best_epoch"]) == (alone.n_epochs_, alone.best_epoch_)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_families_trained_side_by_side_give_bit_identical_results(kind):
    """The caller's torch threads train families on threads: the result must not change.

    Patience 1 makes probes stop at different epochs, so families shrink and drop out and
    the thread groups are rebalanced while training.
    """
    if kind == "regression":
        X, y = noise_data(n=300)
    else:
        X, y = blobs(n_per_class=100)
        y[::3] = y[::-3]  # label noise, so that probes overfit and stop
    X_train, y_train, X_val, y_val = split(X, y, 220)
    settings = {"max_epochs": 8, "batch_size": 64, "lr": 3e-2, "seed": 5, "patience": 1}

    def run(threads):
        torch.set_num_threads(threads)
        result = search_probes(X_train, y_train, X_val, y_val, kind=kind, **settings)
        assert torch.get_num_threads() == threads  # restored for the caller
        return result

    alone, side_by_side = run(1), run(3)
    assert len({c["epochs_run"] for c in alone.candidates[2:]}) > 1  # some stopped early
    assert alone.candidates == side_by_side.candidates
    for name, estimator in alone.estimators.items():
        if name == "least_squares":
            continue
        other = side_by_side.estimators[name]
        for mine, theirs in zip(estimator.coefs_ + estimator.intercepts_,
                                other.coefs_ + other.intercepts_, strict=True):
            np.testing.assert_array_equal(mine, theirs, err_msg=name)
        assert estimator.val_loss_curve_ == other.val_loss_curve_


def test_an_interrupted_search_stops_the_linear_probe_beside_it(monkeypatch):
    """With threads to spare the linear probe trains beside the MLPs; Ctrl-C must stop it
    within an epoch instead of waiting for it to finish."""
    from concurrent.futures import CancelledError

    from embench.probes import search as search_module

    X, y = regression_data(n=300)
    X_train, y_train, X_val, y_val = split(X, y, 220)
    outcomes = []
    train_mlp = search_module.train_mlp

    def recording(*args, **kwargs):
        try:
            return train_mlp(*args, **kwargs)
        except CancelledError:
            outcomes.append("cancelled")
            raise

    def interrupt(point):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_module, "train_mlp", recording)
    monkeypatch.setattr(search_module, "crash_point", interrupt)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            # 300 epochs of the linear probe take seconds; the MLPs stop after their first
            search_probes(X_train, y_train, X_val, y_val, kind="regression", max_epochs=300,
                          batch_size=64)
    finally:
        torch.set_num_threads(threads)
    assert outcomes == ["cancelled"]


def test_a_probe_that_stops_early_keeps_its_own_best_weights():
    X, y = noise_data(n=160)
    X_train, y_train, X_val, y_val = split(X, y, 100)
    grid = [
        {"hidden": (128, 128), "activation": "relu", "output": "none"},
        {"hidden": (32,), "activation": "sigmoid", "output": "none"},
        {"hidden": (64, 32), "activation": "sigmoid", "output": "none"},
    ]
    settings = {"max_epochs": 40, "batch_size": 16, "lr": 1e-2, "patience": 3}
    result = search_probes(X_train, y_train, X_val, y_val, kind="regression", grid=grid, **settings)
    runs = {c["name"]: c["epochs_run"] for c in result.candidates[2:]}
    early = min(runs, key=runs.get)
    assert runs[early] < max(runs.values()), runs  # one stopped while others trained on
    for entry in result.candidates[2:]:
        probe = result.estimators[entry["name"]]
        alone = MLPProbe(hidden=probe.hidden, activation=probe.activation, **settings).fit(
            X_train, y_train, X_val, y_val
        )
        assert (entry["epochs_run"], entry["best_epoch"]) == (alone.n_epochs_, alone.best_epoch_)
        np.testing.assert_allclose(probe.coefs_[0], alone.coefs_[0], atol=1e-4)
        assert probe.loss(X_val, y_val) == pytest.approx(entry["val_loss"], rel=1e-5)
    stopped = result.candidate(early)
    assert stopped["epochs_run"] == stopped["best_epoch"] + 3


def test_classification_search_end_to_end():
    X, y = blobs(n_per_class=80)
    X_train, y_train, X_val, y_val = split(X, y, 160)
    X_val, y_val, X_test, y_test = split(X_val, y_val, 40)
    result = search_probes(
        X_train,
        y_train,
        X_val,
        y_val,
        kind="classification",
        max_epochs=15,
        batch_size=32,
        lr=1e-2,
    )
    assert len(result.candidates) == 38
    assert {c["params"].get("output") for c in result.candidates[2:]} == {"none", "softmax"}
    for probe in (result.best_mlp, result.best_linear):
        predictions = probe.predict(X_test)
        assert set(predictions) <= {"cat", "dog", "eel"}
        assert (predictions == y_test).mean() > 0.9  # chance is 1/3


def test_classes_seen_only_in_validation_get_an_output():
    X, y = blobs(n_per_class=30)
    train = y != "eel"
    result = search_probes(X[train], y[train], X, y, kind="classification", **SMALL)
    assert list(result.best_mlp.classes_) == ["cat", "dog", "eel"]
    assert result.best_mlp.predict_outputs(X).shape == (len(X), 3)


def test_search_reports_progress_and_shortens_the_bar_when_all_stop():
    X, y = noise_data()
    X_train, y_train, X_val, y_val = split(X, y, 80)
    grid = [{"hidden": (64, 64), "activation": "relu", "output": "none"}]
    progress = Progress(console=Console(file=io.StringIO()))
    with progress:
        result = search_probes(
            X_train,
            y_train,
            X_val,
            y_val,
            kind="regression",
            grid=grid,
            max_epochs=300,
            batch_size=16,
            lr=1e-2,
            patience=2,
            progress=progress,
        )
    (bar,) = progress.tasks
    epochs = result.candidate(mlp_name((64, 64), "relu", "none"))["epochs_run"]
    assert epochs < 300 and bar.total == epochs == bar.completed
    assert bar.description == "probe search" and "0/1 active" in bar.fields["info"]


def test_search_refuses_mismatched_inputs():
    X, y = regression_data(n=60)
    with pytest.raises(ValueError, match="features"):
        search_probes(X, y, X[:, :3], y, kind="regression", max_epochs=1)
    with pytest.raises(ValueError, match="target columns"):
        search_probes(X, y, X, y[:, :1], kind="regression", max_epochs=1)
    with pytest.raises(ConfigError, match="kind="):
        search_probes(X, y, X, y, kind="segmentation", max_epochs=1)
    twice = [{"hidden": (8,), "activation": "relu", "output": "none"}] * 2
    with pytest.raises(ConfigError, match="repeats"):
        search_probes(X, y, X, y, kind="regression", grid=twice, max_epochs=1)
