"""The report's tables: per-group markdown, pairwise markdown, each run's test interval,
summary.csv."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from cifar_lightning.report.runs import METRICS
from cifar_lightning.report.stats import CONFIDENCE, PAIRED, Difference, Summary
from cifar_lightning.report.summary import (
    Comparison,
    GroupSummary,
    PerClass,
    RunInterval,
    SamplingError,
)
from cifar_lightning.report.testset import two_sided_p

NONE = "–"
NAMES = {
    "val_acc": "val acc",
    "test_acc": "test acc",
    "train_acc_clean": "clean train acc",
    "gap": "gap (clean train − plain test)",
    "best_val_acc": "best val acc",
}
LEGEND = (
    f"Cells: mean ± half-width of the {100 * CONFIDENCE:.0f} % t confidence interval of the "
    "mean over seeds (n − 1 degrees of freedom), in % (gap: percentage points); `± –`: a single "
    "run; (n=k): k runs have the figure. Val acc: the tested checkpoint on the validation "
    "split, with the run's TTA (what selects); best val acc: the best per-epoch figure, no TTA. "
    "Clean train acc: eval-mode accuracy of the tested "
    "checkpoint on a fixed training subset, no augmentation, no TTA. Gap: clean train acc minus "
    "the test accuracy of the same checkpoint without TTA. Last train loss: mean over runs of "
    "the last epoch's running training loss (under augmentation), and the mean relative change "
    "from the epoch before's; near 0 % means the loss stopped falling, which a schedule "
    "decaying the rate to zero also causes by itself."
)


def pct(x: float | None) -> str:
    return NONE if x is None else f"{100 * x:.2f}"


def cell(s: Summary, runs: int) -> str:
    if s.n == 0:
        return NONE
    text = f"{pct(s.mean)} ± " + (NONE if s.half_width is None else f"{100 * s.half_width:.2f}")
    return text + ("" if s.n == runs else f" (n={s.n})")


def p_value(p: float | None, note: str = "") -> str:
    """Two significant figures at least: 0.187, 0.021, 0.0019, 8.4e-04."""
    if p is None:
        return note or NONE
    if p >= 0.01:
        return f"{p:.3f}"
    return f"{p:.4f}" if p >= 0.001 else f"{p:.1e}"


def pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def difference_cell(d: Difference) -> str:
    """`+1.23 [+0.80, +1.66]`: the mean difference and its interval, in percentage points."""
    interval = NONE if d.ci_low is None or d.ci_high is None else f"{pp(d.ci_low)}, {pp(d.ci_high)}"
    return f"{pp(d.diff)} [{interval}]"


def test_cell(d: Difference) -> str:
    return f"paired ({d.pairs} seeds)" if d.test == PAIRED else d.test


def r_cell(d: Difference) -> str:
    """The seed-by-seed correlation of a paired comparison's figures (– for Welch's, or with
    fewer than three pairs)."""
    return NONE if d.r is None else f"{d.r:+.2f}"


def markdown(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header, its rule, one line per row."""
    lines = ["| " + " | ".join(cells) + " |" for cells in (head, *rows)]
    lines.insert(1, "|" + "---|" * len(head))
    return "\n".join(lines)


def group_table(rows: list[GroupSummary], column: str, target: float) -> str:
    head = [column, "n", *(f"{NAMES[m]} {'pp' if m == 'gap' else '%'}" for m in METRICS),
            f"epochs to val {100 * target:.0f}%", "last train loss (change)", "fit s"]  # fmt: skip
    body = []
    for r in rows:
        runs = f"{r.runs}" + (f" (+{r.failed} failed)" if r.failed else "")
        epochs = NONE if r.epochs_to_target is None else f"{r.epochs_to_target:.1f}"
        fit = NONE if r.fit_seconds is None else f"{r.fit_seconds:.0f}"
        loss = NONE
        if r.train_loss_final is not None and r.train_loss_last_change is not None:
            loss = f"{r.train_loss_final:.3f} ({100 * r.train_loss_last_change:+.1f} %)"
            loss += "" if r.train_loss_n == r.runs else f" (n={r.train_loss_n})"
        body.append([r.label, runs, *(cell(r.metrics[m], r.runs) for m in METRICS),
                     f"{epochs} ({r.reached}/{r.runs})", loss, fit])  # fmt: skip
    return markdown(head, body)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def families(comparisons: list[Comparison]) -> str:
    """The Holm families with their counts of tested pairs (`Holm over the 6 pairs of test
    acc`): what the family-wise error rate of a Holm p covers."""
    tested: dict[tuple[str, ...], list[str]] = {}  # family -> the metric of each tested pair
    for c in comparisons:
        tested.setdefault(c.family, []).extend([c.metric] if c.p is not None else [])
    named = [f"Holm over {'the one pair' if len(ms) == 1 else f'the {len(ms)} pairs'} of "
             f"{_listed([NAMES[m] for m in dict.fromkeys(ms)])}"
             for ms in tested.values() if ms]  # fmt: skip
    return "; ".join(named) + "." if named else "No pair has a test: no Holm correction."


def pairwise_table(comparisons: list[Comparison]) -> str:
    """The comparisons that could be tested, with the Holm families; one with fewer than two
    figures on a side is only counted, since a grid of single runs would otherwise fill the
    report with rows that say nothing."""
    shown = [c for c in comparisons if c.result.note != "n < 2"]
    untestable = len(comparisons) - len(shown)
    if not shown:
        return (f"No comparison has two runs or more with the figure on both sides: no test "
                f"({untestable} comparisons, pairs of groups x metrics).")  # fmt: skip
    head = ["group A", "group B", "metric", "test", "r",
            f"A − B pp [{100 * CONFIDENCE:.0f} % CI]", "p", "Holm p"]  # fmt: skip
    table = markdown(head, [[c.a, c.b, NAMES[c.metric], test_cell(c.result), r_cell(c.result),
                             difference_cell(c.result), p_value(c.p, c.result.note),
                             p_value(c.p_holm)] for c in shown])  # fmt: skip
    text = f"{table}\n\n{families(comparisons)}"
    if untestable:
        return (f"{untestable} comparisons with fewer than two runs on a side: no test, "
                f"not listed.\n\n{text}")  # fmt: skip
    return text


def interval_table(intervals: list[RunInterval], column: str, base: Path) -> str:
    """One row per tested run: its test accuracy and the Wilson interval of its k of n."""
    rows = []
    for t in intervals:
        path = t.path.relative_to(base) if t.path.is_relative_to(base) else t.path
        ci = t.note if t.ci_low is None else f"[{pct(t.ci_low)}, {pct(t.ci_high)}]"
        rows.append([t.group, NONE if t.seed is None else str(t.seed), f"`{path}`", pct(t.acc),
                     ci, "unknown" if t.n is None else str(t.n)])  # fmt: skip
    head = [column, "seed", "run", "test acc %", f"Wilson {100 * CONFIDENCE:.0f} % %",
            "test images"]  # fmt: skip
    return markdown(head, rows)


def sampling_notes(rows: list[GroupSummary], intervals: list[RunInterval]) -> list[str]:
    """Per group: its seed interval of test accuracy beside the test set's own sampling error
    (the mean Wilson half-width of its runs), which the seed interval does not include."""
    lines = []
    for r in rows:
        s = r.metrics["test_acc"]
        if s.n == 0:
            continue
        mine = [t for t in intervals if t.group == r.label]
        halves = [(t.ci_high - t.ci_low) / 2 for t in mine
                  if t.ci_low is not None and t.ci_high is not None]  # fmt: skip
        seeds = f"{cell(s, s.n)} % over {s.n} seed" + ("s" if s.n != 1 else "")
        if halves:
            sizes = sorted({t.n for t in mine if t.ci_low is not None})
            err = (f"± {100 * statistics.fmean(halves):.2f} pp per run (Wilson "
                   f"{100 * CONFIDENCE:.0f} %, {'/'.join(map(str, sizes))} images)")  # fmt: skip
        else:
            err = "unknown (no run records how many test images it counted)"
        lines.append(f"- {r.label}: test acc {seeds}; the test set's sampling error, which that "
                     f"interval does not include, is {err}")  # fmt: skip
    return lines


def z_cell(z: float | None, bounded: bool = False) -> str:
    """`z -2.00, p 0.045`: a normal z and its two-sided p; bounded (from an SE at its worst
    case, z is at least that far from 0): `z ≤ -2.00, p ≤ 0.045`."""
    if z is None:
        return NONE
    p = p_value(two_sided_p(z))
    return f"z {'≥' if z >= 0 else '≤'} {z:.2f}, p ≤ {p}" if bounded else f"z {z:.2f}, p {p}"


def sampling_error_table(errors: list[SamplingError]) -> str:
    """Per test-accuracy comparison: the test set's sampling error of the difference (its
    estimate from per-image correctness, or its worst-case bound, ≤), alone and with the seed
    error, each with its z and p."""
    rows = []
    for e in errors:
        bounded = e.method == "bound"
        mark = "≤ " if bounded else ""
        seeds = NONE if e.se_seeds is None else f"{100 * e.se_seeds:.2f}"
        both = NONE if e.se_both is None else f"{mark}{100 * e.se_both:.2f}"
        how = ("per-image correctness" if e.method == "per-image"
               else f"worst-case bound ({e.note})")  # fmt: skip
        rows.append([e.a, e.b, pp(e.diff), str(e.images), f"{mark}{100 * e.se_images:.2f}",
                     z_cell(e.z_images, bounded), seeds, both, z_cell(e.z_both, bounded),
                     how])  # fmt: skip
    head = ["group A", "group B", "test acc A − B pp", "test images", "test-set SE pp",
            "test set alone", "seed SE pp", "both SE pp", "both", "test-set SE from"]  # fmt: skip
    return markdown(head, rows)


def per_class_table(per_class: PerClass, column: str) -> str:
    """Groups as rows, classes as columns: mean test accuracy % over the group's tested runs."""
    rows = [[label, *(NONE if math.isnan(m) else f"{100 * m:.1f}" for m in means)]
            for label, means in per_class.means.items()]  # fmt: skip
    return markdown([column, *per_class.names], rows)


def csv_rows(rows: list[GroupSummary]) -> list[dict[str, Any]]:
    """One flat dict per group, fractions as they are; empty where there is no figure."""
    out = []
    for r in rows:
        row: dict[str, Any] = {"group": r.label, "runs": r.runs, "failed": r.failed}
        for m in METRICS:
            s = r.metrics[m]
            row |= {f"{m}_n": s.n, f"{m}_mean": s.mean, f"{m}_std": s.std,
                    f"{m}_ci_low": s.ci_low, f"{m}_ci_high": s.ci_high}  # fmt: skip
        row |= {
            "train_acc_mean": r.train_acc_final,  # last epoch, under augmentation
            "train_loss_final_mean": r.train_loss_final,
            "train_loss_last_change_mean": r.train_loss_last_change,
            "train_loss_n": r.train_loss_n,
            "epochs_to_target": r.epochs_to_target,
            "reached_target": f"{r.reached}/{r.runs}",
            "fit_seconds_mean": r.fit_seconds,
        }
        out.append({k: "" if v is None else v for k, v in row.items()})
    return out


def summary_csv(rows: list[GroupSummary]) -> str:
    flat = csv_rows(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    return text.getvalue()
