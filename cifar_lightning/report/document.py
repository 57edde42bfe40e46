"""report.md, summary.csv and the figures, written into the first folder given."""

from __future__ import annotations

import shutil
from pathlib import Path

from cifar_lightning.errors import UserError
from cifar_lightning.fileio import atomic_write
from cifar_lightning.report import origin, plots, tables
from cifar_lightning.report.groups import group_runs, split_keys
from cifar_lightning.report.runs import Run, best_run, find_runs, selection_key
from cifar_lightning.report.stats import CONFIDENCE
from cifar_lightning.report.summary import (
    compare,
    per_class_means,
    run_intervals,
    sampling_errors,
    summarise,
)
from cifar_lightning.results import CORRECT_NAME

VERSUS = "val_acc_versus.png"
NO_VALIDATION = "no validation split: no best run is picked"
PAIRWISE_NOTE = (
    "Between every two groups, per metric: the difference of means (A − B) with its "
    f"{100 * CONFIDENCE:.0f} % confidence interval and the two-sided p of no difference. Runs "
    "of two groups with the same seed share their initialisation and data order, so the groups "
    "are not independent samples, as Welch's test assumes: where every seed of one group has its "
    "twin in the other the test is paired, a t-test on the per-seed differences (over the seeds "
    "both have; the interval is the t interval of the mean difference). Its noise is the spread "
    "of those differences, right whether the two groups' figures move together from seed to "
    "seed (Welch would then overstate the noise) or against each other (Welch would understate "
    "it); r, their correlation over the seeds, says which. Otherwise Welch's t-test (unequal "
    "variances; Welch-Satterthwaite interval). "
    "Holm p: Holm's step-down correction over the family named below the table (it controls "
    "the family-wise error rate at the level you read it against; --holm-over chooses the "
    "family). A comparison with fewer than two runs on a side has no test: such comparisons "
    "are counted, not listed."
)
SAMPLING_NOTE = (
    "The ± of the groups table is over seeds: how far the training randomness moves a run's "
    "figure on this one test set. It does not include the test set's own sampling error: every "
    "seed is scored on the same images, so that error does not average out over seeds, and a "
    "claim that a recipe reaches X % on images of this kind (not only on these) must allow for "
    "both. Per run, the Wilson "
    f"{100 * CONFIDENCE:.0f} % interval of its test accuracy (k of n images correct):"
)
DIFFERENCE_NOTE = (
    "The same error enters a difference between two groups scored on the same test images, and "
    "the pairwise tests above leave it out too. Per test-accuracy comparison: its standard error "
    f"over test images, from every run's per-image correctness ({CORRECT_NAME}; images and "
    "seeds as crossed random effects, the image-by-seed residual counted once) or, where a run "
    "kept none, its worst case for two groups scored on the same n images, √((e_A + e_B) / n) "
    "with e the mean error rates (≤: the true error is smaller unless the groups never fail on "
    "the same image); then with the seed error added (the bound: √(seed SE² + bound²)). z and "
    "p: normal approximation, two-sided."
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
    versus: list[str] | None = None, holm_over: str = "metric", out: Path | None = None,
) -> str:  # fmt: skip
    """Write the report into `out` (default paths[0]); return what the console shows. versus:
    the swept keys (e.g. optimizer.lr) of the validation-accuracy figure, val_acc_versus.png;
    holm_over: the Holm families (summary.holm_families)."""
    out = paths[0] if out is None else out
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
    comparisons = compare(grouping, holm_over=holm_over)
    pairs = (tables.pairwise_table(comparisons) if comparisons
             else "Fewer than two groups with figures: nothing to compare.")  # fmt: skip
    intervals = run_intervals(grouping)
    sampling = ([SAMPLING_NOTE, "", tables.interval_table(intervals, grouping.column, out), "",
                 *tables.sampling_notes(rows, intervals)] if intervals else [])  # fmt: skip
    errors = sampling_errors(grouping, comparisons)
    if errors:
        sampling += ["", DIFFERENCE_NOTE, "", tables.sampling_error_table(errors)]
    warnings = origin.warnings(runs)

    out.mkdir(parents=True, exist_ok=True)
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
        *(["## Test-set sampling error", "", *sampling, ""] if sampling else []),
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

    console = [*warnings, table, "", pairs, *(["", *sampling] if sampling else [])]
    if bad:
        console.append(f"\n{len(bad)} failed or incomplete run(s): see report.md")
    return "\n".join(console)
