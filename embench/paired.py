"""Paired statistics: A vs B on the same items, with groups of correlated items resampled whole.

The difference A − B of the mean, its confidence interval by a (cluster) bootstrap over the
items, the ratio A / B with its interval, and a two-sided p-value from a paired sign-flip
permutation test. Pure numpy on per-item values: :mod:`embench.compare` feeds it records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: How many resampled values one chunk of the bootstrap holds at most (bounds its memory).
_CHUNK_VALUES = 4_000_000


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
