"""Wall time per stage of ``embench reproduce --task lunarlander``, read from the result records.

Every record the runner writes has ``timings``: ``data_seconds``, ``train_seconds``,
``embed_seconds``, ``probe_seconds`` and ``reconstruction_seconds``. By default this script reads
the records of ``embench reproduce --task lunarlander --preset quick`` published in the
repository (``leaderboard/results/lunarlander/*.json``) and prints a table per run and the total,
against the issue's aim: the whole four-encoder reproduction in under 30 minutes on 2 cores.
Records that reused a checkpoint or an embedding cache say so: their stage times are reuse
times, not work.

Then, per run and stage, the wall time against the stage's FLOP floor: the arithmetic the stage
cannot avoid (training: forward and backward of the loss, the perceptual network's included, for
every epoch's images, plus the validation forwards; embedding: one encoder forward per image;
probe search: every candidate's epochs, unpadded; decoder retraining: its epochs on fixed
embeddings and the before/after test reconstructions), counted with ``torch.utils.flop_counter``
and divided by the fp32 matmul peak measured here. The ratio says how far above its floor each
stage ran; data generation (simulation and rendering) has no FLOP floor.

``--run`` instead runs ``embench reproduce --task lunarlander --preset smoke`` (or
``--run-preset``) in a fresh temporary home, times the whole command and reads the records it
wrote. Perceptual weights are copied from ``--weights-from`` (default: the usual EMBENCH_HOME's
``weights/`` when it has them), otherwise embench fetches them as it always does.

Usage:
    python benchmarks/end_to_end.py [--records DIR] [--preset quick]
    python benchmarks/end_to_end.py --run [--run-preset smoke] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Row, fmt, machine_note, print_table, resolve_device

from embench.storage import resolve_home

REPO = Path(__file__).resolve().parent.parent
STAGES = ("data", "train", "embed", "probe", "reconstruction")
TARGET_MINUTES = 30.0
ENCODERS = ("ae", "vae", "p_ae", "p_vae")


def read_records(directory: Path, preset: str | None) -> list[dict]:
    """Records under ``directory`` (optionally of one preset), oldest first."""
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if isinstance(record, dict) and "timings" in record and (
            preset is None or record.get("preset") == preset
        ):
            record["_file"] = path.name
            records.append(record)
    return sorted(records, key=lambda r: r.get("created", ""))


def stage_table(records: list[dict]) -> float:
    """Print one line per run with its stage times; return the summed total in seconds."""
    header = ("run", *STAGES, "total", "reused")
    lines = []
    grand = 0.0
    for record in records:
        timings = record["timings"]
        seconds = [float(timings.get(f"{stage}_seconds", 0.0)) for stage in STAGES]
        total = sum(seconds)
        grand += total
        cache = record.get("cache", {})
        reused = [what for what, key in (("checkpoint", "checkpoint_hit"),
                                         ("embeddings", "embedding_cache_hit"))
                  if cache.get(key)]
        training = record.get("training") or {}
        name = (f"{record['encoder']} z{record['z_dim']} s{record['seed']} "
                f"({record.get('device', '?')}, {record.get('precision', '?')}"
                + (f", {training['n_epochs']} ep" if "n_epochs" in training else "") + ")")
        shown = [f"{s:.1f}" if f"{stage}_seconds" in timings else "-"
                 for s, stage in zip(seconds, STAGES, strict=True)]
        lines.append((name, *shown, f"{total:.1f}",
                      ",".join(reused) or "-"))
    sums = [sum(float(r["timings"].get(f"{s}_seconds", 0.0)) for r in records) for s in STAGES]
    lines.append(("all runs", *(f"{s:.1f}" for s in sums), f"{grand:.1f}", ""))
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    print("\nseconds per stage (from each record's timings):")
    for line in (header, *lines):
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                        for i, (v, w) in enumerate(zip(line, widths, strict=True))))
    return grand


# --------------------------------------------------------------------------------------------
# Each stage's FLOP floor: the arithmetic it cannot avoid, at the measured matmul peak
# --------------------------------------------------------------------------------------------

AUTOENCODERS = {"ae", "vae", "p_ae", "p_vae"}


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def autoencoder_flops(name: str, z_dim: int, size: int = 64, batch: int = 16) -> dict[str, float]:
    """FLOPs per image of the autoencoder's work: a training step (forward + backward of its
    loss, the perceptual network's included), a validation forward, an encoding, a decoder
    training step on fixed embeddings (Table VIII) and a decoding."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from train_throughput import StraightforwardLoop

    images = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    loop = StraightforwardLoop(name, images, batch, "cpu")  # same model and loss as embench's
    x = torch.from_numpy(images).float() / 255.0
    model = loop.model
    out = {"train_step": loop.count_flops() / batch}
    with torch.no_grad():
        out["val_forward"] = _count(lambda: loop.loss(x)) / batch
        out["encode"] = _count(lambda: model.encode(x)) / batch
        mu = model.encode(x)[0]
        out["decode"] = _count(lambda: model.decode(mu)) / batch
    out["decoder_step"] = _count(lambda: F.mse_loss(model.decode(mu), x).backward()) / batch
    model.zero_grad()
    return out


def probe_flops(record: dict) -> float:
    """FLOPs of the probe search the record ran, unpadded: every candidate's epochs (forward and
    backward on probe-train, forward on probe-val); the closed-form extra is left out."""
    sizes = record["split_sizes"]
    n_in = int(record["embedding_dim"])
    n_out = 2 if record.get("task_kind") == "regression" else int(
        record.get("data_info", {}).get("n_classes", 10))
    total = 0.0
    for candidate in record["probes"]["candidates"]:
        if candidate["family"] == "least_squares":
            continue
        widths = [n_in, *candidate["params"].get("hidden", []), n_out]
        macs = [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
        forward = 2 * sum(macs)
        # backward: every layer's weight gradient, and the input gradient of all but the first
        train = forward + 2 * sum(macs) + 2 * sum(macs[1:])
        total += candidate["epochs_run"] * (sizes["probe_train"] * train
                                            + sizes["probe_val"] * forward)
    return total


def stage_flops(record: dict, per_image: dict[str, float] | None) -> dict[str, float | None]:
    """Each stage's FLOPs for one record (``None`` where no FLOP count bounds it)."""
    sizes = record["split_sizes"]
    flops: dict[str, float | None] = dict.fromkeys(STAGES)
    flops["probe"] = probe_flops(record)
    if per_image is None:
        return flops
    # a reused checkpoint (and the reconstruction stored beside it) or embedding cache did no
    # arithmetic: no floor
    cache = record.get("cache", {})
    training = record.get("training") or {}
    if not cache.get("checkpoint_hit"):
        flops["train"] = training.get("n_epochs", 0) * (
            sizes["autoencoder_train"] * per_image["train_step"]
            + sizes["autoencoder_val"] * per_image["val_forward"])
    if not cache.get("embedding_cache_hit"):
        flops["embed"] = sum(sizes.values()) * per_image["encode"]
    retraining = (record.get("reconstruction") or {}).get("retraining") or {}
    if retraining and not cache.get("checkpoint_hit"):
        epochs = retraining.get("n_epochs", 0)
        flops["reconstruction"] = (
            (sizes["autoencoder_train"] + sizes["autoencoder_val"]) * per_image["encode"]
            + epochs * (sizes["autoencoder_train"] * per_image["decoder_step"]
                        + sizes["autoencoder_val"] * per_image["decode"])
            + 2 * sizes["test"] * (per_image["encode"] + per_image["decode"]))
    return flops


def floor_table(records: list[dict], peak: float) -> None:
    """Print, per record and stage: wall seconds, GFLOP, the floor at ``peak`` and the ratio."""
    cache: dict[tuple[str, int], dict[str, float]] = {}
    print(f"\nstage wall time against its FLOP floor (the stage's arithmetic at the measured fp32 "
          f"matmul peak, {peak:.0f} GFLOP/s; data has no FLOP floor: it is simulation and "
          "rendering):")
    header = ("run", "stage", "wall s", "GFLOP", "floor s", "wall / floor")
    lines = []
    for record in records:
        name = record["encoder"]
        per_image = None
        if name in AUTOENCODERS:
            key = (name, int(record["z_dim"]))
            if key not in cache:
                cache[key] = autoencoder_flops(name, key[1])
            per_image = cache[key]
        flops = stage_flops(record, per_image)
        label = f"{name} z{record['z_dim']} s{record['seed']}"
        for stage in STAGES:
            wall = float(record["timings"].get(f"{stage}_seconds", 0.0))
            count = flops[stage]
            floor = None if count is None else count / (peak * 1e9)
            lines.append((label, stage, f"{wall:.1f}",
                          "-" if count is None else f"{count / 1e9:,.0f}",
                          "-" if floor is None else f"{floor:.1f}",
                          "-" if not floor else f"{wall / floor:.1f}x"))
            label = ""
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(6)]
    for line in (header, *lines):
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                        for i, (v, w) in enumerate(zip(line, widths, strict=True))))


def run_reproduce(root: Path, preset: str, device: str, weights_from: Path | None,
                  encoders: str) -> tuple[Path, float, int]:
    """Run ``embench reproduce`` in a fresh home under ``root``; return (records, wall s, code)."""
    home, out = root / "home", root / "out"
    source = weights_from or resolve_home(None) / "weights"
    if source.is_dir() and any(source.glob("*.safetensors")):
        shutil.copytree(source, home / "weights")
        print(f"perceptual weights copied from {source}", flush=True)
    embench = Path(sys.executable).with_name("embench")
    command = [str(embench) if embench.exists() else "embench", "reproduce", "--task",
               "lunarlander", "--preset", preset, "--encoders", encoders, "--device", device,
               "--home", str(home), "--out", str(out)]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    return out / "results" / "lunarlander", wall, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=REPO / "leaderboard" / "results"
                        / "lunarlander", help="directory of lunarlander result records")
    parser.add_argument("--preset", default="quick", help="only records of this preset "
                        "('any' for all)")
    parser.add_argument("--run", action="store_true", help="run embench reproduce in a "
                        "temporary home and time it")
    parser.add_argument("--run-preset", default="smoke")
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--weights-from", type=Path, default=None,
                        help="a weights/ directory to copy perceptual weights from")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home of --run")
    parser.add_argument("--no-floors", action="store_true",
                        help="skip the FLOP floors (they build each autoencoder once to count)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="embench-e2e-"))
    try:
        return report(args, root)
    finally:
        if args.keep and args.run:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(args: argparse.Namespace, root: Path) -> int:
    """Run (with ``--run``) or read the records, then print the tables; return the exit code."""
    print(f"end_to_end: {machine_note(args.device)}", flush=True)

    wall, code = None, 0
    if args.run:
        directory, wall, code = run_reproduce(root, args.run_preset, args.device,
                                              args.weights_from, args.encoders)
        preset = args.run_preset
    else:
        directory, preset = args.records, None if args.preset == "any" else args.preset
    records = read_records(directory, preset) if directory.is_dir() else []
    if not records:
        print(f"\nno lunarlander records{f' of preset {preset}' if preset else ''} in "
              f"{directory}: run `embench reproduce --task lunarlander --preset quick` first "
              "(it publishes into leaderboard/results/), or pass --run.")
        return 1 if args.run else 0
    print(f"{len(records)} record(s) from {directory}")
    total = stage_table(records)
    if not args.no_floors:
        import torch
        from benchlib import MatmulPeak

        peak = MatmulPeak(resolve_device(args.device), torch.float32, 2048)
        for _ in range(5):
            peak.measure()
        floor_table(records, peak.peak)
    encoders = sorted({r["encoder"] for r in records})
    reused = any(r.get("cache", {}).get("checkpoint_hit") for r in records)
    complete = set(ENCODERS) <= set(encoders)
    rows = [Row(f"{preset or 'all'} reproduction, {len(records)} run(s) ({', '.join(encoders)}):"
                " sum of stages", "-", fmt(total / 60, "min"), None)]
    for stage in STAGES:
        spent = sum(float(r["timings"].get(f"{stage}_seconds", 0.0)) for r in records)
        rows.append(Row(f"  {stage} stage, all runs", "-",
                        f"{fmt(spent, 's')} ({spent / total:.0%})" if total else "-", None))
    if wall is not None:
        rows.append(Row("wall time of the whole command (imports, publishing included)", "-",
                        fmt(wall / 60, "min"), None))
    if preset == "quick":
        judged = complete and not reused
        rows.append(Row("four-encoder quick reproduction (sum of stages)", "-",
                        fmt(total / 60, "min"), None, f"< {TARGET_MINUTES:g} min",
                        total / 60 < TARGET_MINUTES if judged else None))
    notes = ["the data stage generates LunarLander once; later runs read the stored file",
             "stage times are what the runner measured while it ran (under whatever load the "
             "machine had then)"]
    if reused:
        notes.append("some runs reused a checkpoint: their train time is a load, not training, "
                     "so the target is not judged")
    if preset == "quick" and not complete:
        notes.append(f"only {', '.join(encoders)} present: the four-encoder target is not judged")
    print_table(f"end to end: embench reproduce --task lunarlander --preset {preset or 'any'}",
                rows, notes)
    return code


if __name__ == "__main__":
    sys.exit(main())
