"""report.md, summary.csv and the figures, written into the first folder given."""

from __future__ import annotations

import shutil
from pathlib import Path

from cifar_lightning.errors import UserError
from cifar_lightning.fileio import atomic_write
from cifar_lightning.report import origin, plots, tables
from cifar_lightning.report.groups import group_runs, split_keys
from cifar_lightning.report.runs import Run, best_run, find_runs, selection_key
from cifar_lightning.report.summary import compare, per_class_means, summarise

VERSUS = "val_acc_versus.png"
NO_VALIDATION = "no validation split: no best run is picked"
PAIRWISE_NOTE = (
    "Welch's t-test (unequal variances, two-sided) of equal means between every two groups, "
    "on the per-run figures; Holm's step-down correction over the pairs of each metric (Holm p "
    "controls the family-wise error rate at the level you read it against). A comparison with "
    "fewer than two runs on a side has no test: such comparisons are counted, not listed."
)


def _rel(path: Path, base: Path) -> Path:
    return path.relative_to(base) if path.is_relative_to(base) else path


def _best_section(best: Run | None, runs: list[Run], out: Path) -> list[str]:
    target = out / "best_confusion_matrix.png"
    if best is None:
        target.unlink(missing_ok=True)  # a previous report's, of a run no longer picked
        reason = NO_VALIDATION if any(r.ok for r in runs) else "no complete run: none is picked"
        return [f"{reason} (the test set selects nothing).", ""]
    key = selection_key(runs)
    val = tables.pct(best.metric(key))
    test = best.metric("test_acc")
    lines = [f"Picked by validation accuracy only: `{_rel(best.path, out)}` ({tables.NAMES[key]} "
             f"{val} %, test acc " + ("not tested" if test is None else f"{tables.pct(test)} %")
             + ")."]  # fmt: skip
    if (best.path / "confusion_matrix.png").is_file():
        shutil.copyfile(best.path / "confusion_matrix.png", target)
        lines += ["", "![confusion matrix of the best run](best_confusion_matrix.png)"]
    else:
        target.unlink(missing_ok=True)
    return lines + [""]


def write_report(
    paths: list[Path], target: float = 0.6, group_by: list[str] | None = None,
    versus: list[str] | None = None,
) -> str:  # fmt: skip
    """Write the report into paths[0]; return what the console shows. versus: the swept keys
    (e.g. optimizer.lr) of the validation-accuracy figure, val_acc_versus.png."""
    out = paths[0]
    runs = find_runs(paths)
    if not runs:
        raise UserError(f"no runs (folders with .hydra/overrides.yaml) under "
                        f"{', '.join(map(str, paths))}. Pass a multirun folder, e.g. "
                        f"outputs/multirun/<date>.")  # fmt: skip
    grouping = group_runs(runs, group_by)
    versus_keys = split_keys(versus)
    points = plots.versus_points(grouping, versus_keys) if versus_keys else None
    if points is not None and not points.series:  # before anything is written
        raise UserError(f"--versus {' '.join(versus_keys)}: no complete run with a validation "
                        f"figure has a positive number under this key.")  # fmt: skip
    rows = summarise(grouping, target)
    table = tables.group_table(rows, grouping.column, target)
    comparisons = compare(grouping)
    pairs = (tables.pairwise_table(comparisons) if comparisons
             else "Fewer than two groups with figures: nothing to compare.")  # fmt: skip
    warnings = origin.warnings(runs)

    atomic_write(out / "summary.csv", lambda f: f.write(tables.summary_csv(rows).encode()))
    plots.plot_curves(grouping, out / "curves.png")
    per_class = per_class_means(grouping)
    heatmap = plots.plot_heatmap(per_class, out / "per_class_heatmap.png")
    if not heatmap:
        (out / "per_class_heatmap.png").unlink(missing_ok=True)  # no tested run: none to show

    done = [r for r in runs if r.ok]
    untested = sum(r.metric("test_acc") is None for r in done)
    bad = [r for r in runs if not r.ok]
    lines = ["# Run report", ""]
    lines += [line for w in warnings for line in (w, "")]
    lines += [
        f"{len(done)} complete runs" + (f" ({untested} not tested)" if untested else "")
        + f", {len(bad)} failed or incomplete; grouped by {grouping.description}.", "",
        "## Groups", "", tables.LEGEND, "", table, "",
        "## Pairwise comparisons", "", PAIRWISE_NOTE, "", pairs, "",
        "## Learning curves", "", "![learning curves](curves.png)", "",
    ]  # fmt: skip
    if points is not None:
        plots.plot_versus(points, out / VERSUS)
        lines += [f"## Validation accuracy against {' or '.join(versus_keys)}", "",
                  f"![validation accuracy against {versus_keys[0]}]({VERSUS})", ""]  # fmt: skip
    else:
        (out / VERSUS).unlink(missing_ok=True)  # an earlier report's
    if heatmap:
        lines += ["## Per-class test accuracy", "", "Mean over each group's tested runs, %:", "",
                  tables.per_class_table(per_class, grouping.column), "",
                  "![per-class test accuracy](per_class_heatmap.png)", ""]  # fmt: skip
    lines += ["## Best run", ""] + _best_section(best_run(runs), runs, out)
    lines += ["## Provenance", ""] + origin.section(runs) + [""]
    lines += ["## Failed or incomplete runs", ""]
    lines += [f"- `{_rel(r.path, out)}`: {r.problem}" for r in bad] or ["none"]
    report = "\n".join(lines) + "\n"
    atomic_write(out / "report.md", lambda f: f.write(report.encode()))

    console = [*warnings, table, "", pairs]
    if bad:
        console.append(f"\n{len(bad)} failed or incomplete run(s): see report.md")
    return "\n".join(console)
