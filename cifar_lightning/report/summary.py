"""The figures of the report: per-group statistics and pairwise comparisons, before formatting."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from cifar_lightning.report.groups import Grouping
from cifar_lightning.report.runs import METRICS, Run
from cifar_lightning.report.stats import Comparison, Summary, describe, pairwise

COMPARED = ("val_acc", "test_acc", "gap")  # the metrics tested pairwise


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


def compare(grouping: Grouping, metrics: tuple[str, ...] = COMPARED) -> list[Comparison]:
    """Welch tests between every two groups, Holm-corrected within each metric."""
    found = []
    for metric in metrics:
        found += pairwise({g: values(rs, metric) for g, rs in grouping.groups.items()}, metric)
    return found
