"""The GPU recipes against the reference recipes they port, as issue 28 sets its targets: from
the files a GPU session leaves, one table with each one's test accuracy and time on its own
clock, the time ratio to its reference (target <= 1.25x) and the accuracy's non-inferiority
to it at a margin (default 0.2 points; the issue asks n >= 8 runs each).

Reads, where present (a missing file is a row marked "not run", never an error):
- SBS_DIR: the side-by-side script's output folder: fast94.json (time_to_accuracy.py's JSON)
  and one log per reference (airbench94.log, airbench94_muon.log, hiverge.log), whose "eval"
  rows give each run's test accuracy with TTA and time; the first is the warm-up, left out;
- --gpu-results DIR: benchmarks/gpu.sh's folder: time_to_accuracy_fast94_muon.json and
  wall_time_fast94.json (the whole `python train.py experiment=fast94` process, split into
  on-clock time + `import pytorch_lightning, hydra` + the rest, whose target is 3 s).

The runs of a project recipe and of its reference are independent (other programs; their
seeds do not pair), so the comparisons are Welch's: the difference of means with its 95 %
interval, and a one-sided test of H0: mean(project) − mean(reference) <= −margin
(stats.welch_noninferiority). The time ratio is the ratio of the mean times.

    python benchmarks/reference_table.py SBS_DIR --gpu-results DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from cifar_lightning.fileio import write_json  # noqa: E402
from cifar_lightning.report.stats import describe, welch, welch_noninferiority  # noqa: E402
from cifar_lightning.report.tables import markdown, p_value  # noqa: E402

TIME_TARGET = 1.25  # x the reference's mean time (issue 28)
MIN_RUNS = 8  # the n for the accuracy comparison
# (row, the folder of its file: the side-by-side output or gpu.sh's, the file, the reference it
# is compared with)
SYSTEMS = [
    ("airbench94", "sbs", "airbench94.log", None),
    ("fast94", "sbs", "fast94.json", "airbench94"),
    ("airbench94_muon", "sbs", "airbench94_muon.log", None),
    ("fast94_muon", "gpu", "time_to_accuracy_fast94_muon.json", "airbench94_muon"),
    ("hiverge", "sbs", "hiverge.log", None),
]
HEAD = ["system", "n", "test acc with TTA, % [95 % CI]", "time on its own clock, s [95 % CI]",
        "time x its reference (<= 1.25x?); difference, s [95 % CI]",
        "accuracy − its reference, pp [95 % CI]; non-inferior?"]  # fmt: skip


def reference_runs(log: Path) -> list[tuple[float, float]]:
    """(test accuracy with TTA, seconds) of each timed run in a reference's log: the last two
    figures of its "eval" rows, the warm-up's (the first) left out."""
    rows = [line for line in log.read_text().splitlines() if re.search(r"\|\s*eval\s*\|", line)]
    runs = []
    for line in rows[1:]:
        figures = re.findall(r"-?\d+\.\d+", line)
        if len(figures) >= 2:
            runs.append((float(figures[-2]), float(figures[-1])))
    return runs


def project_runs(path: Path) -> list[tuple[float, float]]:
    """(final test accuracy, on-clock seconds) of each finished run in a time_to_accuracy.py
    JSON (a step stopped early keeps the runs it finished)."""
    runs = json.loads(path.read_text()).get("runs") or []
    return [(r["final_test_acc"], r["on_clock_s"]) for r in runs
            if r.get("final_test_acc") is not None and r.get("on_clock_s") is not None]  # fmt: skip


def load(folder: Path | None, name: str) -> list[tuple[float, float]] | None:
    path = folder / name if folder is not None else None
    if path is None or not path.is_file():
        return None
    runs = reference_runs(path) if path.suffix == ".log" else project_runs(path)
    return runs or None


def compare(runs: list[tuple[float, float]], ref: list[tuple[float, float]], margin: float
            ) -> dict[str, Any]:  # fmt: skip
    acc, ref_acc = [a for a, _ in runs], [a for a, _ in ref]
    t, ref_t = [s for _, s in runs], [s for _, s in ref]
    ni, dt = welch_noninferiority(acc, ref_acc, margin), welch(t, ref_t)
    ratio = statistics.fmean(t) / statistics.fmean(ref_t)
    return {
        "time_ratio": ratio,
        "time_target_met": ratio <= TIME_TARGET,
        "time_diff_s": [dt.diff, dt.ci_low, dt.ci_high],
        "acc_diff": [ni.diff, ni.ci_low, ni.ci_high],
        "noninferiority_p": ni.p,
        "noninferior": ni.p is not None and ni.p < 0.05,
        "enough_runs": min(len(acc), len(ref_acc)) >= MIN_RUNS,
    }


def interval(diff: float, low: float | None, high: float | None, scale: float, fmt: str) -> str:
    if low is None or high is None:
        return f"{scale * diff:{fmt}} (no interval)"
    return f"{scale * diff:{fmt}} [{scale * low:{fmt}}, {scale * high:{fmt}}]"


def row(name: str, runs: list[tuple[float, float]] | None, ref: str | None,
        c: dict[str, Any] | None, margin: float) -> list[str]:  # fmt: skip
    """One system's table row: its figures, then its comparison with `ref` (c) if it has one."""
    if runs is None:
        return [name, "not run", "", "", "", ""]
    acc, t = describe([a for a, _ in runs]), describe([s for _, s in runs])
    cells = [name, str(len(runs)), interval(acc.mean, acc.ci_low, acc.ci_high, 100, ".2f"),
             interval(t.mean, t.ci_low, t.ci_high, 1, ".3f")]  # fmt: skip
    if ref is None:
        return [*cells, "(reference)", ""]
    if c is None:
        return [*cells, f"no {ref} runs to compare with", ""]
    verdict = "yes" if c["time_target_met"] else "no"
    time_vs = f"{c['time_ratio']:.2f}x ({verdict}); {interval(*c['time_diff_s'], 1, '+.3f')} s"
    p = "-" if c["noninferiority_p"] is None else p_value(c["noninferiority_p"])
    few = "" if c["enough_runs"] else f", n < {MIN_RUNS}"
    shown = "shown" if c["noninferior"] else "not shown"
    acc_vs = (f"{interval(*c['acc_diff'], 100, '+.2f')} pp; {shown} at {100 * margin:.1f} pp "
              f"(one-sided p {p}{few})")  # fmt: skip
    return [*cells, time_vs, acc_vs]


def process_line(gpu: Path | None) -> tuple[str, dict[str, Any] | None]:
    path = gpu / "wall_time_fast94.json" if gpu is not None else None
    if path is None or not path.is_file():
        return "`python train.py experiment=fast94`, whole process: not run", None
    w = json.loads(path.read_text())
    line = f"`python train.py experiment=fast94`, whole process: {w['wall_s']:.1f} s"
    b = w.get("budget")
    if b:
        met = "met" if b["rest_s"] <= b["rest_target_s"] else "not met"
        line += (f" = on-clock {b['on_clock_s']:.2f} s + `import pytorch_lightning, hydra` "
                 f"{b['import_s']:.2f} s + the rest {b['rest_s']:.2f} s (target "
                 f"{b['rest_target_s']:.0f} s: {met})")  # fmt: skip
    return line, w


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sbs", type=Path, help="the side-by-side script's output folder")
    p.add_argument("--gpu-results", type=Path, help="benchmarks/gpu.sh's results folder")
    p.add_argument("--margin", type=float, default=0.2, help="points (default 0.2)")
    p.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if not args.sbs.is_dir():
        p.error(f"{args.sbs} is not a folder (the side-by-side script's output folder)")
    margin = args.margin / 100
    folders = {"sbs": args.sbs, "gpu": args.gpu_results}
    runs = {name: load(folders[where], file) for name, where, file, _ in SYSTEMS}
    rows, result = [], {"margin": margin, "systems": {}}
    for name, _, _, ref in SYSTEMS:
        r, ref_runs = runs[name], runs[ref] if ref else None
        c = compare(r, ref_runs, margin) if r and ref_runs else None
        rows.append(row(name, r, ref, c, margin))
        result["systems"][name] = {"runs": r, "reference": ref, "comparison": c}
    process, result["process"] = process_line(args.gpu_results)
    print(markdown(HEAD, rows) + "\n\n" + process)
    try:  # the GPU the project's runs came from, as time_to_accuracy.py recorded it
        result["gpu"] = json.loads((args.sbs / "fast94.json").read_text()).get("gpu")
    except (OSError, ValueError):
        result["gpu"] = None
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
