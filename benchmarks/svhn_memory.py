"""Peak memory of the SVHN pipeline at paper size, on SYNTHETIC files of the real size.

Writes ``train_32x32.mat`` (73,257 images), ``test_32x32.mat`` (26,032) and ``extra_32x32.mat``
(531,131) in the official format (MATLAB v5, compressed, X uint8 32x32x3xN, y double Nx1 in
1..10) filled with random pixels: the real files cannot be fetched here, and the pixel values
do not change the memory profile. Then runs, in a child process whose peak RSS is measured:

* ``--mode stages`` (default): the memory-heavy part of ``embench run --encoder pca --task svhn
  --preset paper --no-verify-data``, stage by stage: imports; prepare the task (checksums,
  one-time conversion to the HDF5 store); stream every split through its lazy view in batches;
  embed all five splits (``embed_splits``, with a PCA fitted on 2,000 images so that this stage
  does not depend on the next); and last ``PCAEncoder.fit`` on the autoencoder split exactly as
  the runner calls it. The peak RSS after each stage is reported. The probe search works on
  the (N, z) embeddings only (about 84 MB) and is left out because 19 MLPs x up to 500 epochs
  on 58,606 rows take far too long on 2 CPU cores.
* ``--mode cli``: the whole ``embench run ...`` command, probe search included.

A second child then loads the task again to time the reuse of the store. Everything is written
under a temporary directory (about 1.7 GB of .mat files + 1.9 GB of store) and removed at the
end (``--keep`` keeps it). The target is a peak RSS under 4 GB.

Usage:
    python benchmarks/svhn_memory.py [--mode stages|cli] [--dir TMPDIR] [--json OUT] [--keep]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROWS = {"train": 73_257, "test": 26_032, "extra": 531_131}
TARGET_GB = 4.0
GB = 1e9

# Runs in the child: prepare, stream, embed, fit; prints one JSON line as each stage begins
# and one when it ends.
STAGES_CHILD = r"""
import json, resource, sys, time
from pathlib import Path

data_dir, home, only_prepare = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"

def peak():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork + exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def begin(stage):
    print(json.dumps({"begin": stage, "peak_rss_bytes": peak()}), flush=True)
    return time.perf_counter()

def end(stage, start, **extra):
    print(json.dumps({"stage": stage, "seconds": time.perf_counter() - start,
                      "peak_rss_bytes": peak(), **extra}), flush=True)

start = begin("imports")
from embench.cache import embed_splits
from embench.encoders.pca import PCAEncoder
from embench.presets import get_preset
from embench.protocols import AUTOENCODER_TRAIN, AUTOENCODER_VAL
from embench.runner import prepare_task
import torchvision.datasets, scipy.io, sklearn.decomposition  # what the later stages import
end("imports", start)
preset = get_preset("paper")

start = begin("prepare")
task, data = prepare_task("svhn", preset, home, 0, {"data_dir": data_dir, "verify": False})
end("prepare", start, sizes=data.sizes(), store=str(data.path))
if only_prepare:
    sys.exit(0)

start = begin("stream")  # the data path alone: every split read in batches, as embedding does
total = 0
for name, split in data.splits.items():
    for low in range(0, len(split), 1024):
        total += int(split.images[low : low + 1024][:, 0, 0, 0].sum())
end("stream", start, images=sum(data.sizes().values()))

start = begin("embed")  # embed_splits over all five splits, with a PCA fitted on few images
small = PCAEncoder(z_dim=preset.default_z("svhn"), seed=0)
small.fit(data.splits[AUTOENCODER_TRAIN].images[:2000], None)
embeddings, _ = embed_splits(small, "pca", data)
end("embed", start, shapes={k: list(v.shape) for k, v in embeddings.items()})

start = begin("pca_fit")  # last: PCAEncoder.fit exactly as the runner calls it
encoder = PCAEncoder(z_dim=preset.default_z("svhn"), seed=0)
encoder.fit(data.splits[AUTOENCODER_TRAIN].images, data.splits[AUTOENCODER_VAL].images)
end("pca_fit", start)
"""


def write_synthetic_files(directory: Path, rows: dict[str, int], seed: int = 0) -> None:
    """Write the three .mat files (random pixels, random labels 1..10)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    for split, n in rows.items():
        # (N, C, W, H) in C order is (H, W, C, N) in Fortran order: what MATLAB stores.
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8).T
        y = rng.integers(1, 11, size=(n, 1)).astype(np.float64)
        scipy.io.savemat(directory / f"{split}_32x32.mat", {"X": x, "y": y},
                         do_compression=True)
        del x


def _rss_poller(process: subprocess.Popen, samples: list[int], stop: threading.Event,
                cap: float) -> None:
    """Sample the child's peak RSS (VmHWM); kill it past ``cap`` bytes (a shared machine)."""
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    samples.append(int(line.split()[1]) * 1024)
        except (OSError, IndexError, ValueError):
            return
        if samples and samples[-1] > cap:
            process.kill()
            return
        stop.wait(0.1)


def run_child(command: list[str], cap: float) -> tuple[int, str, int, float]:
    """Run ``command``; return (exit code, stdout, peak RSS in bytes, wall seconds).

    The child is killed (exit code -9) when its RSS passes ``cap`` bytes.
    """
    start = time.perf_counter()
    samples: list[int] = []
    stop = threading.Event()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    poller = threading.Thread(target=_rss_poller, args=(process, samples, stop, cap), daemon=True)
    poller.start()
    out, err = process.communicate()
    stop.set()
    poller.join()
    wall = time.perf_counter() - start
    reported = [json.loads(line).get("peak_rss_bytes", 0) for line in out.splitlines()
                if line.startswith("{")]
    peak = max(samples + reported, default=0)
    if process.returncode:
        sys.stderr.write(err[-4000:])
    return process.returncode, out, max(peak, max(samples, default=0)), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("stages", "cli"), default="stages")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary data")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--rss-cap-gb", type=float, default=10.0,
                        help="kill the child past this RSS (protects a shared machine)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the real sizes (to try the script; 1 = real size)")
    args = parser.parse_args()
    rows = {split: max(10, round(n * args.scale)) for split, n in ROWS.items()}

    root = Path(tempfile.mkdtemp(prefix="embench-svhn-memory-", dir=args.dir))
    free = shutil.disk_usage(root).free
    if free < 5 * GB:
        print(f"need about 5 GB free under {root}, have {free / GB:.1f} GB", file=sys.stderr)
        shutil.rmtree(root)
        return 1
    data_dir, home = root / "svhn", root / "home"
    data_dir.mkdir()
    figures: dict = {"synthetic": True, "rows": rows, "scale": args.scale, "mode": args.mode,
                     "target_gb": TARGET_GB, "rss_cap_gb": args.rss_cap_gb}
    try:
        size = "the real size" if args.scale == 1 else f"{args.scale:g} x the real size"
        print(f"writing SYNTHETIC SVHN files of {size} into {data_dir} ...", flush=True)
        # In a fresh process: the writer's memory must not count towards the child's peak.
        start = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(
            target=write_synthetic_files, args=(data_dir, rows))
        writer.start()
        writer.join()
        if writer.exitcode:
            raise RuntimeError(f"writing the synthetic files failed (exit {writer.exitcode})")
        figures["write_seconds"] = time.perf_counter() - start
        figures["file_bytes"] = {p.name: p.stat().st_size for p in sorted(data_dir.iterdir())}

        if args.mode == "cli":
            command = [sys.executable, "-m", "embench.cli", "run", "--encoder", "pca", "--task",
                       "svhn", "--preset", "paper", "--data-dir", str(data_dir),
                       "--no-verify-data", "--home", str(home)]
        else:
            command = [sys.executable, "-c", STAGES_CHILD, str(data_dir), str(home), "0"]
        print("running:", " ".join(command[:2] + ["..."] + command[3:] if args.mode == "stages"
                                   else command), flush=True)
        code, out, peak, wall = run_child(command, args.rss_cap_gb * GB)
        figures.update(exit_code=code, peak_rss_bytes=peak, wall_seconds=wall)
        if args.mode == "stages":
            events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            figures["stages"] = [e for e in events if "stage" in e]
            if code:
                figures["killed_or_failed_in"] = events[-1].get("begin") if events else None
        else:
            figures["cli_output_tail"] = out[-2000:]
        store = next(home.glob("datasets/svhn/*.h5"), None)
        figures["store_bytes"] = store.stat().st_size if store else None

        if code == 0:
            # Second load: checksums memoised, store reused (no conversion).
            command = [sys.executable, "-c", STAGES_CHILD, str(data_dir), str(home), "1"]
            _, out2, _, wall2 = run_child(command, args.rss_cap_gb * GB)
            reload = [json.loads(line) for line in out2.splitlines() if line.startswith("{")]
            figures["reload_prepare_seconds"] = next(
                (s["seconds"] for s in reload if s.get("stage") == "prepare"), None)
            figures["reload_wall_seconds"] = wall2
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(json.dumps(figures, indent=2))
    verdict = "UNDER" if peak < TARGET_GB * GB else "OVER"
    for entry in figures.get("stages", []):
        print(f"  after {entry['stage']:<8} {entry['seconds']:8.1f} s   peak RSS so far "
              f"{entry['peak_rss_bytes'] / GB:.2f} GB")
    if figures.get("killed_or_failed_in"):
        print(f"  child stopped during {figures['killed_or_failed_in']!r} (exit code {code}; "
              f"-9 = killed at the {args.rss_cap_gb:g} GB cap)")
    at_least = "at least " if code == -9 else ""
    print(f"\npeak RSS {at_least}{peak / GB:.2f} GB: {verdict} the {TARGET_GB:.0f} GB target "
          f"(synthetic data of {size}, mode {args.mode}, exit code {code})")
    if figures.get("reload_prepare_seconds") is not None:
        print(f"second load (store reused): prepare {figures['reload_prepare_seconds']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
