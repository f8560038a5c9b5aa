"""The paper's probe search: a linear probe plus a grid of MLPs, all MLPs trained as one batch.

The linear probe is one linear layer trained exactly like the MLPs (MSE, Adam, the same
batches, early stopping on validation MSE, best-validation weights), as the paper's Tables
V-VII and the authors' code did. A closed-form least-squares fit of the same map is recorded
beside them as the extra candidate ``least_squares``; it never takes part in selection.

Every MLP of the grid trains at once, in groups of one activation (:class:`_FusedGroup`).
The first layers of a group's MLPs are one matrix, so the widest product of a step is one
matrix multiply; the deeper layers stay per MLP, unpadded, and the output layers are computed
transposed (BLAS is several times slower at a product with two columns than at its
transpose). The backward pass is written out by hand for the loss ``sum over probes of each
probe's own mean squared error``, so every probe gets exactly the update it would get alone;
parameters, gradients and Adam's moments live in one flat buffer per group (an Adam step is
one fused kernel), and every activation of a step is written into buffers allocated once. All
probes see the same mini-batches in the same order.

Each probe early-stops on its own: when it runs out of patience it leaves its group (which
shrinks, so finished probes cost nothing) and keeps its best-validation weights. A probe
trained here with seed ``s`` reproduces ``MLPProbe(..., seed=s)`` trained alone up to float
rounding (same initialisation draws, same batch order, same Adam arithmetic up to rounding).
embench 0.3.0's search (padded stacks, autograd) trained the same probes with other rounding:
``tests/test_probe_search_compat.py`` checks that both agree to float rounding, with the same
epochs and the same selection.

On CPU the groups are shared out between as many Python threads as the caller's torch
thread count, an epoch at a time, each running its groups on one intra-op thread (the
costliest group is split in two while a thread would idle); the linear
probe trains on a thread of its own beside them. Groups share nothing but the mini-batch
order, so the result is bit-for-bit the same for any thread count; the layers are too small
for torch's own intra-op threads to help (``benchmarks/probe_search.py`` measures both).
"""

from __future__ import annotations

import contextlib
import math
import threading
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
_ALIGN = 16  # floats (64 bytes): where each parameter starts in a group's flat buffers
_VAL_ROWS = 2048  # rows per forward pass of the validation set


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


@contextlib.contextmanager
def _cancelled_on_error(cancel: threading.Event) -> Any:
    """Set ``cancel`` if the block raises (a side job then stops within an epoch)."""
    try:
        yield
    except BaseException:
        cancel.set()
        raise


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
    # op runs on one thread, and the caller's thread budget goes to training groups of MLPs side by
    # side instead (see _train_batched). The thread count is restored afterwards.
    threads = torch.get_num_threads()
    if torch_device.type == "cpu":
        torch.set_num_threads(1)
    linear_settings = dict(
        hidden=(), activation="relu", output="none", max_epochs=max_epochs,
        batch_size=batch_size, lr=lr, patience=patience_epochs, seed=seed, device=torch_device,
    )
    workers = threads if torch_device.type == "cpu" else 1
    cancel = threading.Event()
    try:
        # The linear probe trains on a thread of its own beside the MLPs when there are
        # threads to spare (it is mostly Python overhead; the result is the same either way).
        with ThreadPoolExecutor(max_workers=1) if workers > 1 else contextlib.nullcontext() as pool:
            linear_job = (pool.submit(train_mlp, X_train, targets, X_val, val_targets,
                                      cancel=cancel, **linear_settings)
                          if pool is not None else None)
            with _cancelled_on_error(cancel):  # Ctrl-C included
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
                    workers=workers,
                )
                linear_fit = (linear_job.result() if linear_job is not None
                              else train_mlp(X_train, targets, X_val, val_targets,
                                             **linear_settings))
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


class _FusedGroup:
    """MLPs of one activation, trained together with a hand-written backward pass.

    The members' layers are laid out by depth ("levels"): level 0 is every member's first
    layer, side by side in one ``(n_in, sum of first widths)`` matrix, so the widest product of
    the search is one matrix multiply per batch; level ``k`` holds the ``k``-th hidden layer of
    every member that deep (a weight each, all biases in one vector), and the output layers
    come last, each stored transposed ``(n_out, width)`` with all biases in one
    ``(members, n_out)`` matrix. A step's activations follow the same layout: one
    ``(rows, width)`` buffer per level, each member a column slice, and the outputs as
    ``(members, n_out, rows)``. So the activation, its derivative and the bias gradients are one
    call per level, and the output layer's products, which have a couple of columns at most,
    take the transposed forms that BLAS runs several times faster than ``(rows, width) @
    (width, n_out)``.

    Parameters, gradients and Adam's two moments each live in one flat buffer (the per-layer
    tensors are views of it), so an Adam step is one fused kernel, and every activation and
    gradient of a step is written into buffers allocated once per batch size (freshly
    allocated megabyte tensors cost page faults on every step, about as much as the
    arithmetic). The loss is ``sum over members of each member's mean squared error``, so every
    member gets the update it would get trained alone (``MLPProbe`` with the same seed, up to
    float rounding).
    """

    def __init__(
        self,
        probe_ids: list[int],
        specs: list[dict[str, Any]],
        n_in: int,
        n_out: int,
        init_seed: int,
        lr: float,
        device: torch.device,
    ) -> None:
        self.relu = specs[0]["activation"] == "relu"
        self.n_in, self.n_out, self.lr, self.device = n_in, n_out, lr, device
        self.probe_ids = list(probe_ids)
        self.hidden = [tuple(int(h) for h in spec["hidden"]) for spec in specs]
        self.softmax = [spec["output"] == "softmax" for spec in specs]
        members = []
        for hidden in self.hidden:
            generator = torch.Generator().manual_seed(init_seed)
            sizes = [n_in, *hidden, n_out]
            members.append([(weight.T, bias) for weight, bias in (
                init_linear(a, b, generator) for a, b in zip(sizes[:-1], sizes[1:], strict=True))])
        self._build(members)
        self.best = [self.member_weights(member) for member in range(self.n_active)]

    # -- layout ------------------------------------------------------------------------------

    def _build(self, members: list[list[tuple[torch.Tensor, torch.Tensor]]],
               moments: tuple[list[Any], list[Any]] | None = None) -> None:
        """Flat buffers for the members' layers (``(weight (in, out), bias)`` each).

        ``moments`` gives Adam's two moments per member in the same form (zeros if None).
        Each tensor starts on a 64-byte boundary.
        """
        depth = max(len(hidden) for hidden in self.hidden)
        # members with a hidden layer at each level, and their columns in the level's buffer
        self.levels = [[m for m, hidden in enumerate(self.hidden) if len(hidden) > level]
                       for level in range(depth)]
        self.columns: list[dict[int, slice]] = []
        for level, at_level in enumerate(self.levels):
            edges = np.cumsum([0] + [self.hidden[m][level] for m in at_level]).tolist()
            self.columns.append({m: slice(edges[i], edges[i + 1])
                                 for i, m in enumerate(at_level)})
        self.widths = [sum(self.hidden[m][level] for m in at_level)
                       for level, at_level in enumerate(self.levels)]

        def arrange(layers: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[torch.Tensor]:
            tensors = [torch.cat([layers[m][0][0] for m in self.levels[0]], 1),
                       torch.cat([layers[m][0][1] for m in self.levels[0]])]
            for level in range(1, depth):
                tensors += [layers[m][level][0] for m in self.levels[level]]
                tensors.append(torch.cat([layers[m][level][1] for m in self.levels[level]]))
            tensors += [layers[m][-1][0].T for m in range(len(layers))]
            tensors.append(torch.stack([layers[m][-1][1] for m in range(len(layers))]))
            return tensors

        tensors = arrange(members)
        self.shapes = [tuple(t.shape) for t in tensors]
        self.starts, size = [], 0
        for shape in self.shapes:
            self.starts.append(size)
            size += -(-math.prod(shape) // _ALIGN) * _ALIGN
        self.flat = self._pack(tensors, size)
        self.flat_grad = torch.zeros_like(self.flat)
        if moments is None:
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        else:
            self.exp_avg = self._pack(arrange(moments[0]), size)
            self.exp_avg_sq = self._pack(arrange(moments[1]), size)
        self.step_count = torch.zeros((), device=self.device)  # set before each Adam step
        self.params, self.grads = self._views(self.flat), self._views(self.flat_grad)
        self.workspace: dict[int, dict[str, Any]] = {}

    def _pack(self, tensors: list[torch.Tensor], size: int) -> torch.Tensor:
        flat = torch.zeros(size, device=self.device)
        for view, tensor in zip(self._views(flat), tensors, strict=True):
            view.copy_(tensor)
        return flat

    def _views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        return [
            buffer[start : start + math.prod(shape)].view(shape)
            for start, shape in zip(self.starts, self.shapes, strict=True)
        ]

    def _member_layers(self, views: list[torch.Tensor],
                       member: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A member's ``(weight (in, out), bias)`` per layer, as views of ``views``' buffer."""
        layers = [(views[0][:, self.columns[0][member]], views[1][self.columns[0][member]])]
        for level in range(1, len(self.levels)):
            if member in self.columns[level]:
                weight = self._level_start(level) + self.levels[level].index(member)
                layers.append((views[weight],
                               views[self._bias_index(level)][self.columns[level][member]]))
        outputs = self._level_start(len(self.levels))
        layers.append((views[outputs + member].T, views[outputs + self.n_active][member]))
        return layers

    @property
    def n_active(self) -> int:
        """Members still training."""
        return len(self.probe_ids)

    def cost(self) -> int:
        """Multiply-adds per input row (to balance threads)."""
        return sum(map(self._member_cost, range(self.n_active)))

    def _member_cost(self, member: int) -> int:
        sizes = [self.n_in, *self.hidden[member], self.n_out]
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def plan(self, rows: int) -> dict[str, Any]:
        """Buffers and views for a step on ``rows`` rows, made once per batch size."""
        if rows in self.workspace:
            return self.workspace[rows]
        device = self.device
        acts = [torch.zeros(rows, width, device=device) for width in self.widths]
        grads = [torch.zeros(rows, width, device=device) for width in self.widths]
        members = [self._member_layers(self.params, m) for m in range(self.n_active)]
        member_grads = [self._member_layers(self.grads, m) for m in range(self.n_active)]
        hidden_layers = []  # level >= 1: (weight, weight^T, bias, its grads, input, output)
        for level in range(1, len(self.levels)):
            layers = []
            for m in self.levels[level]:
                (weight, bias), (weight_grad, _) = members[m][level], member_grads[m][level]
                below, here = self.columns[level - 1][m], self.columns[level][m]
                layers.append((weight, weight.t(), bias, weight_grad, acts[level - 1][:, below],
                               acts[level][:, here], grads[level - 1][:, below],
                               grads[level][:, here]))
            hidden_layers.append(layers)
        outputs = []  # (weight (n_out, width), its grad, last hidden, its grad)
        for m, hidden in enumerate(self.hidden):
            last, columns = len(hidden) - 1, self.columns[len(hidden) - 1][m]
            outputs.append((members[m][-1][0].t(), member_grads[m][-1][0].t(),
                            acts[last][:, columns], grads[last][:, columns]))
        softmax = (torch.tensor(self.softmax, device=device).view(-1, 1, 1)
                   if any(self.softmax) else None)
        out = torch.zeros(self.n_active, self.n_out, rows, device=device)
        diff = torch.zeros(self.n_active, self.n_out, rows, device=device)
        plan = {
            "x": torch.zeros(rows, self.n_in, device=device),
            "y": torch.zeros(self.n_out, rows, device=device),
            "acts": acts, "grads": grads, "hidden_layers": hidden_layers, "outputs": outputs,
            "out": out, "diff": diff, "out_rows": list(out), "grad_rows": list(diff),
            "out_bias": self.params[-1].unsqueeze(2), "out_bias_grad": self.grads[-1],
            "level_bias_grads": [self.grads[self._bias_index(level)]
                                 for level in range(len(self.levels))],
            "softmax": softmax,
        }
        self.workspace[rows] = plan
        return plan

    def _level_start(self, level: int) -> int:
        """Index in ``self.params`` of level ``level``'s first weight (level >= 1).

        ``level == len(self.levels)`` gives the first output layer's.
        """
        return 2 + sum(len(self.levels[k]) + 1 for k in range(1, level))

    def _bias_index(self, level: int) -> int:
        """Index in ``self.params`` of level ``level``'s biases (all its members' in one)."""
        return 1 if level == 0 else self._level_start(level) + len(self.levels[level])

    # -- computing ---------------------------------------------------------------------------

    def _forward(
        self, plan: dict[str, Any], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs ``(members, n_out, rows)`` for ``x``; every activation stays in ``plan``.

        Softmax members' outputs are softmaxed; the softmax of all outputs comes second (None
        when no member has a softmax output).
        """
        act = torch.relu_ if self.relu else torch.sigmoid_
        acts = plan["acts"]
        act(torch.addmm(self.params[1], x, self.params[0], out=acts[0]))
        for level, layers in enumerate(plan["hidden_layers"], start=1):
            for weight, _, bias, _, inputs, outputs, _, _ in layers:
                torch.addmm(bias, inputs, weight, out=outputs)
            act(acts[level])
        for (weight, _, hidden, _), out in zip(plan["outputs"], plan["out_rows"], strict=True):
            torch.mm(weight, hidden.t(), out=out)  # (n_out, rows): the fast form
        out = plan["out"].add_(plan["out_bias"])
        if plan["softmax"] is None:
            return out, None
        softmax = torch.softmax(out, dim=1)
        return torch.where(plan["softmax"], softmax, out), softmax

    def validation_sums(self, x_val: torch.Tensor, y_val_t: torch.Tensor) -> torch.Tensor:
        """Each member's float64 sum of squared validation errors (``y_val_t``: targets^T)."""
        total = torch.zeros(self.n_active, dtype=torch.float64, device=x_val.device)
        with torch.no_grad():
            for start in range(0, len(x_val), _VAL_ROWS):
                x = x_val[start : start + _VAL_ROWS]
                plan = self.plan(len(x))
                out, _ = self._forward(plan, x)
                total += squared_error_sum(out, y_val_t[:, start : start + len(x)])
        return total

    def train_step(self, x: torch.Tensor, y_t: torch.Tensor, steps: int) -> torch.Tensor:
        """One Adam step on a mini-batch (``y_t``: its targets transposed, ``(n_out, rows)``).

        Returns each member's mean loss on the batch.
        """
        rows = len(x)
        plan = self.plan(rows)
        out, softmax = self._forward(plan, x)
        diff = torch.sub(out, y_t, out=plan["diff"])
        losses = diff.square().mean(dim=(1, 2))
        # d mean((out - y)^2) / d out = 2 (out - y) / (rows * n_out)
        grad = diff.mul_(2.0 / (rows * self.n_out))
        if softmax is not None:
            mask = plan["softmax"]
            through = torch._softmax_backward_data(
                torch.where(mask, grad, 0.0), softmax, 1, softmax.dtype)
            grad.copy_(torch.where(mask, through, grad))

        act_backward = _relu_backward_ if self.relu else _sigmoid_backward_
        # Output layers: (n_out, rows) @ (rows, width) and its transpose, per member.
        torch.sum(grad, 2, out=plan["out_bias_grad"])
        for (weight, weight_grad, hidden, hidden_grad), rows_grad in zip(
            plan["outputs"], plan["grad_rows"], strict=True
        ):
            torch.mm(rows_grad, hidden, out=weight_grad)
            torch.mm(rows_grad.t(), weight, out=hidden_grad)
        acts, grads, bias_grads = plan["acts"], plan["grads"], plan["level_bias_grads"]
        for level in range(len(acts) - 1, 0, -1):
            act_backward(grads[level], acts[level])
            torch.sum(grads[level], 0, out=bias_grads[level])
            for _, weight_t, _, weight_grad, inputs, _, below, here in plan["hidden_layers"][
                level - 1
            ]:
                torch.mm(inputs.t(), here, out=weight_grad)
                torch.mm(here, weight_t, out=below)
        act_backward(grads[0], acts[0])
        torch.mm(x.t(), grads[0], out=self.grads[0])
        torch.sum(grads[0], 0, out=bias_grads[0])

        self.step_count.fill_(steps)
        torch._fused_adam_(
            [self.flat], [self.flat_grad], [self.exp_avg], [self.exp_avg_sq], [],
            [self.step_count], lr=self.lr, beta1=_ADAM_BETAS[0], beta2=_ADAM_BETAS[1],
            weight_decay=0.0, eps=_ADAM_EPS, amsgrad=False, maximize=False,
        )
        return losses

    # -- members -----------------------------------------------------------------------------

    def member_weights(self, member: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy (on CPU) of a member's current ``(weight (in, out), bias)`` per layer."""
        return [(w.detach().cpu().clone(), b.detach().cpu().clone())
                for w, b in self._member_layers(self.params, member)]

    def _take(self, keep: list[bool]) -> tuple[list[Any], tuple[list[Any], list[Any]]]:
        """The layers and Adam moments of the members where ``keep`` is true."""
        def of(buffer: torch.Tensor) -> list[Any]:
            views = self._views(buffer)
            return [self._member_layers(views, m) for m, k in enumerate(keep) if k]

        return of(self.flat), (of(self.exp_avg), of(self.exp_avg_sq))

    def _keep_lists(self, keep: list[bool], source: _FusedGroup | None = None) -> None:
        """Keep the per-member lists (of ``source``, default this group) where ``keep`` is true."""
        for name in ("probe_ids", "hidden", "softmax", "best"):
            values = getattr(self if source is None else source, name)
            setattr(self, name, [v for v, k in zip(values, keep, strict=True) if k])

    def drop(self, keep: list[bool]) -> None:
        """Keep only the members where ``keep`` is true (buffers and Adam state shrink)."""
        layers, moments = self._take(keep)
        self._keep_lists(keep)
        if self.probe_ids:
            self._build(layers, moments)

    def split(self) -> _FusedGroup | None:
        """Move about half of the work into a new group; None if one member is left.

        Lets an idle thread take over part of the last group still training. Members keep
        their parameters, Adam state and best weights, so the result is unchanged.
        """
        if self.n_active < 2:
            return None
        loads, leave = [0, 0], [False] * self.n_active
        for member in sorted(range(self.n_active), key=self._member_cost, reverse=True):
            half = loads.index(min(loads))
            loads[half] += self._member_cost(member)
            leave[member] = half == 1
        other = object.__new__(_FusedGroup)
        other.relu, other.n_in, other.n_out = self.relu, self.n_in, self.n_out
        other.lr, other.device = self.lr, self.device
        layers, moments = self._take(leave)
        other._keep_lists(leave, source=self)
        other._build(layers, moments)
        self.drop([not k for k in leave])
        return other


def _relu_backward_(grad: torch.Tensor, result: torch.Tensor) -> None:
    """``grad *= relu'`` in place, given the relu's output ``result``."""
    torch.ops.aten.threshold_backward.grad_input(grad, result, 0, grad_input=grad)


def _sigmoid_backward_(grad: torch.Tensor, result: torch.Tensor) -> None:
    """``grad *= sigmoid'`` in place, given the sigmoid's output ``result``."""
    torch.ops.aten.sigmoid_backward.grad_input(grad, result, grad_input=grad)


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

    Probes are split into groups by activation (see :class:`_FusedGroup`); every group sees
    the same mini-batches in the same order. With ``workers > 1`` the groups run side by side,
    one thread each, an epoch at a time (the costliest group is halved while a worker would
    idle); the result does not depend on it.

    Returns:
        One :class:`MLPFit` per grid entry, in the grid's order.
    """
    init_seed, shuffle_seed, _ = seed_streams(seed)
    by_activation: dict[str, list[int]] = {}
    for index, spec in enumerate(grid):
        by_activation.setdefault(spec["activation"], []).append(index)
    # one group per activation; more threads than groups split them (below, each epoch)
    groups = [_FusedGroup(ids, [grid[i] for i in ids], X.shape[1], Y.shape[1], init_seed, lr,
                          device)
              for _, ids in sorted(by_activation.items())]
    # targets transposed, (n_out, rows): the layout of the groups' outputs
    x_train, y_train = torch.from_numpy(X).to(device), torch.from_numpy(Y.T.copy()).to(device)
    x_val, y_val = torch.from_numpy(X_val).to(device), torch.from_numpy(Y_val.T.copy()).to(device)
    shuffle_gen = torch.Generator().manual_seed(shuffle_seed)
    n, n_probes = len(x_train), len(grid)
    batches = math.ceil(n / batch_size)
    best_loss = [math.inf] * n_probes
    best_epoch = [0] * n_probes
    epochs_run = [max_epochs] * n_probes
    waited = [0] * n_probes
    val_curves: list[list[float]] = [[] for _ in range(n_probes)]
    train_curves: list[list[float]] = [[] for _ in range(n_probes)]
    fitted_weights: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def train_epoch(group: _FusedGroup, order: torch.Tensor, steps: int) -> list[list[float]]:
        """One epoch of a group; returns its members' train and validation losses."""
        train_sum = torch.zeros(group.n_active, dtype=torch.float64, device=device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            plan = group.plan(len(batch))
            x = torch.index_select(x_train, 0, batch, out=plan["x"])
            y = torch.index_select(y_train, 1, batch, out=plan["y"])
            steps += 1
            train_sum.add_(group.train_step(x, y, steps), alpha=len(batch))
        return [(train_sum / n).cpu().tolist(), _validation_loss(group, x_val, y_val)]

    steps, epoch = 0, 0
    workers = max(1, min(workers, n_probes))
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    with (
        stage(progress, "probe search", total=max_epochs) as bar,
        pool if pool is not None else contextlib.nullcontext(),
    ):
        for epoch in range(1, max_epochs + 1):
            active = [group for group in groups if group.n_active]
            while len(active) < workers:  # a thread would idle: split the costliest group
                part = next((part for group in sorted(active, key=lambda g: -g.cost())
                             if (part := group.split()) is not None), None)
                if part is None:
                    break
                groups.append(part)
                active.append(part)
            order = epoch_order(n, shuffle_gen).to(device)
            results = _run_side_by_side(pool, workers, active, train_epoch, order, steps)
            steps += batches
            for group, (train_losses, val_losses) in zip(active, results, strict=True):
                keep = []
                for member, probe in enumerate(group.probe_ids):
                    loss = val_losses[member]
                    val_curves[probe].append(loss)
                    train_curves[probe].append(train_losses[member])
                    if loss < best_loss[probe]:
                        best_loss[probe], best_epoch[probe], waited[probe] = loss, epoch, 0
                        group.best[member] = group.member_weights(member)
                    else:
                        waited[probe] += 1
                    if waited[probe] >= patience:
                        epochs_run[probe] = epoch
                    keep.append(waited[probe] < patience)
                if not all(keep):
                    finished = [b for b, k in zip(group.best, keep, strict=True) if not k]
                    for probe, best in zip(
                        [p for p, k in zip(group.probe_ids, keep, strict=True) if not k], finished,
                        strict=True,
                    ):
                        fitted_weights[probe] = best
                    group.drop(keep)
            n_active = sum(group.n_active for group in groups)
            bar.advance(1, info=f"{n_active}/{n_probes} active, best val {min(best_loss):.4g}")
            crash_point("probe-epoch")
            if n_active == 0:
                break
        if epoch < max_epochs:
            bar.update(total=epoch)

    for group in groups:
        for probe, best in zip(group.probe_ids, group.best, strict=True):
            fitted_weights[probe] = best
    return [
        MLPFit(
            coefs=[w.numpy() for w, _ in fitted_weights[probe]],
            intercepts=[b.numpy() for _, b in fitted_weights[probe]],
            best_val_loss=best_loss[probe],
            best_epoch=best_epoch[probe],
            epochs_run=epochs_run[probe],
            val_loss_curve=val_curves[probe],
            train_loss_curve=train_curves[probe],
        )
        for probe in range(n_probes)
    ]


def _run_side_by_side(
    pool: ThreadPoolExecutor | None,
    workers: int,
    groups: list[_FusedGroup],
    work: Callable[..., Any],
    *args: Any,
) -> list[Any]:
    """``work(group, *args)`` for every group, shared out between ``workers`` threads.

    Groups go costliest first to the least loaded thread; results come back in the order of
    ``groups``.
    """
    if pool is None or workers == 1 or len(groups) == 1:
        return [work(group, *args) for group in groups]
    lanes: list[list[int]] = [[] for _ in range(min(workers, len(groups)))]
    loads = [0] * len(lanes)
    for index in sorted(range(len(groups)), key=lambda i: groups[i].cost(), reverse=True):
        lightest = loads.index(min(loads))
        lanes[lightest].append(index)
        loads[lightest] += groups[index].cost()

    def run(lane: list[int]) -> list[tuple[int, Any]]:
        return [(index, work(groups[index], *args)) for index in lane]

    results: dict[int, Any] = {}
    for future in [pool.submit(run, lane) for lane in lanes]:
        results.update(future.result())
    return [results[index] for index in range(len(groups))]


def _validation_loss(group: _FusedGroup, x_val: torch.Tensor, y_val_t: torch.Tensor) -> list[float]:
    """Validation MSE per member, over all samples and target dims (summed in float64)."""
    return (group.validation_sums(x_val, y_val_t) / y_val_t.numel()).cpu().tolist()
