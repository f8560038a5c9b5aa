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
second formula to drift from the task's; that their mean reproduces the record's test metric
is checked for every record. The intervals reflect the sampling of test items for the trained
encoders at hand, not the spread of training seeds: the per-seed rows show that.

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
from embench.paper import encoder_label
from embench.records import load_records
from embench.registry import load_task
from embench.results import (
    Predictions,
    RunRecord,
    load_record,
    read_predictions,
    sidecar_path,
)

#: How many resampled values one chunk of the bootstrap holds at most (bounds its memory).
_CHUNK_VALUES = 4_000_000
#: Relative tolerance between the mean of the per-item values and the record's test metric.
_RTOL = 1e-9


@dataclass
class LoadedRun:
    """A record and its per-item predictions (``None`` when it has no sidecar).

    Attributes:
        record: the run's record.
        predictions: its sidecar's contents, or ``None`` (a record made before schema 2, or a
            sidecar that is not beside it).
        source: where it came from (the record file), for messages.
    """

    record: RunRecord
    predictions: Predictions | None
    source: str
    #: per-item values by probe, computed once (the board compares one run several times)
    values: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


def load_run(path: str | Path) -> LoadedRun:
    """Read a record file and, when it is there, the predictions sidecar beside it.

    Raises:
        DataError: if the record or an existing sidecar cannot be read.
    """
    path = Path(path)
    record = load_record(path)
    sidecar = sidecar_path(path)
    predictions = read_predictions(sidecar) if sidecar.exists() else None
    return LoadedRun(record, predictions, str(path))


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

    Each value is the task's ``score`` on that item alone, so their mean is the record's test
    metric for every metric that is a mean over items (error in pixels, accuracy).

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
    task = _task(record.task)
    y_true, y_pred = predictions.y_true, predictions.predicted[probe]
    values = np.array([task.score(y_true[i:i + 1], y_pred[i:i + 1])
                       for i in range(len(y_true))], dtype=np.float64)
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
# The paired test
# --------------------------------------------------------------------------------------------


@dataclass
class PairedResult:
    """One paired comparison A vs B on the same items.

    Attributes:
        label: ``"seed 0"`` (one record each) or ``"pooled"`` (per-item values averaged over
            each encoder's seeds).
        seeds_a, seeds_b: the seeds on each side.
        mean_a, mean_b: each encoder's metric (the mean per-item value).
        diff, ci_low, ci_high: A − B and its confidence interval (bootstrap percentiles).
        ratio, ratio_low, ratio_high: A / B and its interval (``None`` where B is 0).
        p_value: two-sided, paired sign-flip permutation test (exact when all sign patterns
            fit in the resamples); ``None`` when it was not run.
        n_items, n_groups: test items, and the units resampled (groups, or items).
    """

    label: str
    seeds_a: list[int]
    seeds_b: list[int]
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    ratio: float | None
    ratio_low: float | None
    ratio_high: float | None
    p_value: float | None
    n_items: int
    n_groups: int

    @property
    def significant(self) -> bool:
        """Whether the interval of A − B excludes 0 (never with one resampled unit).

        With a single group (a smoke test split of one rollout) every resample is that group,
        so the interval collapses to a point that says nothing about chance.
        """
        return self.n_groups >= 2 and not self.ci_low <= 0.0 <= self.ci_high


def paired_test(values_a: np.ndarray, values_b: np.ndarray, groups: np.ndarray | None = None,
                *, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95,
                label: str = "", seeds_a: Sequence[int] = (), seeds_b: Sequence[int] = (),
                permutation: bool = True) -> PairedResult:
    """Paired bootstrap interval and sign-flip p-value of mean(A) − mean(B) and mean(A)/mean(B).

    Args:
        values_a, values_b: ``(N,)`` per-item values of the same items in the same order.
        groups: ``(N,)`` group of each item; whole groups are resampled (cluster bootstrap) and
            sign-flipped together. ``None``: every item is its own group.
        n_resamples: bootstrap resamples, and random sign patterns of the permutation test.
        seed: seeds ``np.random.default_rng``; a fixed seed gives the same result every time.
        confidence: of the intervals (percentile bootstrap).
        label, seeds_a, seeds_b: copied into the result.
        permutation: also run the permutation test (``False``: ``p_value`` is ``None``; the
            board's tie marks need only the interval).

    Returns:
        The :class:`PairedResult`.

    Raises:
        ValueError: if the arrays disagree in length or are empty.

    Example:
        >>> paired_test(np.array([3.0, 4, 5, 6]), np.array([1.0, 2, 3, 4])).diff
        2.0
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_test needs two (N,) arrays, N > 0; got {a.shape}, {b.shape}.")
    if groups is None:
        codes = np.arange(len(a))
    else:
        if len(groups) != len(a):
            raise ValueError(f"groups has {len(groups)} entries for {len(a)} items.")
        codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_groups = int(codes.max()) + 1
    sum_a = np.bincount(codes, weights=a, minlength=n_groups)
    sum_b = np.bincount(codes, weights=b, minlength=n_groups)
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    diffs, ratios = _cluster_bootstrap(sum_a, sum_b, counts, n_resamples, rng)
    tail = 100 * (1 - confidence) / 2
    ci_low, ci_high = (float(v) for v in np.percentile(diffs, [tail, 100 - tail]))
    mean_a, mean_b = float(a.mean()), float(b.mean())
    ratio = mean_a / mean_b if mean_b != 0 else None
    ratio_low = ratio_high = None
    if ratio is not None and np.isfinite(ratios).all():
        ratio_low, ratio_high = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    p_value = _sign_flip_p(sum_a - sum_b, len(a), n_resamples, rng) if permutation else None
    return PairedResult(label, list(seeds_a), list(seeds_b), mean_a, mean_b, mean_a - mean_b,
                        ci_low, ci_high, ratio, ratio_low, ratio_high, p_value, len(a),
                        n_groups)


def _cluster_bootstrap(sum_a: np.ndarray, sum_b: np.ndarray, counts: np.ndarray,
                       n_resamples: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Resample groups with replacement; per resample, mean(A) − mean(B) and mean(A)/mean(B)."""
    n_groups = len(counts)
    diffs = np.empty(n_resamples)
    ratios = np.empty(n_resamples)
    singletons = bool((counts == 1).all())  # no groups: every resample has n_groups items
    chunk = max(1, _CHUNK_VALUES // n_groups)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        index = rng.integers(0, n_groups, size=(stop - start, n_groups), dtype=np.int32)
        items = float(n_groups) if singletons else counts[index].sum(axis=1)
        mean_a = sum_a[index].sum(axis=1) / items
        mean_b = sum_b[index].sum(axis=1) / items
        diffs[start:stop] = mean_a - mean_b
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start:stop] = mean_a / mean_b
    return diffs, ratios


def _sign_flip_p(group_diffs: np.ndarray, n_items: int, n_resamples: int,
                 rng: np.random.Generator) -> float:
    """Two-sided p of mean(A − B) under random sign flips of whole groups.

    Exact (every sign pattern) when there are at most ``n_resamples`` patterns; otherwise
    Monte Carlo with the observed pattern counted, ``(1 + hits) / (1 + n_resamples)``.
    """
    n_groups = len(group_diffs)
    total = group_diffs.sum()
    observed = abs(total) / n_items
    # sums of the same numbers in another order may differ in the last bits
    tolerance = 1e-9 * np.abs(group_diffs).sum() / n_items
    if n_groups < 63 and 2 ** n_groups <= n_resamples:
        patterns = (np.arange(2 ** n_groups)[:, None] >> np.arange(n_groups)) & 1
        flipped = np.abs((1.0 - 2.0 * patterns) @ group_diffs) / n_items
        return float(np.mean(flipped >= observed - tolerance))
    hits = 0
    chunk = max(1, _CHUNK_VALUES // n_groups)
    for start in range(0, n_resamples, chunk):
        rows = min(n_resamples, start + chunk) - start
        bits = np.unpackbits(rng.integers(0, 256, size=(rows, (n_groups + 7) // 8),
                                          dtype=np.uint8), axis=1)[:, :n_groups]
        # a flipped group turns +d into -d: the sum loses 2d
        flipped = np.abs(total - 2.0 * (bits @ group_diffs)) / n_items
        hits += int(np.count_nonzero(flipped >= observed - tolerance))
    return (1 + hits) / (1 + n_resamples)


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


# --------------------------------------------------------------------------------------------
# What the command line names
# --------------------------------------------------------------------------------------------


def is_record_file(argument: str) -> bool:
    """Whether a command-line argument names a record file (else an encoder name)."""
    return argument.endswith(".json") or Path(argument).is_file()


def resolve_sides(arguments: Sequence[str], *, directory: Path, task: str | None = None,
                  z: int | None = None, preset: str | None = None
                  ) -> tuple[list[LoadedRun], list[LoadedRun]]:
    """Turn record files and encoder names into the two sides of a comparison.

    Record files are grouped by (encoder, z): one side each. An encoder name stands for its
    records of ``task`` under ``directory`` (the newest per seed), narrowed by ``z`` and
    ``preset``; if the sides then share several (z, protocol) combinations, or none, the
    choice is refused rather than guessed.

    Args:
        arguments: record files (``*.json``) and encoder names; two sides in all.
        directory: where names are looked up (searched recursively for records).
        task, z, preset: narrow the records names stand for (``task`` is required with names).

    Returns:
        The runs of side A and of side B, in the order the arguments named them.

    Raises:
        ConfigError: not exactly two sides; a name without ``task``; no single (z, protocol)
            both sides share.
        DataError: a record file that cannot be read; a name without records.
    """
    # each side: a label, and its candidate (record, path) pairs; files are read once here
    labels: list[str] = []
    candidates: list[list[tuple[RunRecord, Path]]] = []
    named: list[bool] = []
    names = [a for a in dict.fromkeys(arguments) if not is_record_file(a)]
    if names and task is None:
        raise ConfigError(f"--task is needed to find the records of {', '.join(names)}.",
                          "Add --task TASK, or pass record files.")
    available = _records_under(directory) if names else []
    for argument in dict.fromkeys(arguments):
        if is_record_file(argument):
            record = load_record(argument)
            label = f"{record.encoder} z{record.z_dim}"
            if label not in labels:
                labels.append(label)
                candidates.append([])
                named.append(False)
            candidates[labels.index(label)].append((record, Path(argument)))
            continue
        matches = [(r, p) for r, p in available if r.encoder == argument and r.task == task
                   and (z is None or r.z_dim == z) and (preset is None or r.preset == preset)]
        if not matches:
            others = sorted({r.encoder for r, _ in available if r.task == task})
            narrowed = "".join(f" {k} {v}" for k, v in (("z", z), ("preset", preset))
                               if v is not None)
            raise DataError(f"No records of {argument} on {task}{narrowed} under {directory} "
                            f"(encoders with {task} records there: {', '.join(others) or 'none'}).",
                            f"Run `embench run -e {argument} -t {task}`, point --board or "
                            "--home at the records, or pass record files.")
        labels.append(argument)
        candidates.append(matches)
        named.append(True)
    if len(labels) != 2:
        raise ConfigError(f"compare needs exactly two encoders, got {len(labels)}: "
                          f"{', '.join(labels) or 'none'}.",
                          "Give two encoder names (with --task), or the record files of two "
                          "encoders (one per seed).")
    if any(named):
        keys = [{(r.protocol_id, r.z_dim) for r, _ in side} for side in candidates]
        common = keys[0] & keys[1]
        if len(common) != 1:
            def listed(options: set[tuple[str, int]]) -> str:
                return ", ".join(f"z{zz} protocol {proto[:12]}" for proto, zz in sorted(options))

            if not common:
                each = "; ".join(f"{label}: {listed(k)}"
                                 for label, k in zip(labels, keys, strict=True))
                raise ConfigError(f"{labels[0]} and {labels[1]} have no records of one z and "
                                  f"protocol in common on {task} ({each}).",
                                  "Choose other records, or rerun one encoder like the other.")
            raise ConfigError(f"{labels[0]} and {labels[1]} have records of several z and "
                              f"protocols in common on {task} ({listed(common)}).",
                              "Choose one with --z or --preset, or pass record files.")
        for i, side in enumerate(candidates):
            if named[i]:
                candidates[i] = _newest_per_seed([(r, p) for r, p in side
                                                  if (r.protocol_id, r.z_dim) in common])
    side_a, side_b = ([load_run(path) for _, path in side] for side in candidates)
    return side_a, side_b


def _records_under(directory: Path) -> list[tuple[RunRecord, Path]]:
    """Every valid record under ``directory`` with its path (validated, de-duplicated)."""
    if not directory.exists():
        return []
    loaded = load_records([directory])
    return list(zip(loaded.records, loaded.paths, strict=True))


def _newest_per_seed(runs: list[tuple[RunRecord, Path]]) -> list[tuple[RunRecord, Path]]:
    """One record per seed, the newest (like the board, which supersedes older ones)."""
    newest: dict[int, tuple[RunRecord, Path]] = {}
    for record, path in runs:
        if record.seed not in newest or record.created > newest[record.seed][0].created:
            newest[record.seed] = (record, path)
    return [newest[seed] for seed in sorted(newest)]
