import json
import warnings

import pytest
import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import nn

from embench.errors import ConfigError
from embench.training import (
    TrainingDivergedError,
    TrainState,
    autocast,
    fit_module,
)


class Scalar(nn.Module):
    def __init__(self, value=0.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(value)))


def _walk_past_optimum(patience=2, max_epochs=20, **kwargs):
    """Training pulls w towards 10; validation prefers w = 3, so it improves, then worsens."""
    module = Scalar()
    result = fit_module(
        module,
        lambda idx: (module.w - 10.0) ** 2,
        lambda sl: (module.w - 3.0) ** 2,
        n_train=1, n_val=1, optimizer=torch.optim.SGD(module.parameters(), lr=0.05),
        batch_size=1, max_epochs=max_epochs, patience=patience, **kwargs,
    )
    return module, result


def test_early_stopping_stops_and_restores_the_best_weights():
    module, result = _walk_past_optimum(patience=2)
    # w after epoch k is 10 - 10 * 0.9**k: 1, 1.9, 2.71, 3.44, ... -> best at epoch 3
    assert result.best_epoch == 3
    assert result.n_epochs == 3 + 2
    assert result.stopped_early
    assert len(result.history) == result.n_epochs
    assert module.w.item() == pytest.approx(10 - 10 * 0.9**3, rel=1e-6)
    assert (module.w.item() - 3.0) ** 2 == pytest.approx(result.best_val_loss, rel=1e-6)
    assert result.history[2]["val_loss"] == result.best_val_loss


def test_runs_all_epochs_when_validation_keeps_improving():
    module = Scalar()
    result = fit_module(
        module, lambda idx: (module.w - 10.0) ** 2, lambda sl: (module.w - 10.0) ** 2,
        n_train=1, n_val=1, optimizer=torch.optim.SGD(module.parameters(), lr=0.05),
        batch_size=1, max_epochs=4,
    )
    assert (result.n_epochs, result.best_epoch, result.stopped_early) == (4, 4, False)


def test_default_patience_is_the_papers():
    _, result = _walk_past_optimum(patience=None, max_epochs=40)
    assert result.n_epochs == 3 + 10  # max(10, ceil(40 / 20))


def test_validation_loss_is_averaged_over_all_samples_not_batches():
    module = Scalar()
    values = torch.arange(5.0)  # batches of 2: means 0.5, 2.5, 4.0; per-sample mean 2.0
    result = fit_module(
        module, lambda idx: module.w**2, lambda sl: values[sl].mean() + 0 * module.w,
        n_train=3, n_val=5, optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        batch_size=2, val_batch_size=2, max_epochs=1,
    )
    assert result.history[0]["val_loss"] == pytest.approx(2.0)


def test_training_loss_is_weighted_by_batch_size():
    module = Scalar()
    values = torch.arange(5.0)
    result = fit_module(
        module, lambda idx: values[idx].mean() + 0 * module.w, lambda sl: module.w**2,
        n_train=5, n_val=1, optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        batch_size=2, max_epochs=1,
    )
    assert result.history[0]["train_loss"] == pytest.approx(2.0)


def _record_batches(seed, n_train=10, epochs=2):
    module, seen = Scalar(), []

    def train_loss(idx):
        seen.append(idx.tolist())
        return module.w**2

    fit_module(module, train_loss, lambda sl: module.w**2, n_train=n_train, n_val=1,
               optimizer=torch.optim.SGD(module.parameters(), lr=0.1), batch_size=4,
               max_epochs=epochs, seed=seed)
    return seen


def test_shuffling_is_seeded_and_covers_every_sample_once_per_epoch():
    first, again, other = _record_batches(0), _record_batches(0), _record_batches(1)
    assert first == again
    assert first != other
    epoch = first[:3]  # 10 samples in batches of 4: 4 + 4 + 2
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert sorted(i for b in epoch for i in b) == list(range(10))
    assert all(b == sorted(b) for b in epoch)
    assert first[:3] != first[3:]  # a new permutation each epoch


def _regression_run(tmp_path=None, stop_at=None, resume=None, max_epochs=6):
    """A noisy linear regression with Adam and a noise generator, optionally checkpointed."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randn(40, 1)
    torch.manual_seed(1)
    model = nn.Linear(4, 1)
    noise = torch.Generator().manual_seed(5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    def train_loss(idx):
        jitter = 0.1 * torch.randn(len(idx), 1, generator=noise)
        return nn.functional.mse_loss(model(x[idx]) + jitter, y[idx])

    def save_at(state):
        if state.epoch == stop_at:
            tensors, meta = state.to_parts()
            save_file(tensors, str(tmp_path / "state.safetensors"))
            (tmp_path / "state.json").write_text(json.dumps(meta))

    result = fit_module(
        model, train_loss, lambda sl: nn.functional.mse_loss(model(x[sl]), y[sl]),
        n_train=30, n_val=10, optimizer=optimizer, batch_size=8, max_epochs=max_epochs,
        patience=100, generators={"noise": noise}, on_epoch_end=save_at if stop_at else None,
        resume=resume,
    )
    return model, result


def test_a_saved_state_resumes_to_the_same_result(tmp_path):
    straight, straight_result = _regression_run(tmp_path, stop_at=3)
    state = TrainState.from_parts(
        load_file(str(tmp_path / "state.safetensors")),
        json.loads((tmp_path / "state.json").read_text()),
    )
    assert state.epoch == 3
    resumed, resumed_result = _regression_run(resume=state)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    losses = [(r["train_loss"], r["val_loss"]) for r in straight_result.history]
    assert losses == [(r["train_loss"], r["val_loss"]) for r in resumed_result.history]
    assert resumed_result.best_epoch == straight_result.best_epoch


def test_bf16_autocast_runs_on_cpu():
    model = nn.Linear(4, 4)
    dtypes = []

    def train_loss(idx):
        out = model(torch.ones(2, 4))
        dtypes.append(out.dtype)
        return out.float().pow(2).mean()

    for precision in ("fp32", "bf16"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # emulated bf16 on old CPUs
            result = fit_module(model, train_loss, train_loss, n_train=4, n_val=2,
                                optimizer=torch.optim.Adam(model.parameters()), batch_size=4,
                                max_epochs=1, precision=precision)
        assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert model(torch.ones(1, 4)).dtype == torch.float32


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("precision", "fp16", "Unknown precision 'fp16'"),
        ("device", "tpu", "Unknown device 'tpu'"),
        ("n_val", 0, "n_val must be an integer >= 1; got 0"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("patience", 0, "patience must be an integer >= 1"),
    ],
)
def test_invalid_options_are_refused(option, value, message):
    module = Scalar()
    kwargs = {"n_train": 2, "n_val": 1, "batch_size": 2, "max_epochs": 1, option: value}
    with pytest.raises(ConfigError, match=message):
        fit_module(module, lambda i: module.w**2, lambda s: module.w**2,
                   optimizer=torch.optim.SGD(module.parameters(), lr=0.1), **kwargs)


def test_a_diverging_loss_is_reported():
    module = Scalar()
    with pytest.raises(TrainingDivergedError, match="loss is nan"):
        fit_module(module, lambda i: module.w * float("nan"), lambda s: module.w * float("nan"),
                   n_train=2, n_val=1, optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
                   max_epochs=3)


def test_progress_bar_advances_per_epoch_and_shows_losses():
    progress = Progress(disable=True)
    _walk_past_optimum(progress=progress, description="train scalar")
    (task,) = progress.tasks
    assert task.description == "train scalar"
    assert task.completed == task.total == 20
    assert task.fields["info"].startswith("epoch 5 train ")
    assert "img/s" in task.fields["info"]
