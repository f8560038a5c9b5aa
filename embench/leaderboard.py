"""Records in, markdown out: the leaderboard in the paper's table layout.

Per task and protocol: the MLP table and the linear table (rows: z sizes plus "Any"; columns:
encoders), the paper's own numbers beside ours for the paper's encoders, the best cell of each
row in bold, the trivial baseline, and provenance. Then Table VIII for the encoders with
reconstruction results: per encoder type the z with the lowest test L1 after decoder retraining
(mean over seeds), its L1 before and after retraining, its L1 relative to the lowest of the types
shown (lowest = 100%, others = lowest / own) beside the paper's row, and how the decoder was
retrained. Records of different protocols are never ranked in one table: they are grouped, and
the board says so.

Where the records' predictions sidecars are at hand (``results_dir``), each row also marks the
cells that are not significantly different from its best cell (a paired bootstrap on the same
test items, :mod:`embench.compare`), and paired comparisons of chosen encoder pairs (P. AE vs
AE, P. VAE vs VAE) follow the tables.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embench.compare import (
    LoadedRun,
    compare_records,
    format_diff,
    format_p,
    format_ratio,
    format_value,
    item_values,
    paired_test,
)
from embench.errors import EmbenchError
from embench.paper import (
    ENCODER_LABELS,
    PAPER,
    PAPER_ENCODERS,
    PAPER_RECONSTRUCTION,
    encoder_label,
)
from embench.records import board_results, files_of, load_records, record_file
from embench.results import (
    NOT_A_RESULT,
    NOT_A_RESULT_MARK,
    RunRecord,
    beats_baseline,
    load_record,
    read_predictions,
)
from embench.storage import atomic_path

# Two-sided 95% Student-t quantiles by degrees of freedom (1..30); normal beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% confidence interval (``None`` for one value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    t = _T95[len(values) - 2] if len(values) - 1 <= len(_T95) else 1.96
    return mean, t * sem


def _fmt(metric: str, value: float, ci: float | None = None) -> str:
    if metric == "accuracy":
        text = f"{100 * value:.1f}%"
        return text + (f" ± {100 * ci:.1f}" if ci is not None else "")
    return f"{value:.2f}" + (f" ± {ci:.2f}" if ci is not None else "")


@dataclass
class Group:
    """The records of one task under one protocol."""

    task: str
    protocol: str
    records: list[RunRecord]
    superseded: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def metric(self) -> dict[str, str]:
        """The task's metric name and direction."""
        return self.records[0].metric

    def encoders(self) -> list[str]:
        """Paper encoders first, in the paper's order, then the others alphabetically."""
        names = {r.encoder for r in self.records}
        return [e for e in PAPER_ENCODERS if e in names] + sorted(names - set(PAPER_ENCODERS))

    def cells(self, probe: str) -> dict[tuple[str, int], list[float]]:
        """Test metric values per (encoder, z), one per seed."""
        cells: dict[tuple[str, int], list[float]] = defaultdict(list)
        for r in self.records:
            cells[(r.encoder, r.z_dim)].append(float(r.test[probe]))
        return cells


def as_records(records: list[RunRecord] | list[dict[str, Any]]) -> list[RunRecord]:
    """Records as :class:`RunRecord` (JSON objects, e.g. read in a notebook, are converted).

    Raises:
        DataError: for a JSON object that is not a valid record.
    """
    return [r if isinstance(r, RunRecord) else RunRecord.from_dict(r) for r in records]


def device_kind(device: str) -> str:
    """The kind of a record's device (``cuda:1`` -> ``cuda``): what the board groups by."""
    return str(device).split(":", 1)[0]


def group_records(records: list[RunRecord]) -> list[Group]:
    """Group records by (task, protocol, device kind, precision), in a stable order.

    Device and precision are not part of the protocol fingerprint (a run's protocol is what
    it measures), but a bf16 or a GPU run is not the same measurement as a CPU fp32 one: it
    gets its own table, and never supersedes or averages with the other.

    One cell averages over seeds, so within a group only the newest record of each
    (encoder, z, seed) counts: an older one (e.g. from before a retrain with other thread
    counts or code) is superseded, not averaged in as if it were another seed.
    """
    groups: dict[tuple[str, str, str, str], dict[tuple[str, int, int], list[RunRecord]]] = \
        defaultdict(lambda: defaultdict(list))
    for record in as_records(records):
        cell = (record.encoder, record.z_dim, record.seed)
        key = (record.task, record.protocol_id, device_kind(record.device), record.precision)
        groups[key][cell].append(record)
    out = []
    for (task, proto, device, precision), cells in sorted(groups.items()):
        newest = [max(recs, key=lambda r: r.created) for _, recs in sorted(cells.items())]
        superseded = sum(len(recs) - 1 for recs in cells.values())
        out.append(Group(task, proto, newest, superseded, device, precision))
    return out


@dataclass
class Cell:
    """One cell of a table: the mean over seeds (± CI) of the records of (encoder, z)."""

    mean: float
    ci: float | None
    z: int  # in the "Any" row: the encoder's best z


def table_rows(group: Group, probe: str) -> list[tuple[Any, dict[str, Cell]]]:
    """The rows of one table: each z size, then "Any" (each encoder's best z), by encoder."""
    lower = group.metric["direction"] == "lower"
    cells = group.cells(probe)
    zs = sorted({z for (_, z) in cells})
    rows: list[tuple[Any, dict[str, Cell]]] = []
    for z in zs:
        row = {}
        for e in group.encoders():
            if (e, z) in cells:
                mean, ci = mean_ci(cells[(e, z)])
                row[e] = Cell(mean, ci, z)
        rows.append((z, row))
    any_row = {}
    for e in group.encoders():
        per_z = [row[e] for _, row in rows if e in row]
        if per_z:
            best = (min if lower else max)(per_z, key=lambda cell: cell.mean)
            any_row[e] = Cell(best.mean, None, best.z)
    rows.append(("Any", any_row))
    return rows


def _best(row: dict[str, Cell], lower: bool) -> float | None:
    return (min if lower else max)((cell.mean for cell in row.values()), default=None)


def render_table(group: Group, probe: str,
                 ties: dict[tuple[Any, str], bool] | None = None) -> str:
    """One table in the paper's layout (rows: z sizes + Any; columns: encoders).

    ``ties[(row, encoder)]`` True marks a cell that is not significantly different from the
    best of its row with ``†`` (see :func:`tie_marks`). A cell no better than the trivial
    baseline (the last row) is marked ``✗``, explained under the table: it is not a result.
    """
    metric = group.metric["name"]
    lower = group.metric["direction"] == "lower"
    encoders = group.encoders()
    paper = PAPER.get(group.task, {}).get(probe, {})
    header = ["z size", *(ENCODER_LABELS.get(e, e) for e in encoders)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baseline = float(np.mean([float(r.test["baseline"]) for r in group.records]))
    no_result = False
    improving = improving_cells(group)
    for z, row_values in table_rows(group, probe):
        best = _best(row_values, lower)
        row = [f"**{z}**" if z == "Any" else str(z)]
        for e in encoders:
            if e not in row_values:
                row.append("–")
                continue
            mean, ci = row_values[e].mean, row_values[e].ci
            text = _fmt(metric, mean, ci)
            if best is not None and mean == best:
                text = f"**{text}**"
            elif ties and ties.get((z, e)):
                text += "†"
            if not beats_baseline(mean, baseline, lower):
                text += f" {NOT_A_RESULT_MARK}"
                no_result = True
            if (e, row_values[e].z) in improving:
                text += f" {STILL_IMPROVING_MARK}"
            ref = _paper_value(paper, e, z, lower)
            if ref is not None:
                text += f" (paper {_fmt(metric, ref)})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    lines.append(f"| trivial baseline | {_fmt(metric, baseline)} "
                 f"(predict the probe-train mean / majority class) |" + " |" * (len(encoders) - 1))
    if no_result:
        lines += ["", f"{NOT_A_RESULT_MARK} {NOT_A_RESULT[0].upper()}{NOT_A_RESULT[1:]}."]
    if improving:
        lines += ["", f"{STILL_IMPROVING_MARK} {STILL_IMPROVING_NOTE}"]
    return "\n".join(lines)


#: Marks a cell one of whose encoders was still improving when its epoch cap stopped it.
STILL_IMPROVING_MARK = "↻"
STILL_IMPROVING_NOTE = ("Training was still improving when the epoch cap stopped it (in at "
                        "least one of the cell's seeds: the best validation loss fell by more "
                        "than 1% over the last patience window), so the figure understates "
                        "this encoder.")


def improving_cells(group: Group) -> set[tuple[str, int]]:
    """The (encoder, z) cells with a record whose training the epoch cap cut short."""
    return {(r.encoder, r.z_dim) for r in group.records if r.still_improving}


def _paper_value(paper: dict[str, dict[int, float]], encoder: str, z: Any,
                 lower: bool) -> float | None:
    values = paper.get(encoder)
    if not values:
        return None
    if z == "Any":  # the paper's "Any" row is the best over its z sizes
        return (min if lower else max)(values.values())
    return values.get(z)


def _provenance(group: Group) -> str:
    recs = group.records
    presets = sorted({r.preset for r in recs})
    devices = sorted({r.device for r in recs})
    versions = sorted({r.embench_version for r in recs})
    dates = sorted(r.created[:10] for r in recs)
    seeds = sorted({r.seed for r in recs})
    sizes = recs[0].split_sizes
    split_text = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    superseded = (f" ({group.superseded} older record(s) of the same cells superseded)"
                  if group.superseded else "")
    return (f"Protocol `{group.protocol[:12]}` · preset {', '.join(presets)} · device "
            f"{', '.join(devices)} · precision {group.precision} · {', '.join(versions)} · "
            f"{dates[0]}"
            f"{' to ' + dates[-1] if dates[-1] != dates[0] else ''} · {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))}) · {len(recs)} run(s){superseded} · splits: "
            f"{split_text}")


# -- tie groups and paired comparisons (from the predictions sidecars) -------------------------

#: The encoder pairs whose paired comparison the board shows under the tables (issue 17).
COMPARISON_PAIRS: tuple[tuple[str, str], ...] = (("p_ae", "ae"), ("p_vae", "vae"))
#: Resamples of the board's bootstraps and permutation tests (seed 0: the same board twice).
BOARD_RESAMPLES = 10_000
#: The board's hand-written text, beside its README (rendered under the intro).
NOTES_FILE = "NOTES.md"


class BoardRuns:
    """The board's records with their predictions sidecars, each read once.

    Args:
        results_dir: the folder of ``<task>/<record>.json`` files and sidecars (a board's
            ``results``); ``None``: no record has predictions.
    """

    def __init__(self, results_dir: Path | None) -> None:
        self.results_dir = results_dir
        self._runs: dict[int, LoadedRun | None] = {}

    def run(self, record: RunRecord) -> LoadedRun | None:
        """The record with its sidecar, or ``None`` when it has none (or it is unreadable)."""
        if id(record) not in self._runs:
            self._runs[id(record)] = self._load(record)
        return self._runs[id(record)]

    def cell(self, group: Group, encoder: str, z: int) -> list[LoadedRun] | None:
        """All seeds of (encoder, z) with their sidecars; ``None`` if any seed lacks one."""
        runs = [self.run(r) for r in group.records if (r.encoder, r.z_dim) == (encoder, z)]
        return None if not runs or any(run is None for run in runs) else runs  # type: ignore

    def _load(self, record: RunRecord) -> LoadedRun | None:
        if self.results_dir is None or not record.predictions:
            return None
        path = self.results_dir / record.task / record.predictions
        if not path.exists():
            return None
        try:
            predictions = read_predictions(path)
        except EmbenchError:  # a broken sidecar: its cell is not tested, like a missing one
            return None
        return LoadedRun(record, predictions, str(record_file(self.results_dir, record)))


@dataclass
class TieMarks:
    """Which cells of one table are not significantly different from the best of their row.

    Attributes:
        tied: ``(row, encoder) -> bool`` for every cell that was tested against its row's best.
        no_predictions: cells ("AE z=32") whose records lack per-item predictions.
        failures: why other cells could not be tested: reason -> cells.
        method: how the tested cells were tested (``None`` when none was).
    """

    tied: dict[tuple[Any, str], bool] = field(default_factory=dict)
    no_predictions: list[str] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)
    method: str | None = None

    def legend(self) -> str | None:
        """The line under the table that explains ``†`` (``None`` when nothing was tried)."""
        if self.method is None and not self.failures:
            return None
        if self.method is None:
            text = "No cell could be tested against the best of its row (†)."
        else:
            text = ("† not significantly different from the best cell of its row (bold): the "
                    "95% interval of their paired difference on the same test items contains 0"
                    + ("" if any(self.tied.values()) else " (no cell here)")
                    + f". {self.method}, each cell's per-item values averaged over its seeds.")
        if self.no_predictions:
            text += (" Not tested, no per-item predictions (records made before schema 2, or "
                     f"their sidecars missing): {', '.join(self.no_predictions)}.")
        for reason, cells in self.failures.items():
            text += f" Not tested: {', '.join(cells)} ({reason})"
        return text


def _cell_label(encoder: str, z: int) -> str:
    return f"{ENCODER_LABELS.get(encoder, encoder)} z={z}"


def _resampling_text(comparison: Any) -> str:
    if comparison.resampling == "groups":
        unit = (f"Paired cluster bootstrap over the {comparison.n_groups:,} groups of test "
                "items (a group, e.g. a rollout, is resampled whole)")
    else:
        unit = f"Paired bootstrap over the {comparison.n_items:,} test items"
    return f"{unit}, {comparison.n_resamples:,} resamples, seed {comparison.seed}"


def tie_marks(group: Group, probe: str, runs: BoardRuns,
              n_resamples: int = BOARD_RESAMPLES) -> TieMarks:
    """Test each cell against the best cell of its row, pooled over seeds, from the sidecars.

    A cell is tied with the best when the 95% bootstrap interval of their paired difference
    (:func:`embench.compare.compare_records`) contains 0. Cells whose records (or whose row's
    best cell's records) lack sidecars are not tested.
    """
    marks = TieMarks()
    lower = group.metric["direction"] == "lower"
    tested: dict[tuple[tuple[str, int], tuple[str, int]], bool] = {}
    missing: set[tuple[str, int]] = set()
    for row_key, row in table_rows(group, probe):
        best = _best(row, lower)
        leader = next((e for e, cell in row.items() if cell.mean == best), None)
        if leader is None or len(row) < 2:
            continue
        best_cell = (leader, row[leader].z)
        best_runs = runs.cell(group, *best_cell)
        if best_runs is None:
            missing.add(best_cell)
        for encoder, cell in row.items():
            if cell.mean == best:
                continue
            key = ((encoder, cell.z), best_cell)
            if key not in tested:
                cell_runs = runs.cell(group, encoder, cell.z)
                if cell_runs is None:
                    missing.add((encoder, cell.z))
                if cell_runs is None or best_runs is None:
                    continue
                try:
                    comparison = compare_records(cell_runs, best_runs, probe=probe,
                                                 n_resamples=n_resamples, per_seed=False,
                                                 permutation=False)
                except EmbenchError as exc:
                    cells = marks.failures.setdefault(str(exc), [])
                    if _cell_label(encoder, cell.z) not in cells:  # the Any row repeats cells
                        cells.append(_cell_label(encoder, cell.z))
                    continue
                tested[key] = not comparison.pooled.significant
                marks.method = marks.method or _resampling_text(comparison)
            if key in tested:
                marks.tied[(row_key, encoder)] = tested[key]
    marks.no_predictions = [_cell_label(e, z) for e, z in sorted(missing)]
    return marks


def _baseline_block(group: Group, runs: BoardRuns, n_resamples: int, seed: int) -> str | None:
    """Whether each linear cell beats the trivial baseline, paired on the same test items.

    The baseline's predictions are in every sidecar (the probe-train mean, or the majority
    class), so the question is answered item by item like any other comparison.
    """
    metric = group.metric["name"]
    lower = group.metric["direction"] == "lower"
    rows, method = [], None
    for encoder in group.encoders():
        for z in sorted({r.z_dim for r in group.records if r.encoder == encoder}):
            cell = runs.cell(group, encoder, z)
            if cell is None:
                continue
            try:
                linear = np.mean([item_values(run, "linear") for run in cell], axis=0)
                baseline = np.mean([item_values(run, "baseline") for run in cell], axis=0)
            except EmbenchError:
                continue
            result = paired_test(linear, baseline, cell[0].predictions.groups,
                                 n_resamples=n_resamples, seed=seed, permutation=False)
            method = method or result
            better = result.diff < 0 if lower else result.diff > 0
            verdict = ("**beats it**" if result.significant and better else
                       "worse than it" if result.significant else "not different")
            rows.append(f"| {encoder_label(encoder)} | {z} | {len(cell)} | "
                        f"{format_value(metric, result.mean_a)} | "
                        f"{format_value(metric, result.mean_b)} | "
                        f"{format_diff(metric, result.diff)} "
                        f"[{format_diff(metric, result.ci_low, unit=False)}, "
                        f"{format_diff(metric, result.ci_high, unit=False)}] | {verdict} |")
    if not rows or method is None:
        return None
    units = ("groups of test items (whole groups resampled)"
             if method.n_groups < method.n_items else "test items")
    return "\n".join([
        "**The linear probes against the trivial baseline**", "",
        "| encoder | z | seeds | linear | baseline | linear − baseline [95% CI] | |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"Paired on the same test items, per-item values averaged over the seeds; 95% "
        f"percentile intervals from a bootstrap over {method.n_groups:,} {units}, "
        f"{n_resamples:,} resamples, seed {seed}."])


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _how_made(group: Group) -> str:
    """How the group's records were made: versions, command, wall time per run."""
    recs = sorted(group.records, key=lambda r: (r.seed, PAPER_ENCODERS.index(r.encoder)
                                                if r.encoder in PAPER_ENCODERS else 99,
                                                r.encoder, r.z_dim))
    presets = sorted({r.preset for r in recs})
    seeds = sorted({r.seed for r in recs})
    zs = sorted({r.z_dim for r in recs})
    encoders = [e for e in PAPER_ENCODERS if e in {r.encoder for r in recs}]
    command = (f"embench reproduce --task {group.task} --preset {presets[0]} "
               f"--seeds {len(seeds)}" + (f" --z {','.join(map(str, zs))}" if zs else "")
               + (f" --device {group.device}" if group.device != "cpu" else "")
               + (f" --precision {group.precision}" if group.precision != "fp32" else ""))
    rows, total, reused, embeddings_reused = [], 0.0, 0, 0
    for r in recs:
        t, training = r.timings or {}, r.training or {}
        hit = bool((r.cache or {}).get("checkpoint_hit"))
        train = float(training.get("fit_seconds", 0.0)) if hit else float(
            t.get("train_seconds", 0.0))
        decoder = float(((r.reconstruction or {}).get("retraining") or {}).get(
            "train_seconds", 0.0)) if hit else float(t.get("reconstruction_seconds", 0.0))
        stages = {"data": float(t.get("data_seconds", 0.0)), "train": train,
                  "embed": float(t.get("embed_seconds", 0.0)),
                  "probe": float(t.get("probe_seconds", 0.0)), "decoder": decoder}
        wall = sum(stages.values())
        total += wall
        reused += hit
        cached = bool((r.cache or {}).get("embedding_cache_hit"))
        embeddings_reused += cached
        cells = {name: _minutes(v) for name, v in stages.items()}
        if cached:
            cells["embed"] = "cached ‡"
        rows.append(f"| {encoder_label(r.encoder)} | {r.z_dim} | {r.seed} | "
                    + " | ".join(cells.values())
                    + f" | {_minutes(wall)}{' †' if hit else ''} | {r.threads or '–'} |")
    versions = ", ".join(sorted({r.embench_version for r in recs}))
    lines = [
        "**How these numbers were made.** "
        f"{len(recs)} records of {versions} (protocol `{group.protocol[:12]}`, preset "
        f"{', '.join(presets)}, {group.device} {group.precision}); "
        f"{len(encoders) or len({r.encoder for r in recs})} encoder(s) x {len(zs)} z x "
        f"{len(seeds)} seed(s). To reproduce them (runs already on the board are skipped, so "
        f"it resumes where it stopped):", "", "```bash", command, "```", "",
        "| encoder | z | seed | data | train | embed | probe search | decoder retraining | "
        "wall | threads |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Total {total / 3600:.1f} h of wall time, from the records' stage timings (a run's "
        "data stage is short when an earlier run already generated the data it shares)."]
    if reused:
        lines[-1] += (" † reused a checkpoint trained by an earlier run of the same training "
                      "fingerprint: its train and decoder times are that run's.")
    if embeddings_reused:
        lines[-1] += (" ‡ reused the embeddings an earlier run had cached; the time that run "
                      "took to compute them is not counted.")
    return "\n".join(lines)


def _official_files_note() -> str:
    return (
        "**STL-10 and SVHN.** Their official files cannot be downloaded on this project's "
        "machines, so their boards are not here. Where the files are available, put them "
        "under `EMBENCH_HOME/datasets/<task>/` (STL-10: `stl10_binary/*.bin` from the official "
        "archive; SVHN: `train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat`), or let "
        "embench download them where their hosts are reachable, then run "
        "`embench reproduce --task stl10 --preset quick --seeds 3` and "
        "`embench reproduce --task svhn --preset quick --seeds 3`; "
        "`embench run ... --data-dir DIR` reads files from another folder.")


def _comparisons_block(group: Group, pairs: tuple[tuple[str, str], ...], runs: BoardRuns,
                       probes: tuple[str, ...], n_resamples: int, seed: int) -> str | None:
    """The paired comparisons of ``pairs`` in one group, one row per z and probe."""
    metric = group.metric["name"]
    rows, failures, method, improving = [], [], None, False
    zs = sorted({r.z_dim for r in group.records})
    for a, b in pairs:
        for z in zs:
            runs_a, runs_b = runs.cell(group, a, z), runs.cell(group, b, z)
            if runs_a is None or runs_b is None:
                continue
            for probe in probes:
                try:
                    c = compare_records(runs_a, runs_b, probe=probe, n_resamples=n_resamples,
                                        seed=seed, per_seed=False)
                except EmbenchError as exc:
                    failures.append(f"{pair_label(a, b)} z={z} {probe} ({exc})")
                    continue
                p = c.pooled
                method = method or c
                marked = c.still_improving_a or c.still_improving_b
                improving = improving or bool(marked)
                rows.append([pair_label(a, b) + (f" {STILL_IMPROVING_MARK}" if marked else ""),
                             str(z), _PROBE_LABELS.get(probe, probe),
                             f"{len(p.seeds_a)} + {len(p.seeds_b)}",
                             format_value(metric, p.mean_a), format_value(metric, p.mean_b),
                             f"{format_diff(metric, p.diff)} "
                             f"[{format_diff(metric, p.ci_low, unit=False)}, "
                             f"{format_diff(metric, p.ci_high, unit=False)}]",
                             format_ratio(p), format_p(p.p_value, prefix=False)])
    if not rows and not failures:
        return None
    header = ["A vs B", "z", "probe", "seeds (A + B)", "A", "B", "A − B [95% CI]",
              "A / B [95% CI]", "p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines = [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""] if rows else []
    notes = []
    if method is not None:
        notes.append(f"Each encoder's per-item test {metric} averaged over its seeds, the two "
                     f"compared item by item on the same test items: {method.method()}. "
                     "`embench compare` also shows the seed-by-seed pairs.")
    if improving:
        notes.append(f"{STILL_IMPROVING_MARK} A or B was still improving when its epoch cap "
                     "stopped training: the comparison may understate it.")
    if failures:
        notes.append(f"Not compared: {'; '.join(failures)}")
    return "\n".join(["**Paired comparisons on the same test items**", "", *lines,
                      " ".join(notes)])


_PROBE_LABELS = {"mlp": "MLP", "linear": "linear", "least_squares": "least squares"}


def pair_label(a: str, b: str) -> str:
    """``P. AE vs AE``."""
    return f"{ENCODER_LABELS.get(a, a)} vs {ENCODER_LABELS.get(b, b)}"


def render_comparisons(records: list[RunRecord], pairs: tuple[tuple[str, str], ...] =
                       COMPARISON_PAIRS, *, results_dir: Path,
                       probes: tuple[str, ...] = ("mlp", "linear"),
                       n_resamples: int = BOARD_RESAMPLES, seed: int = 0) -> str | None:
    """A "Paired comparisons" markdown section: each pair, per task, protocol and z.

    A pair is shown at a z where both encoders have records whose sidecars are all at hand;
    each encoder's per-item values are averaged over its seeds and the two compared on the
    same test items (:func:`embench.compare.compare_records`).

    Args:
        records: the board's records.
        pairs: (A, B) encoder names; the difference is A − B and the ratio A / B.
        results_dir: where the records and their sidecars are (``<task>/<record>.json``).
        probes: which probes' predictions to compare.
        n_resamples, seed: of the bootstrap and the permutation test.

    Returns:
        The markdown section, or ``None`` when no pair has records with predictions.

    Example:
        >>> render_comparisons(load_records([Path("leaderboard/results")]).records,
        ...                    results_dir=Path("leaderboard/results"))  # doctest: +SKIP
    """
    runs = BoardRuns(results_dir)
    blocks = []
    for group in group_records(as_records(records)):
        block = _comparisons_block(group, pairs, runs, probes, n_resamples, seed)
        if block:
            blocks += ["", f"### {group.task}", "", f"_{_provenance(group)}_", "", block]
    return "\n".join(["## Paired comparisons", *blocks]) if blocks else None


def _picture_links(group: Group, results_dir: Path | None) -> list[str]:
    """Links to the ``<record>.show.png`` pictures beside the group's records."""
    if results_dir is None:
        return []
    links = []
    for r in sorted(group.records, key=lambda r: (r.encoder, r.z_dim, r.seed)):
        picture = record_file(results_dir, r).with_suffix(".show.png")
        if picture.exists():
            links.append(f"[{r.encoder} z={r.z_dim} seed {r.seed}]"
                         f"(results/{r.task}/{picture.name})")
    return links


def render_markdown(records: list[RunRecord], plots: dict[str, str] | None = None,
                    title: str = "embench leaderboard", results_dir: Path | None = None,
                    pairs: tuple[tuple[str, str], ...] = COMPARISON_PAIRS,
                    notes: str | None = None, how_made: bool = False) -> str:
    """The whole board as markdown.

    Args:
        records: the records to show.
        plots: task -> plot file name, linked under the task's tables.
        title: the page's heading.
        results_dir: where the records' files, sidecars and pictures are
            (``<task>/<record>.json``): with it, rows mark the cells tied with their best
            (``†``), ``pairs`` get paired comparisons, and ``.show.png`` pictures are linked.
        pairs: the encoder pairs compared under the tables (where both have predictions).
        notes: the board's own text (``NOTES.md`` beside the board), shown under the intro.
        how_made: add, per protocol, the command and the wall time of every run, and how to
            make the boards of the tasks whose files cannot be downloaded here.
    """
    plots = plots or {}
    runs = BoardRuns(results_dir)
    groups = group_records(as_records(records))
    out = [f"# {title}", "",
           "Generated by `embench leaderboard` from the result records in `results/`; do not "
           "edit by hand. Cells: mean over seeds (± 95% CI when there are several seeds); the "
           "best cell of each row in **bold**; the paper's number in parentheses for its "
           "encoders (Pihlgren et al., IJCNN 2020, Tables II–VII; Table VIII's relative "
           "reconstruction errors in their own column)."]
    if notes:
        out += ["", notes.strip()]
    by_task: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_task[g.task].append(g)
    for task, task_groups in sorted(by_task.items()):
        out += ["", f"## {task}"]
        if len(task_groups) > 1:
            out += ["", f"{len(task_groups)} protocols were found for this task (different "
                    "presets, data, metric, device kind or precision); they are shown "
                    "separately and never ranked against each other."]
        for g in task_groups:
            metric = g.metric
            direction = "lower is better" if metric["direction"] == "lower" else \
                "higher is better"
            out += ["", f"_{_provenance(g)}_"]
            for probe, label in (("mlp", "MLPs"), ("linear", "linear regressors")):
                marks = tie_marks(g, probe, runs)
                out += ["", f"**Test {metric['name']} ({direction}) for the {label} with the "
                        "lowest validation loss**", "", render_table(g, probe, marks.tied)]
                legend = marks.legend()
                if legend:
                    out += ["", legend]
            if task in plots:
                out += ["", f"![{task}: test metric vs z]({plots[task]})"]
            comparisons = _comparisons_block(g, pairs, runs, ("mlp", "linear"),
                                             BOARD_RESAMPLES, 0)
            if comparisons:
                out += ["", comparisons]
            against_baseline = _baseline_block(g, runs, BOARD_RESAMPLES, 0)
            if against_baseline:
                out += ["", against_baseline]
            reconstruction = render_reconstruction_table(g)
            if reconstruction:
                out += ["", reconstruction]
            grids = _recon_links(g)
            if grids:
                out += ["", "Reconstructions (original / before / after decoder retraining): "
                        + ", ".join(grids)]
            pictures = _picture_links(g, results_dir)
            if pictures:
                out += ["", "Pictures of the runs: " + ", ".join(pictures)]
            if how_made:
                out += ["", _how_made(g)]
    if how_made and by_task:
        out += ["", "## Other tasks", "", _official_files_note()]
    return "\n".join(out) + "\n"


@dataclass
class ReconstructionRow:
    """The best autoencoder of one encoder type: its z and the records (seeds) of that cell."""

    encoder: str
    z: int
    records: list[dict[str, Any]]
    zs: tuple[int, ...] = ()  # the z sizes with reconstruction results it was chosen from

    def values(self, key: str) -> list[float]:
        """``reconstruction[key]`` of each seed that has it."""
        return [float(r.reconstruction[key]) for r in self.records
                if r.reconstruction.get(key) is not None]

    @property
    def l1_after(self) -> float:
        """Mean test L1 after decoder retraining over the seeds."""
        return float(np.mean(self.values("test_l1_after")))


def _has_reconstruction(record: RunRecord) -> bool:
    recon = record.reconstruction
    return isinstance(recon, dict) and recon.get("test_l1_after") is not None


def decoder_mode(record: RunRecord) -> str:
    """How the record's decoder was retrained: "finetune", "reinitialize" or "not recorded".

    Newer records state ``reconstruction.decoder_init``; older ones only
    ``reconstruction.retraining.reinitialized``.
    """
    recon = as_records([record])[0].reconstruction or {}
    if recon.get("decoder_init"):
        return str(recon["decoder_init"])
    reinitialized = (recon.get("retraining") or {}).get("reinitialized")
    if reinitialized is None:
        return "not recorded"
    return "reinitialize" if reinitialized else "finetune"


def best_reconstructions(group: Group) -> list[ReconstructionRow]:
    """Per encoder type with reconstruction results, the z with the lowest mean retrained L1.

    The mean is over the seeds of each (encoder, z) cell, so one lucky seed does not pick the
    z. Ties go to the smaller z. Paper encoders first, in the paper's order, then the others.
    """
    cells: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for r in group.records:
        if _has_reconstruction(r):
            cells[(r.encoder, r.z_dim)].append(r)
    rows = []
    for encoder in group.encoders():
        zs = tuple(z for (e, z) in sorted(cells) if e == encoder)
        candidates = [ReconstructionRow(encoder, z, cells[(encoder, z)], zs) for z in zs]
        if candidates:
            rows.append(min(candidates, key=lambda row: (row.l1_after, row.z)))
    return rows


_MODE_TEXT = {"finetune": "fine-tuned from the trained decoder (`finetune`)",
              "reinitialize": "re-initialised and trained from scratch (`reinitialize`)",
              "not recorded": "not recorded"}


def _epochs_text(records: list[RunRecord]) -> str:
    epochs = sorted({r.reconstruction["decoder_epochs"] for r in records
                     if r.reconstruction.get("decoder_epochs") is not None})
    if not epochs:
        return "epochs not recorded"
    return f"at most {' / '.join(map(str, epochs))} epochs"


def _fmt_l1(values: list[float]) -> str:
    if not values:
        return "–"
    mean, ci = mean_ci(values)
    return f"{mean:.4f}" + (f" ± {ci:.4f}" if ci is not None else "")


def render_reconstruction_table(group: Group) -> str | None:
    """Table VIII for one group: the best autoencoder of each type after decoder retraining.

    Args:
        group: the records of one task under one protocol.

    Returns:
        The markdown block (heading, table, notes on "best" and on the decoder retraining), or
        ``None`` when no record of the group has reconstruction results.

    Example:
        >>> render_reconstruction_table(group_records(records)[0])  # doctest: +SKIP
    """
    rows = best_reconstructions(group)
    if not rows:
        return None
    lowest = min(row.l1_after for row in rows)
    paper = PAPER_RECONSTRUCTION.get(group.task)
    recon_records = [r for r in group.records if _has_reconstruction(r)]
    modes = sorted({decoder_mode(r) for r in recon_records})
    epochs = {r.reconstruction.get("decoder_epochs") for r in recon_records}
    per_row = len(modes) > 1 or len(epochs) > 1
    header = ["Encoder", "best z", "seeds", "test L1 after retraining", "test L1 before",
              "relative (ours)"]
    if paper:
        header.append("relative (paper)")
    if per_row:
        header.append("decoder retraining")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        relative = f"{100 * lowest / row.l1_after:.0f}%" if row.l1_after > 0 else "–"
        if row.l1_after == lowest:
            relative = f"**{relative}**"
        cells = [ENCODER_LABELS.get(row.encoder, row.encoder),
                 f"{row.z} (of {', '.join(map(str, row.zs))})",
                 str(len(row.records)), _fmt_l1(row.values("test_l1_after")),
                 _fmt_l1(row.values("test_l1_before")), relative]
        if paper:
            ref = paper.get(row.encoder)
            cells.append(f"{100 * ref:.0f}%" if ref is not None else "–")
        if per_row:
            row_modes = " / ".join(sorted({decoder_mode(r) for r in row.records}))
            cells.append(f"{row_modes}, {_epochs_text(row.records)}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["Best: for each encoder type, the z whose test L1 after decoder retraining is "
             "lowest, averaged over seeds (mean over each (encoder, z) cell's seeds; ± 95% CI "
             "when there are several). Relative: the lowest L1 of the types shown is 100%, "
             "the others lowest / own, as in the paper"]
    if paper:
        shown = {row.encoder for row in rows}
        notes[0] += ("; the paper's column is relative to the lowest of its four autoencoders"
                     + ("" if shown == set(PAPER_ENCODERS) else
                        ", ours to the types shown here, so they differ in reference"))
    notes[0] += "."
    if len(modes) > 1:
        notes.append(f"Decoder retraining mixes modes in this group ({', '.join(modes)}): the "
                     "mode of each row is in its last column.")
    elif len(epochs) > 1:
        notes.append(f"Decoder retraining: {_MODE_TEXT.get(modes[0], modes[0])}; the budget "
                     "of epochs varies, see each row's last column.")
    else:
        notes.append(f"Decoder retraining: {_MODE_TEXT.get(modes[0], modes[0])}, "
                     f"{_epochs_text(recon_records)}, pixel MSE on frozen embeddings.")
    title = ("**Table VIII: test L1 reconstruction error (lower is better) of the best "
             "autoencoder of each type after retraining its decoder**")
    return "\n".join([title, "", *lines, "", " ".join(notes)])


def _recon_links(group: Group) -> list[str]:
    links = []
    for r in sorted(group.records, key=lambda r: (r.encoder, r.z_dim, r.seed)):
        grid = (r.reconstruction or {}).get("grid")
        if grid:
            link = f"results/{r.task}/{grid}"
            links.append(f"[{r.encoder} z={r.z_dim} seed {r.seed}]({link})")
    return links


def render_plots(records: list[RunRecord], out_dir: Path) -> dict[str, str]:
    """One PNG per task: MLP test metric vs z, one line per encoder. Returns task -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    for group in group_records(as_records(records)):
        if group.task in plots:
            continue  # one plot per task: the first protocol group
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        cells = group.cells("mlp")
        for encoder in group.encoders():
            zs = sorted(z for (e, z) in cells if e == encoder)
            means = [mean_ci(cells[(encoder, z)])[0] for z in zs]
            ax.plot(zs, means, marker="o", label=ENCODER_LABELS.get(encoder, encoder))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("z size")
        ax.set_ylabel(f"test {group.metric['name']} (best MLP)")
        ax.set_title(group.task)
        ax.legend()
        fig.tight_layout()
        name = f"{group.task}.png"
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        plots[group.task] = name
    return plots


def publish(record_files: list[Path], out_dir: Path, plots: bool = True) -> Path:
    """The one way a board is published (``embench leaderboard``, ``reproduce``, ``sweep``).

    Copies each record file, with its sidecar and pictures, into ``out_dir/results/<task>/``
    (files already there stay as they are), then renders ``out_dir/README.md`` and the plots
    from every valid record under ``out_dir/results``.

    Args:
        record_files: record JSON files to add to the board (may be empty: re-render only).
        out_dir: the board's folder.
        plots: also draw the error-vs-z plots.

    Returns:
        The path of the rendered markdown.

    Raises:
        DataError: if a record file cannot be read.
    """
    results = board_results(out_dir)
    for source_file in record_files:
        task = load_record(source_file).task
        target_dir = results / task
        for source in files_of(Path(source_file)):
            target = target_dir / source.name
            if target.exists() and target.resolve() == source.resolve():
                continue
            with atomic_path(target) as tmp:
                tmp.write_bytes(source.read_bytes())
    return render_board(load_records([results]).records if results.exists() else [], out_dir,
                        plots=plots)


def render_board(records: list[RunRecord], out_dir: Path, plots: bool = True) -> Path:
    """Write ``out_dir/README.md`` (and the plots) for ``records``; return the markdown path.

    ``out_dir/NOTES.md``, when there is one, is the board's hand-written text (what the numbers
    say, and why they differ from the paper's); it is shown under the intro.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = out_dir / NOTES_FILE
    plot_files = render_plots(records, out_dir) if plots else {}
    path = out_dir / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(render_markdown(records, plot_files, results_dir=board_results(out_dir),
                                       notes=notes.read_text() if notes.exists() else None,
                                       how_made=True))
    return path
