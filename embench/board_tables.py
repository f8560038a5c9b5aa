"""The board's probe tables: records grouped by protocol, their rows and cells in markdown.

Records of one task under one protocol (and device kind and precision) form a :class:`Group`;
its MLP and linear tables have a row per z size plus "Any" and a column per encoder, the
paper's numbers beside ours, the best cell of each row in bold, the ✗ mark on a cell no better
than the trivial baseline and the ↻ mark on a cell whose training the epoch cap cut short.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from embench.paper import ENCODER_LABELS, PAPER, PAPER_ENCODERS
from embench.results import NOT_A_RESULT, NOT_A_RESULT_MARK, RunRecord, beats_baseline
from embench.stats import mean_ci


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

    Within a task the protocol with the most data comes first (the sum of its split sizes), so
    a board that also keeps smaller scales leads with the one it was made at; ties fall back
    to protocol, device kind and precision.

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

    def order(item: tuple[tuple[str, str, str, str], dict]) -> tuple:
        (task, proto, device, precision), cells = item
        first = next(iter(cells.values()))[0]
        return task, -sum(first.split_sizes.values()), proto, device, precision

    out = []
    for (task, proto, device, precision), cells in sorted(groups.items(), key=order):
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
