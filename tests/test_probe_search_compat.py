"""The probe search of this version trains what embench 0.3.0's search trained.

0.3.0's search (MLPs stacked per first width, zero-padded, trained with autograd) made the
records of 0.3.0. This version lays the layers out by depth, computes the output layers
transposed and takes torch's fused Adam kernel, so it rounds differently (which is why it is a
new version); everything else must be the same: the same initial weights, batches, updates,
early stopping and selection. 0.3.0's implementation is kept, frozen, in
``tests/reference/search_0_3_0.py``; both run here on data shaped to reach the corners: a last
batch of one row, few features, an odd number of classes, probes that stop early, several
threads, a validation set computed in blocks.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embench.probes import search
from embench.probes.metrics import one_hot

REFERENCE = Path(__file__).parent / "reference" / "search_0_3_0.py"


@pytest.fixture(scope="module")
def reference():
    """0.3.0's search module."""
    spec = importlib.util.spec_from_file_location("embench_0_3_0_search", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert hasattr(module, "_PaddedFamily")
    yield module
    del sys.modules[spec.name]


def data(n, d, n_out, kind, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    if kind == "regression":
        y = np.stack([np.tanh(X[:, 0]) + X[:, 1] * X[:, -1], np.sin(X[:, 0] * X[:, -1])], 1)
        return X, y.astype(np.float32)
    labels = (X[:, 0] > 0).astype(int) + 2 * (X[:, -1] > 0.5) + (X[:, 1] > 1.5)
    return X, one_hot(labels % n_out, np.arange(n_out)).astype(np.float32)


@pytest.mark.parametrize(
    "kind, n_train, n_val, d, n_out, workers",
    [
        ("regression", 1025, 301, 8, 2, 2),  # last batch of 1 row, 8 features
        ("classification", 1537, 301, 3, 5, 3),  # tiny first layer; 5 classes; 3 threads
        ("classification", 2047, 301, 16, 5, 1),  # last batch of 511 rows: odd offsets
        ("regression", 1100, 4100, 16, 2, 2),  # validation in blocks (2048 + 2052 rows)
    ],
)
def test_search_trains_as_0_3_0_did(reference, kind, n_train, n_val, d, n_out, workers):
    X, y = data(n_train, d, n_out, kind, seed=n_train)
    X_val, y_val = data(n_val, d, n_out, kind, seed=1)
    grid = search.probe_grid(kind)
    settings = {"max_epochs": 4, "batch_size": 512, "lr": 3e-3, "patience": 1, "seed": 2,
                "device": torch.device("cpu")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        old = reference._train_batched(grid, X, y, X_val, y_val, workers=1, **settings)
        new = search._train_batched(grid, X, y, X_val, y_val, workers=workers, **settings)
    finally:
        torch.set_num_threads(threads)
    assert len({fit.epochs_run for fit in old}) > 1  # some probes stopped early
    assert_same_training(grid, old, new)
    # the selection: the same winner, by a margin far above the rounding
    assert (np.argmin([fit.best_val_loss for fit in new])
            == np.argmin([fit.best_val_loss for fit in old]))


def assert_same_training(grid, old, new):
    """Same weights and losses up to float rounding; the same epochs.

    Observed here: weights within 6.3e-6, losses within 1.4e-7 (relative), after 4 epochs.
    """
    for spec, theirs, mine in zip(grid, old, new, strict=True):
        name = search.mlp_name(tuple(spec["hidden"]), spec["activation"], spec["output"])
        for a, b in zip(theirs.coefs + theirs.intercepts, mine.coefs + mine.intercepts,
                        strict=True):
            assert a.shape == b.shape, name
            np.testing.assert_allclose(b, a, rtol=0, atol=5e-5, err_msg=name)
        np.testing.assert_allclose(mine.val_loss_curve, theirs.val_loss_curve, rtol=1e-6,
                                   err_msg=name)
        np.testing.assert_allclose(mine.train_loss_curve, theirs.train_loss_curve, rtol=1e-6,
                                   err_msg=name)
        assert (mine.best_epoch, mine.epochs_run) == (theirs.best_epoch, theirs.epochs_run), name


def test_a_group_split_midway_changes_nothing(reference, monkeypatch):
    """When the sigmoid MLP stops, the relu group is split between the two threads midway:
    bit for bit what one thread computes, and what 0.3.0 trained."""
    X, y = data(700, 8, 2, "regression", seed=3)
    X_val, y_val = data(200, 8, 2, "regression", seed=4)
    grid = [{"hidden": (128, 128), "activation": "sigmoid", "output": "none"}] + [
        {"hidden": hidden, "activation": "relu", "output": "none"}
        for hidden in [(32,), (64,), (128,), (64, 64)]
    ]
    settings = {"max_epochs": 30, "batch_size": 64, "lr": 3e-3, "patience": 2, "seed": 2,
                "device": torch.device("cpu")}
    splits = []
    split = search._FusedGroup.split

    def counted(group):
        part = split(group)
        splits.append(part is not None)
        return part

    monkeypatch.setattr(search._FusedGroup, "split", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        old = reference._train_batched(grid, X, y, X_val, y_val, workers=1, **settings)
        new = search._train_batched(grid, X, y, X_val, y_val, workers=2, **settings)
        assert splits == [True] or splits[0]  # split once the sigmoid MLP had stopped
        one_thread = search._train_batched(grid, X, y, X_val, y_val, workers=1, **settings)
    finally:
        torch.set_num_threads(threads)
    assert old[0].epochs_run < min(fit.epochs_run for fit in old[1:])
    assert_same_training(grid, old, new)
    for alone, split_up in zip(one_thread, new, strict=True):
        for a, b in zip(alone.coefs + alone.intercepts, split_up.coefs + split_up.intercepts,
                        strict=True):
            np.testing.assert_array_equal(a, b)
        assert alone.val_loss_curve == split_up.val_loss_curve
