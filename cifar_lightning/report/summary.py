"""The figures of the report: per-group statistics, pairwise comparisons and each run's test
interval, before formatting."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from cifar_lightning.errors import UserError
from cifar_lightning.report import testset
from cifar_lightning.report.groups import Grouping
from cifar_lightning.report.runs import METRICS, Run
from cifar_lightning.report.stats import Difference, Summary, describe, holm, paired, welch, wilson

COMPARED = ("val_acc", "test_acc", "gap")  # the metrics tested pairwise
HOLM_OVER = ("metric", "all")  # --holm-over's words; a comma list of COMPARED names also works


@dataclass
class GroupSummary:
    label: str
    runs: int  # complete runs (with results.json)
    failed: int
    metrics: dict[str, Summary]  # METRICS -> statistics over the runs that have the figure
    train_acc_final: float | None  # mean last-epoch training accuracy (under augmentation)
    # Mean over runs of the last epoch's running training loss (under augmentation) and of its
    # relative change from the epoch before (-0.01: it still fell by 1 %), over train_loss_n runs.
    # Near 0 says the loss stopped falling, which a rate decaying to zero also causes by itself.
    train_loss_final: float | None
    train_loss_last_change: float | None
    train_loss_n: int
    epochs_to_target: float | None  # mean first epoch reaching the target, over runs reaching it
    reached: int  # runs reaching the target
    fit_seconds: float | None


def values(runs: list[Run], metric: str) -> list[float]:
    """The metric of each complete run that has it."""
    found = (r.metric(metric) for r in runs if r.ok)
    return [v for v in found if v is not None]


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def first_epoch_reaching(run: Run, target: float) -> int | None:
    return next((e for e, v in sorted(run.curves.get("val/acc", {}).items()) if v >= target), None)


def last_loss_change(run: Run) -> tuple[float, float] | None:
    """The last epoch's training loss and its change relative to the epoch before; None without
    two consecutive finite figures (a diverged run has no meaningful change)."""
    losses = sorted(run.curves.get("train/loss", {}).items())
    if len(losses) < 2:
        return None
    (e0, before), (e1, last) = losses[-2:]
    if e1 - e0 != 1 or not (math.isfinite(before) and math.isfinite(last)) or before == 0:
        return None
    return last, last / before - 1


def summarise(grouping: Grouping, target: float) -> list[GroupSummary]:
    rows = []
    for label, members in grouping.groups.items():
        done = [r for r in members if r.ok]
        reached = [e for e in (first_epoch_reaching(r, target) for r in done) if e is not None]
        ends = [e for e in map(last_loss_change, done) if e is not None]
        rows.append(
            GroupSummary(
                label=label,
                runs=len(done),
                failed=len(members) - len(done),
                metrics={m: describe(values(members, m)) for m in METRICS},
                train_acc_final=_mean(values(members, "train_acc")),
                train_loss_final=_mean([loss for loss, _ in ends]),
                train_loss_last_change=_mean([change for _, change in ends]),
                train_loss_n=len(ends),
                epochs_to_target=_mean([float(e) for e in reached]),
                reached=len(reached),
                fit_seconds=_mean(values(members, "fit_seconds")),
            )
        )
    return rows


@dataclass
class PerClass:
    """Per-class test accuracy of each group with tested runs, for the table and the heatmap."""

    names: list[str]  # every class any tested run reports, in first-seen order
    means: dict[str, list[float]]  # group -> mean test accuracy per class (nan: no figure)


def per_class_means(grouping: Grouping) -> PerClass:
    """Per-class test accuracy, mean over each group's tested runs; groups without one left out."""
    tested: dict[str, list[dict[str, float]]] = {}
    for label, runs in grouping.groups.items():
        found = [r.results["per_class_acc"] for r in runs
                 if r.ok and isinstance(r.results.get("per_class_acc"), dict)
                 and r.results["per_class_acc"]]  # fmt: skip
        if found:
            tested[label] = found
    names = list(dict.fromkeys(c for runs in tested.values() for pc in runs for c in pc))

    def mean(runs: list[dict[str, float]], c: str) -> float:
        xs = [pc[c] for pc in runs if isinstance(pc.get(c), float | int) and math.isfinite(pc[c])]
        return statistics.fmean(xs) if xs else math.nan

    return PerClass(names, {g: [mean(runs, c) for c in names] for g, runs in tested.items()})


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metric: str
    result: Difference  # mean(a) − mean(b), its interval and p (paired or Welch)
    family: tuple[str, ...]  # the metrics whose pairs Holm corrects over together
    p_holm: float | None  # Holm-adjusted over the family's tested pairs

    @property
    def p(self) -> float | None:
        return self.result.p


def seed_of(run: Run) -> int | None:
    seed = run.results.get("seed") if run.results is not None else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def by_seed(runs: list[Run], metric: str) -> dict[int, float] | None:
    """The metric of each complete run that has it, by the seed the run used (results.json's
    `seed`); None when a run records no seed or two runs share one (no unique twin)."""
    found: dict[int, float] = {}
    for r in runs:
        value = r.metric(metric)
        if value is None:  # also a run without results.json
            continue
        seed = seed_of(r)
        if seed is None or seed in found:
            return None
        found[seed] = value
    return found


def twins(a: list[Run], b: list[Run], metric: str) -> tuple[list[Run], list[Run]] | None:
    """The runs of a and b with the figure, seed by seed, when every seed of one group has its
    twin in the other (at least two pairs; the other group's extra seeds are left out); None
    when the groups do not pair."""
    sa, sb = by_seed(a, metric), by_seed(b, metric)
    if sa is None or sb is None or not (sa.keys() <= sb.keys() or sb.keys() <= sa.keys()):
        return None
    seeds = sorted(sa.keys() & sb.keys())
    if len(seeds) < 2:
        return None
    ra = {seed_of(r): r for r in a if r.metric(metric) is not None}
    rb = {seed_of(r): r for r in b if r.metric(metric) is not None}
    return [ra[s] for s in seeds], [rb[s] for s in seeds]


def difference(a: list[Run], b: list[Run], metric: str) -> Difference:
    """Paired over seeds when the groups pair (twins), else Welch's test over all runs."""
    pairs = twins(a, b, metric)
    if pairs is not None:
        return paired(values(pairs[0], metric), values(pairs[1], metric))
    return welch(values(a, metric), values(b, metric))


def holm_families(holm_over: str, metrics: tuple[str, ...] = COMPARED) -> list[tuple[str, ...]]:
    """The families Holm corrects over: `metric`, each metric's pairs apart; `all`, every
    metric's pairs together; `test_acc,gap`, those metrics' pairs together, any other apart."""
    if holm_over == "metric":
        return [(m,) for m in metrics]
    if holm_over == "all":
        return [metrics]
    chosen = tuple(dict.fromkeys(k.strip() for k in holm_over.split(",") if k.strip()))
    unknown = [k for k in chosen if k not in metrics]
    if unknown or not chosen:
        raise UserError(f"--holm-over {holm_over}: give metric, all, or a comma list of "
                        f"{', '.join(metrics)}.")  # fmt: skip
    return [chosen, *((m,) for m in metrics if m not in chosen)]


def compare(
    grouping: Grouping, metrics: tuple[str, ...] = COMPARED, holm_over: str = "metric"
) -> list[Comparison]:
    """Every two groups with figures, per metric, Holm-corrected within each family."""
    found: list[tuple[str, str, str, Difference]] = []
    for metric in metrics:
        labels = [g for g, rs in grouping.groups.items() if values(rs, metric)]
        for a, b in combinations(labels, 2):
            found.append((a, b, metric, difference(grouping.groups[a], grouping.groups[b], metric)))
    out = []
    for family in holm_families(holm_over, metrics):
        members = [f for f in found if f[2] in family]
        raw = {i: f[3].p for i, f in enumerate(members) if f[3].p is not None}
        adjusted = dict(zip(raw, holm(list(raw.values())), strict=True))
        out += [Comparison(a, b, m, d, family, adjusted.get(i))
                for i, (a, b, m, d) in enumerate(members)]  # fmt: skip
    order = {m: i for i, m in enumerate(metrics)}
    return sorted(out, key=lambda c: order[c.metric])  # metric by metric, as found


@dataclass(frozen=True)
class RunInterval:
    """One tested run's test accuracy with the Wilson interval of its k of n images."""

    group: str
    path: Path
    seed: int | None
    acc: float
    n: int | None  # test images counted; None: unknown
    ci_low: float | None
    ci_high: float | None
    note: str = ""  # why there is no interval


def run_interval(group: str, run: Run) -> RunInterval | None:
    """None for an untested run. The count k = round(acc · n) must be a whole number of the n
    images (within float32 rounding): otherwise n is not what the accuracy counts."""
    acc = run.metric("test_acc")
    if acc is None:
        return None
    seed, n = seed_of(run), run.test_images
    if n is None:
        return RunInterval(group, run.path, seed, acc, None, None, None, "test images unknown")
    k = round(acc * n)
    if abs(acc * n - k) > max(0.01, 1e-6 * n) or not 0 <= k <= n:
        return RunInterval(group, run.path, seed, acc, n, None, None,
                            f"test acc is not a count of {n} images")  # fmt: skip
    low, high = wilson(k, n)
    return RunInterval(group, run.path, seed, acc, n, low, high)


def run_intervals(grouping: Grouping) -> list[RunInterval]:
    """The Wilson interval of every tested run, group by group."""
    found = (run_interval(g, r) for g, rs in grouping.groups.items() for r in rs if r.ok)
    return [t for t in found if t is not None]


@dataclass(frozen=True)
class SamplingError:
    """The test set's sampling error in one test-accuracy comparison, beside the seed error
    (cifar_lightning/report/testset.py): from every run's per-image correctness when all have
    it (`components`), else the worst-case bound from the error rates (`bound`)."""

    a: str
    b: str
    diff: float  # as the comparison's: mean(a) − mean(b) over the runs it used
    images: int  # the test images each run scored
    method: str  # "per-image" or "bound"
    se_seeds: float | None  # the seed test's standard error (None: no seed test)
    se_images: float  # the test set's: estimated (per-image) or its worst case (bound)
    se_both: float | None  # both at once (bound: √(se_seeds² + bound²))
    note: str = ""  # why the bound: which runs kept no per-image correctness

    @property
    def z_images(self) -> float | None:
        return None if not self.se_images else self.diff / self.se_images

    @property
    def z_both(self) -> float | None:
        return None if not self.se_both else self.diff / self.se_both


def sampling_error(
    a: list[Run], b: list[Run], labels: tuple[str, str], result: Difference
) -> SamplingError | None:
    """None when the runs' test images are unknown or differ in number (then they were not
    scored on the same images, or it cannot be told)."""
    pairs = twins(a, b, "test_acc")
    tested = [[r for r in rs if r.metric("test_acc") is not None] for rs in (a, b)]
    ra, rb = pairs if pairs is not None else tested
    sizes = {r.test_images for r in (*ra, *rb)}
    if len(sizes) != 1 or None in sizes or not ra or not rb:
        return None
    [n] = sizes
    missing = sum(r.correct is None for r in (*ra, *rb))
    if not missing and min(len(ra), len(rb)) >= 2:
        tables = [np.stack([r.correct for r in rs]) for rs in (ra, rb)]
        c = testset.components(*tables, paired=pairs is not None)
        return SamplingError(*labels, c.diff, n, "per-image", math.sqrt(c.seeds), c.se_images,
                             c.se_both)  # fmt: skip
    mean_a, mean_b = (statistics.fmean(values(rs, "test_acc")) for rs in (ra, rb))
    worst = testset.bound(mean_a, mean_b, n)
    both = None if result.se is None else math.hypot(result.se, worst)
    note = (f"{missing} of {len(ra) + len(rb)} runs keep no per-image correctness" if missing
            else "fewer than two runs on a side")  # fmt: skip
    return SamplingError(*labels, mean_a - mean_b, n, "bound", result.se, worst, both, note)


def sampling_errors(grouping: Grouping, comparisons: list[Comparison]) -> list[SamplingError]:
    """The test-set error of every test-accuracy comparison whose runs' test images are known."""
    found = (sampling_error(grouping.groups[c.a], grouping.groups[c.b], (c.a, c.b), c.result)
             for c in comparisons if c.metric == "test_acc")  # fmt: skip
    return [e for e in found if e is not None]
