"""A generic minibatch training loop with early stopping, shared by every trainable component.

The loop knows nothing about images or models: the caller keeps its data on the device and
hands in two functions that map a batch *of indices* to a mean loss. The loop owns everything
that must be the same everywhere: the seeded shuffling, train/eval modes, ``torch.no_grad``
validation averaged over all samples, bf16 autocast, early stopping with a snapshot of the
best weights (restored at the end), timing, progress, and an epoch-end hook whose
:class:`TrainState` can be stored (safetensors + JSON) and handed back to resume.

Example:
    >>> data = torch.rand(100, 8)
    >>> model = torch.nn.Linear(8, 8)
    >>> loss = lambda idx: torch.nn.functional.mse_loss(model(data[idx]), data[idx])
    >>> result = fit_module(model, loss, loss, n_train=80, n_val=20, ...)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from embench.devices import autocast, bf16_is_native, resolve_device, resolve_precision
from embench.errors import ConfigError, EmbenchError
from embench.progress import stage
from embench.protocols import patience_for

#: A function from a batch of sample indices (an index tensor while training, a ``slice`` while
#: validating; both index a tensor as ``data[batch]``) to the batch's mean loss (0-d tensor).
LossFn = Callable[[Any], torch.Tensor]


class TrainingDivergedError(EmbenchError):
    """The loss became NaN or infinite before any epoch produced a usable model."""


def copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state dict (the snapshot early stopping restores)."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        history: one dict per epoch run: ``epoch`` (1-based), ``train_loss``, ``val_loss``,
            ``seconds`` (whole epoch), ``images_per_second`` (training pass only).
        n_epochs: epochs run (less than ``max_epochs`` when early stopping fired).
        best_epoch: the epoch whose weights were kept (1-based; 0 if resumed past none).
        best_val_loss: validation loss of the kept weights, averaged over all samples.
        stopped_early: whether patience ran out before ``max_epochs``.
        train_seconds: wall time of the whole run, validation included.
        images_per_second: training images per second over all training passes.
    """

    history: list[dict[str, float]]
    n_epochs: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    train_seconds: float
    images_per_second: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (history included)."""
        return {
            "history": [dict(row) for row in self.history],
            "n_epochs": self.n_epochs,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "stopped_early": self.stopped_early,
            "train_seconds": self.train_seconds,
            "images_per_second": self.images_per_second,
        }


@dataclass
class TrainState:
    """Everything needed to continue a run after an epoch: weights, optimizer, RNGs, counters.

    Handed to ``on_epoch_end`` after every epoch. :meth:`to_parts` splits it into a flat dict
    of tensors (for ``safetensors``) and a JSON-ready dict; :meth:`from_parts` reverses that,
    and ``fit_module(..., resume=state)`` continues exactly where the run stopped.
    """

    epoch: int
    best_epoch: int
    best_val_loss: float
    bad_epochs: int
    history: list[dict[str, float]]
    module_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor] | None
    optimizer_state: dict[str, Any]
    rng_states: dict[str, torch.Tensor] = field(default_factory=dict)
    train_images: int = 0
    train_time: float = 0.0
    seconds: float = 0.0

    def to_parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Split into ``(tensors, meta)``: a flat ``str -> Tensor`` dict and a JSON-ready dict."""
        tensors: dict[str, torch.Tensor] = {}
        for name, value in self.module_state.items():
            tensors[f"module/{name}"] = value
        for name, value in (self.best_state or {}).items():
            tensors[f"best/{name}"] = value
        for name, value in self.rng_states.items():
            tensors[f"rng/{name}"] = value
        optimizer_tensors, optimizer_meta = _split_optimizer_state(self.optimizer_state)
        tensors.update({f"optimizer/{key}": value for key, value in optimizer_tensors.items()})
        tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
        meta = {
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "bad_epochs": self.bad_epochs,
            "history": [dict(row) for row in self.history],
            "has_best_state": self.best_state is not None,
            "optimizer": optimizer_meta,
            "train_images": self.train_images,
            "train_time": self.train_time,
            "seconds": self.seconds,
        }
        return tensors, meta

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> TrainState:
        """Rebuild a state from :meth:`to_parts`'s output."""

        def section(prefix: str) -> dict[str, torch.Tensor]:
            start = len(prefix) + 1
            return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}

        return cls(
            epoch=int(meta["epoch"]),
            best_epoch=int(meta["best_epoch"]),
            best_val_loss=float(meta["best_val_loss"]),
            bad_epochs=int(meta["bad_epochs"]),
            history=[dict(row) for row in meta["history"]],
            module_state=section("module"),
            best_state=section("best") if meta["has_best_state"] else None,
            optimizer_state=_join_optimizer_state(section("optimizer"), meta["optimizer"]),
            rng_states=section("rng"),
            train_images=int(meta.get("train_images", 0)),
            train_time=float(meta.get("train_time", 0.0)),
            seconds=float(meta.get("seconds", 0.0)),
        )


def _split_optimizer_state(
    state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer ``state_dict`` -> (tensors keyed ``state/<param>/<name>``, JSON rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{param_id}/{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`_split_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split("/", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, slots in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(slots)
    return {"state": state, "param_groups": [dict(group) for group in meta["param_groups"]]}


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def _format_info(row: Mapping[str, float]) -> str:
    return (
        f"epoch {row['epoch']} train {row['train_loss']:.4g} val {row['val_loss']:.4g} "
        f"{row['images_per_second']:.0f} img/s"
    )


def fit_module(
    module: nn.Module,
    train_loss: LossFn,
    val_loss: LossFn,
    *,
    n_train: int,
    n_val: int,
    optimizer: torch.optim.Optimizer,
    batch_size: int = 512,
    max_epochs: int = 50,
    patience: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    val_batch_size: int | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    progress: Any = None,
    description: str = "train",
    on_epoch_end: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
) -> TrainResult:
    """Train ``module`` by minibatches with early stopping; keep and restore the best weights.

    Each epoch shuffles ``range(n_train)`` with a ``torch.Generator`` seeded by ``seed``, calls
    ``train_loss(batch)`` for every batch of ``batch_size`` indices (sorted within the batch,
    which helps memory locality and changes nothing for a mean loss) under autocast, steps the
    optimizer, then evaluates ``val_loss`` on contiguous slices of ``range(n_val)`` in eval mode
    under ``torch.no_grad``. Validation loss is the sample-weighted mean over all validation
    samples (a partial last batch weighs by its size). The run stops after ``patience`` epochs
    without a strictly lower validation loss; the best epoch's weights are restored.

    Args:
        module: the parameters being trained; switched to ``train()``/``eval()`` by the loop.
        train_loss: batch of indices (1-D long tensor on ``device``) -> mean loss.
        val_loss: batch (a ``slice``) -> mean loss; called under ``torch.no_grad``.
        n_train: number of training samples (>= 1).
        n_val: number of validation samples (>= 1; early stopping needs them).
        optimizer: optimizer over (some of) ``module``'s parameters.
        batch_size: training batch size.
        max_epochs: most epochs to run.
        patience: epochs without improvement before stopping; ``None`` uses the paper's
            :func:`~embench.protocols.patience_for`.
        seed: seeds the shuffling generator (the caller seeds its own model init and noise).
        device: where the index tensors are made (``"auto"`` resolves like
            :func:`embench.devices.resolve_device`).
        precision: ``"fp32"`` or ``"bf16"`` (``torch.autocast`` around every loss call).
        val_batch_size: validation batch size (default: twice ``batch_size``).
        generators: extra generators the loss functions draw from (e.g. VAE noise), whose
            states are saved in :class:`TrainState` and restored on resume.
        progress: optional ``rich`` progress; one bar of ``max_epochs`` advancing by batch.
        description: the bar's label.
        on_epoch_end: called with a :class:`TrainState` after every epoch (checkpointing hook).
        resume: a state from ``on_epoch_end`` to continue from instead of starting fresh.

    Returns:
        A :class:`TrainResult`; ``module`` holds the best weights afterwards.

    Raises:
        ConfigError: on invalid sizes, precision or device.
        TrainingDivergedError: if no epoch produced a finite validation loss.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("batch_size", batch_size),
                        ("max_epochs", max_epochs)):
        _check_positive(name, value)
    if patience is None:
        patience = patience_for(max_epochs)
    _check_positive("patience", patience)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)  # "auto": bf16 only where native
    val_batch_size = val_batch_size or 2 * batch_size
    generators = dict(generators or {})
    if precision == "bf16" and not bf16_is_native(device):
        warnings.warn(
            f"{description}: this {device.type.upper()} has no native bf16 support, so bf16 "
            "is emulated and much slower than fp32 (about 10x on AVX2 CPUs). Use "
            "precision='fp32' here.",
            RuntimeWarning,
            stacklevel=2,
        )

    shuffle = torch.Generator()
    shuffle.manual_seed(seed)
    state = TrainState(
        epoch=0, best_epoch=0, best_val_loss=math.inf, bad_epochs=0, history=[],
        module_state={}, best_state=None, optimizer_state={},
    )
    if resume is not None:
        state = resume
        module.load_state_dict(resume.module_state)
        optimizer.load_state_dict(resume.optimizer_state)
        shuffle.set_state(resume.rng_states["shuffle"])
        for name, gen in generators.items():
            gen.set_state(resume.rng_states[name])

    n_batches = math.ceil(n_train / batch_size)
    stopped_early = False
    with stage(progress, description, total=max_epochs) as bar:
        if state.epoch:
            bar.advance(state.epoch, info=_format_info(state.history[-1]))
        while state.epoch < max_epochs:
            if state.bad_epochs >= patience:
                stopped_early = True
                break
            epoch_start = time.perf_counter()
            module.train()
            order = torch.randperm(n_train, generator=shuffle).to(device)
            running = torch.zeros((), device=device, dtype=torch.float64)
            for start in range(0, n_train, batch_size):
                batch = order[start:start + batch_size].sort().values
                with autocast(device, precision):
                    loss = train_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running += loss.detach().double() * len(batch)
                bar.advance(1 / n_batches)
            train_loss_value = running.item() / n_train  # one device sync per epoch
            train_time = time.perf_counter() - epoch_start

            module.eval()
            total = torch.zeros((), device=device, dtype=torch.float64)
            with torch.no_grad(), autocast(device, precision):
                for start in range(0, n_val, val_batch_size):
                    stop = min(start + val_batch_size, n_val)
                    total += val_loss(slice(start, stop)).detach().double() * (stop - start)
            val_loss_value = total.item() / n_val

            state.epoch += 1
            state.train_images += n_train
            state.train_time += train_time
            row = {
                "epoch": state.epoch,
                "train_loss": train_loss_value,
                "val_loss": val_loss_value,
                "seconds": time.perf_counter() - epoch_start,
                "images_per_second": n_train / train_time if train_time > 0 else 0.0,
            }
            state.seconds += row["seconds"]
            state.history.append(row)
            if math.isfinite(val_loss_value) and val_loss_value < state.best_val_loss:
                state.best_val_loss, state.best_epoch, state.bad_epochs = (
                    val_loss_value, state.epoch, 0
                )
                state.best_state = copy_state(module)
            else:
                state.bad_epochs += 1
            if state.best_state is None and not math.isfinite(train_loss_value):
                raise TrainingDivergedError(
                    f"{description}: the loss is {train_loss_value} after epoch {state.epoch}.",
                    "Lower the learning rate, or use precision='fp32'.",
                )
            bar.update(info=_format_info(row))
            if on_epoch_end is not None:
                state.module_state = copy_state(module)
                state.optimizer_state = copy.deepcopy(optimizer.state_dict())
                state.rng_states = {"shuffle": shuffle.get_state()}
                state.rng_states.update({n: g.get_state() for n, g in generators.items()})
                on_epoch_end(state)

    if state.best_state is None:
        raise TrainingDivergedError(
            f"{description}: no epoch reached a finite validation loss.",
            "Lower the learning rate, or use precision='fp32'.",
        )
    module.load_state_dict(state.best_state)
    module.eval()
    return TrainResult(
        history=state.history,
        n_epochs=state.epoch,
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        stopped_early=stopped_early,
        train_seconds=state.seconds,
        images_per_second=state.train_images / state.train_time if state.train_time else 0.0,
    )
