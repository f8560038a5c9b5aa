"""The paper's probe search: a linear probe plus a grid of MLPs, all MLPs trained as one batch.

The linear probe is one linear layer trained exactly like the MLPs (MSE, Adam, the same
batches, early stopping on validation MSE, best-validation weights), as the paper's Tables
V-VII and the authors' code did. A closed-form least-squares fit of the same map is recorded
beside them as the extra candidate ``least_squares``; it never takes part in selection.

Every MLP of the grid trains at once, in groups of one activation (:class:`_FusedGroup`).
The first layers of a group's MLPs are one matrix, so the widest product of a step is one
matrix multiply; the deeper layers stay per MLP, unpadded. The backward pass is written out
by hand: it calls the kernels autograd would call for the loss ``sum over probes of each
probe's own mean squared error``, on operands laid out in memory as embench 0.3.0 laid them
out, so every probe gets exactly the update it would get alone and the search reproduces
0.3.0's numbers bit for bit. Parameters, gradients and Adam's moments live in one flat buffer
per group (an Adam step is five element-wise ops), and every activation of a step is written
into buffers allocated once. All probes see the same mini-batches in the same order.

Each probe early-stops on its own: when it runs out of patience it leaves its group (which
shrinks, so finished probes cost nothing) and keeps its best-validation weights. A probe
trained here with seed ``s`` reproduces ``MLPProbe(..., seed=s)`` trained alone up to float
rounding (same initialisation draws, same batch order, same Adam arithmetic).

On CPU the groups are shared out between as many Python threads as the caller's torch
thread count, an epoch at a time, each running its groups on one intra-op thread (the
costliest group is split, between first widths, while a thread would idle); the linear
probe trains on a thread of its own beside them. Groups share nothing but the mini-batch
order, so the result is bit-for-bit the same for any thread count; the layers are too small
for torch's own intra-op threads to help (``benchmarks/probe_search.py`` measures both).
"""

from __future__ import annotations

import contextlib
import functools
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

    The first layers of all members are one ``(n_in, sum of first widths)`` matrix, so the
    widest product of the search is a single matrix multiply per batch; the deeper layers stay
    per member, unpadded. Parameters, gradients and Adam's two moments each live in one flat
    buffer (the per-layer tensors are views of it), so an Adam step is five element-wise ops.
    Every activation and gradient of a step is written into buffers allocated once (freshly
    allocated megabyte tensors cost page faults on every step, about as much as the arithmetic).

    The backward pass calls the kernels autograd calls for ``sum over members of
    mean((out - y) ** 2)``, on the operand layouts of embench 0.3.0's padded stacks; so every
    member gets the update it would get trained alone (``MLPProbe`` with the same seed, up to
    float rounding) and exactly the update 0.3.0 gave it.
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
        # Members of a family (one first width) side by side, shallowest first.
        order = sorted(range(len(specs)),
                       key=lambda i: (int(specs[i]["hidden"][0]), len(specs[i]["hidden"])))
        specs = [specs[i] for i in order]
        self.probe_ids = [probe_ids[i] for i in order]
        self.hidden = [tuple(int(h) for h in spec["hidden"]) for spec in specs]
        self.softmax = [spec["output"] == "softmax" for spec in specs]
        self.relu = specs[0]["activation"] == "relu"
        self.n_in, self.n_out, self.device = n_in, n_out, device
        first_weights, first_biases, rest = [], [], []
        for hidden in self.hidden:
            generator = torch.Generator().manual_seed(init_seed)
            sizes = [n_in, *hidden, n_out]
            layers = [init_linear(a, b, generator)
                      for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            first_weights.append(layers[0][0].T)
            first_biases.append(layers[0][1])
            rest += [t for weight, bias in layers[1:] for t in (weight.T.contiguous(), bias)]
        # 0.3.0 padded each family to its widest layer; that width decides (below) which
        # kernel it used for the output layer's products.
        self.family_width: dict[int, int] = {}
        for hidden in self.hidden:
            self.family_width[hidden[0]] = max(self.family_width.get(hidden[0], 0), *hidden)
        self._build([torch.cat(first_weights, 1), torch.cat(first_biases), *rest])
        self.best = [self.member_weights(member) for member in range(self.n_active)]

    def _build(
        self,
        tensors: list[torch.Tensor],
        exp_avg: list[torch.Tensor] | None = None,
        exp_avg_sq: list[torch.Tensor] | None = None,
    ) -> None:
        """Flat buffers for ``tensors`` (first weight, first bias, then each member's layers).

        Each tensor starts on a 64-byte boundary, as a tensor of its own would: MKL's matrix
        products round differently into unaligned outputs, and these must match a probe
        trained alone bit for bit.
        """
        self.shapes = [tuple(t.shape) for t in tensors]
        self.starts, size = [], 0
        for shape in self.shapes:
            self.starts.append(size)
            size += -(-math.prod(shape) // _ALIGN) * _ALIGN
        self.flat = self._pack(tensors, size)
        self.flat_grad = torch.zeros_like(self.flat)
        self.exp_avg = torch.zeros_like(self.flat) if exp_avg is None else self._pack(exp_avg, size)
        self.exp_avg_sq = (
            torch.zeros_like(self.flat) if exp_avg_sq is None else self._pack(exp_avg_sq, size)
        )
        self.params = self._views(self.flat)
        self.grads = self._views(self.flat_grad)
        self.edges = np.cumsum([0] + [h[0] for h in self.hidden]).tolist()
        self.workspace: dict[str, Any] = {}
        self._index_families()

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

    def _layers(self, views: list[torch.Tensor]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each member's layers after the first, as ``(weight, bias)`` views."""
        rest = iter(views[2:])
        return [[(next(rest), next(rest)) for _ in hidden] for hidden in self.hidden]

    @property
    def n_active(self) -> int:
        """Members still training."""
        return len(self.probe_ids)

    def cost(self) -> int:
        """Multiply-adds per input row (to balance threads)."""
        return sum(math.prod(shape) for shape in self.shapes if len(shape) == 2)

    def _index_families(self) -> None:
        """Group the members as embench 0.3.0 stacked them: by first width, then by depth.

        The output layer's products and the loss are computed per family in 0.3.0's layout
        (one ``(members, rows, n_out)`` tensor per depth, joined per family), so that every
        operand sits at the same memory offset as it did there (see :meth:`_build`).
        """
        by_width: dict[int, list[int]] = {}
        for member, hidden in enumerate(self.hidden):
            by_width.setdefault(hidden[0], []).append(member)
        self.families = []
        for members in by_width.values():
            ordered = sorted(members, key=lambda m: len(self.hidden[m]))
            depths = sorted({len(self.hidden[m]) for m in ordered})
            softmax = [self.softmax[m] for m in ordered]
            self.families.append({
                "width": self.family_width[self.hidden[ordered[0]][0]],
                "members": ordered,
                "by_depth": [[m for m in ordered if len(self.hidden[m]) == d] for d in depths],
                "softmax": (torch.tensor(softmax, device=self.device).view(-1, 1, 1)
                            if any(softmax) else None),
            })
        self.family_order = [m for family in self.families for m in family["members"]]

    def plan(self, rows: int) -> dict[str, Any]:
        """Buffers and views for a step on ``rows`` rows, made once per batch size.

        Every activation and gradient of a step is written into these (freshly allocated
        megabyte tensors cost page faults on every step, about as much as the arithmetic),
        and the per-member views are cut once rather than on every step.
        """
        if rows in self.workspace:
            return self.workspace[rows]

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=self.device)

        first, first_grad = zeros(rows, self.edges[-1]), zeros(rows, self.edges[-1])
        layers_of, grads_of = self._layers(self.params), self._layers(self.grads)
        members = []
        for member, hidden in enumerate(self.hidden):
            columns = slice(self.edges[member], self.edges[member + 1])
            inputs = [first[:, columns], *(zeros(rows, width) for width in hidden[1:])]
            belows = [first_grad[:, columns], *(zeros(rows, width) for width in hidden[1:])]
            layers = [
                (weight, weight.t(), bias, weight_grad, bias_grad, inputs[depth], belows[depth])
                for depth, ((weight, bias), (weight_grad, bias_grad)) in enumerate(
                    zip(layers_of[member], grads_of[member], strict=True))
            ]
            members.append({
                "layers": layers,
                "swap": _swap_rounds_alike(rows, hidden[-1], self.n_out, self.device),
            })
        families = []
        for family in self.families:
            stacks = [torch.empty(len(m), rows, self.n_out, device=self.device)
                      for m in family["by_depth"]]
            diff = torch.empty(len(family["members"]), rows, self.n_out, device=self.device)
            families.append({
                "stacks": stacks,
                "out": torch.empty_like(diff),
                "diff": diff,
                "tiny": self._tiny(family, rows),
            })
            for by_depth, stack in zip(family["by_depth"], stacks, strict=True):
                for row, member in enumerate(by_depth):
                    members[member]["out"] = stack[row]
            for row, member in enumerate(family["members"]):
                members[member]["grad"] = diff[row]
                members[member]["tiny"] = self._tiny(family, rows)
        if "denom" not in self.workspace:
            self.workspace["denom"] = torch.zeros_like(self.flat)
        # 0.3.0 took torch's own loop for a first layer with under 400 multiply-adds per
        # member (a batch of a few rows of a few features), member by member
        tiny_first = [
            slice(self.edges[member], self.edges[member + 1])
            for member, hidden in enumerate(self.hidden)
            if self.n_in * rows * self.family_width[hidden[0]] < 400
        ]
        plan = {
            "tiny_first": tiny_first,
            "x": zeros(rows, self.n_in), "y": zeros(rows, self.n_out), "first": first,
            "first_grad": first_grad, "members": members, "families": families,
            "denom": self.workspace["denom"],
        }
        self.workspace[rows] = plan
        return plan

    def _hidden(
        self, x: torch.Tensor, family: dict[str, Any] | None
    ) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """First-layer activations and each member's layer inputs (of ``family``, or all)."""
        act = torch.relu_ if self.relu else torch.sigmoid_
        if family is None:
            members = range(self.n_active)
            weight, bias, edges = self.params[0], self.params[1], self.edges
        else:
            members = family["members"]
            start, stop = self.edges[members[0]], self.edges[members[-1] + 1]
            weight, bias = self.params[0][:, start:stop], self.params[1][start:stop]
            edges = [e - start for e in self.edges]
        first = torch.addmm(bias, x, weight)
        for member in members:  # as in train_step: 0.3.0's loop for tiny first layers
            if self.n_in * len(x) * self.family_width[self.hidden[member][0]] < 400:
                columns = slice(edges[member], edges[member + 1])
                first[:, columns] = torch.baddbmm(bias[columns], x[None],
                                                  weight[:, columns][None])[0]
        act(first)
        inputs: list[list[torch.Tensor]] = [[] for _ in range(self.n_active)]
        layers_of = self._layers(self.params)
        for member in members:
            hidden = first[:, edges[member] : edges[member + 1]]
            inputs[member].append(hidden)
            for weight, bias in layers_of[member][:-1]:
                hidden = act(torch.addmm(bias, hidden, weight))
                inputs[member].append(hidden)
        return first, inputs

    def _family_outputs(
        self, family: dict[str, Any], inputs: list[list[torch.Tensor]], rows: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A family's outputs ``(members, rows, n_out)``, and its softmaxes (if it has any)."""
        layers_of = self._layers(self.params)
        stacks = []
        for members in family["by_depth"]:
            stack = torch.empty(len(members), rows, self.n_out, device=self.device)
            for row, member in enumerate(members):
                weight, bias = layers_of[member][-1]
                if self._tiny(family, rows):
                    torch.baddbmm(bias, inputs[member][-1][None], weight[None],
                                  out=stack[row][None])
                else:
                    torch.addmm(bias, inputs[member][-1], weight, out=stack[row])
            stacks.append(stack)
        out = torch.cat(stacks) if len(stacks) > 1 else stacks[0]
        if family["softmax"] is None:
            return out, None
        softmax = torch.softmax(out, dim=-1)
        return torch.where(family["softmax"], softmax, out), softmax

    def _tiny(self, family: dict[str, Any], rows: int) -> bool:
        """Whether 0.3.0 took torch's own loop, not BLAS, for this family's output layer.

        torch multiplies batched matrices with a plain loop when a product has under 400
        multiply-adds (its rounding differs from BLAS); 0.3.0 batched its families, padded.
        """
        return rows * family["width"] * self.n_out < 400

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(members, B, n_out)`` for inputs ``(B, n_in)`` (no buffers kept)."""
        _, inputs = self._hidden(x, None)
        out = torch.empty(self.n_active, len(x), self.n_out, device=x.device)
        for family in self.families:
            out[family["members"]] = self._family_outputs(family, inputs, len(x))[0]
        return out

    def validation_sums(
        self, x_val: torch.Tensor, y_val: torch.Tensor, chunks: dict[int, int]
    ) -> list[torch.Tensor]:
        """Each member's float64 sum of squared validation errors, family by family in chunks."""
        sums: list[torch.Tensor] = [torch.zeros(())] * self.n_active
        with torch.no_grad():
            for family in self.families:
                rows = chunks[self.probe_ids[family["members"][0]]]
                total = torch.zeros(len(family["members"]), dtype=torch.float64,
                                    device=x_val.device)
                for start in range(0, len(x_val), rows):
                    stop = min(start + rows, len(x_val))
                    # 0.3.0's chunk (its float64 sums), computed in cache-sized blocks
                    out = torch.empty(len(family["members"]), stop - start, self.n_out,
                                      device=x_val.device)
                    for first, last in _blocks(start, stop):
                        _, inputs = self._hidden(x_val[first:last], family)
                        out[:, first - start : last - start] = self._family_outputs(
                            family, inputs, last - first)[0]
                    total += squared_error_sum(out, y_val[start:stop])
                for row, member in enumerate(family["members"]):
                    sums[member] = total[row]
        return sums

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, step_size: float, bias_correction2_sqrt: float
    ) -> torch.Tensor:
        """One Adam step on a mini-batch; returns each member's mean loss on it.

        The losses come in family order (``self.family_order``), not member order.
        """
        rows = len(x)
        plan = self.plan(rows)
        act = torch.relu_ if self.relu else torch.sigmoid_
        if self.relu:
            def act_backward(grad: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
                return torch.ops.aten.threshold_backward.grad_input(
                    grad, result, 0, grad_input=grad)
        else:
            def act_backward(grad: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
                return torch.ops.aten.sigmoid_backward.grad_input(grad, result, grad_input=grad)

        # Forward, keeping every activation.
        first = torch.addmm(self.params[1], x, self.params[0], out=plan["first"])
        for columns in plan["tiny_first"]:
            first[:, columns] = torch.baddbmm(
                self.params[1][columns], x[None], self.params[0][:, columns][None])[0]
        act(first)
        members = plan["members"]
        for member in members:
            layers = member["layers"]
            for (weight, _, bias, _, _, inputs, _), (*_, outputs, _) in zip(
                layers[:-1], layers[1:], strict=True
            ):
                act(torch.addmm(bias, inputs, weight, out=outputs))
        losses = []
        grads: dict[int, torch.Tensor] = {}
        # d mean / d out = 1/n (rounded once), times d (out - y)^2 / d out = 2 (out - y).
        scale = torch.ones((), device=x.device) / (rows * self.n_out)
        for family, buffers in zip(self.families, plan["families"], strict=True):
            for by_depth in family["by_depth"]:
                for member in by_depth:
                    weight, _, bias, _, _, inputs, _ = members[member]["layers"][-1]
                    if buffers["tiny"]:
                        torch.baddbmm(bias, inputs[None], weight[None],
                                      out=members[member]["out"][None])
                    else:
                        torch.addmm(bias, inputs, weight, out=members[member]["out"])
            stacks = buffers["stacks"]
            out = torch.cat(stacks, out=buffers["out"]) if len(stacks) > 1 else stacks[0]
            mask = family["softmax"]
            if mask is not None:
                softmax = torch.softmax(out, dim=-1)
                out = torch.where(mask, softmax, out)
            diff = torch.sub(out, y, out=buffers["diff"])
            losses.append(diff.pow(2).mean(dim=(1, 2)))
            grad = diff.mul_(2.0).mul_(scale)
            if mask is not None:
                through = torch._softmax_backward_data(
                    torch.where(mask, grad, 0.0), softmax, -1, softmax.dtype)
                grad = torch.where(mask, 0.0, grad) + through
                for row, member in enumerate(family["members"]):
                    grads[member] = grad[row]

        # Backward, layer by layer from the output.
        for index, member in enumerate(members):
            grad = grads.get(index, member["grad"])
            layers = member["layers"]
            last = len(layers) - 1
            for depth in range(last, -1, -1):
                _, weight_t, _, weight_grad, bias_grad, inputs, below = layers[depth]
                if depth == last and member["tiny"]:
                    torch.bmm(inputs.t()[None], grad[None], out=weight_grad[None])
                    torch.bmm(grad[None], weight_t[None], out=below[None])
                else:
                    if depth == last and member["swap"]:
                        # 3-5x faster than h^T grad for a few outputs; the same numbers
                        weight_grad.copy_(torch.mm(grad.t(), inputs).t())
                    else:
                        torch.mm(inputs.t(), grad, out=weight_grad)
                    torch.mm(grad, weight_t, out=below)
                torch.sum(grad, 0, out=bias_grad)
                if depth:
                    grad = act_backward(below, inputs)
        grad = act_backward(plan["first_grad"], first)
        torch.mm(x.t(), grad, out=self.grads[0])
        for columns in plan["tiny_first"]:
            self.grads[0][:, columns] = torch.bmm(x.t()[None], grad[:, columns][None])[0]
        torch.sum(grad, 0, out=self.grads[1])

        # torch.optim.Adam's default update, element-wise on the flat buffers.
        beta1, beta2 = _ADAM_BETAS
        flat_grad = self.flat_grad
        self.exp_avg.lerp_(flat_grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(flat_grad, flat_grad, value=1 - beta2)
        denom = torch.sqrt(self.exp_avg_sq, out=plan["denom"])
        denom.div_(bias_correction2_sqrt).add_(_ADAM_EPS)
        self.flat.addcdiv_(self.exp_avg, denom, value=-step_size)
        return torch.cat(losses)

    def member_weights(self, member: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy (on CPU) of a member's current ``(weight (in, out), bias)`` per layer."""
        start, stop = self.edges[member], self.edges[member + 1]
        layers = [(self.params[0][:, start:stop], self.params[1][start:stop])]
        layers += self._layers(self.params)[member]
        return [(w.detach().cpu().clone(), b.detach().cpu().clone()) for w, b in layers]

    def _state(self, keep: list[bool]) -> tuple[list[torch.Tensor], ...]:
        """Parameters and Adam moments of the members where ``keep`` is true, as tensors."""
        columns = torch.tensor(
            [c for m, k in enumerate(keep) if k for c in range(self.edges[m], self.edges[m + 1])],
            dtype=torch.long, device=self.device,
        )

        def kept(views: list[torch.Tensor]) -> list[torch.Tensor]:
            layers = self._layers(views)
            rest = [t for m, k in enumerate(keep) if k for pair in layers[m] for t in pair]
            return [views[0][:, columns], views[1][columns], *rest]

        return (kept(self.params), kept(self._views(self.exp_avg)),
                kept(self._views(self.exp_avg_sq)))

    def drop(self, keep: list[bool]) -> None:
        """Keep only the members where ``keep`` is true (buffers and Adam state shrink)."""
        params, exp_avg, exp_avg_sq = self._state(keep)
        self.probe_ids = [p for p, k in zip(self.probe_ids, keep, strict=True) if k]
        self.hidden = [h for h, k in zip(self.hidden, keep, strict=True) if k]
        self.softmax = [s for s, k in zip(self.softmax, keep, strict=True) if k]
        self.best = [b for b, k in zip(self.best, keep, strict=True) if k]
        if self.probe_ids:
            self._build(params, exp_avg, exp_avg_sq)

    def split(self) -> _FusedGroup | None:
        """Move about half of the work (whole families) into a new group; None if one family.

        Lets an idle thread take over part of the last group still training. Members keep
        their parameters, Adam state and best weights, so the result is unchanged.
        """
        if len(self.families) < 2:
            return None
        halves: list[list[dict[str, Any]]] = [[], []]

        def load(half: list[dict[str, Any]]) -> int:
            return sum(self._member_cost(m) for family in half for m in family["members"])

        for family in sorted(self.families, key=lambda f: -sum(map(self._member_cost,
                                                                       f["members"]))):
            min(halves, key=load).append(family)
        moved = {m for family in halves[1] for m in family["members"]}
        leave = [m in moved for m in range(self.n_active)]
        other = object.__new__(_FusedGroup)
        other.relu, other.n_in, other.n_out = self.relu, self.n_in, self.n_out
        other.device, other.family_width = self.device, dict(self.family_width)
        other.probe_ids = [p for p, k in zip(self.probe_ids, leave, strict=True) if k]
        other.hidden = [h for h, k in zip(self.hidden, leave, strict=True) if k]
        other.softmax = [s for s, k in zip(self.softmax, leave, strict=True) if k]
        other.best = [b for b, k in zip(self.best, leave, strict=True) if k]
        other._build(*self._state(leave))
        self.drop([not k for k in leave])
        return other

    def _member_cost(self, member: int) -> int:
        sizes = [self.n_in, *self.hidden[member], self.n_out]
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


@functools.cache
def _swap_rounds_alike(rows: int, width: int, n_out: int, device: torch.device) -> bool:
    """Whether ``(grad^T h)^T`` equals ``h^T grad`` bit for bit for these shapes here.

    Both sum the same products; whether in the same order is up to the BLAS kernels the
    shapes select (on this project's AVX2 CPUs with MKL: yes for 1 or 2 outputs, no for 5).
    Checked once per shape on random data spread over many magnitudes (where any difference
    in summation order shows), with the gradient at every 4-byte offset mod 16 bytes.
    """
    if device.type != "cpu":
        return False
    generator = torch.Generator().manual_seed(0)
    h = torch.rand(rows, width, generator=generator) * torch.logspace(-3, 3, width)
    flat = torch.randn(rows * n_out + 3, generator=generator) * 10.0 ** torch.randint(
        -4, 4, (rows * n_out + 3,), generator=generator)
    for offset in range(4):
        grad = flat[offset : offset + rows * n_out].view(rows, n_out)
        if not torch.equal(torch.mm(grad.t(), h).t(), torch.mm(h.t(), grad)):
            return False
    return True


def _blocks(start: int, stop: int) -> list[tuple[int, int]]:
    """Rows ``start:stop`` in blocks of about ``_VAL_ROWS``, none under 16 rows unless all are.

    A block's rows come out the same as in one product over all the rows (the kernels work row
    by row), except in products under 400 multiply-adds, which 0.3.0 ran through torch's own
    loop: a block of 16 rows or more never is one, so blocks only change the speed.
    """
    bounds = list(range(start, stop, _VAL_ROWS)) + [stop]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 16:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


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
    groups = [_FusedGroup(ids, [grid[i] for i in ids], X.shape[1], Y.shape[1], init_seed, device)
              for _, ids in sorted(by_activation.items())]
    x_train, y_train = torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device)
    x_val, y_val = torch.from_numpy(X_val).to(device), torch.from_numpy(Y_val).to(device)
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

    def train_epoch(
        group: _FusedGroup, order: torch.Tensor, steps: int, chunks: dict[int, int]
    ) -> list[list[float]]:
        """One epoch of a group; returns its members' train and validation losses."""
        train_sum = torch.zeros(group.n_active, dtype=torch.float64, device=device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            plan = group.plan(len(batch))
            x = torch.index_select(x_train, 0, batch, out=plan["x"])
            y = torch.index_select(y_train, 0, batch, out=plan["y"])
            steps += 1
            per_member = group.train_step(
                x, y, lr / (1 - _ADAM_BETAS[0] ** steps), math.sqrt(1 - _ADAM_BETAS[1] ** steps)
            )
            train_sum += per_member.double() * len(batch)
        in_family_order = (train_sum / n).cpu().tolist()
        train_losses = [0.0] * group.n_active
        for position, member in enumerate(group.family_order):
            train_losses[member] = in_family_order[position]
        return [train_losses, _validation_loss(group, x_val, y_val, chunks)]

    steps, epoch = 0, 0
    families = {(spec["activation"], int(spec["hidden"][0])) for spec in grid}
    workers = max(1, min(workers, len(families)))  # a group never splits a family
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
            chunks = _validation_chunks(grid, [p for g in active for p in g.probe_ids], Y.shape[1])
            results = _run_side_by_side(pool, workers, active, train_epoch, order, steps, chunks)
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


def _validation_chunks(grid: list[dict[str, Any]], active: list[int], n_out: int) -> dict[int, int]:
    """Rows per validation chunk of each active probe.

    The float64 sums of squared errors are added up chunk by chunk, so the chunking decides
    the last bits of a validation loss. These are the chunks of embench 0.3.0 (which stacked
    the MLPs that share a first width and an activation, zero-padded to their widest layer),
    so that its published records still reproduce bit for bit with ``embench verify``.
    """
    def family(probe: int) -> tuple[int, str]:
        return int(grid[probe]["hidden"][0]), grid[probe]["activation"]

    widths: dict[tuple[int, str], int] = {}
    for probe, spec in enumerate(grid):
        key = family(probe)
        widths[key] = max(widths.get(key, 0), *(int(h) for h in spec["hidden"]))
    counts: dict[tuple[int, str], int] = {}
    for probe in active:
        counts[family(probe)] = counts.get(family(probe), 0) + 1
    return {
        probe: max(1, 2**23 // (counts[family(probe)] * max(widths[family(probe)], n_out)))
        for probe in active
    }


def _validation_loss(
    group: _FusedGroup, x_val: torch.Tensor, y_val: torch.Tensor, chunks: dict[int, int]
) -> list[float]:
    """Validation MSE per member, over all samples and target dims (summed in float64)."""
    return [float(total.cpu()) / y_val.numel()
            for total in group.validation_sums(x_val, y_val, chunks)]
