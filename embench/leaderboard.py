"""Records in, markdown out: the leaderboard in the paper's table layout.

Per task and protocol: the MLP table and the linear table (rows: z sizes plus "Any"; columns:
encoders), the paper's own numbers beside ours for the paper's encoders, the best cell of each
row in bold, the trivial baseline, and provenance. Then Table VIII for the encoders with
reconstruction results: per encoder type the z with the lowest test L1 after decoder retraining
(mean over seeds), its L1 before and after retraining, its L1 relative to the lowest of the types
shown (lowest = 100%, others = lowest / own) beside the paper's row, and how the decoder was
retrained. Records of different protocols are never ranked in one table: they are grouped, and
the board says so.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from embench.results import RunRecord, load_record, sidecar_path, validate_record
from embench.storage import atomic_path


def _read_paper() -> dict[str, Any]:
    """The paper's numbers, shipped as data (``embench/paper.json``), keyed by task and encoder."""
    return json.loads(resources.files("embench").joinpath("paper.json").read_text("utf-8"))


_PAPER_DATA = _read_paper()
#: The paper's Tables II-VII: PAPER[task][probe][encoder][z] (LunarLander in px, others as
#: accuracy fractions).
PAPER: dict[str, dict[str, dict[str, dict[int, float]]]] = {
    task: {probe: {encoder: {int(z): float(v) for z, v in numbers[probe].items()}
                   for encoder, numbers in encoders.items() if probe in numbers}
           for probe in ("mlp", "linear")}
    for task, encoders in _PAPER_DATA["results"].items()
}
#: The paper's Table VIII: PAPER_RECONSTRUCTION[task][encoder] = test L1 of the best autoencoder
#: of that type after decoder retraining, relative to the lowest of the four (lowest / own).
PAPER_RECONSTRUCTION: dict[str, dict[str, float]] = {
    task: {encoder: float(numbers["reconstruction"]) for encoder, numbers in encoders.items()
           if "reconstruction" in numbers}
    for task, encoders in _PAPER_DATA["results"].items()
}
#: The paper's encoders, in its column order.
PAPER_ENCODERS: tuple[str, ...] = tuple(_PAPER_DATA["encoders"])
#: How the board names encoders (others keep their registered name).
ENCODER_LABELS: dict[str, str] = dict(_PAPER_DATA["encoder_labels"])


def paper_encoders() -> tuple[str, ...]:
    """The paper's encoders in its column order (what ``embench reproduce`` runs by default)."""
    return PAPER_ENCODERS


# Two-sided 95% Student-t quantiles by degrees of freedom (1..30); normal beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


@dataclass
class LoadedRecords:
    """Valid, de-duplicated records and the problems found in the rest."""

    records: list[RunRecord] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0


def load_records(directories: list[Path]) -> LoadedRecords:
    """Read every ``*.json`` record under the directories, validating and merging duplicates.

    A record is refused (with the reason) when its JSON is invalid or its fields disagree
    with its own fingerprints. A record seen twice (same run fingerprint, which includes the
    seed) counts once. A record may come with or without its predictions sidecar.
    """
    out = LoadedRecords()
    seen: set[str] = set()
    for directory in directories:
        files = [directory] if directory.is_file() else sorted(directory.rglob("*.json"))
        for path in files:
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                out.problems.append(f"{path}: not valid JSON ({exc})")
                continue
            problems = validate_record(data)
            if problems:
                out.problems.append(f"{path}: {'; '.join(problems)}")
                continue
            record = RunRecord.from_dict(data, source=str(path))
            problems = record.consistency_problems()
            if problems:
                out.problems.append(f"{path}: {'; '.join(problems)}")
                continue
            key = f"{record.run_key}:{record.seed}"
            if key in seen:
                out.duplicates += 1
                continue
            seen.add(key)
            out.records.append(record)
            out.paths.append(path)
    return out


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


def group_records(records: list[RunRecord]) -> list[Group]:
    """Group records by (task, protocol), in a stable order.

    One cell averages over seeds, so within a group only the newest record of each
    (encoder, z, seed) counts: an older one (e.g. from before a retrain with other thread
    counts or code) is superseded, not averaged in as if it were another seed.
    """
    groups: dict[tuple[str, str], dict[tuple[str, int, int], list[RunRecord]]] = \
        defaultdict(lambda: defaultdict(list))
    for record in as_records(records):
        cell = (record.encoder, record.z_dim, record.seed)
        groups[(record.task, record.protocol_id)][cell].append(record)
    out = []
    for (task, proto), cells in sorted(groups.items()):
        newest = [max(recs, key=lambda r: r.created) for _, recs in sorted(cells.items())]
        superseded = sum(len(recs) - 1 for recs in cells.values())
        out.append(Group(task, proto, newest, superseded))
    return out


def render_table(group: Group, probe: str) -> str:
    """One table in the paper's layout (rows: z sizes + Any; columns: encoders)."""
    metric = group.metric["name"]
    lower = group.metric["direction"] == "lower"
    encoders = group.encoders()
    cells = group.cells(probe)
    zs = sorted({z for (_, z) in cells})
    paper = PAPER.get(group.task, {}).get(probe, {})
    header = ["z size", *(ENCODER_LABELS.get(e, e) for e in encoders)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best_any: dict[str, float] = {}
    for z in [*zs, "Any"]:
        row_values: dict[str, tuple[float, float | None, int]] = {}
        for e in encoders:
            if z == "Any":
                per_z = [mean_ci(cells[(e, zz)])[0] for zz in zs if (e, zz) in cells]
                if per_z:
                    best_any[e] = min(per_z) if lower else max(per_z)
                    row_values[e] = (best_any[e], None, 0)
            elif (e, z) in cells:
                mean, ci = mean_ci(cells[(e, z)])
                row_values[e] = (mean, ci, len(cells[(e, z)]))
        best = (min if lower else max)((v[0] for v in row_values.values()), default=None)
        row = [f"**{z}**" if z == "Any" else str(z)]
        for e in encoders:
            if e not in row_values:
                row.append("–")
                continue
            mean, ci, _ = row_values[e]
            text = _fmt(metric, mean, ci)
            if best is not None and mean == best:
                text = f"**{text}**"
            ref = _paper_value(paper, e, z, lower)
            if ref is not None:
                text += f" (paper {_fmt(metric, ref)})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    baseline = [float(r.test["baseline"]) for r in group.records]
    lines.append(f"| trivial baseline | {_fmt(metric, float(np.mean(baseline)))} "
                 f"(predict the probe-train mean / majority class) |" + " |" * (len(encoders) - 1))
    return "\n".join(lines)


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
            f"{', '.join(devices)} · {', '.join(versions)} · {dates[0]}"
            f"{' to ' + dates[-1] if dates[-1] != dates[0] else ''} · {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))}) · {len(recs)} run(s){superseded} · splits: "
            f"{split_text}")


def render_markdown(records: list[RunRecord], plots: dict[str, str] | None = None,
                    title: str = "embench leaderboard") -> str:
    """The whole board as markdown."""
    plots = plots or {}
    groups = group_records(as_records(records))
    out = [f"# {title}", "",
           "Generated by `embench leaderboard` from the result records in `results/`; do not "
           "edit by hand. Cells: mean over seeds (± 95% CI when there are several seeds); the "
           "best cell of each row in **bold**; the paper's number in parentheses for its "
           "encoders (Pihlgren et al., IJCNN 2020, Tables II–VII; Table VIII's relative "
           "reconstruction errors in their own column)."]
    by_task: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_task[g.task].append(g)
    for task, task_groups in sorted(by_task.items()):
        out += ["", f"## {task}"]
        if len(task_groups) > 1:
            out += ["", f"{len(task_groups)} protocols were found for this task (different "
                    "presets, data or metric); they are shown separately and never ranked "
                    "against each other."]
        for g in task_groups:
            metric = g.metric
            direction = "lower is better" if metric["direction"] == "lower" else \
                "higher is better"
            out += ["", f"_{_provenance(g)}_"]
            for probe, label in (("mlp", "MLPs"), ("linear", "linear regressors")):
                out += ["", f"**Test {metric['name']} ({direction}) for the {label} with the "
                        "lowest validation loss**", "", render_table(g, probe)]
            if task in plots:
                out += ["", f"![{task}: test metric vs z]({plots[task]})"]
            reconstruction = render_reconstruction_table(g)
            if reconstruction:
                out += ["", reconstruction]
            grids = _recon_links(g)
            if grids:
                out += ["", "Reconstructions (original / before / after decoder retraining): "
                        + ", ".join(grids)]
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


def files_of(record_file: Path) -> list[Path]:
    """A record file and the files beside it that exist (sidecar, grid, other pictures)."""
    stem = record_file.stem
    beside = [sidecar_path(record_file), record_file.with_suffix(".png"),
              *sorted(record_file.parent.glob(f"{stem}.*.png"))]
    return [record_file, *(p for p in dict.fromkeys(beside) if p.exists())]


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
    results = out_dir / "results"
    for record_file in record_files:
        task = load_record(record_file).task
        target_dir = results / task
        for source in files_of(Path(record_file)):
            target = target_dir / source.name
            if target.exists() and target.resolve() == source.resolve():
                continue
            with atomic_path(target) as tmp:
                tmp.write_bytes(source.read_bytes())
    return render_board(load_records([results]).records if results.exists() else [], out_dir,
                        plots=plots)


def render_board(records: list[RunRecord], out_dir: Path, plots: bool = True) -> Path:
    """Write ``out_dir/README.md`` (and the plots) for ``records``; return the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_files = render_plots(records, out_dir) if plots else {}
    path = out_dir / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(render_markdown(records, plot_files))
    return path
