"""The board's significance marks, from the records' predictions sidecars.

The ``†`` of a cell not significantly different from the best of its row, the paired
comparisons of chosen encoder pairs (P. AE vs AE, P. VAE vs VAE) and the linear probes tested
against the trivial baseline, all paired on the same test items (:mod:`embench.compare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embench.board_tables import (
    STILL_IMPROVING_MARK,
    Group,
    _best,
    _provenance,
    as_records,
    group_records,
    table_rows,
)
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
from embench.paper import ENCODER_LABELS, encoder_label
from embench.records import record_file
from embench.results import RunRecord, read_predictions

#: The encoder pairs whose paired comparison the board shows under the tables (issue 17).
COMPARISON_PAIRS: tuple[tuple[str, str], ...] = (("p_ae", "ae"), ("p_vae", "vae"))
#: Resamples of the board's bootstraps and permutation tests (seed 0: the same board twice).
BOARD_RESAMPLES = 10_000


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
