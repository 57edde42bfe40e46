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
from cifar_lightning.report.stats import Difference, describe, paired
from cifar_lightning.report.summary import compare, difference, sampling_errors, summarise
from cifar_lightning.report.tables import cell, difference_cell, p_value, pct, pp, z_cell
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
SELECTION_1 = [
    REPO / "docs/fast_cpu/runs/candidates",
    *(REPO / f"docs/fast_cpu/runs/whiten_bias/wb64.0_seed{s}" for s in (0, 1, 2)),
]
WHITEN_BIAS = REPO / "docs/fast_cpu/runs/whiten_bias"
# The host-work tables (fast94 shrunk to its host work on a CPU, checkouts A and B interleaved):
# file, the table's header, and its rows' phases (time_to_accuracy.py's clock keys).
HOST_PROXY = [
    ("host_proxy_fast94_ab.json", "| phase | A, median s (range, n = 6) |",
     ["data_s", "train_s", "to_test_s", "after_test_s"]),
    ("host_proxy_fast94_ab2.json", "| phase, round 2 | A, median s (range, n = 6) |",
     ["data_s", "train_s", "to_test_s", "after_test_s", "wall_s", "rest_s"]),
    ("host_proxy_fast94_ab3.json", "| phase, round 3 | A, median s (range, n = 6) |",
     ["data_s", "train_s", "to_test_s", "after_test_s", "wall_s", "rest_s"]),
]  # fmt: skip
OPTIMIZERS = {
    "Adam": "adam",
    "AdamW": "adamw",
    "SGD": "sgd_nesterov",
    "adam_to_sgd": "adam_to_sgd",
}


PROXY_ROWS = {"wall_s": "process", "rest_s": "process"}  # else "runs"


def interval(d: Difference) -> str:
    """`−0.25 points [−0.38, −0.12], p = 0.025` as the README's prose writes a difference."""
    cells = [pp(x).replace("-", "−") for x in (d.diff, d.ci_low, d.ci_high)]
    return f"{cells[0]} points [{cells[1]}, {cells[2]}], p = {p_value(d.p)}"


def table(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with `header`, as cells
    (bold marks and unicode minus signs normalised away)."""
    lines = [line.strip() for line in text.splitlines()]  # a table in a list item is indented
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

    # The test set's sampling error of the study's differences: the worst-case bound, alone
    # and with the seed error.
    errors = {(e.a, e.b): e for e in sampling_errors(grouping, by_family["metric"])}
    for row in table(readme, "| A − B | test acc pp | test-set SE pp (worst case) |"):
        e = errors[tuple(x.strip() for x in row[0].split(" - "))]
        where = f"study {row[0]} test-set error"
        check(where + " difference", row[1], pp(e.diff))
        check(where + " SE", row[2], f"≤ {100 * e.se_images:.2f}")
        check(where + " alone", row[3], z_cell(e.z_images, bounded=True))
        check(where + " with seeds", row[4], z_cell(e.z_both, bounded=True))
    # The seed correlation of each pair, as the prose lists it (r, seed-matched test accuracy).
    prose = " ".join(readme.split())
    [listed] = re.findall(r"\(r, seed-matched test accuracy: ([^)]*)\)", prose)
    named = re.findall(r"(\w+)–(\w+) ([+−]\d\.\d\d)", listed)
    tested = {frozenset((c.a, c.b)): c.result.r for c in by_family["metric"]
              if c.metric == "test_acc"}  # fmt: skip
    check("study correlations listed", str(len(named)), str(len(tested)))
    for a, b, shown in named:
        r = tested[frozenset((OPTIMIZERS[a], OPTIMIZERS[b]))]
        check(f"study r {a}-{b}", shown, f"{r:+.2f}".replace("-", "−"))

    # Selection 1, B against A, and the whitening-bias groups: paired over their shared seeds.
    def said(where: str, text: str) -> None:
        check(where, text if text in prose else "(not in the README)", text)

    # The study's prose on the gap and on adam_to_sgd, in points (pp() gives "+0.29" style).
    metric = families["metric"]
    gap = metric[("adam", "sgd_nesterov", "gap")].result
    said("study SGD gap smaller by", f"SGD's gap up to {pp(gap.ci_high)[1:]} points smaller")
    holm_gap = min(c.p_holm for k, c in metric.items() if k[2] == "gap" and c.p_holm is not None)
    said("study smallest gap Holm p", f"smallest Holm p {p_value(holm_gap)} over the 6 gap")
    a2s = metric[("adam", "adam_to_sgd", "test_acc")].result
    said("study adam_to_sgd vs Adam", f"reaches {pp(-a2s.ci_low)} points")

    keys = ["model.widths", "trainer.max_epochs", "module.train_resolution"]
    sel1 = group_runs(find_runs(SELECTION_1), keys).groups
    # Selection 1's table: each candidate's validation accuracy per seed, their mean ± 95 %
    # half-width, and (for the 64/256/256 candidates, selection.flops_cost's table) its cost.
    groups = {
        "A": "[64,256,256] / 9 / [24,24,24,24,24,32]",
        "B": "[64,256,256] / 8 / [32]",
        "C": "[64,256,256] / 8 / [24,24,24,24,32]",
        "D": "[64,192,192] / 10 / [32]",
    }
    for row in table(readme, "| candidate | widths | epochs (at 24x24) |"):
        name = row[0].split(":")[0].strip("*")
        runs = sorted(sel1[groups[name]], key=lambda r: int(r.value("seed")))
        accs = [r.results["val_acc"] for r in runs]
        check(f"selection 1 {name} seeds", row[4], " / ".join(pct(a) for a in accs))
        if len(accs) > 1:
            check(f"selection 1 {name} mean", row[5].strip("*"), cell(describe(accs), len(accs)))
        if name != "D":
            check(f"selection 1 {name} cost", row[3], f"{selection.flops_cost(runs[0]):.2f}")
    b, a = sel1["[64,256,256] / 8 / [32]"], sel1["[64,256,256] / 9 / [24,24,24,24,24,32]"]
    b_vs_a = difference(b, a, "val_acc")
    said("selection 1 B - A", f"B − A is {interval(b_vs_a)} on 1 degree of freedom")
    wb = group_runs(find_runs([WHITEN_BIAS]), ["model.whiten_bias_lr_scale"]).groups
    new_old = difference(wb["64.0"], wb["null"], "val_acc")
    change, p_new_old = interval(new_old).split(", p = ")
    said("whitening bias new - old", f"Difference {change}, paired over seeds 0-2 (each seed's "
         f"two runs share their initialisation and data order), p = {p_new_old};")  # fmt: skip
    check("paired tests", f"{b_vs_a.test}/{new_old.test}", "paired/paired")

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

    # The clock's parts over the three seeds, as the prose under the table gives them.
    def span(values: list[float], digits: int) -> str:
        low, high = (f"{v:.{digits}f}" for v in (min(values), max(values)))
        return low if low == high else f"{low}-{high}"

    on, off = "on_clock", "off_clock"
    parts = [("building ", on, "build_s", 2), ("data ", on, "data_s", 1),
             ("fit set-up ", on, "fit_setup_s", 1), ("the 9 epochs ", on, "train_s", 0),
             ("the tested checkpoint ", on, "to_test_s", 1), ("the TTA test ", on, "test_s", 0),
             ("the config's composition (", off, "config_s", 2),
             ("train.py's work after its test (", off, "after_test_s", 1)]  # fmt: skip
    for words, clock, key, digits in parts:
        said(f"fast_cpu_v1 {key}", f"{words}{span([r[clock][key] for r in runs], digits)} s")

    for name, header, phases in HOST_PROXY:
        ab = json.loads((REPO / "benchmarks/results" / name).read_text())
        for row, phase in zip(table(readme, header), phases, strict=True):
            values = {k: [r[phase] for r in ab[k][PROXY_ROWS.get(phase, "runs")]] for k in "AB"}
            for shown, k in zip(row[1:3], "AB", strict=True):
                v = values[k]
                summary = f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"
                check(f"{name} {phase} {k}", shown, summary)
            d = paired(values["B"], values["A"])
            diff = f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}], p {p_value(d.p)}"
            check(f"{name} {phase} B - A", row[3], diff)

    fab = json.loads((REPO / "benchmarks/results/fit_ab_progress_bar.json").read_text())
    low, high = fab["ci_s"]
    said("progress bar redraws", f"B − A **{fab['diff_s']:+.3f} s [{low:+.3f}, {high:+.3f}]** "
         f"per 475-step fit, p {p_value(fab['p'])}")  # fmt: skip
    ab = json.loads((REPO / "benchmarks/results/host_proxy_fast94_ab2.json").read_text())
    rest = [r["rest_s"] for r in ab["B"]["process"]]  # round 2's paragraph says it
    said("process rest on the CPU", f"on this CPU {statistics.median(rest):.2f} s (median)")

    # data_check.py's figures, warm and from a cold disk (Benchmarks): each part's medians
    # (ranges) of new and old and their ratio, and the paired new − old over its rounds.
    def ab(part: dict) -> dict[str, str]:
        shown = {k: f"{part[k]['median']:.3f}" for k in ("new", "old", "ratio")}
        shown |= {f"{k}_r": f"{part[k]['min']:.3f}-{part[k]['max']:.3f}" for k in shown}
        rounds = part["rounds"]
        d = paired([r["new"] for r in rounds], [r["old"] for r in rounds])
        lo, hi, diff = (f"{v:+.3f}".replace("-", "−") for v in (d.ci_low, d.ci_high, d.diff))
        return {**shown, "diff": f"{diff.lstrip('+')} s [{lo}, {hi}]", "p": p_value(d.p)}

    warm = json.loads((REPO / "benchmarks/results/data_check.json").read_text())
    w, o, r = ab(warm), ab(warm["overlap"]), ab(warm["ready"])
    said(
        "data check warm",
        f"source check keyed **{w['new']} s** ({w['new_r']}) against "
        f"{w['old']} s ({w['old_r']}), new/old **{w['ratio']}** (rounds {w['ratio_r']})",
    )
    said(
        "data check overlap",
        f"overlap {o['new']} s against {o['old']} s, new/old {o['ratio']} ({o['ratio_r']})",
    )
    said(
        "data ready warm",
        f"data ready **{r['new']} s** ({r['new_r']}) against {r['old']} s "
        f"({r['old_r']}), new/old **{r['ratio']}** ({r['ratio_r']}), paired difference "
        f"{r['diff']}, t test p {r['p']}",
    )
    cold = json.loads((REPO / "benchmarks/results/data_check_cold.json").read_text())
    check("data check cold", str(cold["cold"]), "True")
    c, r = ab(cold), ab(cold["ready"])
    said(
        "data check cold",
        f"source check keyed **{c['new']} s** ({c['new_r']}) against "
        f"{c['old']} s ({c['old_r']}) with every file read, new/old **{c['ratio']}** "
        f"({c['ratio_r']}), paired mean difference {c['diff']}, p {c['p']}",
    )
    said(
        "data ready cold",
        f"data ready {r['new']} s ({r['new_r']}) with the load on a thread "
        f"against {r['old']} s ({r['old_r']}) in turn, paired mean difference {r['diff']}, "
        f"p {r['p']}",
    )

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
    # Its prose: per seed, each finalist's loss in points and fit time as a fraction of v1's,
    # and the finalists' mean time ratio.
    scored = selection.collect(SELECTION_2)
    seeds, v1 = [1, 2, 3, 4, 5], scored["v1"]
    losses = [v1[k].val_acc - scored[f][k].val_acc for f in ("S8", "S2") for k in seeds]
    ratios = [scored[f][k].fit_seconds / v1[k].fit_seconds for f in ("S8", "S2") for k in seeds]
    said(
        "selection 2 per-seed loss",
        f"lose {min(losses):.1f}-{max(losses):.1f} points on every seed",
    )
    said("selection 2 per-seed time", f"(per seed {min(ratios):.2f}-{max(ratios):.2f}x)")
    means = [r["fit_seconds"] / ref["fit_seconds"] for r in decision["finalists"]]
    said("selection 2 mean time", f"fit time being {statistics.fmean(means):.2f}x v1's")
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
     ("| 88.93 |", "| 88.95 |"),  # a selection-2 finalist's mean
     ("| ≤ 0.67 | z ≤ −2.01", "| ≤ 0.66 | z ≤ −2.01"),  # a test-set error bound
     ("AdamW–SGD\n−0.93", "AdamW–SGD\n−0.39"),  # a seed correlation
     ("p = 0.025 on 1 degree", "p = 0.022 on 1 degree"),  # selection 1's paired p
     ("[−0.02, +0.13], paired", "[−0.02, +0.15], paired"),  # the whitening bias's interval
     ("lose 1.0-1.9 points", "lose 1.0-1.8 points"),  # selection 2's per-seed loss
     ("being 0.65x v1's", "being 0.60x v1's"),  # selection 2's time ratio
     ("reaches +0.57 points", "reaches +0.50 points"),  # adam_to_sgd against Adam
     ("| 0.017 (0.012-0.020) |", "| 0.015 (0.012-0.020) |"),  # host work, round 2
     ("−0.545 [−0.573, −0.516]", "−0.545 [−0.573, −0.506]"),  # host work, its paired interval
     ("keyed **0.540 s**", "keyed **0.54 s**"),  # data_check.py from a cold disk
     ("| 8 (4) | 6.09 |", "| 8 (4) | 6.08 |"),  # a selection-1 cost
     ("fit set-up 1.2-1.4 s", "fit set-up 1.3-1.4 s")],  # a part of fast_cpu_v1's clock
)  # fmt: skip
def test_a_figure_edited_by_hand_is_caught(shown: str, edited: str):
    assert README.count(shown) == 1
    [problem] = mismatches(README.replace(shown, edited))
    assert re.search(r"README (['\"]).*\1, results (['\"]).*\2$", problem)


def test_the_study_reports_test_set_error_table_is_the_committed_results():
    """docs/optimizer_study/report.md's bound table, recomputed as the README's is."""
    grouping = group_runs(find_runs(STUDY), ["optimizer"])
    errors = {(e.a, e.b): e for e in sampling_errors(grouping, compare(grouping))}
    text = (REPO / "docs/optimizer_study/report.md").read_text()
    rows = table(text, "| A − B | test acc pp | test-set SE pp (worst case) | test set alone |")
    assert len(rows) == len(errors) == 6
    for row in rows:
        e = errors[tuple(x.strip() for x in row[0].split(" - "))]
        assert row[1:] == [pp(e.diff), f"≤ {100 * e.se_images:.2f}",
                           z_cell(e.z_images, bounded=True), f"{100 * e.se_seeds:.2f}",
                           z_cell(e.z_both, bounded=True)], row  # fmt: skip
