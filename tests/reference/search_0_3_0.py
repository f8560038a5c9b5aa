"""embench 0.3.0's probe search, frozen: the reference of tests/test_probe_search_compat.py.

The code of ``embench/probes/search.py`` at commit bbba812, less its docstring: MLPs stacked
per first width, zero-padded, trained with autograd. Every board record carries its rounding.
Never edit it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_array

from embench.errors import ConfigError
from embench.faults import crash_point
from embench.probes.estimators import (
    ACTIVATIONS,
    LeastSquaresProbe,
    LinearProbe,
    MLPFit,
    MLPProbe,
    check_mlp_config,
    epoch_order,
    init_linear,
    resolve_device,
    seed_streams,
    squared_error_sum,
    train_mlp,
)
from embench.probes.metrics import check_kind
from embench.progress import stage
from embench.protocols import patience_for

#: The families that selection chooses from (``least_squares`` is reported, never selected).
SELECTED_FAMILIES = ("linear", "mlp")

#: Hidden layer shapes of the paper: 1 or 2 layers of 32, 64 or 128 units, second <= first.
PAPER_HIDDEN = tuple(
    [(width,) for width in (32, 64, 128)]
    + [(first, second) for first in (32, 64, 128) for second in (32, 64, 128) if second <= first]
)

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def probe_grid(kind: str) -> list[dict[str, Any]]:
    """The paper's MLP grid for a task kind: 18 MLPs for regression, 36 for classification.

    Args:
        kind: ``"regression"`` or ``"classification"`` (only the latter adds softmax outputs).

    Returns:
        One dict per MLP with keys ``hidden``, ``activation`` and ``output``.

    Raises:
        ConfigError: for an unknown kind.
    """
    check_kind(kind, "probe_grid")
    outputs = ("none", "softmax") if kind == "classification" else ("none",)
    return [
        {"hidden": hidden, "activation": activation, "output": output}
        for hidden in PAPER_HIDDEN
        for activation in ACTIVATIONS
        for output in outputs
    ]


def candidate_names(kind: str, grid: list[dict[str, Any]] | None = None) -> list[str]:
    """The names of every candidate :func:`search_probes` fits for ``kind`` (and ``grid``).

    Known before any probe trains, so a run's protocol can be named before it is computed.
    """
    grid = probe_grid(kind) if grid is None else grid
    return ["linear", "least_squares",
            *(mlp_name(tuple(e["hidden"]), e["activation"], e["output"]) for e in grid)]


def mlp_name(hidden: tuple[int, ...], activation: str, output: str) -> str:
    """A name that carries the configuration, e.g. ``mlp-128x64-relu-none``."""
    return f"mlp-{'x'.join(str(h) for h in hidden)}-{activation}-{output}"


@dataclass
class SearchResult:
    """Every candidate of a probe search, fitted, and the winners by validation loss.

    Attributes:
        kind: the task kind.
        candidates: one dict per probe, the linear probe first, then the closed-form extra,
            then the MLPs: ``name``, ``family`` (``"linear"``, ``"least_squares"`` or
            ``"mlp"``), ``params``, ``val_loss`` (MSE on the (one-hot) validation targets over
            all samples and target dims), ``epochs_run`` and ``best_epoch`` (both 0 for the
            closed-form fit).
        estimators: every candidate's fitted probe, by name (``predict`` works on each).
        settings: the training settings shared by all MLPs.
    """

    kind: str
    candidates: list[dict[str, Any]]
    estimators: dict[str, LinearProbe | LeastSquaresProbe | MLPProbe]
    settings: dict[str, Any] = field(default_factory=dict)

    def _best_of(self, family: str | None) -> str:
        families = SELECTED_FAMILIES if family is None else (family,)
        entries = [c for c in self.candidates if c["family"] in families]
        return _lowest_loss(entries)["name"]

    @property
    def best_name(self) -> str:
        """Name of the selected candidate with the lowest validation loss (linear or MLP)."""
        return self._best_of(None)

    @property
    def best(self) -> LinearProbe | MLPProbe:
        """The fitted probe with the lowest validation loss overall (the one the paper tests)."""
        return self.estimators[self.best_name]

    @property
    def best_mlp_name(self) -> str:
        """Name of the MLP with the lowest validation loss."""
        return self._best_of("mlp")

    @property
    def best_mlp(self) -> MLPProbe:
        """The fitted MLP with the lowest validation loss (Tables II-IV of the paper)."""
        return self.estimators[self.best_mlp_name]  # type: ignore[return-value]

    @property
    def best_linear_name(self) -> str:
        """Name of the best linear probe (there is one: ``"linear"``)."""
        return self._best_of("linear")

    @property
    def best_linear(self) -> LinearProbe:
        """The fitted linear probe, trained like the MLPs (Tables V-VII of the paper)."""
        return self.estimators[self.best_linear_name]  # type: ignore[return-value]

    @property
    def least_squares(self) -> LeastSquaresProbe | None:
        """The closed-form least-squares fit of the linear map (an extra), if it was made."""
        return self.estimators.get("least_squares")  # type: ignore[return-value]

    def candidate(self, name: str) -> dict[str, Any]:
        """The candidate entry called ``name``.

        Raises:
            KeyError: if there is none.
        """
        for entry in self.candidates:
            if entry["name"] == name:
                return entry
        raise KeyError(f"No candidate named {name!r}; have {[c['name'] for c in self.candidates]}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: settings, every candidate, and the names of the winners."""
        return {
            "kind": self.kind,
            "settings": dict(self.settings),
            "candidates": [dict(entry) for entry in self.candidates],
            "best": self.best_name,
            "best_mlp": self.best_mlp_name,
            "best_linear": self.best_linear_name,
        }


def _lowest_loss(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The entry with the lowest ``val_loss`` (NaN counts as worst; ties keep the first)."""
    return min(entries, key=lambda e: math.inf if math.isnan(e["val_loss"]) else e["val_loss"])


def search_probes(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    *,
    kind: str,
    max_epochs: int = 500,
    batch_size: int = 512,
    lr: float = 1e-3,
    patience: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    grid: list[dict[str, Any]] | None = None,
    progress: Any = None,
) -> SearchResult:
    """Train the linear probe and every MLP of the grid; select on validation MSE.

    Args:
        X_train: ``(N, D)`` probe-train embeddings.
        y_train: ``(N,)``/``(N, k)`` targets (regression) or ``(N,)`` labels (classification).
        X_val: ``(M, D)`` probe-validation embeddings (early stopping and selection).
        y_val: their targets or labels.
        kind: ``"regression"`` or ``"classification"``.
        max_epochs: most epochs per MLP.
        batch_size: mini-batch size.
        lr: Adam learning rate.
        patience: early-stopping patience; ``None`` means ``max(10, ceil(max_epochs / 20))``.
        seed: seeds initialisation and batch order (every MLP gets this seed, so each one
            equals ``MLPProbe(..., seed=seed)`` trained alone).
        device: torch device for the MLPs.
        grid: MLP configurations (dicts with ``hidden``, ``activation``, ``output``);
            defaults to :func:`probe_grid` of ``kind``.
        progress: optional :class:`rich.progress.Progress` for a "probe search" bar.

    Returns:
        A :class:`SearchResult`: every candidate, fitted, and the best MLP and linear probe
        (plus the closed-form least-squares fit, an extra that is never selected).

    Raises:
        ConfigError: for an unknown kind, an invalid grid entry or an unavailable device.
        ValueError: for malformed or non-finite data.

    Example:
        >>> result = search_probes(Xtr, ytr, Xva, yva, kind="regression", max_epochs=50)
        >>> result.best_mlp.predict(Xte)  # doctest: +SKIP
    """
    check_kind(kind, "search_probes")
    grid = probe_grid(kind) if grid is None else list(grid)
    if not grid:
        raise ConfigError("search_probes got an empty grid.", "Pass None for the paper's grid.")
    names = [mlp_name(tuple(e["hidden"]), e["activation"], e["output"]) for e in grid]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"search_probes got a grid that repeats {repeated}.", "List each configuration once."
        )
    for entry in grid:
        check_mlp_config(
            entry["hidden"], entry["activation"], entry["output"], kind, owner="search_probes"
        )
    torch_device = resolve_device(device)
    patience_epochs = patience_for(max_epochs) if patience is None else int(patience)

    X_train = check_array(X_train, dtype=np.float32)
    X_val = check_array(X_val, dtype=np.float32)
    if X_val.shape[1] != X_train.shape[1]:
        raise ValueError(
            f"X_val has {X_val.shape[1]} features, but X_train has {X_train.shape[1]}."
        )
    least_squares = LeastSquaresProbe(kind=kind)
    if kind == "classification":
        classes = np.unique(
            np.concatenate([np.asarray(y_train).ravel(), np.asarray(y_val).ravel()])
        )
        least_squares.fit(X_train, y_train, classes=classes)
    else:
        y_train = check_array(y_train, ensure_2d=False, dtype=np.float32)
        y_val = check_array(y_val, ensure_2d=False, dtype=np.float32)
        least_squares.fit(X_train, y_train)
    targets = least_squares._encode_targets(y_train)
    val_targets = least_squares._encode_targets(y_val)
    for name, x, y in (("train", X_train, targets), ("val", X_val, val_targets)):
        if len(x) != len(y):
            raise ValueError(f"X_{name} has {len(x)} rows but y_{name} has {len(y)}.")
    if val_targets.shape[1] != targets.shape[1]:
        raise ValueError(
            f"y_train has {targets.shape[1]} target columns but y_val has {val_targets.shape[1]}."
        )

    # Probe layers are tiny: torch's intra-op threads do not speed them up when the cores are
    # idle and slow them down up to 15x when other processes share the cores. So on CPU each
    # op runs on one thread, and the caller's thread budget goes to training families side by
    # side instead (see _train_batched). The thread count is restored afterwards.
    threads = torch.get_num_threads()
    if torch_device.type == "cpu":
        torch.set_num_threads(1)
    try:
        linear_fit = train_mlp(
            X_train, targets, X_val, val_targets, hidden=(), activation="relu", output="none",
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, patience=patience_epochs,
            seed=seed, device=torch_device,
        )
        fits = _train_batched(
            grid,
            X_train,
            targets,
            X_val,
            val_targets,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience_epochs,
            seed=seed,
            device=torch_device,
            progress=progress,
            workers=threads if torch_device.type == "cpu" else 1,
        )
    finally:
        torch.set_num_threads(threads)

    classes_of = least_squares.classes_ if kind == "classification" else None
    linear = LinearProbe(kind=kind, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
                         patience=patience, seed=seed,
                         device=device if isinstance(device, str) else str(torch_device))
    linear.n_features_in_ = X_train.shape[1]
    linear._set_target_info(y_train, classes=classes_of)
    linear._set_fitted(linear_fit)
    candidates: list[dict[str, Any]] = [
        {
            "name": "linear",
            "family": "linear",
            "params": {"hidden": [], "optimizer": "adam"},
            "val_loss": linear_fit.best_val_loss,
            "epochs_run": linear_fit.epochs_run,
            "best_epoch": linear_fit.best_epoch,
        },
        {
            "name": "least_squares",
            "family": "least_squares",
            "params": {"solver": "numpy.linalg.lstsq (closed form; an extra, never selected)"},
            "val_loss": least_squares.loss(X_val, y_val),
            "epochs_run": 0,
            "best_epoch": 0,
        },
    ]
    estimators: dict[str, LinearProbe | LeastSquaresProbe | MLPProbe] = {
        "linear": linear, "least_squares": least_squares,
    }
    for entry, fitted in zip(grid, fits, strict=True):
        hidden = tuple(int(h) for h in entry["hidden"])
        name = mlp_name(hidden, entry["activation"], entry["output"])
        candidates.append(
            {
                "name": name,
                "family": "mlp",
                "params": {
                    "hidden": list(hidden),
                    "activation": entry["activation"],
                    "output": entry["output"],
                },
                "val_loss": fitted.best_val_loss,
                "epochs_run": fitted.epochs_run,
                "best_epoch": fitted.best_epoch,
            }
        )
        probe = MLPProbe(
            hidden=hidden,
            activation=entry["activation"],
            output=entry["output"],
            kind=kind,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            seed=seed,
            device=device if isinstance(device, str) else str(torch_device),
        )
        probe.n_features_in_ = X_train.shape[1]
        probe._set_target_info(y_train, classes=classes_of)
        probe._set_fitted(fitted)
        estimators[name] = probe
    settings = {
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience_epochs,
        "seed": seed,
        "optimizer": "adam",
        "loss": "mse",
    }
    return SearchResult(kind=kind, candidates=candidates, estimators=estimators, settings=settings)


class _PaddedFamily:
    """MLPs with one first hidden width and one activation, as zero-padded weight stacks.

    Members are ordered by depth, so at every hidden layer the members that still have a
    layer to go form a suffix of the stack; the others leave there for the output layer.
    Stack ``l`` (hidden layers first, the output layer last) holds the members ``start[l]:``;
    the rows of the stacks are the members still training.
    """

    def __init__(
        self,
        probe_ids: list[int],
        specs: list[dict[str, Any]],
        n_in: int,
        n_out: int,
        init_seed: int,
        device: torch.device,
    ) -> None:
        order = sorted(range(len(specs)), key=lambda i: len(specs[i]["hidden"]))
        self.probe_ids = torch.tensor([probe_ids[i] for i in order])
        self.hidden = [tuple(int(h) for h in specs[i]["hidden"]) for i in order]
        self.relu = specs[0]["activation"] == "relu"
        self.softmax = torch.tensor([specs[i]["output"] == "softmax" for i in order])
        self.n_in, self.n_out, self.device = n_in, n_out, device
        self.width = max(max(h) for h in self.hidden)
        self.depth = torch.tensor([len(h) for h in self.hidden])
        n_hidden = int(self.depth.max())
        self.start = [int((self.depth <= layer).sum()) for layer in range(n_hidden)] + [0]
        self.active = torch.arange(len(order))  # members still training, in stack order
        self._build(init_seed)

    def _build(self, init_seed: int) -> None:
        """Draw each member's initial weights (from its own generator) into the stacks."""
        n_members, last = len(self.hidden), len(self.start) - 1
        weights, biases, masks = [], [], []
        for layer, start in enumerate(self.start):
            fan_in = self.n_in if layer == 0 else self.width
            fan_out = self.n_out if layer == last else self.width
            weights.append(torch.zeros(n_members - start, fan_in, fan_out))
            biases.append(torch.zeros(n_members - start, 1, fan_out))
            masks.append(torch.zeros(n_members - start, fan_in, 1))
        for member, hidden in enumerate(self.hidden):
            generator = torch.Generator().manual_seed(init_seed)
            sizes = [self.n_in, *hidden, self.n_out]
            for layer, fan_in, fan_out in zip(
                self._stacks_of(member), sizes[:-1], sizes[1:], strict=True
            ):
                weight, bias = init_linear(fan_in, fan_out, generator)
                row = member - self.start[layer]
                weights[layer][row, :fan_in, :fan_out] = weight.T
                biases[layer][row, 0, :fan_out] = bias
                masks[layer][row, :fan_in] = 1.0
        self.best_weights = [w.clone() for w in weights]
        self.best_biases = [b.clone() for b in biases]
        self.params = [p.to(self.device).requires_grad_() for p in [*weights, *biases]]
        self.row_masks = [m.to(self.device) for m in masks]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self._refresh_layout()

    def _stacks_of(self, member: int) -> list[int]:
        """The stacks a member's layers live in: its hidden layers, then the output stack."""
        return [*range(len(self.hidden[member])), len(self.start) - 1]

    def _members(self, layer: int) -> torch.Tensor:
        """Which active members stack ``layer`` holds, as a mask over ``self.active``."""
        return self.active >= self.start[layer]

    def _refresh_layout(self) -> None:
        """Recompute how many active members end at each depth, and the softmax mask."""
        depth = self.depth[self.active]
        self.depth_counts = [int((depth == d).sum()) for d in range(1, len(self.start))]
        softmax = self.softmax[self.active]
        self.softmax_mask = softmax.view(-1, 1, 1).to(self.device) if softmax.any() else None

    @property
    def n_active(self) -> int:
        """Members still training."""
        return len(self.active)

    @property
    def active_ids(self) -> torch.Tensor:
        """Grid indices of the members still training, in stack order."""
        return self.probe_ids[self.active]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(active members, B, n_out)`` for inputs ``x`` of shape ``(B, n_in)``."""
        n_stacks = len(self.start)
        weights, biases = self.params[:n_stacks], self.params[n_stacks:]
        act = torch.relu if self.relu else torch.sigmoid
        # The output stack, cut by depth: members leave the hidden stacks after their last
        # hidden layer. torch.split (not slicing): its backward is one cat, not zero fills.
        counts = self.depth_counts
        out_weights = torch.split(weights[-1] * self.row_masks[-1], counts)
        out_biases = torch.split(biases[-1], counts)
        first = weights[0]
        hidden = act(torch.baddbmm(biases[0], x.expand(first.shape[0], *x.shape), first))
        outputs = []
        for layer, count in enumerate(counts):
            if count:
                done, hidden = torch.split(hidden, [count, hidden.shape[0] - count])
                outputs.append(torch.baddbmm(out_biases[layer], done, out_weights[layer]))
            if layer + 1 < len(counts) and hidden.shape[0]:
                masked = weights[layer + 1] * self.row_masks[layer + 1]
                hidden = act(torch.baddbmm(biases[layer + 1], hidden, masked))
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        if self.softmax_mask is not None:
            out = torch.where(self.softmax_mask, torch.softmax(out, dim=-1), out)
        return out

    def adam_step(self, step_size: float, bias_correction2_sqrt: float) -> None:
        """``torch.optim.Adam``'s default update, element-wise on the stacks."""
        beta1, beta2 = _ADAM_BETAS
        with torch.no_grad():
            for param, exp_avg, exp_avg_sq in zip(
                self.params, self.exp_avg, self.exp_avg_sq, strict=True
            ):
                grad = param.grad
                if grad is None:  # a stack all of whose members have stopped
                    continue
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(_ADAM_EPS)
                param.addcdiv_(exp_avg, denom, value=-step_size)
                param.grad = None

    def cost(self) -> int:
        """Multiply-adds per input row of the active members (to balance threads)."""
        n_stacks = len(self.start)
        return sum(
            int(self._members(layer).sum()) * math.prod(self.params[layer].shape[1:])
            for layer in range(n_stacks)
        )

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, step_size: float, bias_correction2_sqrt: float
    ) -> torch.Tensor:
        """One Adam step on a mini-batch; returns each active member's mean loss on it."""
        per_member = ((self.forward(x) - y) ** 2).mean(dim=(1, 2))
        # The sum gives each member the gradient of its own mean loss (see the module doc).
        per_member.sum().backward()
        self.adam_step(step_size, bias_correction2_sqrt)
        return per_member.detach()

    def keep_best(self, improved: torch.Tensor) -> None:
        """Copy the weights of the ``improved`` active members into the best buffers."""
        n_stacks = len(self.start)
        for layer in range(n_stacks):
            members = self._members(layer)
            chosen = improved[members]
            if not bool(chosen.any()):
                continue
            rows = self.active[members][chosen] - self.start[layer]
            on_device = chosen.to(self.device)
            self.best_weights[layer][rows] = self.params[layer].detach()[on_device].cpu()
            self.best_biases[layer][rows] = self.params[n_stacks + layer].detach()[on_device].cpu()

    def drop(self, keep: torch.Tensor) -> None:
        """Keep only the active members where ``keep`` is true (stacks and Adam state shrink)."""
        n_stacks = len(self.start)
        rows = [keep[self._members(layer)].to(self.device) for layer in range(n_stacks)]
        for index in range(len(self.params)):
            kept = rows[index % n_stacks]
            self.params[index] = self.params[index].detach()[kept].requires_grad_()
            self.exp_avg[index] = self.exp_avg[index][kept]
            self.exp_avg_sq[index] = self.exp_avg_sq[index][kept]
        self.row_masks = [mask[kept] for mask, kept in zip(self.row_masks, rows, strict=True)]
        self.active = self.active[keep]
        if self.n_active:
            self._refresh_layout()

    def best_fit(self, member: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """A member's best weights, cut out of the padding, as ``(in, out)`` arrays."""
        sizes = [self.n_in, *self.hidden[member], self.n_out]
        coefs, intercepts = [], []
        for layer, fan_in, fan_out in zip(
            self._stacks_of(member), sizes[:-1], sizes[1:], strict=True
        ):
            row = member - self.start[layer]
            coefs.append(self.best_weights[layer][row, :fan_in, :fan_out].numpy().copy())
            intercepts.append(self.best_biases[layer][row, 0, :fan_out].numpy().copy())
        return coefs, intercepts


def _train_batched(
    grid: list[dict[str, Any]],
    X: np.ndarray,
    Y: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    *,
    max_epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    seed: int,
    device: torch.device,
    progress: Any = None,
    workers: int = 1,
) -> list[MLPFit]:
    """Train every MLP of ``grid`` together, with per-probe early stopping.

    Probes are split into families by first hidden width and activation (each family padded
    to its own widest layer, which keeps padding, and so wasted arithmetic, small on CPUs), but
    they see the same mini-batches: per batch each family takes one forward, one backward of
    its summed loss and one Adam step. With ``workers > 1`` the families are shared out between
    that many threads per epoch (balanced by arithmetic); the result does not depend on it.

    Returns:
        One :class:`MLPFit` per grid entry, in the grid's order.
    """
    init_seed, shuffle_seed, _ = seed_streams(seed)
    by_shape: dict[tuple[int, str], list[int]] = {}
    for index, spec in enumerate(grid):
        by_shape.setdefault((int(spec["hidden"][0]), spec["activation"]), []).append(index)
    all_families = [
        _PaddedFamily(ids, [grid[i] for i in ids], X.shape[1], Y.shape[1], init_seed, device)
        for _, ids in sorted(by_shape.items())
    ]
    x_train, y_train = torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device)
    x_val, y_val = torch.from_numpy(X_val).to(device), torch.from_numpy(Y_val).to(device)
    shuffle_gen = torch.Generator().manual_seed(shuffle_seed)
    n, n_probes = len(x_train), len(grid)
    best_loss = torch.full((n_probes,), math.inf, dtype=torch.float64)
    best_epoch = torch.zeros(n_probes, dtype=torch.long)
    epochs_run = torch.full((n_probes,), max_epochs, dtype=torch.long)
    waited = torch.zeros(n_probes, dtype=torch.long)
    val_curves: list[list[float]] = [[] for _ in range(n_probes)]
    train_curves: list[list[float]] = [[] for _ in range(n_probes)]
    steps, epoch = 0, 0
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    with (
        stage(progress, "probe search", total=max_epochs) as bar,
        pool if pool is not None else contextlib.nullcontext(),
    ):
        for epoch in range(1, max_epochs + 1):
            families = [family for family in all_families if family.n_active]
            ids = torch.cat([family.active_ids for family in families])
            groups = _balanced_groups(families, workers)
            order = epoch_order(n, shuffle_gen).to(device)
            train_sum = torch.zeros(len(ids), dtype=torch.float64, device=device)
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                x, y = x_train[batch], y_train[batch]
                steps += 1
                step_size = lr / (1 - _ADAM_BETAS[0] ** steps)
                bias_correction2_sqrt = math.sqrt(1 - _ADAM_BETAS[1] ** steps)
                per_probe = torch.cat(_run_groups(
                    pool, groups, families, _PaddedFamily.train_step,
                    x, y, step_size, bias_correction2_sqrt,
                ))
                train_sum += per_probe.double() * len(batch)
            val_loss = torch.cat(
                _run_groups(pool, groups, families, _validation_loss, x_val, y_val)
            )
            for probe, loss, train_loss in zip(
                ids.tolist(), val_loss.tolist(), (train_sum / n).cpu().tolist(), strict=True
            ):
                val_curves[probe].append(loss)
                train_curves[probe].append(train_loss)
            improved = val_loss < best_loss[ids]
            best_loss[ids[improved]] = val_loss[improved]
            best_epoch[ids[improved]] = epoch
            waited[ids] = torch.where(improved, 0, waited[ids] + 1)
            stopped = waited[ids] >= patience
            epochs_run[ids[stopped]] = epoch
            offset = 0
            for family in families:
                part = slice(offset, offset + family.n_active)
                offset += family.n_active
                family.keep_best(improved[part])
                if bool(stopped[part].any()):
                    family.drop(~stopped[part])
            n_active = sum(family.n_active for family in families)
            bar.advance(
                1, info=f"{n_active}/{n_probes} active, best val {float(best_loss.min()):.4g}"
            )
            crash_point("probe-epoch")
            if n_active == 0:
                break
        if epoch < max_epochs:
            bar.update(total=epoch)

    fits: list[MLPFit] = []
    members = {
        int(probe): (family, member)
        for family in all_families
        for member, probe in enumerate(family.probe_ids)
    }
    for probe in range(n_probes):
        family, member = members[probe]
        coefs, intercepts = family.best_fit(member)
        fits.append(
            MLPFit(
                coefs=coefs,
                intercepts=intercepts,
                best_val_loss=float(best_loss[probe]),
                best_epoch=int(best_epoch[probe]),
                epochs_run=int(epochs_run[probe]),
                val_loss_curve=val_curves[probe],
                train_loss_curve=train_curves[probe],
            )
        )
    return fits


def _balanced_groups(families: list[_PaddedFamily], workers: int) -> list[list[_PaddedFamily]]:
    """Share families out between at most ``workers`` groups: costliest first, to the lightest."""
    groups: list[list[_PaddedFamily]] = [[] for _ in range(min(workers, len(families)))]
    loads = [0] * len(groups)
    costs = {id(family): family.cost() for family in families}
    for family in sorted(families, key=lambda f: costs[id(f)], reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(family)
        loads[lightest] += costs[id(family)]
    return groups


def _run_groups(
    pool: ThreadPoolExecutor | None,
    groups: list[list[_PaddedFamily]],
    families: list[_PaddedFamily],
    work: Callable[..., torch.Tensor],
    *args: Any,
) -> list[torch.Tensor]:
    """``work(family, *args)`` for every family, group by group side by side in ``pool``.

    Returns the results in the order of ``families``.
    """

    def run(group: list[_PaddedFamily]) -> list[torch.Tensor]:
        return [work(family, *args) for family in group]

    if pool is None or len(groups) == 1:
        results = [run(group) for group in groups]
    else:
        results = [future.result() for future in [pool.submit(run, g) for g in groups]]
    by_family = {
        id(family): out
        for group, outs in zip(groups, results, strict=True)
        for family, out in zip(group, outs, strict=True)
    }
    return [by_family[id(family)] for family in families]


def _validation_loss(
    family: _PaddedFamily, x_val: torch.Tensor, y_val: torch.Tensor
) -> torch.Tensor:
    """Validation MSE per active member, over all samples and target dims (float64, on CPU)."""
    rows = max(1, 2**23 // (family.n_active * max(family.width, family.n_out)))
    total = torch.zeros(family.n_active, dtype=torch.float64, device=x_val.device)
    with torch.no_grad():
        for start in range(0, len(x_val), rows):
            out = family.forward(x_val[start : start + rows])
            total += squared_error_sum(out, y_val[start : start + rows])
    return (total / y_val.numel()).cpu()
