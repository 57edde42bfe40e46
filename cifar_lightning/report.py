"""Summarise runs into a report: python -m cifar_lightning.report PATH [PATH ...]

PATH is a multirun folder or any folder of runs (the first PATH receives the report). Reads only
the outputs contract of train.py: `.hydra/` configs, `results.json` and `metrics.csv`. Writes
`report.md`, `summary.csv`, `curves.png`, `per_class_heatmap.png` and
`best_confusion_matrix.png`, and prints the table. Runs without results.json are listed as
failed or incomplete, never dropped silently.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar_lightning.errors import UserError
from cifar_lightning.fileio import atomic_write
from cifar_lightning.results import RESULTS_NAME, read_overrides

# Overrides that never define a group: the seed is what a group averages over; the rest are paths.
NOT_GROUPING = {"seed", "data.root", "data.num_workers", "ckpt_path"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    results: dict[str, Any] | None
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> epoch -> value
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.results is not None


def _overrides(run_dir: Path) -> dict[str, str]:
    items = read_overrides(run_dir)
    return dict(item.split("=", 1) for item in items if "=" in item and not item.startswith("~"))


def _curves(metrics_csv: Path) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    if not metrics_csv.is_file():
        return curves
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for key in ("train/loss", "train/acc", "val/acc", "val/loss"):
                if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                    curves[key][int(row["epoch"]) + 1] = float(row[key])
    return curves


def _failure_reason(run_dir: Path) -> str:
    for log in run_dir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "error:" in line:
                return line.split("error:", 1)[1].strip()
    return "no results.json (failed or still running)"


def find_runs(paths: list[Path]) -> list[Run]:
    runs = []
    for root in paths:
        for hydra_dir in sorted(root.glob("**/.hydra")):
            run_dir = hydra_dir.parent
            if not (hydra_dir / "overrides.yaml").is_file():
                continue
            results_file = run_dir / RESULTS_NAME
            results, problem = None, ""
            if results_file.is_file():
                try:
                    results = json.loads(results_file.read_text())
                except json.JSONDecodeError as err:
                    problem = f"unreadable results.json ({err})"
            else:
                problem = _failure_reason(run_dir)
            runs.append(Run(run_dir, _overrides(run_dir), results,
                            _curves(run_dir / "metrics.csv"), problem))  # fmt: skip
    return runs


def group_key(runs: list[Run]) -> list[str]:
    """The swept keys: overrides whose value differs between runs (the seed excluded)."""
    keys = {k for r in runs for k in r.overrides if k not in NOT_GROUPING}
    return sorted(k for k in keys if len({r.overrides.get(k) for r in runs}) > 1)


def _label(run: Run, keys: list[str]) -> str:
    return ",".join(f"{k}={run.overrides.get(k, '-')}" for k in keys) or "all runs"


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _first_epoch_reaching(run: Run, target: float) -> int | None:
    return next((e for e, v in sorted(run.curves.get("val/acc", {}).items()) if v >= target), None)


def summarise(runs: list[Run], target: float) -> tuple[list[str], list[dict[str, Any]]]:
    keys = group_key(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[_label(run, keys)].append(run)
    rows = []
    for label, members in sorted(groups.items()):
        done = [r for r in members if r.ok]
        res = [r.results for r in done]
        test = [x["test_acc"] for x in res]
        train = [x["train_acc"] for x in res if x.get("train_acc") is not None]
        gap = [x["train_acc"] - x["test_acc"] for x in res if x.get("train_acc") is not None]
        val = [x["best_val_acc"] for x in res if x.get("best_val_acc") is not None]
        fit = [x["fit_seconds"] for x in res if x.get("fit_seconds") is not None]
        reach = [_first_epoch_reaching(r, target) for r in done]
        reached = [e for e in reach if e is not None]
        rows.append({
            "group": label,
            "runs": len(done),
            "failed": len(members) - len(done),
            "test_acc_mean": _mean_std(test)[0], "test_acc_std": _mean_std(test)[1],
            "train_acc_mean": _mean_std(train)[0],
            "gap_mean": _mean_std(gap)[0], "gap_std": _mean_std(gap)[1],
            "best_val_acc_mean": _mean_std(val)[0], "best_val_acc_std": _mean_std(val)[1],
            "epochs_to_target": statistics.fmean(reached) if reached else math.nan,
            "reached_target": f"{len(reached)}/{len(done)}",
            "fit_seconds_mean": _mean_std(fit)[0],
        })  # fmt: skip
    return keys, rows


def _pct(x: float, std: float | None = None) -> str:
    if math.isnan(x):
        return "—"
    return f"{100 * x:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def markdown_table(rows: list[dict[str, Any]], target: float) -> str:
    head = (f"| group | runs | test acc % | train acc % | gap (train−test) pp | best val acc % | "
            f"epochs to val {100 * target:.0f}% | fit s |")  # fmt: skip
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        runs = f"{r['runs']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        epochs = "—" if math.isnan(r["epochs_to_target"]) else f"{r['epochs_to_target']:.1f}"
        fit = "—" if math.isnan(r["fit_seconds_mean"]) else f"{r['fit_seconds_mean']:.0f}"
        lines.append(
            f"| {r['group']} | {runs} | {_pct(r['test_acc_mean'], r['test_acc_std'])} | "
            f"{_pct(r['train_acc_mean'])} | {_pct(r['gap_mean'], r['gap_std'])} | "
            f"{_pct(r['best_val_acc_mean'], r['best_val_acc_std'])} | "
            f"{epochs} ({r['reached_target']}) | {fit} |"
        )
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    _plt().close(fig)


def plot_curves(runs: list[Run], keys: list[str], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.ok:
            groups[_label(run, keys)].append(run)
    for i, (label, members) in enumerate(sorted(groups.items())):
        for ax, metric in zip(axes, ("train/loss", "val/acc"), strict=True):
            epochs = sorted({e for r in members for e in r.curves.get(metric, {})})
            if not epochs:
                continue
            stats = [_mean_std([r.curves[metric][e] for r in members
                                if e in r.curves.get(metric, {})]) for e in epochs]  # fmt: skip
            mean = [m for m, _ in stats]
            lo = [m - s for m, s in stats]
            hi = [m + s for m, s in stats]
            ax.plot(epochs, mean, color=f"C{i}", label=label)
            ax.fill_between(epochs, lo, hi, color=f"C{i}", alpha=0.2)
    for ax, title in zip(axes, ("train loss", "val accuracy"), strict=True):
        ax.set(xlabel="epoch", title=f"{title} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_heatmap(runs: list[Run], keys: list[str], path: Path) -> None:
    plt = _plt()
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        if run.ok:
            groups[_label(run, keys)].append(run.results["per_class_acc"])
    if not groups:
        return
    labels = sorted(groups)
    classes = list(groups[labels[0]][0])
    data = [[statistics.fmean(pc[c] for pc in groups[g]) for c in classes] for g in labels]
    fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 2, 0.5 * len(labels) + 1.8))
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


def _best_run(runs: list[Run]) -> Run | None:
    # Chosen on validation accuracy where there is one: the test set selects nothing.
    done = [r for r in runs if r.ok]
    if not done:
        return None
    return max(done, key=lambda r: (r.results.get("best_val_acc") or -1, r.results["test_acc"]))


def _rel(path: Path, base: Path) -> Path:
    return path.relative_to(base) if path.is_relative_to(base) else path


def write_report(paths: list[Path], target: float = 0.6) -> str:
    out = paths[0]
    runs = find_runs(paths)
    if not runs:
        raise UserError(f"no runs (folders with .hydra/overrides.yaml) under "
                         f"{', '.join(map(str, paths))}. Pass a multirun folder, e.g. "
                         f"outputs/multirun/<date>.")  # fmt: skip
    keys, rows = summarise(runs, target)
    table = markdown_table(rows, target)

    summary = io.StringIO()
    writer = csv.DictWriter(summary, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "summary.csv", lambda f: f.write(summary.getvalue().encode()))
    plot_curves(runs, keys, out / "curves.png")
    plot_heatmap(runs, keys, out / "per_class_heatmap.png")
    best = _best_run(runs)
    if best is not None and (best.path / "confusion_matrix.png").is_file():
        shutil.copyfile(best.path / "confusion_matrix.png", out / "best_confusion_matrix.png")

    bad = [r for r in runs if not r.ok]
    lines = [
        "# Run report", "",
        f"{sum(r.ok for r in runs)} complete runs, {len(bad)} failed or incomplete; "
        f"grouped by {', '.join(keys) or '(nothing swept)'}, mean ± std over seeds.", "",
        table, "",
        "![learning curves](curves.png)", "",
        "![per-class test accuracy](per_class_heatmap.png)", "",
    ]  # fmt: skip
    if best is not None:
        lines += [f"Confusion matrix of the best run by validation accuracy "
                  f"(`{_rel(best.path, out)}`"
                  f", test acc {_pct(best.results['test_acc'])} %):", "",
                  "![confusion matrix](best_confusion_matrix.png)", ""]  # fmt: skip
    lines += ["## Failed or incomplete runs", ""]
    lines += [f"- `{_rel(r.path, out)}`: {r.problem}" for r in bad] or ["none"]
    report = "\n".join(lines) + "\n"
    atomic_write(out / "report.md", lambda f: f.write(report.encode()))
    return table + ("" if not bad else f"\n{len(bad)} failed or incomplete run(s): see report.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cifar_lightning.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, help="multirun folder(s) or run folders")
    parser.add_argument(
        "--target",
        type=float,
        default=0.6,
        help="val accuracy (0..1) whose first epoch the table reports",
    )
    args = parser.parse_args(argv)
    for p in args.paths:
        if not p.is_dir():
            print(f"error: {p} is not a folder. Pass a multirun folder such as "
                  f"outputs/multirun/<date>.", file=sys.stderr)  # fmt: skip
            return 2
    try:
        print(write_report(args.paths, args.target))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\nwrote {args.paths[0] / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
