"""Paired comparison of two encoders on the same test items, from the predictions sidecars.

Two records of the same task, protocol and test data have scored the same test items. Their
sidecars (``<record>.predictions.npz``) hold each item's prediction, so the task's metric can be
taken item by item and the two encoders compared pair by pair: the difference A − B of the
metric, its 95% confidence interval by a paired bootstrap over the test items, the ratio A / B
with its interval, and a two-sided p-value from a paired sign-flip permutation test.

Test items of one group (LunarLander: the frames of one rollout) are correlated, so when the
sidecar has ``groups`` both the bootstrap and the permutation test resample whole groups (a
cluster bootstrap; sign flips per group); otherwise each item is its own group.

The per-item value is the task's own ``score`` on that one item (LunarLander: the Euclidean
error in pixels; classification: 1 for a correct prediction, 0 otherwise), so there is no
second formula to drift from the task's (:func:`embench.protocols.item_scores`, which
``embench show`` draws too); that their mean reproduces the record's test metric is checked
for every record. The intervals reflect the sampling of test items for the trained
encoders at hand, not the spread of training seeds: the per-seed rows show that.

The statistics themselves are :mod:`embench.paired`; reading runs and resolving what the
command line names is :mod:`embench.sides`.

Example:
    >>> comparison = compare_records(["p_ae-z64-seed0-....json"], ["ae-z64-seed0-....json"])
    >>> print(comparison.verdict())  # doctest: +SKIP
    P. AE is better than AE: difference P. AE − AE −15.35 px [−16.29, −14.42], p < 0.001
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embench.errors import ConfigError, DataError, EmbenchError

# The paired statistics (paired.py) and the runs' loading and name resolution (sides.py) live
# in their own modules; their names are re-exported here, where the CLI, the board and the
# tests import them.
from embench.paired import PairedResult, paired_test  # noqa: F401 - re-exported
from embench.paper import encoder_label
from embench.protocols import item_scores
from embench.registry import load_task
from embench.results import Predictions
from embench.sides import (  # noqa: F401 - re-exported
    LoadedRun,
    is_record_file,
    load_run,
    resolve_sides,
)

#: Relative tolerance between the mean of the per-item values and the record's test metric.
_RTOL = 1e-9


# --------------------------------------------------------------------------------------------
# Per-item values
# --------------------------------------------------------------------------------------------


@functools.cache
def _task(name: str) -> Any:
    try:
        task = load_task(name)
    except EmbenchError as exc:
        raise ConfigError(f"Per-item values of {name} records need the task plugin {name!r} "
                          f"(its score() defines the metric): {exc}") from None
    return task


def item_values(run: LoadedRun, probe: str = "mlp") -> np.ndarray:
    """The task's metric of each test item for one probe, in the sidecar's item order.

    Each value is the task's ``score`` on that item alone (:func:`embench.protocols.item_scores`),
    so their mean is the record's test metric for every metric that is a mean over items
    (error in pixels, accuracy).

    Args:
        run: a record with its sidecar.
        probe: ``mlp``, ``linear``, ``least_squares`` or ``baseline``.

    Returns:
        ``(N,)`` float64 values.

    Raises:
        DataError: if the run has no sidecar or no predictions of ``probe``, or if the values'
            mean does not reproduce ``record.test[probe]`` (the sidecar is another run's, or
            the metric is not a mean over items).
        ConfigError: if the task plugin is not installed.
    """
    if probe in run.values:
        return run.values[probe]
    record, predictions = run.record, _require_sidecar(run)
    if probe not in predictions.predicted or probe not in record.test:
        raise DataError(f"{run.source} has no {probe!r} predictions (it has "
                        f"{', '.join(sorted(predictions.predicted))}).",
                        "Choose one of those with --probe.")
    values = item_scores(_task(record.task), predictions.y_true, predictions.predicted[probe])
    stored = float(record.test[probe])
    if len(values) == 0 or not math.isclose(float(values.mean()), stored, rel_tol=_RTOL,
                                            abs_tol=1e-12):
        mean = float(values.mean()) if len(values) else float("nan")
        raise DataError(f"The per-item {record.metric['name']} of {run.source} average to "
                        f"{mean:.10g} but the record says test.{probe} = {stored:.10g}: the "
                        "sidecar is not this record's, or the task's metric is not a mean over "
                        "items (a paired comparison needs one).",
                        "Rerun the record with this version to rewrite both.")
    run.values[probe] = values
    return values


def _require_sidecar(run: LoadedRun) -> Predictions:
    if run.predictions is None:
        made_by = run.record.embench_version
        raise DataError(f"{run.source} has no predictions sidecar ({made_by}, schema "
                        f"{run.record.schema_version}; the per-item predictions came with "
                        "schema 2, beside the record as <record>.predictions.npz).",
                        "Rerun it with this version (embench run ...) to write them.")
    return run.predictions


# --------------------------------------------------------------------------------------------
# Two encoders
# --------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Encoder A vs encoder B on one task: per-seed pairs and the pooled comparison.

    Attributes:
        encoder_a, encoder_b: registered names; ``label_a``, ``label_b`` how they are shown.
        z_a, z_b: their embedding sizes.
        task, metric, lower_is_better, probe: what is compared (``probe``: ``mlp``, ...).
        n_items, n_groups: test items and resampled units; ``resampling`` says which
            (``"groups"``: a cluster bootstrap over the sidecar's groups, ``"items"``).
        per_seed: seed i of A vs seed i of B, for each seed both have.
        pooled: per-item values averaged over each encoder's seeds, then the same test.
        n_resamples, seed, confidence: the settings of the test.
        records_a, records_b: the record files compared.
    """

    encoder_a: str
    encoder_b: str
    label_a: str
    label_b: str
    z_a: int
    z_b: int
    task: str
    metric: str
    lower_is_better: bool
    probe: str
    n_items: int
    n_groups: int
    resampling: str
    per_seed: list[PairedResult]
    pooled: PairedResult
    n_resamples: int
    seed: int
    confidence: float
    records_a: list[str] = field(default_factory=list)
    records_b: list[str] = field(default_factory=list)
    #: per side, the seeds whose encoder was still improving when its epoch cap stopped it
    still_improving_a: list[int] = field(default_factory=list)
    still_improving_b: list[int] = field(default_factory=list)

    def caveats(self) -> list[str]:
        """One line per side whose training the epoch cap cut short (empty when none)."""
        lines = []
        for label, seeds in ((self.label_a, self.still_improving_a),
                             (self.label_b, self.still_improving_b)):
            if seeds:
                which = ", ".join(map(str, seeds))
                lines.append(f"note: {label} (seed{'s' if len(seeds) > 1 else ''} {which}) was "
                             "still improving when its epoch cap stopped training, so this "
                             f"comparison may understate {label}.")
        return lines

    def better(self) -> str | None:
        """Label of the significantly better encoder (pooled), or ``None``."""
        if not self.pooled.significant:
            return None
        a_lower = self.pooled.diff < 0
        return self.label_a if a_lower == self.lower_is_better else self.label_b

    def verdict(self) -> str:
        """One line: which encoder is better, by how much (better − worse), how sure."""
        pooled = self.pooled
        better = self.better()
        sign = -1.0 if better is not None and better == self.label_b else 1.0
        low, high = sorted((sign * pooled.ci_low, sign * pooled.ci_high))
        first, second = (self.label_b, self.label_a) if sign < 0 else (self.label_a,
                                                                        self.label_b)
        diff = (f"difference {first} − {second} {format_diff(self.metric, sign * pooled.diff)} "
                f"[{format_diff(self.metric, low, unit=False)}, "
                f"{format_diff(self.metric, high, unit=False)}]")
        if pooled.n_groups < 2:
            return (f"{self.label_a} and {self.label_b} cannot be told apart on a test split "
                    f"of one group ({diff}): compare runs of a larger preset")
        if better is None:
            return (f"{self.label_a} and {self.label_b} are not significantly different: "
                    f"{diff}, {format_p(pooled.p_value)}")
        return f"{first} is better than {second}: {diff}, {format_p(pooled.p_value)}"

    def method(self) -> str:
        """How the intervals and p-values were computed, in one sentence."""
        unit = (f"{self.n_groups:,} groups of test items (a cluster bootstrap: items of one "
                "group, e.g. a rollout's frames, are correlated)" if self.resampling == "groups"
                else f"{self.n_items:,} test items")
        flips = "per group" if self.resampling == "groups" else "per item"
        return (f"{100 * self.confidence:g}% percentile intervals from a paired bootstrap over "
                f"{unit}; p from a paired sign-flip permutation test ({flips}); "
                f"{self.n_resamples:,} resamples, seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, the method and the verdict."""
        out = asdict(self)
        out["direction"] = "lower" if self.lower_is_better else "higher"
        out["method"] = self.method()
        out["verdict"] = self.verdict()
        out["caveats"] = self.caveats()
        return out


def compare_records(records_a: Sequence[str | Path | LoadedRun],
                    records_b: Sequence[str | Path | LoadedRun], *, probe: str = "mlp",
                    n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95,
                    per_seed: bool = True, permutation: bool = True) -> Comparison:
    """Compare encoder A with encoder B item by item on the same test data.

    Each side is one encoder at one z, one record per seed. Seeds both sides have are
    compared pair by pair; all seeds are pooled (each item's value averaged over the seeds).

    Args:
        records_a, records_b: record files (their sidecars beside them) or :class:`LoadedRun`.
        probe: which selected probe's predictions: ``mlp``, ``linear``, ``least_squares``.
        n_resamples: bootstrap resamples and permutation sign patterns.
        seed: of the resampling (the same seed gives the same numbers).
        confidence: of the intervals.
        per_seed: also compare seed by seed (``False``: ``per_seed`` is empty).
        permutation: also compute p-values (``False``: they are ``None``).

    Returns:
        The :class:`Comparison`.

    Raises:
        ConfigError: a side that is empty, mixes encoders or z sizes, or repeats a seed;
            records of different tasks, metrics or protocols.
        DataError: a record without a sidecar; records of different test data, items, labels
            or groups; a sidecar that does not reproduce its record's metric.

    Example:
        >>> compare_records(["p_ae-z64-seed0.json"], ["ae-z64-seed0.json"]).pooled.ratio
        0.281...  # doctest: +SKIP
    """
    if n_resamples < 1:
        raise ConfigError(f"n_resamples={n_resamples}.", "Use at least 1 (default 10000).")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence}.", "Use a fraction, e.g. 0.95.")
    side_a = _side([r if isinstance(r, LoadedRun) else load_run(r) for r in records_a], "A")
    side_b = _side([r if isinstance(r, LoadedRun) else load_run(r) for r in records_b], "B")
    reference = side_a[0]
    for run in [*side_a[1:], *side_b]:
        check_comparable(reference, run)
    order = {id(run): np.argsort(run.predictions.items, kind="stable")
             for run in [*side_a, *side_b]}
    groups = reference.predictions.groups
    groups = None if groups is None else groups[order[id(reference)]]
    values = {id(run): item_values(run, probe)[order[id(run)]] for run in [*side_a, *side_b]}

    def test(runs_a: list[LoadedRun], runs_b: list[LoadedRun], label: str) -> PairedResult:
        mean_a = np.mean([values[id(r)] for r in runs_a], axis=0)
        mean_b = np.mean([values[id(r)] for r in runs_b], axis=0)
        return paired_test(mean_a, mean_b, groups, n_resamples=n_resamples, seed=seed,
                           confidence=confidence, label=label, permutation=permutation,
                           seeds_a=[r.record.seed for r in runs_a],
                           seeds_b=[r.record.seed for r in runs_b])

    seeds_b = {run.record.seed: run for run in side_b}
    pairs = [run for run in side_a if run.record.seed in seeds_b] if per_seed else []
    seed_results = [test([run], [seeds_b[run.record.seed]], f"seed {run.record.seed}")
                    for run in pairs]
    pooled = test(side_a, side_b, "pooled")
    ra, rb = reference.record, side_b[0].record
    label_a, label_b = encoder_label(ra.encoder), encoder_label(rb.encoder)
    if ra.z_dim != rb.z_dim or label_a == label_b:
        label_a, label_b = f"{label_a} z{ra.z_dim}", f"{label_b} z{rb.z_dim}"
    return Comparison(
        encoder_a=ra.encoder, encoder_b=rb.encoder, label_a=label_a, label_b=label_b,
        z_a=ra.z_dim, z_b=rb.z_dim, task=ra.task, metric=ra.metric["name"],
        lower_is_better=ra.lower_is_better, probe=probe, n_items=pooled.n_items,
        n_groups=pooled.n_groups, resampling="items" if groups is None else "groups",
        per_seed=seed_results, pooled=pooled, n_resamples=n_resamples, seed=seed,
        confidence=confidence, records_a=[r.source for r in side_a],
        records_b=[r.source for r in side_b],
        still_improving_a=[r.record.seed for r in side_a if r.record.still_improving],
        still_improving_b=[r.record.seed for r in side_b if r.record.still_improving])


def _side(runs: list[LoadedRun], name: str) -> list[LoadedRun]:
    """One encoder at one z, one record per seed, sorted by seed."""
    if not runs:
        raise ConfigError(f"Side {name} of the comparison has no records.",
                          "Give at least one record of each encoder.")
    cells = sorted({(r.record.encoder, r.record.z_dim) for r in runs})
    if len(cells) > 1:
        listed = ", ".join(f"{e} z{z}" for e, z in cells)
        raise ConfigError(f"Side {name} mixes encoders or z sizes ({listed}).",
                          "Each side is one encoder at one z; give one record per seed.")
    seeds = [r.record.seed for r in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"Side {name} has several records of seed(s) "
                          f"{', '.join(map(str, repeated))} ({cells[0][0]} z{cells[0][1]}).",
                          "Give one record per seed (the newest, usually).")
    return sorted(runs, key=lambda r: r.record.seed)


def check_comparable(a: LoadedRun, b: LoadedRun) -> None:
    """Refuse, in one line, two runs whose test items cannot be paired.

    Raises:
        ConfigError: different tasks, metrics or protocols.
        DataError: different data, a missing sidecar, different test items, labels or groups.
    """
    ra, rb = a.record, b.record
    names = f"{a.source} and {b.source}"
    if ra.task != rb.task:
        raise ConfigError(f"Cannot compare {names}: they are records of different tasks "
                          f"({ra.task} vs {rb.task}).", "Compare records of one task.")
    if ra.metric.get("name") != rb.metric.get("name"):
        raise ConfigError(f"Cannot compare {names}: different metrics "
                          f"({ra.metric.get('name')} vs {rb.metric.get('name')}).",
                          "Compare records made by the same task version.")
    data_a, data_b = ra.fingerprints["data"], rb.fingerprints["data"]
    if data_a != data_b:
        raise DataError(f"Cannot compare {names}: they were scored on different test data "
                        f"(data fingerprints {data_a[:12]} vs {data_b[:12]}; presets "
                        f"{ra.preset} vs {rb.preset}).",
                        "Compare records made with the same preset and data seed, or rerun "
                        "one of them on the other's data.")
    if ra.protocol_id != rb.protocol_id:
        raise ConfigError(f"Cannot compare {names}: they were made under different protocols "
                          f"(protocol {ra.protocol_id[:12]}, preset {ra.preset}, "
                          f"{ra.embench_version} vs protocol {rb.protocol_id[:12]}, preset "
                          f"{rb.preset}, {rb.embench_version}: budgets, probes or splits "
                          "differ).", "Rerun one of them with the other's preset and version.")
    pa, pb = _require_sidecar(a), _require_sidecar(b)
    for run, pred in ((a, pa), (b, pb)):
        if pred.data_fingerprint != run.record.fingerprints["data"]:
            raise DataError(f"The predictions sidecar of {run.source} belongs to other data "
                            f"({pred.data_fingerprint[:12]}, the record's is "
                            f"{run.record.fingerprints['data'][:12]}).",
                            "Rerun the record with this version to rewrite both.")
    order_a = np.argsort(pa.items, kind="stable")
    order_b = np.argsort(pb.items, kind="stable")
    if not np.array_equal(pa.items[order_a], pb.items[order_b]):
        raise DataError(f"Cannot compare {names}: their sidecars hold different test items "
                        f"({len(pa.items)} vs {len(pb.items)} items, not the same indices).",
                        "Compare records of the same test split (same data and preset).")
    if not np.array_equal(pa.y_true[order_a], pb.y_true[order_b]):
        raise DataError(f"Cannot compare {names}: the same test items have different labels "
                        "in their sidecars.", "Rerun the records on the same data.")
    if (pa.groups is None) != (pb.groups is None) or (
            pa.groups is not None and not np.array_equal(pa.groups[order_a],
                                                         pb.groups[order_b])):
        raise DataError(f"Cannot compare {names}: their sidecars group the test items "
                        "differently.", "Rerun the records with the same version.")


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def format_value(metric: str, value: float) -> str:
    """A metric value: accuracy in percent, other metrics with two decimals."""
    return f"{100 * value:.1f}%" if metric == "accuracy" else f"{value:.2f}"


def format_diff(metric: str, value: float, unit: bool = True) -> str:
    """A difference with its sign and unit (percentage points for accuracy, px for error_px)."""
    sign = "−" if value < 0 else "+" if value > 0 else ""
    if metric == "accuracy":
        return f"{sign}{abs(100 * value):.1f}" + (" pp" if unit else "")
    suffix = " px" if unit and metric.endswith("_px") else ""
    return f"{sign}{abs(value):.2f}{suffix}"


def format_ratio(result: PairedResult) -> str:
    """``0.28 [0.25, 0.31]`` (``–`` where B is 0)."""
    if result.ratio is None:
        return "–"
    if result.ratio_low is None or result.ratio_high is None:
        return f"{result.ratio:.2f}"
    return f"{result.ratio:.2f} [{result.ratio_low:.2f}, {result.ratio_high:.2f}]"


def format_p(p_value: float | None, prefix: bool = True) -> str:
    """``p < 0.001`` or ``p = 0.034``; without ``prefix``, ``< 0.001`` or ``0.034``."""
    if p_value is None:
        return "p –" if prefix else "–"
    if p_value < 0.001:
        return "p < 0.001" if prefix else "< 0.001"
    return f"p = {p_value:.3f}" if prefix else f"{p_value:.3f}"


