"""A recipe selection's decision and its frontier figure, from the runs' own results.json.

    python -m cifar_lightning.report.selection docs/fast_cpu/runs/selection-2 --reference v1 \\
        --finalists S8 S2 --seeds 1 2 3 4 5 --margin 0.30 --alpha 0.05 \\
        --figure docs/fast_cpu/frontier-2.png --out docs/fast_cpu/decision-2.json

The rule is docs/fast_cpu/selection-2.md's, fixed before its runs. Run folders are named
`<candidate>_seed<S>` (scripts/fast_cpu_selection_2.sh makes them); a name is only a label.
For each finalist F, d_s = val_acc(F, s) − val_acc(reference, s) in percentage points over the
seeds; a paired one-sided t-test of non-inferiority, H0: mean d <= −margin; Holm over the
finalists at familywise alpha. Among the finalists whose H0 is rejected, the one with the lower
mean fit_seconds wins; means closer than --tie (3 %) go to the one with fewer training FLOPs.
Without a rejection the reference stays. Costs in FLOPs need no clock: fastnet 64/256/256's
forward FLOPs per training image summed over the epochs, in units of one 32x32 epoch.

The figure: validation accuracy against fit time for every candidate, one point per run, the
finalists' and the reference's mean over the confirmation seeds marked; runs given to
--untimed (their cores were shared) are drawn against FLOPs only, in the second panel. A run
found twice (the same name and seed in two of the folders, e.g. re-timed alone) must have the
same score; the later folder's time is drawn.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cifar_lightning.errors import UserError
from cifar_lightning.fileio import write_json
from cifar_lightning.report.plots import _plt, _save
from cifar_lightning.report.runs import Run, find_runs
from cifar_lightning.report.stats import holm, noninferiority

NAME = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9]*)_seed(?P<seed>\d+)$")
# fastnet 64/256/256's forward MFLOP per image at each input side (FlopCounterMode; the
# protocol's table; tests/test_selection.py recounts them).
FORWARD_MFLOP = {16: 46.8, 24: 123.2, 32: 236.3}
WIDTHS = "[64,256,256]"


def flops_cost(run: Run) -> float:
    """Training FLOPs in units of one 64/256/256 epoch at 32x32 (the protocol's cost (a))."""
    widths = (run.value("model.widths") or "").replace(" ", "")
    epochs = (run.value("trainer.max_epochs") or "").strip()
    schedule = (run.value("module.train_resolution") or "[32]").replace(" ", "").strip("[]")
    if widths != WIDTHS or not epochs.isdigit() or not re.fullmatch(r"\d+(,\d+)*", schedule):
        raise UserError(
            f"{run.path}: its saved config has no fastnet {WIDTHS} with "
            f"trainer.max_epochs and module.train_resolution: no FLOPs table for it"
        )
    sizes = [int(s) for s in schedule.split(",")]
    if any(s not in FORWARD_MFLOP for s in sizes):
        raise UserError(f"{run.path}: train_resolution {sizes}: no FLOPs for those sizes")
    epochs = int(epochs)
    per_epoch = [sizes[min(e, len(sizes) - 1)] for e in range(epochs)]
    return sum(FORWARD_MFLOP[s] for s in per_epoch) / FORWARD_MFLOP[32]


@dataclass
class Scored:
    name: str
    seed: int
    val_acc: float  # percent
    fit_seconds: float
    cost: float


def collect(paths: list[Path]) -> dict[str, dict[int, Scored]]:
    """candidate -> seed -> its scored run; a folder named otherwise, or without a result, is
    an error that names it (a selection never drops a run silently)."""
    found: dict[str, dict[int, Scored]] = defaultdict(dict)
    for run in find_runs(paths):
        m = NAME.match(run.path.name)
        if not m:
            raise UserError(f"{run.path}: not named <candidate>_seed<S>")
        acc, fit = run.metric("val_acc"), run.metric("fit_seconds")
        if acc is None or fit is None:
            raise UserError(f"{run.path}: no val_acc or fit_seconds ({run.problem or 'none'})")
        name, seed = m["name"], int(m["seed"])
        again = found[name].get(seed)
        if again is not None and again.val_acc != 100 * acc:
            raise UserError(f"{run.path}: a second run of {name} seed {seed} scored "
                            f"{100 * acc:.2f} %, the first {again.val_acc:.2f} %")  # fmt: skip
        # A second run of the same candidate and seed (a re-timing alone on the cores) must
        # score the same; its time replaces the first's (the later folder given wins).
        found[name][seed] = Scored(name, seed, 100 * acc, fit, flops_cost(run))
    if not found:
        raise UserError(f"no runs under {', '.join(map(str, paths))}")
    return dict(found)


def decide(
    runs: dict[str, dict[int, Scored]],
    reference: str,
    finalists: list[str],
    seeds: list[int],
    margin: float,
    alpha: float,
    tie: float,
) -> dict[str, Any]:
    """The rule of the module docstring; every figure it used, and the choice."""
    for name in [reference, *finalists]:
        missing = [s for s in seeds if s not in runs.get(name, {})]
        if missing:
            raise UserError(f"{name}: no run for seed(s) {missing}; the rule needs all {seeds}")

    def means(name: str) -> dict[str, Any]:
        scored = [runs[name][s] for s in seeds]
        return {"name": name, "val_acc": statistics.fmean(r.val_acc for r in scored),
                "fit_seconds": statistics.fmean(r.fit_seconds for r in scored),
                "cost": scored[0].cost}  # fmt: skip

    ref = [runs[reference][s].val_acc for s in seeds]
    rows = []
    for name in finalists:
        test = noninferiority([runs[name][s].val_acc for s in seeds], ref, margin)
        rows.append({**means(name), **asdict(test)})
    adjusted = holm([1.0 if r["p"] is None else r["p"] for r in rows])
    for row, p in zip(rows, adjusted, strict=True):
        row["p_holm"], row["rejected"] = p, p < alpha
    passing = sorted((r for r in rows if r["rejected"]), key=lambda r: r["fit_seconds"])
    choice, why = reference, f"no finalist is shown non-inferior: {reference} stays"
    if passing:
        choice, why = passing[0]["name"], "the only finalist shown non-inferior"
        if len(passing) > 1:
            a, b = passing[0], passing[1]
            if (b["fit_seconds"] - a["fit_seconds"]) / b["fit_seconds"] < tie:
                a = min(a, b, key=lambda r: r["cost"])
                choice, why = a["name"], f"fit times within {tie:.0%}: the one with fewer FLOPs"
            else:
                why = "the faster of the finalists shown non-inferior"
    return {"seeds": seeds, "margin_pp": margin, "alpha": alpha, "tie": tie,
            "reference": means(reference), "finalists": rows,
            "choice": choice, "why": why}  # fmt: skip


def table(decision: dict[str, Any]) -> str:
    ref = decision["reference"]
    lines = [f"| candidate | val acc % (mean) | d vs {ref['name']} pp [95 % CI] | p (one-sided) "
             "| p Holm | non-inferior | fit s (mean) | FLOPs (x one 32x32 epoch) |",
             "|---|---|---|---|---|---|---|---|",
             f"| {ref['name']} | {ref['val_acc']:.2f} | reference | | | | "
             f"{ref['fit_seconds']:.0f} | {ref['cost']:.2f} |"]  # fmt: skip
    for r in decision["finalists"]:
        ci = f"{r['diff']:+.2f} (no test)"
        if r["p"] is not None:
            ci = f"{r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        p = "-" if r["p"] is None else f"{r['p']:.3f}"
        lines.append(f"| {r['name']} | {r['val_acc']:.2f} | {ci} | {p} | {r['p_holm']:.3f} | "
                     f"{'yes' if r['rejected'] else 'no'} | {r['fit_seconds']:.0f} | "
                     f"{r['cost']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def plot_frontier(
    runs: dict[str, dict[int, Scored]], decision: dict[str, Any], untimed: set[str], path: Path
) -> None:
    plt = _plt()
    fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    marked = {decision["reference"]["name"], *(r["name"] for r in decision["finalists"])}
    for i, name in enumerate(sorted(runs, key=lambda n: (n not in marked, n))):
        color = f"C{i % 10}"
        points = sorted(runs[name].values(), key=lambda r: r.seed)
        timed = [r for r in points if f"{r.name}_seed{r.seed}" not in untimed]
        for ax, xs, pts in ((ax_t, [r.fit_seconds for r in timed], timed),
                            (ax_f, [r.cost for r in points], points)):  # fmt: skip
            if not pts:
                continue
            ax.scatter(xs, [r.val_acc for r in pts], s=14, color=color, alpha=0.6)
            if name in marked and len(pts) > 1:
                confirm = [r for r in pts if r.seed in decision["seeds"]]
                x = statistics.fmean((r.fit_seconds if ax is ax_t else r.cost) for r in confirm)
                ax.scatter([x], [statistics.fmean(r.val_acc for r in confirm)], s=90,
                           marker="D", color=color, edgecolor="black", zorder=3)  # fmt: skip
            ax.annotate(name, (xs[-1], pts[-1].val_acc), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    seeds = ",".join(map(str, decision["seeds"]))
    ax_t.set(xlabel="fit seconds (45,000 images, alone on the cores)",
             ylabel="val acc % (5,000 images, TTA)",
             title=f"accuracy against time (diamond: mean over seeds {seeds})")  # fmt: skip
    ax_f.set(xlabel="training FLOPs (x one 32x32 epoch)", title="accuracy against FLOPs (all runs)")
    for ax in (ax_t, ax_f):
        ax.grid(alpha=0.3)
    if untimed:
        note = "left off the time panel (shared cores): " + ", ".join(sorted(untimed))
        fig.text(0.01, 0.01, note, fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cifar_lightning.report.selection",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("paths", nargs="+", type=Path, help="folders of <candidate>_seed<S> runs")
    p.add_argument("--reference", required=True)
    p.add_argument("--finalists", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="the confirmation seeds")
    p.add_argument("--margin", type=float, default=0.30, help="non-inferiority margin, pp")
    p.add_argument("--alpha", type=float, default=0.05, help="familywise, Holm over finalists")
    p.add_argument("--tie", type=float, default=0.03, help="relative fit-time tie")
    p.add_argument("--untimed", nargs="*", default=[], help="runs whose time is left off")
    p.add_argument("--figure", type=Path, help="the frontier figure (PNG)")
    p.add_argument("--out", type=Path, help="the decision as JSON")
    args = p.parse_args(argv)
    try:
        runs = collect(args.paths)
        decision = decide(runs, args.reference, args.finalists, args.seeds, args.margin,
                          args.alpha, args.tie)  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(decision))
    print(f"\nchoice: {decision['choice']} ({decision['why']})")
    try:
        if args.out:
            write_json(args.out, decision)
        if args.figure:
            plot_frontier(runs, decision, set(args.untimed), args.figure)
    except UserError as err:  # a full disk (fileio.atomic_write)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write {err.filename or 'the output'} ({err.strerror or err}); "
              f"give --out and --figure paths you can write to.", file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
