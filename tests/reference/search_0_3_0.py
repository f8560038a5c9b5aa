"""embench 0.3.0's batched MLP training, frozen: the reference of test_probe_search_compat.py.

``_PaddedFamily``, ``_train_batched`` and their helpers as they stood in
``embench/probes/search.py`` at commit bbba812 (MLPs stacked per first width, zero-padded,
trained with autograd), unchanged; the rest of that module (the grid, ``search_probes``,
``SearchResult``) is the same today and is not copied. The board's 0.3.0 records (in the git
history since 0.4.0 re-probed them) carry this code's rounding. Never edit its code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from embench.faults import crash_point
from embench.probes.estimators import (
    MLPFit,
    epoch_order,
    init_linear,
    seed_streams,
    squared_error_sum,
)
from embench.progress import stage

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


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
