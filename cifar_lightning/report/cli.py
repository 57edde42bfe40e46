"""Summarise runs into a report: python -m cifar_lightning.report PATH [PATH ...] [options]

PATH is a multirun folder or any folder of runs (the report goes into the first PATH, or into
--out). Reads only the outputs contract of train.py: `.hydra/` configs, `results.json`,
`metrics.csv` and, where a run has it, `test_correct.npy`. Writes `report.md`, `summary.csv`,
`curves.png`, `per_class_heatmap.png`, `best_confusion_matrix.png` (of the best run by
validation accuracy) and, with --versus, `val_acc_versus.png`, and prints the tables.

Per group: n, mean ± 95 % t confidence interval over seeds of validation accuracy (the tested
checkpoint, with TTA), test accuracy, clean training accuracy, their gap and the best per-epoch
validation accuracy; the last epoch's training loss and its change (had it flattened?); the
mean per-class test accuracy (table and heatmap). Between groups: the difference of means with
its 95 % interval and p, paired over seeds where every seed of one group has its twin in the
other, else Welch's; Holm-corrected over the family --holm-over names. Per run: the Wilson
95 % interval of its test accuracy, the test set's sampling error that the seed interval
leaves out; per test-accuracy comparison, that error in the difference (from the runs'
test_correct.npy where every run has one, else its worst case) with z and p, alone and with
the seed error.
A WARNING when the runs differ in code commit, dirty state, data or device. Runs without
results.json are listed as failed or incomplete, never dropped silently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_lightning.errors import UserError
from cifar_lightning.report.document import write_report
from cifar_lightning.report.summary import COMPARED

EPILOG = """\
examples:
  python -m cifar_lightning.report outputs/multirun/<date>
  python -m cifar_lightning.report outputs/multirun/<a> outputs/multirun/<b> --target 0.45
  python -m cifar_lightning.report outputs/multirun/<date> --group-by optimizer
  python -m cifar_lightning.report outputs/multirun/<date> --group-by optimizer,optimizer.sgd_lr
  python -m cifar_lightning.report outputs/multirun/<date> --group-by optimizer optimizer.lr \\
      --versus optimizer.lr
  python -m cifar_lightning.report outputs/multirun/<a> outputs/multirun/<b> --group-by optimizer \\
      --holm-over test_acc,gap --out outputs/report

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
    p.add_argument(
        "--holm-over",
        default="metric",
        metavar="FAMILY",
        help="the pairs Holm's correction counts as one family: metric (default), each "
        "metric's pairs apart; all, every metric's pairs together; or a comma list of "
        f"{','.join(COMPARED)} whose pairs form one family (the others stay apart)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="the folder that receives report.md, summary.csv and the figures (default: the "
        "first PATH; made if missing)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if not args.paths and (args.group_by or args.versus):
        cli.error("give the run folder(s) before --group-by and --versus (their keys run to the "
                  "next option)")  # fmt: skip
    if not args.paths:
        cli.error("give the run folder(s) to report on, e.g. outputs/multirun/<date>")
    for p in args.paths:
        if not p.is_dir():
            print(f"error: {p} is not a folder. Pass a multirun folder such as "
                  f"outputs/multirun/<date>.", file=sys.stderr)  # fmt: skip
            return 2
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} is a file, not a folder.", file=sys.stderr)
        return 2
    try:
        out = args.out or args.paths[0]
        print(write_report(args.paths, args.target, args.group_by, args.versus, args.holm_over,
                           out))  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the report folder cannot be made or written
        print(f"error: cannot write the report into {out} ({err.strerror or err}); give --out "
              f"a folder you can write to.", file=sys.stderr)  # fmt: skip
        return 2
    print(f"\nwrote {out / 'report.md'}")
    return 0
