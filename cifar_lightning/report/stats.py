"""Statistics over seeds: mean, sample std and t confidence interval of a group; Welch's t-test
between groups with Holm's correction over the pairs compared.

A group of n runs differing only in the seed is treated as n independent draws; the interval
and the test assume roughly normal per-run figures, which holds better for accuracies of many
test images than for tiny test sets. With n < 2 there is no spread to estimate: std, interval
and tests are None.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation (ddof=1)
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.ci_high is None or self.mean is None else self.ci_high - self.mean


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """n, mean, sample std and the t-based confidence interval of the mean:
    mean ± t_{(1+confidence)/2, n-1} · std / sqrt(n)."""
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = statistics.stdev(values)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) of equal means.

    None when a group has fewer than two values, or when neither varies (the test statistic is
    then undefined or infinite: two seeds landing on the same accuracy say nothing about how
    far another seed could land).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-identical values: precision notes
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values, in their given order.

    The i-th smallest (i = 1..m) becomes max over j <= i of min(1, (m - j + 1) · p_(j)):
    monotone in the raw p's and at most 1. Controls the family-wise error rate.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metric: str
    diff: float  # mean(a) - mean(b)
    p: float | None  # Welch, two-sided
    p_holm: float | None  # Holm-adjusted over the pairs of this metric that were tested
    note: str = ""  # why p is None


def pairwise(groups: Mapping[str, Sequence[float]], metric: str) -> list[Comparison]:
    """Every pair of groups with values, in the mapping's order, Holm-corrected over the pairs
    that could be tested."""
    labels = [g for g, values in groups.items() if len(values) > 0]
    pairs = []
    for a, b in combinations(labels, 2):
        va, vb = groups[a], groups[b]
        p = welch_p(va, vb)
        note = "" if p is not None else ("n < 2" if min(len(va), len(vb)) < 2 else "no variance")
        pairs.append((a, b, statistics.fmean(va) - statistics.fmean(vb), p, note))
    tested = [i for i, pair in enumerate(pairs) if pair[3] is not None]
    adjusted = dict(zip(tested, holm([pairs[i][3] for i in tested]), strict=True))
    return [
        Comparison(a, b, metric, diff, p, adjusted.get(i), note)
        for i, (a, b, diff, p, note) in enumerate(pairs)
    ]
