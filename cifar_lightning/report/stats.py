"""Statistics over seeds: mean, sample std and t confidence interval of a group; the difference
of two groups with its interval and p-value (paired t-test over shared seeds, else Welch's);
Holm's correction over a family of comparisons; the Wilson interval of one run's accuracy; a
one-sided non-inferiority test with a margin (paired, or Welch's for independent groups).

A group of n runs differing only in the seed is treated as n draws of the training randomness;
the intervals and tests assume roughly normal per-run figures, which holds better for
accuracies of many test images than for tiny test sets. With n < 2 there is no spread to
estimate: std, interval and tests are None.

Why paired where runs share seeds: runs of two groups with the same seed share their
initialisation and data order (pipeline.py seeds before building), so the two groups are not
independent samples, which Welch's test assumes. Their figures may move together or against
each other from seed to seed (in the optimizer study's pairs the correlation runs from −0.93
to +0.91): Welch's test then overstates the noise of the difference when they move together
and understates it when they move apart. The paired test looks only at the per-seed
differences, whose spread is the noise of the difference whatever that correlation is, so it
is right either way; paired() reports the correlation (r) for the reader to see which case
holds.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

CONFIDENCE = 0.95
PAIRED = "paired"
WELCH = "Welch"


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


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with its confidence interval and the two-sided p-value of no
    difference; interval and p are None where the test is undefined (note says why)."""

    test: str  # PAIRED or WELCH
    pairs: int  # paired: the seeds paired on; Welch: 0
    diff: float
    ci_low: float | None
    ci_high: float | None
    p: float | None
    note: str = ""
    se: float | None = None  # the standard error of diff the t-test used
    r: float | None = None  # paired: Pearson's correlation of the pairs (None without spread)
    df: float | None = None  # the t distribution's degrees of freedom (Welch-Satterthwaite's)


def _untestable(test: str, pairs: int, diff: float, note: str) -> Difference:
    return Difference(test, pairs, diff, None, None, None, note)


def _result(
    test: str, pairs: int, diff: float, result: Any, confidence: float, r: float | None = None
) -> Difference:
    """A scipy t-test result as a Difference: its p, its interval and standard error."""
    p = float(result.pvalue)
    if math.isnan(p):
        return _untestable(test, pairs, diff, "no variance")
    ci = result.confidence_interval(confidence)
    se = abs(diff / float(result.statistic)) if result.statistic else None
    df = float(result.df)
    return Difference(test, pairs, diff, float(ci.low), float(ci.high), p, se=se, r=r, df=df)


def correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson's r of paired figures; None with fewer than three pairs (two points always lie
    on a line: r = ±1 says nothing) or when either side does not vary."""
    if len(a) < 3 or _flat(a, [*a, *b]) or _flat(b, [*a, *b]):
        return None
    return statistics.correlation(a, b)


# Spread below this, relative to the figures' size, is rounding, not variation: accuracies come
# as float32 (a 12-image gap on every seed differs by ~1e-8 from seed to seed, and t would be
# 1e8). Far below any real difference: one test image of 10,000 is 1e-4.
FLAT = 1e-6


def _flat(values: Sequence[float], scale: Sequence[float]) -> bool:
    return max(values) - min(values) <= FLAT * max(1.0, *(abs(v) for v in scale))


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """Paired t-test of a[i] − b[i] (a[i] and b[i]: one seed's runs), scipy's ttest_rel; the
    interval is mean(d) ± t_{(1+confidence)/2, n-1} · std(d) / sqrt(n).

    No test with fewer than two pairs, or when every pair differs by the same amount (the
    differences have no spread: t is infinite, and two seeds agreeing says nothing of a third).
    """
    if len(a) != len(b):
        raise ValueError(f"paired: {len(a)} and {len(b)} values are not pairs")
    n = len(a)
    if n == 0:
        raise ValueError("paired: no pairs")
    d = [x - y for x, y in zip(a, b, strict=True)]
    diff = statistics.fmean(d)
    if n < 2:
        return _untestable(PAIRED, n, diff, "n < 2")
    if _flat(d, [*a, *b]):
        return _untestable(PAIRED, n, diff, "no variance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-identical values: precision notes
        result = stats.ttest_rel(a, b)
    return _result(PAIRED, n, diff, result, confidence, correlation(a, b))


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """Welch's t-test (unequal variances) of equal means, scipy's ttest_ind(equal_var=False);
    the interval is diff ± t_{(1+confidence)/2, df} · se with se² = s_a²/n_a + s_b²/n_b and the
    Welch-Satterthwaite df = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1)).

    No test when a group has fewer than two values, or when neither varies (t is then
    undefined or infinite).
    """
    if not a or not b:
        raise ValueError("welch: a group without values has no mean")
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return _untestable(WELCH, 0, diff, "n < 2")
    if _flat(a, [*a, *b]) and _flat(b, [*a, *b]):
        return _untestable(WELCH, 0, diff, "no variance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return _result(WELCH, 0, diff, result, confidence)


@dataclass(frozen=True)
class NonInferiority:
    """One-sided test of H0: mean(a − b) <= −margin against H1: mean(a − b) > −margin, paired
    (pairs > 0) or Welch's over two independent groups (pairs = 0)."""

    pairs: int
    diff: float  # mean(a − b)
    ci_low: float | None  # the two-sided interval of mean(a − b) at the given confidence
    ci_high: float | None
    t: float | None
    p: float | None  # one-sided; None where there is no test (n < 2 or no spread)


def noninferiority(
    a: Sequence[float], b: Sequence[float], margin: float, confidence: float = CONFIDENCE
) -> NonInferiority:
    """Is a no worse than b by more than `margin`? a[i] and b[i] share seed i: the test is a
    one-sample t-test of d_i + margin > 0 on the differences d_i = a[i] − b[i],
    t = (mean(d) + margin) / (std(d) / sqrt(n)), p = P(T_{n-1} >= t)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"noninferiority: {len(a)} and {len(b)} values are not pairs")
    if margin < 0:
        raise ValueError(f"noninferiority: the margin is a distance, got {margin}")
    d = [x - y for x, y in zip(a, b, strict=True)]
    n, diff = len(d), statistics.fmean(d)
    if n < 2 or _flat(d, [*a, *b]):
        return NonInferiority(n, diff, None, None, None, None)
    se = statistics.stdev(d) / math.sqrt(n)
    t = (diff + margin) / se
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * se
    return NonInferiority(n, diff, diff - half, diff + half, t, float(stats.t.sf(t, n - 1)))


def welch_noninferiority(
    a: Sequence[float], b: Sequence[float], margin: float, confidence: float = CONFIDENCE
) -> NonInferiority:
    """Is a no worse than b by more than `margin`, a and b independent runs (another program,
    seeds that do not pair)? Welch's one-sided test: t = (mean(a) − mean(b) + margin) / se on
    welch()'s se and Welch-Satterthwaite df, p = P(T_df >= t); the interval is welch()'s."""
    if margin < 0:
        raise ValueError(f"noninferiority: the margin is a distance, got {margin}")
    d = welch(a, b, confidence)
    if d.p is None or d.se is None or d.df is None:
        return NonInferiority(0, d.diff, None, None, None, None)
    t = (d.diff + margin) / d.se
    return NonInferiority(0, d.diff, d.ci_low, d.ci_high, t, float(stats.t.sf(t, d.df)))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None where welch() has no test."""
    return welch(a, b).p if a and b else None


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values, in their given order.

    The i-th smallest (i = 1..m) becomes max over j <= i of min(1, (m - j + 1) · p_(j)):
    monotone in the raw p's and at most 1. Controls the family-wise error rate over the m.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def wilson(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of `correct` out of `n` test images (scipy's
    binomtest): the test set's own sampling error, which a seed interval leaves out."""
    ci = stats.binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)
