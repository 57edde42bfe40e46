"""Summarise runs into a report: python -m cifar_lightning.report PATH [PATH ...] [options]

PATH is a multirun folder or any folder of runs (the first PATH receives the report). Reads only
the outputs contract of train.py: `.hydra/` configs, `results.json` and `metrics.csv`. Writes
`report.md`, `summary.csv`, `curves.png`, `per_class_heatmap.png`,
`best_confusion_matrix.png` (of the best run by validation accuracy) and, with --versus,
`val_acc_versus.png`, and prints the tables.

Per group: n, mean ± 95 % t confidence interval over seeds of validation accuracy (the tested
checkpoint, with TTA), test accuracy, clean training accuracy, their gap and the best per-epoch
validation accuracy; the last epoch's training loss and its change (had it flattened?); the
mean per-class test accuracy (table and heatmap); between groups: Welch's t-test,
Holm-corrected.
A WARNING when the runs differ in code commit, dirty state, data or device. Runs without
results.json are listed as failed or incomplete, never dropped silently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_lightning.errors import UserError
from cifar_lightning.report.document import write_report

EPILOG = """\
examples:
  python -m cifar_lightning.report outputs/multirun/<date>
  python -m cifar_lightning.report outputs/multirun/<a> outputs/multirun/<b> --target 0.45
  python -m cifar_lightning.report outputs/multirun/<date> --group-by optimizer
  python -m cifar_lightning.report outputs/multirun/<date> --group-by optimizer,optimizer.sgd_lr
  python -m cifar_lightning.report outputs/multirun/<date> --group-by optimizer optimizer.lr \\
      --versus optimizer.lr

Give the folders before --group-by and --versus (or write --group-by=KEY): their keys run to
the next option.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cifar_lightning.report",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", type=Path, help="multirun folder(s) or run folders")
    p.add_argument(
        "--target",
        type=float,
        default=0.6,
        help="val accuracy (0..1) whose first epoch the table reports (default 0.6)",
    )
    p.add_argument(
        "--group-by",
        nargs="+",
        action="extend",
        metavar="KEY",
        help="config keys whose values define a group and label it (e.g. optimizer, or "
        "optimizer optimizer.sgd_lr); a key a run did not override is read from its saved "
        "config. Default: every override that differs between runs, the seed and paths excepted",
    )
    p.add_argument(
        "--versus",
        nargs="+",
        action="extend",
        metavar="KEY",
        help="also plot validation accuracy against this swept number, log scale (e.g. "
        "optimizer.lr; with several keys each run uses the first it overrides), one line per "
        "setting of the other --group-by keys: val_acc_versus.png",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if not args.paths:
        cli.error("give the run folder(s) before --group-by and --versus (their keys run to the "
                  "next option)")  # fmt: skip
    for p in args.paths:
        if not p.is_dir():
            print(f"error: {p} is not a folder. Pass a multirun folder such as "
                  f"outputs/multirun/<date>.", file=sys.stderr)  # fmt: skip
            return 2
    try:
        print(write_report(args.paths, args.target, args.group_by, args.versus))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\nwrote {args.paths[0] / 'report.md'}")
    return 0
