"""The scale study: at what data scale does the paper's ranking appear on LunarLander?

The board at ``quick`` (a sixth of the paper's autoencoder data) ranks P. VAE far behind P. AE
and leaves AE and VAE on the trivial baseline, unlike the paper's Table II. This script climbs
the data scale with the paper's four encoders at z=64, seed 0, with the paper's epoch cap and
early stopping, and stops at the first scale where the paper's ordering holds:

* P. VAE no worse than P. AE (best-MLP test error, paired on the same test frames: the 95%
  interval of P. VAE − P. AE must not lie above 0),
* both at most a third of AE's and VAE's error,
* AE and VAE below the trivial baseline (paired on the same test frames: the 95% interval of
  best MLP − baseline below 0),

or at the paper's own sizes. When P. VAE is still behind P. AE at a scale, AE and VAE cannot
change the verdict there and are not run at it: the climb goes on (the last scale of the climb
runs all four whatever the pair does). Scales are presets: ``quick`` (120 unaltered + 180 altered
rollouts, 15 epochs; its records are the 0.4.0 board's and are read, not rerun), ``third``
(233 + 233), ``half`` (350 + 350) and ``paper`` (700 + 700). At each scale P. VAE and P. AE run
first (the pair that disagrees with the paper), then AE and VAE.

Every cell is ``embench reproduce --preset SCALE --encoders NAME --seeds 1 --out leaderboard``:
its record goes on the board (the chosen scale's seed-0 cells are the board's seed-0 cells,
never run twice), a cell already on the board under the current protocol is skipped, and a
killed run resumes from its last finished epoch when called again with the same home (keep
``EMBENCH_HOME``). Each record gets its submission bundle (``embench submit``: the probe
embeddings the board's ``--verify`` reruns the search on); with ``--commit`` each finished
record is committed at once with it.

Usage:
    python benchmarks/scale_study.py run [--commit] [--scales third,half,paper]
    python benchmarks/scale_study.py report      # table, plot, README block from the board
    python benchmarks/scale_study.py status      # where the unfinished fits in the home stand
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from embench.board_marks import BoardRuns
from embench.compare import compare_records, item_values
from embench.paired import paired_test
from embench.protocols import convergence_verdict, patience_for
from embench.records import BUNDLE_SUFFIX
from embench.results import load_record, training_time
from embench.storage import resolve_home

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "leaderboard"
RESULTS = BOARD / "results" / "lunarlander"
#: Records of earlier board versions, kept for the study's table (not on the board itself).
ARCHIVE = BOARD / "archive"
PLOT = BOARD / "scale_study.png"
README = ROOT / "README.md"
START, END = "<!-- scale-study:start -->", "<!-- scale-study:end -->"

#: Scales in climbing order, with the paper's rollouts they use.
SCALES = {"quick": "1/6", "third": "1/3", "half": "1/2", "paper": "1"}
#: Climbing order within a scale: the pair that disagrees with the paper first.
ENCODERS = ("p_vae", "p_ae", "ae", "vae")
LABELS = {"ae": "AE", "vae": "VAE", "p_ae": "P. AE", "p_vae": "P. VAE"}


def seed0_records() -> dict[tuple[str, str], dict]:
    """The newest seed-0, z=64 LunarLander record of each (preset, encoder) on the board."""
    found: dict[tuple[str, str], dict] = {}
    archived = sorted(ARCHIVE.glob("*/results/lunarlander/*-z64-seed0-*.json"))
    for path in [*archived, *sorted(RESULTS.glob("*-z64-seed0-*.json"))]:
        record = json.loads(path.read_text())
        record["_path"] = str(path)
        key = (record["preset"], record["encoder"])
        if key[1] in ENCODERS and (key not in found or record["created"] > found[key]["created"]):
            found[key] = record
    return found


def below_baseline(record: dict) -> tuple[bool, str]:
    """Whether a record's best MLP beats the trivial baseline, and how that was decided.

    Paired on the same test frames when the record's predictions sidecar is beside it: the
    95% interval of MLP − baseline (whole rollouts resampled, as on the board) must lie below
    0, so an encoder a hair under the baseline by chance does not count. Without a sidecar
    (a record given by value), the point estimates decide.
    """
    mlp, baseline = float(record["test"]["mlp"]), float(record["test"]["baseline"])
    path = _board_file(record)
    if path is None:
        return mlp < baseline, f"{mlp:.2f} px"
    run = BoardRuns(path.parent.parent).run(load_record(path))
    result = paired_test(item_values(run, "mlp"), item_values(run, "baseline"),
                         run.predictions.groups, n_resamples=10_000, seed=0, permutation=False)
    below = result.significant and result.diff < 0
    return below, f"{mlp:.2f} px ({result.diff:+.2f} [{result.ci_low:+.2f}, {result.ci_high:+.2f}])"


def _board_file(record: dict) -> Path | None:
    """The record's file, when its predictions sidecar is beside it (else ``None``)."""
    path = Path(record["_path"]) if record.get("_path") else None
    if path is None or not record.get("predictions"):
        return None
    return path if (path.parent / record["predictions"]).exists() else None


def pair_no_worse(records: dict[str, dict]) -> tuple[bool, str]:
    """Whether P. VAE is no worse than P. AE (best MLP), and how that was decided.

    Paired on the same test frames when both sidecars are there (``embench compare``'s test:
    whole rollouts resampled): P. VAE is worse only when the 95% interval of P. VAE − P. AE
    lies above 0, so a tie within the noise counts as no worse, as the board reads it. For
    records given by value, the point estimates decide.
    """
    vae, ae = (float(records[name]["test"]["mlp"]) for name in ("p_vae", "p_ae"))
    text = f"P. VAE {vae:.2f} px vs P. AE {ae:.2f} px"
    files = [_board_file(records[name]) for name in ("p_vae", "p_ae")]
    if None in files:
        return vae <= ae, text
    pooled = compare_records([files[0]], [files[1]], n_resamples=10_000, seed=0,
                             per_seed=False, permutation=False).pooled
    worse = pooled.significant and pooled.diff > 0
    return not worse, f"{text} ({pooled.diff:+.2f} [{pooled.ci_low:+.2f}, {pooled.ci_high:+.2f}])"


def ordering(records: dict[str, dict]) -> tuple[bool, list[str]]:
    """Whether the paper's ordering holds among one scale's four records; the reasons."""
    mlp = {name: float(records[name]["test"]["mlp"]) for name in ENCODERS}
    baseline = float(records["p_vae"]["test"]["baseline"])
    pixel = min(mlp["ae"], mlp["vae"])
    (ae_below, ae_text), (vae_below, vae_text) = (below_baseline(records[name])
                                                  for name in ("ae", "vae"))
    checks = [
        pair_no_worse(records),
        (max(mlp["p_vae"], mlp["p_ae"]) <= pixel / 3,
         f"perceptual at most a third of pixel-wise ({pixel / 3:.2f} px)"),
        (ae_below and vae_below,
         f"AE {ae_text} / VAE {vae_text} below the baseline {baseline:.2f} px"),
    ]
    return all(ok for ok, _ in checks), [("yes: " if ok else "no: ") + why for ok, why in checks]


def git_commit(message: str) -> None:
    """Commit leaderboard/ alone, retrying while another commit holds the index lock."""
    for attempt in range(30):
        add = subprocess.run(["git", "add", "leaderboard"], cwd=ROOT, capture_output=True)
        if add.returncode == 0:
            staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", "leaderboard"],
                                    cwd=ROOT)
            if staged.returncode == 0:
                return  # nothing new
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", "leaderboard"],
                                  cwd=ROOT, capture_output=True, text=True)
            if done.returncode == 0:
                return
            if "index.lock" not in done.stderr:
                raise SystemExit(f"git commit failed: {done.stderr.strip()}")
        time.sleep(2 + attempt)
    raise SystemExit("git commit: the index stayed locked for minutes; commit leaderboard/ "
                     "by hand")


def run_cell(scale: str, encoder: str, commit: bool, device: str) -> dict:
    """Run (or find) one cell; return its record."""
    start = time.time()
    command = [sys.executable, "-m", "embench", "reproduce", "--task", "lunarlander",
               "--preset", scale, "--encoders", encoder, "--seeds", "1", "--z", "64",
               "--device", device, "--precision", "fp32", "--out", str(BOARD)]
    print(f"[scale study] {scale} {encoder}: {' '.join(command[1:])}", flush=True)
    # Run from the board's folder: from the repository root, ``-m`` would import the working
    # tree's embench even when PYTHONPATH names a frozen copy of the code to run.
    subprocess.run(command, cwd=BOARD, check=True)
    record = seed0_records()[scale, encoder]
    # the record's submission bundle (its probe embeddings) beside it, so the board's
    # `embench leaderboard --check --verify` can rerun its probe search; a record already on
    # the board keeps the bundle it landed with (on a new machine its embeddings are not cached)
    [board_file] = [path for path in RESULTS.glob(f"{encoder}-z64-seed0-{scale}-*.json")
                    if json.loads(path.read_text())["created"] == record["created"]]
    if not board_file.with_name(board_file.stem + BUNDLE_SUFFIX).exists():
        subprocess.run([sys.executable, "-m", "embench", "submit", str(board_file)], cwd=BOARD,
                       check=True)
    wall = time.time() - start
    if commit:
        test = record["test"]
        git_commit(f"Scale study: {encoder} z64 seed 0 {scale} record ({record['device']} "
                   f"fp32; MLP {test['mlp']:.2f} px, linear {test['linear']:.2f} px, baseline "
                   f"{test['baseline']:.2f} px; {wall / 60:.0f} min wall here) (#24)")
    return record


def run(scales: list[str], commit: bool, device: str) -> int:
    for position, scale in enumerate(scales):
        done: dict[str, dict] = {}
        for encoder in ENCODERS[:2]:
            done[encoder] = run_cell(scale, encoder, commit, device)
        no_worse, why = pair_no_worse(done)
        if not no_worse and position < len(scales) - 1:
            # AE and VAE cannot rescue the ordering here: climb, and spend their hours on the
            # scale that matters (the last scale of the climb runs them whatever the pair does)
            print(f"[scale study] {scale}: P. VAE is behind P. AE ({why}); AE and VAE are not "
                  "run at this scale", flush=True)
            continue
        for encoder in ENCODERS[2:]:
            done[encoder] = run_cell(scale, encoder, commit, device)
        holds, reasons = ordering(done)
        print(f"[scale study] {scale}: the paper's ordering {'HOLDS' if holds else 'does not hold'}"
              + "".join(f"\n  {reason}" for reason in reasons), flush=True)
        if holds:
            print(f"[scale study] stopping at {scale}: the board's scale", flush=True)
            return 0
    return 0


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.0f}"


def rows() -> list[dict]:
    """One row per (scale, encoder) record on the board, in climbing order."""
    records = seed0_records()
    out = []
    for scale in SCALES:
        for encoder in ENCODERS:
            record = records.get((scale, encoder))
            if record is None:
                continue
            training = dict(record.get("training") or {})
            if "still_improving" not in training and training.get("history"):
                # records before 0.5.0 carry no verdict: the same formula on their history
                training.update(convergence_verdict(training["history"],
                                                    record["encoder_config"]["max_epochs"]))
            timings = dict(record.get("timings") or {})
            fit, _ = training_time(timings, training, record.get("cache"))
            if "train_seconds" in timings:
                timings["train_seconds"] = fit
            out.append({
                "scale": scale, "encoder": encoder, "version": record["embench_version"],
                "frames": record["split_sizes"]["autoencoder_train"],
                "probe_frames": record["split_sizes"]["probe_train"],
                "mlp": record["test"]["mlp"], "linear": record["test"]["linear"],
                "baseline": record["test"]["baseline"],
                "epochs": training.get("n_epochs"), "best": training.get("best_epoch"),
                "still_improving": training.get("still_improving"),
                "stop_reason": training.get("stop_reason"),
                "train_minutes": _minutes(fit or None),
                "total_minutes": _minutes(sum(float(v) for v in timings.values())
                                          if not record["cache"]["checkpoint_hit"] else None),
            })
    return out


def table(found: list[dict]) -> str:
    lines = [
        "| scale | AE train frames | probe train frames | encoder | MLP px | linear px | "
        "baseline px | epochs (best) | still improving at the cap | training min | run min |",
        "|---|---:|---:|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for row in found:
        improving = {True: "yes", False: "no", None: "-"}[row["still_improving"]]
        if row.get("stop_reason") == "early_stopping":
            improving += " (stopped early)"
        lines.append(
            f"| {row['scale']} ({SCALES[row['scale']]}, {row['version']}) | {row['frames']:,} | "
            f"{row['probe_frames']:,} | {LABELS[row['encoder']]} | {row['mlp']:.2f} | "
            f"{row['linear']:.2f} | {row['baseline']:.2f} | {row['epochs']} ({row['best']}) | "
            f"{improving} | {row['train_minutes']} | {row['total_minutes']} |")
    return "\n".join(lines)


def plot(found: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, probe in zip(axes, ("mlp", "linear"), strict=True):
        for encoder in ENCODERS:
            points = sorted((r["frames"], r[probe]) for r in found if r["encoder"] == encoder)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=LABELS[encoder])
        base = sorted({(r["frames"], r["baseline"]) for r in found})
        if base:
            ax.plot(*zip(*base, strict=True), color="grey", linestyle=":",
                    label="trivial baseline")
        ax.set_xscale("log")
        ticks = sorted({(r["frames"], r["scale"]) for r in found})
        ax.set_xticks([frames for frames, _ in ticks])
        ax.set_xticklabels([f"{frames:,}\n({scale})" for frames, scale in ticks])
        ax.minorticks_off()
        ax.set_xlabel("autoencoder training frames")
        ax.set_title(f"best {'MLP' if probe == 'mlp' else 'linear'} probe")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test error (px, lower is better)")
    axes[0].legend()
    fig.suptitle("LunarLander scale study (z=64, seed 0)")
    fig.tight_layout()
    tmp = PLOT.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(PLOT)


def report() -> int:
    found = rows()
    text = table(found)
    print(text)
    by_scale: dict[str, dict[str, dict]] = {}
    for (scale, encoder), record in seed0_records().items():
        by_scale.setdefault(scale, {})[encoder] = record
    by_scale = {scale: by_scale[scale] for scale in SCALES if scale in by_scale}
    verdicts = []
    for scale, records in by_scale.items():
        # the pair's paired bootstrap (10,000 resamples), once per scale
        pair = (pair_no_worse(records) if all(e in records for e in ENCODERS[:2])
                and len(records) < len(ENCODERS) else None)
        if len(records) == len(ENCODERS):
            holds, reasons = ordering(records)
            verdicts.append(f"- **{scale}**: the paper's ordering "
                            f"{'holds' if holds else 'does not hold'} ({'; '.join(reasons)}).")
        elif pair is not None and not pair[0]:
            verdicts.append(f"- **{scale}**: the paper's ordering does not hold (no: {pair[1]}); "
                            "AE and VAE are not run at this scale, since they cannot change that.")
        else:
            missing = ", ".join(LABELS[e] for e in ENCODERS if e not in records)
            verdicts.append(f"- **{scale}**: not finished (missing {missing}).")
    if found:
        plot(found)
    block = (f"{START}\n{text}\n\n" + "\n".join(verdicts) + "\n\n"
             f"![scale study](leaderboard/{PLOT.name})\n{END}")
    readme = README.read_text()
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        readme = head + block + rest.split(END, 1)[1]
        README.write_text(readme)
        print(f"README block updated; plot {PLOT.relative_to(ROOT)}")
    return 0


def status(home: Path, cap: int) -> list[str]:
    """One line per unfinished (resumable) fit in ``home``: where it stands and what is left.

    A fit saves its state at every epoch end (``checkpoints/ENCODER/KEY.resume/``); the line
    gives its finished epochs, best validation loss, epochs since that best against the
    patience, the mean of its last three epochs' times and the most time left to the cap.
    """
    lines = []
    for state_file in sorted(home.glob("checkpoints/*/*.resume/train-state.json")):
        state = json.loads(state_file.read_text())["state"]
        history = state["history"]
        if not history:
            continue
        recent = [h["seconds"] for h in history[-3:]]
        per_epoch = sum(recent) / len(recent)
        done, patience = len(history), patience_for(cap)
        left = min(cap - done, patience - state["bad_epochs"])
        lines.append(
            f"{state_file.parent.parent.name} ({state_file.parent.name}): epoch {done}/{cap}, "
            f"best validation loss {state['best_val_loss']:.6f} at epoch {state['best_epoch']}, "
            f"{state['bad_epochs']} epoch(s) without improvement (patience {patience}); "
            f"{per_epoch:.0f} s an epoch lately: it stops after {left} more epoch(s) "
            f"({left * per_epoch / 60:.0f} min) unless it improves, and reaches the cap in "
            f"{(cap - done) * per_epoch / 60:.0f} min at most")
    return lines or [f"no unfinished fit in {home}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="climb the scales, one cell at a time")
    go.add_argument("--scales", default="third,half,paper")
    go.add_argument("--commit", action="store_true", help="commit each finished record")
    go.add_argument("--device", default="cpu")
    sub.add_parser("report", help="table, plot and README block from the board's records")
    where = sub.add_parser("status", help="where the unfinished fits in the home stand")
    where.add_argument("--cap", type=int, default=50, help="the fits' epoch cap (50 from third)")
    args = parser.parse_args()
    if args.command == "status":
        print("\n".join(status(resolve_home(None), args.cap)))
        return 0
    if args.command == "run":
        scales = args.scales.split(",")
        unknown = [s for s in scales if s not in SCALES or s == "quick"]
        if unknown:
            parser.error(f"unknown scales {unknown}; choose from third, half, paper")
        return run(scales, args.commit, args.device)
    return report()


if __name__ == "__main__":
    sys.exit(main())
