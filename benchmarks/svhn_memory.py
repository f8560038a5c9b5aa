"""Peak memory of the SVHN pipeline at paper size, on SYNTHETIC files of the real size.

Writes ``train_32x32.mat`` (73,257 images), ``test_32x32.mat`` (26,032) and ``extra_32x32.mat``
(531,131) in the official format (MATLAB v5, compressed, X uint8 32x32x3xN, y double Nx1 in
1..10) filled with random pixels: the real files cannot be fetched here, and the pixel values
do not change the memory profile. Then measures, each in a child process of its own whose
peak RSS (VmHWM) is sampled:

(a) the ``pca`` pipeline, i.e. ``embench run --encoder pca --task svhn --preset paper
    --no-verify-data``:

    * ``--mode stages`` (default): its memory-heavy part, stage by stage: imports; prepare the
      task (checksums, one-time conversion to the HDF5 store); stream every split through its
      lazy view in batches; embed all five splits (``embed_splits``, with a PCA fitted on 2,000
      images so that this stage does not depend on the next); and last ``PCAEncoder.fit`` on
      the autoencoder split exactly as the runner calls it. The probe search works on the
      (N, z) embeddings only (about 84 MB) and is left out because 19 MLPs x up to 500 epochs
      on 58,606 rows take far too long on 2 CPU cores.
    * ``--mode cli``: the whole ``embench run ...`` command, probe search included.

(b) the autoencoder data path of ``ae`` (what ``AE.fit`` does before and inside its epochs,
    on the paper-size extra split, tiled 2x2 to 64x64 on access): prepare the task again (the
    store is reused: this also times the second load); ``ae_stream``: the training data read
    from the store batch by batch (what :data:`RESIDENT_BYTES` = 0 gives) and ``--ae-batches``
    training steps of batch 512 plus one validation batch; ``ae_hold``: the data held as
    ``fit`` holds it by default (SVHN's extra split untiled: 1.63 GB instead of 6.5 GB tiled);
    ``ae_steps``: the same training steps from the held data. Full epochs are left out
    (425,000 images per epoch take hours on 2 CPU cores); the memory of a step does not grow
    with the number of steps. ``--ae-batches 0`` skips (b).

Everything is written under a temporary directory (about 1.7 GB of .mat files + 1.9 GB of
store) and removed at the end (``--keep`` keeps it). The target is a peak RSS under 4 GB for
each of (a) and (b).

Usage:
    python benchmarks/svhn_memory.py [--mode stages|cli] [--ae-batches N] [--dir TMPDIR]
        [--json OUT] [--keep] [--scale FRACTION]
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

# What every child shares: its peak RSS and one JSON line as each stage begins and ends.
CHILD_HEADER = r"""
import json, resource, sys, time
from pathlib import Path

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
"""

# (a) in the child: prepare, stream, embed, fit.
STAGES_CHILD = CHILD_HEADER + r"""
data_dir, home, only_prepare = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"

start = begin("imports")
from embench.cache import embed_splits
from embench.encoders.pca import PCAEncoder
from embench.presets import get_preset, task_z_sizes
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
small = PCAEncoder(z_dim=task_z_sizes(task, preset)[0], seed=0)
small.fit(data.splits[AUTOENCODER_TRAIN].images[:2000], None)
embeddings, _ = embed_splits(small, "pca", data)
end("embed", start, shapes={k: list(v.shape) for k, v in embeddings.items()})

start = begin("pca_fit")  # last: PCAEncoder.fit exactly as the runner calls it
encoder = PCAEncoder(z_dim=task_z_sizes(task, preset)[0], seed=0)
encoder.fit(data.splits[AUTOENCODER_TRAIN].images, data.splits[AUTOENCODER_VAL].images)
end("pca_fit", start)
"""

# (b) in the child: the autoencoder's training data, streamed and held, and a few steps.
AE_CHILD = CHILD_HEADER + r"""
data_dir, home = Path(sys.argv[1]), Path(sys.argv[2])
n_batches, device = int(sys.argv[3]), sys.argv[4]

start = begin("imports")
import torch
from embench.encoders import autoencoder
from embench.presets import get_preset, task_z_sizes
from embench.protocols import AUTOENCODER_TRAIN, AUTOENCODER_VAL
from embench.runner import prepare_task
from embench.training import resolve_device
end("imports", start, torch_threads=torch.get_num_threads())
preset = get_preset("paper")
device = resolve_device(device)

start = begin("prepare")
task, data = prepare_task("svhn", preset, home, 0, {"data_dir": data_dir, "verify": False})
end("prepare", start, sizes=data.sizes())
train_view = data.splits[AUTOENCODER_TRAIN].images
val_view = data.splits[AUTOENCODER_VAL].images
encoder = autoencoder.AE(z_dim=task_z_sizes(task, preset)[0], device=str(device))
batch_size = encoder.batch_size

def steps(train, val):
    # What fit_module does for the first batches of epoch 1 (same shuffling, sorted batches).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(encoder.seed)
        model = autoencoder.FourLayerCVAE(encoder.z_dim, 64).to(device)
    loss = encoder._make_loss(model, None, torch.Generator(device=device).manual_seed(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=encoder.lr)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(encoder.seed))
    read, total, losses = 0.0, time.perf_counter(), []
    model.train()
    for k in range(n_batches):
        t = time.perf_counter()
        images = train.take(order[k * batch_size:(k + 1) * batch_size].sort().values.to(device))
        read += time.perf_counter() - t
        value = loss(images, False)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        losses.append(float(value))
    model.eval()
    with torch.no_grad():
        t = time.perf_counter()
        images = val.take(slice(0, 2 * batch_size))
        read += time.perf_counter() - t
        losses.append(float(loss(images, False)))
    return {"batches": n_batches, "batch_size": batch_size, "read_seconds": read,
            "seconds_per_step": (time.perf_counter() - total) / (n_batches + 1), "losses": losses}

def describe(held):
    return {"streamed": [h.streamed for h in held], "tile": [h.tile for h in held],
            "resident_bytes": sum(h.resident_bytes for h in held)}

limit = autoencoder.RESIDENT_BYTES
start = begin("ae_stream")  # first, so that its peak is not hidden by the held data
autoencoder.RESIDENT_BYTES = 0
held = autoencoder._training_splits(train_view, val_view, device)
autoencoder.RESIDENT_BYTES = limit
end("ae_stream", start, **describe(held), **steps(*held))
del held

start = begin("ae_hold")  # what fit does: SVHN's extra split held untiled
held = autoencoder._training_splits(train_view, val_view, device)
end("ae_hold", start, **describe(held), limit_bytes=limit,
    tiled_bytes=(len(train_view) + len(val_view)) * 3 * 64 * 64)

start = begin("ae_steps")
end("ae_steps", start, **steps(*held))
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


def measure(command: list[str], cap: float) -> dict:
    """Run one child; its exit code, peak RSS, wall time and the stages it reported."""
    code, out, peak, wall = run_child(command, cap)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    result = {"exit_code": code, "peak_rss_bytes": peak, "wall_seconds": wall,
              "stages": [e for e in events if "stage" in e]}
    if code:
        result["killed_or_failed_in"] = events[-1].get("begin") if events else None
    if code or not events:  # the cli mode prints no stage lines: keep its output
        result["stdout_tail"] = out[-2000:]
    return result


def _print_child(title: str, result: dict, cap_gb: float) -> None:
    for entry in result.get("stages", []):
        extra = ""
        if "resident_bytes" in entry:
            extra += (f"   held {entry['resident_bytes'] / GB:.2f} GB, streamed "
                      f"{entry['streamed']}, tile {entry['tile']}")
        if "seconds_per_step" in entry:
            extra += (f"   {entry['batches']} steps + 1 val batch: {entry['seconds_per_step']:.2f}"
                      f" s/step, reading {entry['read_seconds']:.2f} s in all")
        print(f"  {title} after {entry['stage']:<9} {entry['seconds']:7.1f} s   peak RSS so far "
              f"{entry['peak_rss_bytes'] / GB:.2f} GB{extra}")
    if result.get("killed_or_failed_in"):
        print(f"  {title} child stopped during {result['killed_or_failed_in']!r} (exit code "
              f"{result['exit_code']}; -9 = killed at the {cap_gb:g} GB cap)")


def _verdict(result: dict) -> str:
    peak, code = result["peak_rss_bytes"], result["exit_code"]
    at_least = "at least " if code == -9 else ""
    if peak >= TARGET_GB * GB:
        verdict = "OVER"
    else:
        verdict = "UNDER" if code == 0 else "FAILED, so far under"
    return (f"peak RSS {at_least}{peak / GB:.2f} GB, wall {result['wall_seconds']:.1f} s: "
            f"{verdict} the {TARGET_GB:.0f} GB target (exit code {code})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("stages", "cli"), default="stages",
                        help="(a): the pca pipeline's stages, or the whole embench run command")
    parser.add_argument("--ae-batches", type=int, default=3,
                        help="(b): training steps of ae per data mode; 0 skips (b)")
    parser.add_argument("--ae-device", default="cpu",
                        help="(b): where ae trains (cpu, cuda, auto); RSS is host memory")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary data")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--rss-cap-gb", type=float, default=10.0,
                        help="kill the child past this RSS (protects a shared machine)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the real sizes (to try the script; 1 = real size)")
    args = parser.parse_args()
    rows = {split: max(10, round(n * args.scale)) for split, n in ROWS.items()}
    cap = args.rss_cap_gb * GB
    start_all = time.perf_counter()

    root = Path(tempfile.mkdtemp(prefix="embench-svhn-memory-", dir=args.dir))
    free = shutil.disk_usage(root).free
    if free < 5 * GB * min(1.0, args.scale):
        print(f"need about 5 GB free under {root}, have {free / GB:.1f} GB", file=sys.stderr)
        shutil.rmtree(root)
        return 1
    data_dir, home = root / "svhn", root / "home"
    data_dir.mkdir()
    figures: dict = {"synthetic": True, "rows": rows, "scale": args.scale, "mode": args.mode,
                     "target_gb": TARGET_GB, "rss_cap_gb": args.rss_cap_gb}
    size = "the real size" if args.scale == 1 else f"{args.scale:g} x the real size"
    try:
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
        print("(a) running:", " ".join(command[:2] + ["..."] + command[3:]
                                       if args.mode == "stages" else command), flush=True)
        figures["pca"] = measure(command, cap)
        store = next(home.glob("datasets/svhn/*.h5"), None)
        figures["store_bytes"] = store.stat().st_size if store else None

        if figures["pca"]["exit_code"] == 0 and args.ae_batches > 0:
            # (b) loads the task a second time: checksums memoised, store reused.
            command = [sys.executable, "-c", AE_CHILD, str(data_dir), str(home),
                       str(args.ae_batches), args.ae_device]
            print(f"(b) running: ae data path, {args.ae_batches} steps per data mode",
                  flush=True)
            figures["ae"] = measure(command, cap)
            reload = figures["ae"]["stages"]
        elif figures["pca"]["exit_code"] == 0:
            command = [sys.executable, "-c", STAGES_CHILD, str(data_dir), str(home), "1"]
            reload = measure(command, cap)["stages"]
        else:
            reload = []
        figures["reload_prepare_seconds"] = next(
            (s["seconds"] for s in reload if s.get("stage") == "prepare"), None)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    figures["total_wall_seconds"] = time.perf_counter() - start_all

    print(json.dumps(figures, indent=2))
    print(f"\nSYNTHETIC SVHN data of {size}; write {figures['write_seconds']:.1f} s, store "
          f"{(figures['store_bytes'] or 0) / GB:.2f} GB")
    _print_child("(a)", figures["pca"], args.rss_cap_gb)
    if "ae" in figures:
        _print_child("(b)", figures["ae"], args.rss_cap_gb)
    print(f"(a) pca pipeline, mode {args.mode}: {_verdict(figures['pca'])}")
    if "ae" in figures:
        print(f"(b) ae data path ({args.ae_batches} steps per mode, device {args.ae_device}): "
              f"{_verdict(figures['ae'])}")
    if figures.get("reload_prepare_seconds") is not None:
        print(f"second load (store reused): prepare {figures['reload_prepare_seconds']:.2f} s")
    print(f"benchmark wall time {figures['total_wall_seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    failed = [name for name in ("pca", "ae") if figures.get(name, {}).get("exit_code")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
