"""Run every benchmark with bounded sizes (what ``make bench`` does) and summarise.

Each script runs in its own process, one after another (never two at once: they would share
the cores), with the sizes below chosen so the whole run takes well under 20 minutes on a
2-core CPU. Each prints its own table (figure, baseline, embench, ratio, target, met?); this
script streams them and ends with the wall time and exit status of each. It exits non-zero if
any script failed.

Usage:
    python benchmarks/run_all.py [--device cpu|cuda|auto] [--only train_throughput,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUDGET_MINUTES = 20.0

# (script, arguments, why these sizes). "{device}" is replaced by --device.
BENCHMARKS: list[tuple[str, list[str], str]] = [
    ("train_throughput.py", ["--quick", "--rounds", "5", "--device", "{device}"],
     "ae and p_ae at 64 px, batch 512, 5 rounds (3 gave 1.23-1.51x for ae from run to run): "
     "embench's step, 0.4.0's (p(x) recomputed every step) and the textbook one, with the "
     "per-image perceptual cost with and without the p(x) cache; bf16 one small step where "
     "it is emulated"),
    ("train_profile.py", ["--models", "ae,p_ae", "--steps", "2", "--device", "{device}"],
     "where an fp32 training step's time goes (kernels by kind, share, GFLOP/s, % of peak)"),
    ("probe_search.py", ["--epochs", "8", "--device", "{device}"],
     "full grid on 50,000 x 64, 8 epochs; on CPU the baseline on 1 torch thread (its "
     "fastest), search_probes called at torch's default (families side by side)"),
    ("embed_throughput.py", ["--images", "2048", "--per-image", "64", "--device", "{device}"],
     "2,048 images; the per-image loop on 64 of them"),
    ("datagen_throughput.py", ["--rounds", "2"], "24 rollouts x 150 frames per measurement"),
    ("end_to_end.py", [], "reads the published quick records (prints a note if there are none)"),
    ("end_to_end.py", ["--run", "--run-preset", "smoke", "--device", "{device}"],
     "runs embench reproduce --preset smoke in a temporary home"),
    ("sweep_speedup.py", ["--encoders", "pca,ae", "--z", "4,8"],
     "a smoke sweep of 4 runs, local pool vs one job at a time"),
    ("svhn_memory.py", ["--scale", "0.01"],
     "peak memory of the SVHN pipeline at 1% of the real size (the full size needs ~5 GB of "
     "disk and many minutes: run it alone)"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--only", default=None, help="comma-separated script names to run")
    args = parser.parse_args()
    wanted = None if args.only is None else {
        name if name.endswith(".py") else f"{name}.py" for name in args.only.split(",")}
    summary = []
    start_all = time.perf_counter()
    for script, arguments, why in BENCHMARKS:
        if wanted is not None and script not in wanted:
            continue
        command = [sys.executable, str(HERE / script),
                   *(a.replace("{device}", args.device) for a in arguments)]
        print(f"\n######## {script} {' '.join(command[2:])}\n# {why}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=HERE.parent)
        seconds = time.perf_counter() - start
        summary.append((f"{script} {' '.join(command[2:])}".strip(), seconds, code))
        if code:
            print(f"!! {script} exited with status {code}", flush=True)
    total = time.perf_counter() - start_all

    print("\n######## summary")
    width = max(len(name) for name, _, _ in summary)
    for name, seconds, code in summary:
        print(f"{name.ljust(width)}  {seconds / 60:5.1f} min  "
              f"{'ok' if code == 0 else f'FAILED ({code})'}")
    verdict = "met" if total / 60 < BUDGET_MINUTES else "NOT met"
    print(f"{'total'.ljust(width)}  {total / 60:5.1f} min  (target < {BUDGET_MINUTES:g} min: "
          f"{verdict})")
    failed = [name for name, _, code in summary if code]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
