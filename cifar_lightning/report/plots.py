"""The report's figures: learning curves and the per-class heatmap, one entry per group."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar_lightning.fileio import atomic_write
from cifar_lightning.report import groups as grouping_rules
from cifar_lightning.report.groups import Grouping
from cifar_lightning.report.runs import Run, selection_key
from cifar_lightning.report.summary import PerClass


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    _plt().close(fig)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_curves(grouping: Grouping, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, runs) in enumerate(grouping.groups.items()):
        members = [r for r in runs if r.ok]
        for ax, metric in zip(axes, ("train/loss", "val/acc"), strict=True):
            epochs = sorted({e for r in members for e in r.curves.get(metric, {})})
            if not epochs:
                continue
            stats = [_mean_std([r.curves[metric][e] for r in members
                                if e in r.curves.get(metric, {})]) for e in epochs]  # fmt: skip
            mean = [m for m, _ in stats]
            ax.plot(epochs, mean, color=f"C{i}", label=label)
            ax.fill_between(epochs, [m - s for m, s in stats], [m + s for m, s in stats],
                            color=f"C{i}", alpha=0.2)  # fmt: skip
    for ax, title in zip(axes, ("train loss", "val accuracy"), strict=True):
        ax.set(xlabel="epoch", title=f"{title} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, title=grouping.column if grouping.chosen else None)
    fig.tight_layout()
    _save(fig, path)


def plot_heatmap(per_class: PerClass, path: Path) -> bool:
    """Per-class test accuracy, mean over each group's tested runs. False (nothing written)
    when no run was tested."""
    if not per_class.means:
        return False
    plt = _plt()
    labels, classes = list(per_class.means), per_class.names
    data = [per_class.means[g] for g in labels]
    # Wide enough for the group labels on the y axis as well as one column per class.
    width = 1.0 * len(classes) + 2.5 + 0.075 * max(len(g) for g in labels)
    fig, ax = plt.subplots(figsize=(width, 0.5 * len(labels) + 1.8))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 else "white")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title("per-class test accuracy % (mean over seeds)")
    fig.tight_layout()
    _save(fig, path)
    return True


def _swept_value(run: Run, keys: list[str]) -> float | None:
    """The first of keys that the run has (overridden, else in its saved config), as a number
    (None: none of them, or not a number)."""
    for key in keys:
        value = run.value(key)
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return None
    return None


@dataclass
class Versus:
    """Validation accuracy against a swept number: series -> x -> the runs' values."""

    keys: list[str]  # the swept keys; each run's x is the first of them it has
    others: list[str]  # the --group-by keys that name a series
    metric: str  # the validation figure (runs.selection_key)
    series: dict[str, dict[float, list[float]]]


def versus_points(grouping: Grouping, keys: list[str]) -> Versus:
    """The figure's points: one series per setting of the --group-by keys other than `keys`,
    every complete run with a validation figure and a positive x a point."""
    series: dict[str, dict[float, list[float]]] = {}
    others = [k for k in grouping.keys if k not in keys]
    metric = selection_key([r for runs in grouping.groups.values() for r in runs])
    for runs in grouping.groups.values():
        for run in runs:
            x, y = _swept_value(run, keys), run.metric(metric) if run.ok else None
            if x is None or y is None or x <= 0:
                continue
            name = grouping_rules.label(run, others, True) if others else "all runs"
            series.setdefault(name, {}).setdefault(x, []).append(y)
    return Versus(keys, others, metric, series)


def plot_versus(v: Versus, path: Path) -> None:
    """Validation accuracy against the swept number, log x axis: a line through the mean over
    seeds at each value, every run a dot."""
    keys, others, metric, series = v.keys, v.others, v.metric, v.series
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (name, points) in enumerate(sorted(series.items())):
        xs = sorted(points)
        ax.plot(xs, [100 * statistics.fmean(points[x]) for x in xs], "-o", color=f"C{i}",
                label=name)  # fmt: skip
        for x in xs:
            ax.scatter([x] * len(points[x]), [100 * y for y in points[x]], color=f"C{i}",
                       s=12, alpha=0.5)  # fmt: skip
    ax.set_xscale("log")
    ax.set(
        xlabel=" or ".join(keys) + " (the first one a run has)",
        ylabel=f"{metric} %",
        title="validation accuracy (mean over seeds)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title=" / ".join(others) or None)
    fig.tight_layout()
    _save(fig, path)
