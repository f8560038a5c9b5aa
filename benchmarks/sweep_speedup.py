"""Speed-up of `embench sweep --executor local` over running the same jobs one by one.

Both sides run the same sweep (encoders x z sizes on LunarLander) from a fresh home holding
the same pre-generated data, so only encoder training, embedding and probe search are timed:

- **one by one**: one job at a time, each with every usable core (``--workers 1
  --threads-per-job <cores>``), which is what a loop of ``embench run`` calls does;
- **local pool**: ``--workers <cores> --threads-per-job 1``, the sweep's default.

Rounds alternate the order (see ``benchlib.interleave``). On 2 cores the pool can at best
double the throughput; small jobs gain more than large ones because one job cannot keep two
threads busy through its Python-bound parts (data reads, probe bookkeeping, file writes).

Usage:
    python benchmarks/sweep_speedup.py [--encoders pca,ae] [--z 4,8,16,32] [--rounds 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from benchlib import Row, fmt, interleave, machine_note, median, print_table, usable_cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="pca,ae")
    parser.add_argument("--z", default="4,8,16,32", help="comma-separated z sizes")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    from embench.presets import get_preset
    from embench.runner import prepare_task
    from embench.sweep import SweepSpec, run_sweep

    cores = usable_cpus()
    zs = [int(z) for z in args.z.split(",")]
    root = Path(tempfile.mkdtemp(prefix="embench-sweep-bench-"))
    try:
        data_home = root / "data"
        prepare_task("lunarlander", get_preset(args.preset), data_home)
        counter = {"n": 0}
        outcomes = {}

        def sweep(workers: int, threads: int, label: str):
            def go() -> float:
                counter["n"] += 1
                home = root / f"{label}-{counter['n']}"
                shutil.copytree(data_home / "datasets", home / "datasets")
                spec = SweepSpec(encoders=tuple(args.encoders.split(",")),
                                 tasks=("lunarlander",), z_sizes=tuple(zs),
                                 preset=args.preset, device="cpu", workers=workers,
                                 threads_per_job=threads, home=home, out=None)
                outcome = run_sweep(spec)
                if outcome.count("failed") or outcome.count("blocked"):
                    raise SystemExit(f"{label}: jobs failed: "
                                     f"{[s.errors for s in outcome.states if s.errors]}")
                outcomes[label] = outcome
                shutil.rmtree(home, ignore_errors=True)
                return outcome.seconds
            return go

        spent = interleave({"one by one": sweep(1, cores, "serial"),
                            "local pool": sweep(cores, 1, "pool")}, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    serial, pool = median(spent["one by one"]), median(spent["local pool"])
    n_runs = len(args.encoders.split(",")) * len(zs)
    rows = [Row(f"sweep of {n_runs} runs ({args.encoders} x z {args.z}, {args.preset})",
                f"{fmt(serial, 's')} (1 worker x {cores} threads)",
                f"{fmt(pool, 's')} ({cores} workers x 1 thread)", serial / pool,
                "> 1 (issue: report it)", serial / pool > 1)]
    notes = [machine_note("cpu"),
             f"rounds {args.rounds}; per round, seconds: one by one {spent['one by one']}, "
             f"local pool {spent['local pool']}",
             "both sides include the pool's start-up and the data job (a verification of the "
             "existing data file)"]
    print_table("embench sweep: local pool vs one job at a time", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
