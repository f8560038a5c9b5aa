"""LunarLander data generation with 1 and with 2 worker processes.

Each measurement is ``LunarLanderTask(workers=k).load(home, preset, seed=0)`` into a fresh
temporary home, so the rollouts are generated (gymnasium LunarLander-v3, 600x400 render,
bicubic resize to 64x64), written to the HDF5 store and read back: the data stage of
``embench run`` as a user meets it. The preset is a small custom ``embench.presets.Preset``
with ``--unaltered`` + ``--altered`` rollouts (default 8 + 16 = 24) of 150 frames. Rounds
alternate the worker counts (rotating the order). The data must be identical for both counts
(it depends only on the seed). With 2 workers the time includes starting the spawn pool, which
is measured on its own too (two processes importing gymnasium, Box2D and pygame).

Why 24 rollouts: the quick preset generates 300 and the paper 1,400, so the pool's fixed
costs (start-up, and one worker idling while the other finishes the last rollout, ~0.5 s)
are small there. At 12 rollouts (~10 s on one worker) they alone cap the ratio near 1.8x;
24 rollouts keep the measurement near a real run's while taking about a minute per round.

Usage:
    python benchmarks/datagen_throughput.py [--rounds 2] [--unaltered 8] [--altered 16]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchlib import Row, fmt, interleave, machine_note, median, print_table, usable_cpus

from embench.presets import Preset
from embench.protocols import SPLITS
from embench.tasks.lunarlander import LunarLanderTask, _require_box2d

TARGET_SPEEDUP = 1.7


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pool_startup_seconds(workers: int) -> float:
    """Seconds to spawn ``workers`` processes that import what a rollout needs."""
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for future in [pool.submit(_require_box2d) for _ in range(workers)]:
            future.result()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unaltered", type=int, default=8, help="unaltered rollouts (>= 2)")
    parser.add_argument("--altered", type=int, default=16, help="altered rollouts (>= 3)")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="the parallel count to compare")
    args = parser.parse_args()
    preset = Preset(name="bench-datagen", autoencoder_epochs=1, probe_epochs=1, decoder_epochs=1,
                    overrides={"lunarlander": {"unaltered_rollouts": args.unaltered,
                                               "altered_rollouts": args.altered,
                                               "frames": args.frames}})
    rollouts = args.unaltered + args.altered
    frames = rollouts * args.frames
    print(f"datagen_throughput: {machine_note()}", flush=True)
    print(f"{rollouts} rollouts x {args.frames} frames; 1 vs {args.workers} workers; "
          f"{args.rounds} rounds", flush=True)
    digests: dict[int, set[str]] = {}
    cpu: dict[int, list[float]] = {}

    def generate(workers: int):
        def run() -> None:
            with tempfile.TemporaryDirectory(prefix="embench-datagen-") as home:
                before = cpu_seconds()
                data = LunarLanderTask(workers=workers).load(Path(home), preset, seed=0)
                cpu.setdefault(workers, []).append(cpu_seconds() - before)
                digest = hashlib.sha256()
                for name in SPLITS:
                    digest.update(data.splits[name].images.tobytes())
                    digest.update(data.splits[name].labels.tobytes())
                digests.setdefault(workers, set()).add(digest.hexdigest())
        return run

    pool_startup_seconds(1)  # warm the page cache for the imports
    times = interleave({1: generate(1), args.workers: generate(args.workers)}, args.rounds,
                       on_round=lambda i, s: print(
                           f"round {i + 1}/{args.rounds}: " + ", ".join(
                               f"{k} worker(s) {v:.1f}s" for k, v in s.items()), flush=True))
    startup = median([pool_startup_seconds(args.workers) for _ in range(2)])
    one, many = median(times[1]), median(times[args.workers])
    speedup = one / many
    ideal = one / (startup + one / args.workers)
    cpu_one, cpu_many = median(cpu[1]), median(cpu[args.workers])
    projected = cpu_one / (cpu_many / args.workers)
    rows = [
        Row(f"generate {rollouts} rollouts ({frames:,} frames): wall time",
            fmt(one, "s"), fmt(many, "s"), speedup, f">= {TARGET_SPEEDUP:g}x",
            speedup >= TARGET_SPEEDUP),
        Row("frames per second", fmt(frames / one, "frames/s"),
            fmt(frames / many, "frames/s"), speedup),
        Row(f"spawn pool start-up ({args.workers} workers importing gymnasium/Box2D)", "-",
            fmt(startup, "s"), None),
        Row("wall time, pool start-up taken out of the 2-worker side", fmt(one, "s"),
            fmt(many - startup, "s"), one / (many - startup) if many > startup else None),
        Row("CPU seconds, all processes (workers' start-up included)", fmt(cpu_one, "s"),
            fmt(cpu_many, "s"), cpu_one / cpu_many),
        Row("cores obtained while generating (CPU s / wall s)", f"{cpu_one / one:.2f}",
            f"{cpu_many / many:.2f}", None),
        Row(f"projected on {args.workers} idle cores (1-worker CPU s / ({args.workers}-worker "
            f"CPU s / {args.workers}))", fmt(cpu_one, "s"), fmt(cpu_many / args.workers, "s"),
            projected),
        Row("same data with 1 and with 2 workers", "-",
            "yes" if len(digests[1] | digests[args.workers]) == 1 else "NO", None, "same",
            len(digests[1] | digests[args.workers]) == 1),
    ]
    notes = [
        f"baseline = 1 worker (in-process), embench = {args.workers} workers (spawn pool); "
        f"medians of {args.rounds} interleaved rounds; ratio = 1-worker time / "
        f"{args.workers}-worker time",
        f"{usable_cpus()} usable cores; with other processes on them, 2 workers cannot get two "
        "cores' worth of time and the ratio drops toward 1",
        f"with perfect scaling and the measured start-up the ratio would be about {ideal:.2f}x",
        "'cores obtained' well under the worker count means the scheduler gave the workers "
        "less than a core each (other processes): the wall-time ratio then measures the load; "
        "the projection from CPU time is only a rough idle-machine estimate (contention "
        "inflates CPU time too), so it is not judged",
    ]
    print_table("LunarLander data generation", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
