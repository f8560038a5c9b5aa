"""``embench demo``: a tiny but real comparison that a newcomer sees finish in minutes.

Four encoders on a small LunarLander set (12 + 20 rollouts), each through the same
:func:`embench.runner.run` as ``embench run``, so every row is a real record in the user's
``EMBENCH_HOME`` and a second demo is instant (everything is cached):

* ``pca`` on pixels, the paper's baseline;
* the autoencoder's network with its random initial weights and no training at all (the floor
  that training has to beat: the registered ``untrained_ae`` reference encoder, the board's
  reference row too);
* the autoencoder ``ae`` (pixel-wise loss) and ``p_ae`` (perceptual loss, ImageNet AlexNet),
  both trained briefly (6 epochs at batch 64): the paper's comparison in miniature.

Measured at these sizes (this project's 2-core CPU): MLP probe error 19.6 px (pca), 19.3
(untrained ae), 19.2 (ae), 16.8 (p_ae), against 19.8 px for predicting the mean. The pixel-wise
encoders learn nothing about the small lander that random weights did not already show; the
perceptual one does. At 15 epochs p_ae reaches 15.9 px, but the demo takes 3.8 minutes instead
of about two.

Why a ``demo`` preset rather than ``smoke``: smoke's 4 + 6 rollouts leave one rollout (150
frames) to test on and 15 probe epochs, and there the comparison is noise (measured: the
trained ae's MLP probe 20.2 px, worse than the 17.6 px of predicting the mean; the linear
probe 104 px for pca, far from converged). The demo keeps the protocol and scales it like
every preset does: its own sizes and budgets (300 probe epochs, as ``quick``): the ``demo``
preset of :data:`embench.presets.PRESETS` and LunarLander's ``PRESET_SIZES``. With other sizes
(``--rollouts``, ``--frames``) the demo registers a ``demo`` preset carrying them while it
runs; its records keep them, and ``embench verify --full`` rebuilds that preset from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embench.errors import ConfigError, EmbenchError
from embench.presets import PRESETS, Preset, registered, task_sizes
from embench.registry import load_task
from embench.results import NOT_A_RESULT, NOT_A_RESULT_MARK
from embench.runner import RunConfig, run

#: The demo's task and preset (LunarLander's ``demo`` sizes: 12 + 20 rollouts, 4,800 frames).
DEMO_TASK = "lunarlander"
DEMO_PRESET = "demo"
#: Epochs and batch size of the briefly trained autoencoders (at the preset's batch of 512,
#: their 1,500 training images would give 3 steps an epoch).
DEMO_AE_EPOCHS = PRESETS[DEMO_PRESET].autoencoder_epochs
DEMO_AE_BATCH = 64
#: How ``embench demo`` says the full runs are started.
FULL_RUN = "embench run --encoder p_vae --task lunarlander --preset quick"
REPRODUCE = "embench reproduce --task lunarlander --preset quick"


@dataclass
class DemoEntry:
    """One row of the demo: a label for people and the run that fills it."""

    label: str
    encoder: str
    options: dict[str, Any] = field(default_factory=dict)
    #: needs something that may be missing offline (p_ae's AlexNet weights): a failure
    #: skips the row instead of ending the demo
    optional: bool = False


def demo_entries(ae_epochs: int = DEMO_AE_EPOCHS) -> list[DemoEntry]:
    """The demo's encoders, in the order they run and are shown."""
    if not isinstance(ae_epochs, int) or ae_epochs < 1:
        raise ConfigError(f"The demo's ae_epochs must be an integer >= 1; got {ae_epochs!r}.")
    budget = {"max_epochs": ae_epochs, "batch_size": DEMO_AE_BATCH}
    epochs = f"{ae_epochs} epoch{'s' if ae_epochs > 1 else ''}"
    return [
        DemoEntry("pca (on pixels)", "pca"),
        DemoEntry("untrained ae (random weights, no training)", "untrained_ae"),
        DemoEntry(f"ae, pixel loss ({epochs})", "ae", budget),
        DemoEntry(f"p_ae, perceptual loss ({epochs})", "p_ae", budget, optional=True),
    ]


@dataclass
class DemoRow:
    """One demo run: its label, record (``None`` when skipped, with the reason), wall time."""

    label: str
    record: Any
    record_path: Path | None
    seconds: float
    reused: bool
    skipped: str | None = None

    @property
    def picture(self) -> Path | None:
        """The record's ``show`` picture (``<record stem>.show.png``), if it exists."""
        return None if self.record_path is None else show_picture(self.record_path)


@dataclass
class DemoOutcome:
    """Every row, the demo's wall time, and which row scored best."""

    rows: list[DemoRow]
    seconds: float

    @property
    def scored(self) -> list[DemoRow]:
        """The rows that ran (not skipped)."""
        return [row for row in self.rows if row.record is not None]

    @property
    def best(self) -> DemoRow:
        """The row with the best MLP probe (lowest error, or highest accuracy)."""
        sign = 1 if self.scored[0].record.lower_is_better else -1
        return min(self.scored, key=lambda row: sign * row.record.test["mlp"])


def demo_preset(sizes: dict[str, int] | None = None) -> Preset:
    """The ``demo`` preset, or one of that name with LunarLander sizes changed by ``sizes``."""
    preset = PRESETS[DEMO_PRESET]
    if not sizes:
        return preset
    base = task_sizes(load_task(DEMO_TASK), preset)
    return dataclasses.replace(preset, overrides={DEMO_TASK: {**base, **sizes}})


def run_demo(
    *, home: Path | None = None, ae_epochs: int = DEMO_AE_EPOCHS,
    sizes: dict[str, int] | None = None, device: str = "auto", progress: Any = None,
    log: Callable[[str], None] = lambda message: None,
    on_start: Callable[[DemoEntry], None] | None = None,
) -> DemoOutcome:
    """Run the demo's encoders on a small LunarLander set; finished runs are reused.

    Args:
        home: EMBENCH_HOME override (default: ``$EMBENCH_HOME`` or the user cache dir).
        ae_epochs: epochs of the briefly trained ``ae`` and ``p_ae`` (fewer: faster, weaker).
        sizes: LunarLander sizes instead of the ``demo`` preset's (``unaltered_rollouts``,
            ``altered_rollouts``, ``frames``; smaller: faster and noisier).
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: progress display for the stages (see :mod:`embench.progress`).
        log: receives one-line status messages.
        on_start: called with each entry before it runs.

    Returns:
        The rows in :func:`demo_entries` order, and the total wall time. An optional row that
        fails (p_ae without its AlexNet weights, offline) is skipped with the reason.

    Raises:
        EmbenchError: when any other row fails.
    """
    start = time.perf_counter()
    rows = []
    entries = demo_entries(ae_epochs)
    preset = demo_preset(sizes)
    with registered(preset) if preset is not PRESETS[DEMO_PRESET] else contextlib.nullcontext():
        for entry in entries:
            if on_start is not None:
                on_start(entry)
            began = time.perf_counter()
            config = RunConfig(encoder=entry.encoder, task=DEMO_TASK, preset=DEMO_PRESET,
                               device=device, home=home, encoder_options=dict(entry.options))
            try:
                outcome = run(config, progress=progress, log=log)
            except EmbenchError as exc:
                if not entry.optional:
                    raise
                log(f"skipped {entry.label}: {exc}")
                rows.append(DemoRow(entry.label, None, None, time.perf_counter() - began,
                                    False, skipped=str(exc)))
                continue
            rows.append(DemoRow(entry.label, outcome.record, outcome.record_path,
                                time.perf_counter() - began, outcome.record_hit))
    return DemoOutcome(rows, time.perf_counter() - start)


def show_picture(record_path: Path) -> Path | None:
    """The record's ``show`` picture (``<record stem>.show.png`` beside it), if it exists."""
    path = Path(record_path).with_name(Path(record_path).stem + ".show.png")
    return path if path.exists() else None


def next_steps(record_path: Path, home: Path | None = None) -> list[str]:
    """Where a run's results are and how to publish them, as lines to print."""
    lines = ["next:", f"  record   {record_path}"]
    picture = show_picture(record_path)
    if picture is not None:
        lines.append(f"  picture  {picture} (test frames, predicted vs true)")
    home_flag = f" --home {home}" if home is not None else ""
    lines.append(f"  publish  embench leaderboard{home_flag} (copies this home's records into "
                 "./leaderboard and renders its README.md tables)")
    return lines


def _metric_label(record: Any) -> str:
    name = str(record.metric["name"])
    return "px" if name.endswith("_px") else name


def _format_metric(record: Any, value: float) -> str:
    return f"{100 * value:.1f}%" if record.metric["name"] == "accuracy" else f"{value:.2f}"


def _probe_cell(record: Any, probe: str) -> str:
    """A probe's test figure, marked when it is no better than the trivial baseline."""
    text = _format_metric(record, record.test[probe])
    return text if record.beats_baseline(probe) else f"{text} {NOT_A_RESULT_MARK}"


def _unbeaten(outcome: DemoOutcome) -> bool:
    """Whether any shown probe is no better than the trivial baseline."""
    return any(not row.record.beats_baseline(probe) for row in outcome.rows
               if row.record is not None for probe in ("mlp", "linear"))


def summary_table(outcome: DemoOutcome) -> Any:
    """The demo's table: encoder, best MLP, linear probe, trivial baseline, wall time.

    A probe no better than the baseline is marked ``✗``, as on the board and in ``embench
    run``'s table; :func:`closing_lines` says what the mark means.
    """
    from rich.table import Table

    first = outcome.scored[0].record
    unit = _metric_label(first)
    arrow = "lower is better" if first.lower_is_better else "higher is better"
    table = Table(title=f"embench demo: test {first.metric['name']} on {first.task} "
                  f"({first.split_sizes.get('test', 0):,} test frames, {arrow})",
                  title_justify="left")
    table.add_column("encoder")
    for column in (f"MLP {unit}", f"linear {unit}", f"baseline {unit}", "wall s"):
        table.add_column(column, justify="right")
    for row in outcome.rows:
        if row.record is None:
            table.add_row(row.label, "skipped", "", "", f"{row.seconds:.0f}")
            continue
        test = row.record.test
        table.add_row(row.label, _probe_cell(row.record, "mlp"), _probe_cell(row.record, "linear"),
                      _format_metric(row.record, test["baseline"]),
                      "cached" if row.reused else f"{row.seconds:.0f}")
    return table


def closing_lines(outcome: DemoOutcome, home: Path | None = None) -> list[str]:
    """What the demo shows, where its records are, and how to run the full thing."""
    best = outcome.best
    unit = _metric_label(best.record)
    lines = [f"best MLP probe: {best.label}, "
             f"{_format_metric(best.record, best.record.test['mlp'])} {unit} (the baseline, "
             f"predicting the probe-train mean: "
             f"{_format_metric(best.record, best.record.test['baseline'])} {unit})"
             + ("." if best.record.beats_baseline("mlp") else
                f", so no MLP probe beat the baseline here {NOT_A_RESULT_MARK}."),
             "pixel-wise objectives (pca, ae) weigh every pixel alike, so the small lander "
             "counts for little; a perceptual loss (p_ae) compares what a pretrained network "
             "sees: the paper's point."]
    if _unbeaten(outcome):
        lines.append(f"{NOT_A_RESULT_MARK} {NOT_A_RESULT}")
    for row in outcome.rows:
        if row.skipped:
            lines.append(f"skipped {row.label}: {row.skipped}")
    if best.picture is not None:
        lines.append(f"its test predictions, drawn: {best.picture}")
    lines.append(f"records: {best.record_path.parent} (rerunning the demo reuses them)")
    home_flag = f" --home {home}" if home is not None else ""
    lines += [
        "the full thing (same protocol, the paper's perceptual VAE, a quick-sized set):",
        f"  make demo    runs {FULL_RUN} (about 25 min on a 2-core CPU, minutes on a GPU)",
        f"  {REPRODUCE}    the paper's four autoencoders, published to ./leaderboard",
        f"  embench leaderboard{home_flag}    publishes every record of this home",
    ]
    return lines
