"""Records in, markdown and plots out: the leaderboard in the paper's table layout; publishing.

Per task and protocol: the MLP table and the linear table (rows: z sizes plus "Any"; columns:
encoders), the paper's own numbers beside ours for the paper's encoders, the best cell of each
row in bold, the trivial baseline, and provenance (:mod:`embench.board_tables`). Then Table
VIII for the encoders with reconstruction results (:mod:`embench.board_recon`). Records of
different protocols are never ranked in one table: they are grouped, and the board says so.

Where the records' predictions sidecars are at hand (``results_dir``), each row also marks the
cells that are not significantly different from its best cell, and paired comparisons of chosen
encoder pairs (P. AE vs AE, P. VAE vs VAE) follow the tables (:mod:`embench.board_marks`).

This module assembles the board (:func:`render_markdown`, :func:`render_plots`, how each
protocol's runs were made) and publishes it (:func:`publish`, :func:`render_board`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

# The board's tables, marks and Table VIII live in their own modules; their names (private
# ones included) are re-exported here, where the CLI, the page and the tests import them.
from embench.board_marks import (  # noqa: F401 - re-exported
    BOARD_RESAMPLES,
    COMPARISON_PAIRS,
    BoardRuns,
    TieMarks,
    _baseline_block,
    _comparisons_block,
    pair_label,
    render_comparisons,
    tie_marks,
)
from embench.board_recon import (  # noqa: F401 - re-exported
    ReconstructionRow,
    _recon_links,
    best_reconstructions,
    decoder_mode,
    render_reconstruction_table,
)
from embench.board_tables import (  # noqa: F401 - re-exported
    STILL_IMPROVING_MARK,
    STILL_IMPROVING_NOTE,
    Cell,
    Group,
    _fmt,
    _paper_value,
    _provenance,
    as_records,
    device_kind,
    group_records,
    improving_cells,
    render_table,
    table_rows,
)
from embench.paper import ENCODER_LABELS, PAPER_ENCODERS, encoder_label
from embench.records import board_results, files_of, load_records, record_file
from embench.results import RunRecord, load_record
from embench.stats import mean_ci
from embench.storage import atomic_path

#: The board's hand-written text, beside its README (rendered under the intro).
NOTES_FILE = "NOTES.md"


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
    rows, total, reused, embeddings_reused, resumed_runs = [], 0.0, 0, 0, 0
    for r in recs:
        t = r.timings or {}
        hit = bool((r.cache or {}).get("checkpoint_hit"))
        train, resumed = r.training_time
        resumed_runs += resumed
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
        if resumed:
            cells["train"] += " §"
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
    if resumed_runs:
        lines[-1] += (" § resumed after an interruption: the sum of its epochs' times over every "
                      "process that trained it (its data, embed and later stages are the last "
                      "process's).")
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
        for i, g in enumerate(task_groups):
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
            if task in plots and i == 0:  # the task's plot shows its first group only
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


def render_plots(records: list[RunRecord], out_dir: Path) -> dict[str, str]:
    """One PNG per task: MLP test metric vs z, one line per encoder. Returns task -> file name.

    It plots the task's first protocol group (the one with the most data), is titled with
    that group's preset, and the board shows it under that group only.
    """
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
        presets = ", ".join(sorted({r.preset for r in group.records}))
        ax.set_title(f"{group.task} (preset {presets})")
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
