"""Where an fp32 training step's time goes: kernels grouped by kind, with their share and rate.

Runs embench's own training step (``train_throughput.EmbenchStep``: what
``FourLayerCVAEEncoder.fit`` runs, batch 512 at 64 px by default) a few times under
``torch.profiler`` and groups the operators it recorded by kind: convolutions (forward, and the
two backward passes), matrix products, BatchNorm, activations and losses, the optimizer step,
copies and allocation, and the rest. For each kind it prints the share of the step, the
milliseconds per step and, where the profiler counts FLOPs (convolutions and matrix products),
the rate achieved against a matmul peak measured in the same run: the kernels that hold the
step below the peak, and what each costs. FLOPs come from ``torch.utils.flop_counter`` over one
step (it counts the convolutions' backward passes, which the profiler does not); the
profiler's own overhead makes the step somewhat slower than ``train_throughput.py`` reports.

Perceptual networks use random AlexNet weights (same cost as ImageNet weights, no download).

Usage:
    python benchmarks/train_profile.py [--models ae,p_ae] [--steps 3] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from benchlib import MatmulPeak, machine_note, resolve_device
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import EmbenchStep

# (kind, substrings of an aten operator's name), first match wins; order matters.
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("conv backward (input + weight grads)", ("convolution_backward",)),
    ("conv forward", ("mkldnn_convolution", "_convolution", "conv2d", "convolution",
                      "cudnn_convolution")),
    ("matmul (linear layers, 1x1 transposed conv)", ("addmm", "mm", "bmm", "matmul", "linear")),
    ("BatchNorm (forward + backward)", ("batch_norm",)),
    ("activations, pooling, losses", ("relu", "clamp_min", "threshold", "sigmoid", "leaky",
                                      "max_pool",
                                      "mse_loss", "l1_loss", "exp", "pow", "mean", "sum")),
    ("Adam step (foreach)", ("_foreach",)),
    ("copies, casts, layout changes", ("copy_", "_to_copy", "contiguous", "clone", "permute",
                                       "to_dense", "cat", "index", "gather")),
    ("allocation and zeroing", ("empty", "zero_", "fill_", "zeros", "resize_")),
]
OTHER = "other element-wise (Adam's update, ...)"


def kind_of(name: str) -> str:
    base = name.split("::")[-1]
    for kind, keys in KINDS:
        if any(key in base for key in keys):
            return kind
    return OTHER


def step_flops_by_kind(step) -> dict[str, float]:
    """FLOPs of one step per kind, from ``torch.utils.flop_counter`` (which, unlike the
    profiler, also counts the convolutions' backward passes)."""
    flops: dict[str, float] = defaultdict(float)
    with FlopCounterMode(display=False) as counter:
        step()
    for op, count in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).split(".")[1] if str(op).startswith("aten.") else str(op)
        flops[kind_of(name)] += float(count)
    return flops


def profile_steps(step, steps: int) -> tuple[dict[str, float], dict[str, dict[str, float]],
                                               float]:
    """Self CPU (or CUDA) seconds per kind and per operator of each kind over ``steps`` steps;
    and the wall time."""
    import time

    seconds: dict[str, float] = defaultdict(float)
    by_op: dict[str, dict[str, float]] = defaultdict(dict)
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        kind = kind_of(event.key)
        device_time = getattr(event, "self_device_time_total", 0) or 0
        spent = (device_time or event.self_cpu_time_total) / 1e6
        seconds[kind] += spent
        by_op[kind][event.key.split("::")[-1]] = spent
    return seconds, by_op, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ae,p_ae")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"train_profile: {machine_note(device)}", flush=True)
    peak = MatmulPeak(device, torch.float32, 8192 if device.startswith("cuda") else 2048)
    images = np.random.default_rng(0).integers(
        0, 256, (args.batch_size, 3, args.size, args.size), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="embench-profile-") as scratch:
        for name in args.models.split(","):
            step = EmbenchStep(name, images, "fp32", device, Path(scratch)).step
            step()  # warm-up: first-call costs are not the steady state
            flops = step_flops_by_kind(step)
            step_flops = sum(flops.values())
            seconds, by_op, wall = profile_steps(step, args.steps)
            for _ in range(3):
                peak.measure()
            total = sum(seconds.values())
            per_step = wall / args.steps
            print(f"\n{name} fp32, batch {args.batch_size}, {args.size} px: {per_step:.3f} s a "
                  f"step under the profiler ({args.batch_size / per_step:.0f} img/s), "
                  f"{step_flops / 1e9:.1f} GFLOP a step = {step_flops / per_step / 1e9:.0f} "
                  f"GFLOP/s, {100 * step_flops / per_step / 1e9 / peak.peak:.0f}% of the "
                  f"matmul peak ({peak.peak:.0f} GFLOP/s)")
            header = (f"  {'kind':<46} {'share':>6} {'ms/step':>8} {'GFLOP/s':>8} "
                      f"{'of peak':>8}  largest operators")
            print(header)
            print("  " + "-" * (len(header) - 2))
            for kind, spent in sorted(seconds.items(), key=lambda kv: -kv[1]):
                rate = flops[kind] * args.steps / spent / 1e9 if flops[kind] and spent else None
                print(f"  {kind:<46} {100 * spent / total:5.1f}% "
                      f"{1000 * spent / args.steps:8.1f} "
                      f"{'-' if rate is None else f'{rate:.0f}':>8} "
                      f"{'-' if rate is None else f'{100 * rate / peak.peak:.0f}%':>8}  "
                      + ", ".join(op for op, _ in sorted(by_op[kind].items(),
                                                         key=lambda kv: -kv[1])[:3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
