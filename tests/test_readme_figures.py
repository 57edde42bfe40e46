"""The README's figures that come from committed result files are those files' figures. Each
table below is recomputed from docs/ and benchmarks/results/ with the report tool's own
statistics and formatting, and compared with the README cell by cell; a figure edited by hand
fails (the last test shows it)."""

from __future__ import annotations

import json
import re
import statistics

import pytest
from scipy import stats

from cifar_lightning.report import selection
from cifar_lightning.report.groups import group_runs
from cifar_lightning.report.runs import find_runs
from cifar_lightning.report.summary import compare, summarise
from cifar_lightning.report.tables import cell, difference_cell, p_value
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
STUDY = [REPO / "docs/optimizer_study/runs" / name
         for name in ("finals", "finals_a2s", "finals_s45", "finals_a2s_s45")]  # fmt: skip
FAST_CPU_V1 = [
    REPO / f"benchmarks/results/time_to_accuracy_fast_cpu_seed{s}.json" for s in (0, 1, 2)
]
SELECTION_2 = [
    REPO / "docs/fast_cpu/runs/selection-2",
    REPO / "docs/fast_cpu/runs/selection-2-retime",
]
METRIC_NAMES = {"test acc": "test_acc", "gap": "gap", "val acc": "val_acc"}


def table(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with `header`, as cells
    (bold marks and unicode minus signs normalised away)."""
    lines = text.splitlines()
    [start] = [i for i, line in enumerate(lines) if line.startswith(header)]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("**", "").replace("−", "-") for c in line.strip("|").split("|")]
        rows.append(cells)
    return rows


def mismatches(readme: str) -> list[str]:
    """Every README cell below that differs from the committed files' figure."""
    bad: list[str] = []

    def check(where: str, shown: str, expected: str) -> None:
        if shown != expected:
            bad.append(f"{where}: README {shown!r}, results {expected!r}")

    grouping = group_runs(find_runs(STUDY), ["optimizer"])
    groups = {g.label: g for g in summarise(grouping, target=0.0)}
    for row in table(readme, "| optimizer (lr) | test acc % |"):
        g = groups[row[0].split()[0]]
        for shown, metric in zip(row[1:4], ("test_acc", "train_acc_clean", "gap"), strict=True):
            check(f"study {g.label} {metric}", shown, cell(g.metrics[metric], g.runs))

    by_family = {
        family: compare(grouping, holm_over=family) for family in ("metric", "test_acc,gap")
    }
    families = {f: {(c.a, c.b, c.metric): c for c in cs} for f, cs in by_family.items()}
    for row in table(readme, "| A − B | metric |"):
        a, b = (x.strip() for x in row[0].split(" - "))
        key = (a, b, METRIC_NAMES[row[1]])
        c = families["metric"][key]
        where = f"study {a} - {b} {row[1]}"
        check(where, row[2], difference_cell(c.result).replace("−", "-"))
        check(where + " p", row[3], p_value(c.p))
        check(where + " Holm (metric)", row[4], p_value(c.p_holm))
        check(where + " Holm (test+gap)", row[5], p_value(families["test_acc,gap"][key].p_holm))

    runs = [json.loads(p.read_text()) for p in FAST_CPU_V1]
    [acc_row, time_row] = table(readme, "| fast_cpu_v1 (9 epochs, 50,000 training images) |")
    accs = [100 * r["final_test_acc"] for r in runs]
    half = stats.t.ppf(0.975, len(accs) - 1) * statistics.stdev(accs) / len(accs) ** 0.5
    for seed, (shown, acc) in enumerate(zip(acc_row[1:4], accs, strict=True)):
        check(f"fast_cpu_v1 seed {seed} test acc", shown, f"{acc:.2f}")
    check("fast_cpu_v1 mean test acc", acc_row[4], f"{statistics.fmean(accs):.2f} ± {half:.2f}")
    times = [r["on_clock_s"] for r in runs]
    for seed, (shown, t) in enumerate(zip(time_row[1:4], times, strict=True)):
        check(f"fast_cpu_v1 seed {seed} time", shown, f"{t:.1f}")
    mean = statistics.fmean(times)
    check("fast_cpu_v1 mean time", time_row[4], f"{mean:.1f} ({mean / 60:.1f} min)")

    # Selection 2's confirmation, by docs/fast_cpu/selection-2.md's rule.
    decision = selection.decide(selection.collect(SELECTION_2), "v1", ["S8", "S2"],
                                [1, 2, 3, 4, 5], 0.30, 0.05, 0.03)  # fmt: skip
    ref = decision["reference"]
    [v1_row, *finalist_rows] = table(readme, "| candidate | training FLOPs (x v1) |")
    check("selection 2 v1 val acc", v1_row[2], f"{ref['val_acc']:.2f}")
    check("selection 2 v1 fit", v1_row[5], f"{ref['fit_seconds']:.0f}")
    for row, r in zip(finalist_rows, decision["finalists"], strict=True):
        name = row[0].split(":")[0]
        check(f"selection 2 {name} is {r['name']}", name, r["name"])
        check(f"selection 2 {name} FLOPs", row[1], f"{r['cost'] / ref['cost']:.2f}")
        check(f"selection 2 {name} val acc", row[2], f"{r['val_acc']:.2f}")
        diff = f"{r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        check(f"selection 2 {name} difference", row[3], diff)
        check(f"selection 2 {name} decision", row[4],
              f"{'yes' if r['rejected'] else 'no'} ({r['p_holm']:.3f})")  # fmt: skip
        check(f"selection 2 {name} fit", row[5], f"{r['fit_seconds']:.0f}")
    check("selection 2 choice", "fast_cpu_v1 stays" if decision["choice"] == "v1" else "?",
          "fast_cpu_v1 stays" if "**fast_cpu_v1 stays**" in readme else "not said")  # fmt: skip
    return bad


def test_readme_figures_are_the_committed_results():
    assert mismatches(README) == []


@pytest.mark.parametrize(
    ("shown", "edited"),
    [("| 76.93 ± 0.28 |", "| 76.95 ± 0.28 |"),  # a study group's test accuracy
     ("| 0.0019 | **0.0087** |", "| 0.0019 | **0.0088** |"),  # a Holm p
     ("| 90.45 | 90.49 |", "| 90.45 | 90.50 |"),  # a fast_cpu_v1 seed
     ("| 88.93 |", "| 88.95 |")],  # a selection-2 finalist's mean
)  # fmt: skip
def test_a_figure_edited_by_hand_is_caught(shown: str, edited: str):
    assert README.count(shown) == 1
    [problem] = mismatches(README.replace(shown, edited))
    assert re.search(r"README '.*', results '.*'", problem)
