"""The paper's probe search: embench's batched grid against training each probe one by one.

Data: SYNTHETIC but learnable embeddings, ``--rows`` (50,000) probe-train rows of 64 features
(plus a quarter as many validation and as many test rows), standard normal, with two targets
that are smooth nonlinear functions of four random projections plus noise (fixed seed), so the
MLPs beat the linear probe and the grid has a clear winner. The targets play the part of the
lander position of LunarLander and are scored with its metric (error in pixels).

* **embench**: ``embench.probes.search_probes`` (the linear probe trained like the MLPs, and
  the 18 regression MLPs of the paper trained together as one batched computation with
  per-probe early stopping; its closed-form least-squares extra is left out of the comparison).
* **baseline**: the straightforward way: every probe (the linear one trained with Adam like the
  MLPs, as the paper did) one after another, each an ``nn.Sequential`` fed by a float32
  ``TensorDataset`` + ``DataLoader(batch_size=512)``, Adam, validation MSE under
  ``torch.no_grad`` after every epoch, early stopping with ``embench.protocols.patience_for``
  keeping the best weights. Same epochs, batch size, learning rate and seeds: each probe starts
  from the weights embench draws for it (``seed_streams`` + ``init_linear``) and sees the same
  batches (its sampler draws one ``torch.randperm`` per epoch from the same shuffle seed; torch's
  ``RandomSampler`` would draw a second, unused permutation per epoch and so shuffle differently).

Both must select the same configuration (lowest validation MSE) and reach the same test error
within ``--tolerance`` (relative). Timing: embench runs before and after each baseline run (the
mean is reported), so that load changes hit both alike. On CPU the baseline runs on one torch
thread (its fastest: torch's intra-op threads do not help layers this small, see the last rows)
and ``search_probes`` is called at torch's default thread count, which it spends on training
groups of MLPs (and the linear probe) side by side (each op on one thread); the last rows time
one epoch of each side at the default thread count against one. The FLOP rows count each
side's arithmetic with ``torch.utils.flop_counter`` and compare the achieved rate with a
matmul peak.

Usage:
    python benchmarks/probe_search.py [--epochs 20] [--rows 50000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from benchlib import MatmulPeak, Row, fmt, machine_note, print_table, resolve_device, synchronize
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from embench.probes import mlp_name, probe_grid, search_probes
from embench.probes.estimators import mlp_layers, seed_streams
from embench.protocols import patience_for

PIXELS_PER_UNIT = 32.0  # LunarLander's metric: error in pixels of the 64x64 frame
TARGET_SPEEDUP = 10.0


def make_data(rows: int, dim: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Synthetic embeddings and two smooth nonlinear targets, split into train/val/test."""
    rng = np.random.default_rng(seed)
    sizes = {"train": rows, "val": rows // 4, "test": rows // 4}
    projection = rng.standard_normal((dim, 4)) / math.sqrt(dim)
    out = {}
    for name, n in sizes.items():
        x = rng.standard_normal((n, dim)).astype(np.float32)
        h = x.astype(np.float64) @ projection
        y = np.stack([np.tanh(1.5 * h[:, 0]) + 0.4 * np.sin(2.0 * h[:, 1]),
                      0.5 * h[:, 2] ** 2 - 0.5 + 0.3 * np.tanh(h[:, 3]) * h[:, 0]], axis=1)
        y += 0.05 * rng.standard_normal(y.shape)
        out[name] = (x, y.astype(np.float32))
    return out


def error_px(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """LunarLander's metric: 32 * mean Euclidean distance."""
    return float(PIXELS_PER_UNIT * np.linalg.norm(y_pred - y_true, axis=1).mean())


class EpochOrder(Sampler):
    """One ``torch.randperm`` per epoch from a seeded generator (embench's shuffle stream)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


def build_mlp(n_in: int, hidden: tuple[int, ...], n_out: int, activation: str,
              seed: int) -> nn.Sequential:
    """An ``nn.Sequential`` MLP with the initial weights embench draws for the same seed."""
    init_seed, _, _ = seed_streams(seed)
    generator = torch.Generator().manual_seed(init_seed)
    layers = mlp_layers([n_in, *hidden, n_out], activation, generator)
    return nn.Sequential(*layers)


def train_one(model: nn.Sequential, data: dict, *, epochs: int, batch_size: int, lr: float,
              seed: int, device: str) -> dict:
    """The textbook loop for one probe, with early stopping on validation MSE."""
    model = model.to(device)
    x_train, y_train = (torch.from_numpy(a) for a in data["train"])
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size,
                        sampler=EpochOrder(len(x_train), seed_streams(seed)[1]))
    x_val, y_val = (torch.from_numpy(a).to(device) for a in data["val"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    patience = patience_for(epochs)
    best_loss, best_state, best_epoch, waited, epoch = math.inf, None, 0, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = F.mse_loss(model(x_val), y_val).item()
        if val_loss < best_loss:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data["test"][0]).to(device)).cpu().numpy()
    return {"val_loss": best_loss, "epochs_run": epoch, "best_epoch": best_epoch,
            "test": error_px(data["test"][1], pred)}


def sequential_search(data: dict, *, epochs: int, batch_size: int, lr: float, seed: int,
                      device: str) -> dict[str, dict]:
    """Every probe of the grid (linear first) trained one after another."""
    n_in, n_out = data["train"][0].shape[1], data["train"][1].shape[1]
    specs = [("linear", (), "relu")] + [
        (mlp_name(tuple(e["hidden"]), e["activation"], e["output"]), tuple(e["hidden"]),
         e["activation"]) for e in probe_grid("regression")
    ]
    results = {}
    for name, hidden, activation in specs:
        model = build_mlp(n_in, hidden, n_out, activation, seed)
        results[name] = train_one(model, data, epochs=epochs, batch_size=batch_size, lr=lr,
                                  seed=seed, device=device)
    synchronize(device)
    return results


def embench_search(data: dict, *, epochs: int, batch_size: int, lr: float, seed: int,
                   device: str) -> dict[str, dict]:
    """``search_probes`` on the same data; the same summary per candidate."""
    (x, y), (xv, yv), (xt, yt) = data["train"], data["val"], data["test"]
    result = search_probes(x, y, xv, yv, kind="regression", max_epochs=epochs,
                           batch_size=batch_size, lr=lr, seed=seed, device=device)
    synchronize(device)
    return {
        c["name"]: {"val_loss": c["val_loss"], "epochs_run": c["epochs_run"],
                    "best_epoch": c["best_epoch"],
                    "test": error_px(yt, result.estimators[c["name"]].predict(xt))}
        for c in result.candidates if c["family"] != "least_squares"  # an extra, not a probe
    }


def flops_per_epoch(data: dict, settings: dict) -> dict[str, float]:
    """FLOPs of one training epoch of each side, counted on one batch (forward + backward).

    Each side runs one epoch on exactly one batch of rows under ``FlopCounterMode`` (and one
    validation row, which adds nothing measurable); times the batches of a full epoch. embench
    counts its fused products (the arithmetic it really does); the baseline the 19 separate
    probes.
    """
    rows = settings["batch_size"]
    one_batch = {"train": tuple(a[:rows] for a in data["train"]),
                 "val": tuple(a[:1] for a in data["val"]),
                 "test": tuple(a[:1] for a in data["test"])}
    batches = math.ceil(len(data["train"][0]) / rows)
    counts = {}
    threads = torch.get_num_threads()
    # One thread: the counter sees only its own thread's ops, and search_probes would run
    # groups on other threads (the arithmetic is the same).
    torch.set_num_threads(1)
    for name, fn in (("baseline", sequential_search), ("embench", embench_search)):
        with FlopCounterMode(display=False) as counter:
            fn(one_batch, **{**settings, "epochs": 1})
        counts[name] = counter.get_total_flops() * batches
    torch.set_num_threads(threads)
    return counts


def best_of(results: dict[str, dict], mlp_only: bool = False) -> str:
    names = [n for n in results if not mlp_only or n != "linear"]
    return min(names, key=lambda n: results[n]["val_loss"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10,
                        help="most epochs per probe (the paper: 500); bounds the run time")
    parser.add_argument("--rows", type=int, default=50_000, help="probe-train rows")
    parser.add_argument("--dim", type=int, default=64, help="embedding size")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="baseline runs (each between two "
                        "embench runs)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest relative difference of the test error (default 2%%)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the caller of search_probes (default: torch's "
                        "choice; on CPU it trains that many groups side by side)")
    parser.add_argument("--baseline-threads", type=int, default=None,
                        help="torch threads of the baseline (default on CPU: 1, its fastest, "
                        "see the last rows; on CUDA: torch's choice)")
    parser.add_argument("--no-thread-check", action="store_true",
                        help="skip timing one epoch at torch's default threads vs 1")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    device = resolve_device(args.device)
    threads = args.threads or default_threads
    baseline_threads = args.baseline_threads or (1 if device == "cpu" else default_threads)
    side_threads = {embench_search: threads, sequential_search: baseline_threads}
    torch.set_num_threads(threads)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed, "device": device}
    data = make_data(args.rows, args.dim, args.seed)
    print(f"probe_search: {machine_note(device)}", flush=True)
    print(f"{args.rows:,} x {args.dim} train, {len(data['val'][0]):,} val, "
          f"{len(data['test'][0]):,} test rows (SYNTHETIC); linear + 18 MLPs; up to "
          f"{args.epochs} epochs, patience {patience_for(args.epochs)}, batch {args.batch_size}",
          flush=True)

    embench_search(data, **{**settings, "epochs": 1})  # warm-up (imports, allocator)
    embench_times, baseline_times = [], []

    def timed(fn):
        torch.set_num_threads(side_threads[fn])
        start = time.perf_counter()
        out = fn(data, **settings)
        return out, time.perf_counter() - start

    ours, seconds = timed(embench_search)
    embench_times.append(seconds)
    print(f"embench search: {seconds:.1f} s", flush=True)
    for _ in range(args.rounds):
        theirs, seconds = timed(sequential_search)
        baseline_times.append(seconds)
        print(f"sequential DataLoader training: {seconds:.1f} s", flush=True)
        ours, seconds = timed(embench_search)
        embench_times.append(seconds)
        print(f"embench search: {seconds:.1f} s", flush=True)

    thread_times: dict[tuple[str, int], float] = {}
    if not args.no_thread_check and default_threads > 1 and device == "cpu":
        # What torch's default thread count gives each side: search_probes spends it on
        # groups side by side, the textbook loop on torch's intra-op threads.
        small = {k: (x[: len(x) // 5], y[: len(y) // 5]) for k, (x, y) in data.items()}
        one_epoch = {**settings, "epochs": 1}
        checks = {
            "embench": lambda: search_probes(*small["train"], *small["val"], kind="regression",
                                             max_epochs=1, batch_size=args.batch_size,
                                             lr=args.lr, seed=args.seed, device=device),
            "textbook": lambda: train_one(build_mlp(args.dim, (128, 128), 2, "relu", args.seed),
                                          small, **one_epoch),
        }
        for count in (default_threads, 1, default_threads, 1):
            torch.set_num_threads(count)
            for name, check in checks.items():
                start = time.perf_counter()
                check()
                key = (name, count)
                thread_times[key] = thread_times.get(key, 0.0) + (time.perf_counter() - start) / 2
        torch.set_num_threads(threads)

    base_s, ours_s = float(np.mean(baseline_times)), float(np.mean(embench_times))
    flops = flops_per_epoch(data, settings) if device == "cpu" else {}
    peaks = {}
    if device == "cpu":
        for name, count in (("baseline", baseline_threads), ("embench", threads)):
            torch.set_num_threads(count)
            peak = MatmulPeak(device, torch.float32, 1024)
            for _ in range(5):
                peak.measure()
            peaks[name] = peak.peak
        torch.set_num_threads(threads)
    speedup = base_s / ours_s
    picked = {"baseline": best_of(theirs), "embench": best_of(ours)}
    picked_mlp = {"baseline": best_of(theirs, True), "embench": best_of(ours, True)}

    def relative(a: float, b: float) -> float:
        return abs(a - b) / abs(a)

    rows = [
        Row(f"full grid (linear + 18 MLPs), {args.epochs} epochs: wall time",
            fmt(base_s, "s"), fmt(ours_s, "s"), speedup, f">= {TARGET_SPEEDUP:g}x",
            speedup >= TARGET_SPEEDUP),
        Row("selected configuration (lowest val MSE)", picked["baseline"], picked["embench"],
            None, "same", picked["baseline"] == picked["embench"]),
        Row("best MLP", picked_mlp["baseline"], picked_mlp["embench"], None, "same",
            picked_mlp["baseline"] == picked_mlp["embench"]),
    ]
    for label, names in (("selected probe", picked), ("best MLP", picked_mlp)):
        a, b = theirs[names["baseline"]]["test"], ours[names["embench"]]["test"]
        rows.append(Row(f"test error_px, {label}", fmt(a, "px", 4), fmt(b, "px", 4), None,
                        f"within {args.tolerance:.0%}", relative(a, b) <= args.tolerance))
    a, b = theirs["linear"]["test"], ours["linear"]["test"]
    rows.append(Row("test error_px, linear (both trained with Adam)", fmt(a, "px", 4),
                    fmt(b, "px", 4), None, "same", relative(a, b) <= args.tolerance))
    mlps = [n for n in ours if n != "linear"]
    worst = max(relative(theirs[n]["val_loss"], ours[n]["val_loss"]) for n in mlps)
    rows.append(Row("largest relative val-MSE gap over the 18 MLPs", "-", f"{worst:.2%}",
                    None, "-"))
    epochs_a = sum(theirs[n]["epochs_run"] for n in mlps)
    epochs_b = sum(ours[n]["epochs_run"] for n in mlps)
    rows.append(Row("MLP epochs run, summed over the grid (early stopping)", str(epochs_a),
                    str(epochs_b), None, "same", epochs_a == epochs_b))
    if flops and peaks:
        # Achieved rate over the whole timed run: MLP epochs actually run (early stopping
        # included, averaged over the grid) times the FLOPs of one epoch.
        mean_epochs = {"baseline": epochs_a / len(mlps), "embench": epochs_b / len(mlps)}
        rate = {k: flops[k] * mean_epochs[k] / t / 1e9
                for k, t in (("baseline", base_s), ("embench", ours_s))}
        rows.append(Row("training FLOPs per epoch (forward + backward, matmuls)",
                        fmt(flops["baseline"] / 1e9, "GFLOP"), fmt(flops["embench"] / 1e9, "GFLOP"),
                        flops["baseline"] / flops["embench"], "-"))
        rows.append(Row("fp32 matmul peak at each side's threads (1024^2 matmul)",
                        f"{peaks['baseline']:.0f} GFLOP/s ({baseline_threads} thr)",
                        f"{peaks['embench']:.0f} GFLOP/s ({threads} thr)",
                        peaks["embench"] / peaks["baseline"], "-"))
        rows.append(Row("achieved GFLOP/s (share of that peak)",
                        f"{rate['baseline']:.1f} ({rate['baseline'] / peaks['baseline']:.0%})",
                        f"{rate['embench']:.1f} ({rate['embench'] / peaks['embench']:.0%})",
                        rate["embench"] / rate["baseline"], "-"))
        floor = flops["embench"] * mean_epochs["embench"] / (peaks["embench"] * 1e9)
        rows.append(Row("embench at the matmul peak (its FLOPs / peak): best possible ratio",
                        fmt(base_s, "s"), fmt(floor, "s"), base_s / floor, "-"))
    if thread_times:
        d = default_threads
        rows.append(Row(f"search_probes, 1 epoch on {args.rows // 5:,} rows: caller at 1 "
                        f"thread vs {d} (groups side by side)",
                        fmt(thread_times["embench", 1], "s"), fmt(thread_times["embench", d], "s"),
                        thread_times["embench", 1] / thread_times["embench", d], "-"))
        rows.append(Row(f"textbook loop, mlp-128x128 1 epoch on {args.rows // 5:,} rows: {d} "
                        "threads vs 1", fmt(thread_times["textbook", d], "s"),
                        fmt(thread_times["textbook", 1], "s"),
                        thread_times["textbook", d] / thread_times["textbook", 1], "-"))
    notes = [
        f"torch threads: baseline {baseline_threads}, embench's caller {threads} (torch's "
        f"default here: {default_threads}); search_probes runs every op on one thread and "
        "uses the caller's count for groups side by side (bit-identical results)",
        f"times: baseline mean of {len(baseline_times)} run(s) "
        f"({', '.join(f'{t:.1f}' for t in baseline_times)} s), embench mean of "
        f"{len(embench_times)} runs around them ({', '.join(f'{t:.1f}' for t in embench_times)}"
        " s); ratio = baseline / embench",
        "both sides train the linear probe with Adam, as the paper did (embench's closed-form "
        "least-squares extra is not timed apart: it is one lstsq on the whole set)",
        f"the paper runs up to 500 epochs; here --epochs {args.epochs} bounds the run (both "
        "sides scale linearly per epoch until probes stop early)",
        "FLOPs: torch.utils.flop_counter on one batch of each side, times the batches of an "
        "epoch (matmuls only: element-wise work and Python/DataLoader time are what the "
        "baseline loses beyond its FLOPs); the last row bounds what batching alone can reach "
        "on these cores",
    ]
    print_table(f"probe search on {device}", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
