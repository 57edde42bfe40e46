"""A/B rounds of a whole Trainer.fit as train.py configures it: does a change to what surrounds
the step (a callback's setting, logging, checkpoints) cost time, measured side by side?

Each round fits the recipe once as A (the recipe) and once as B (the recipe plus --b's
overrides), alternating which goes first, with train.py's trainer, callbacks and logger, from
the same initial weights on the same data (benchmarks/loop_overhead.py's Setup: the data cache
checked and loaded before the clock; data.loader=device and data.val_size=0 only). The clock
is Trainer.fit, building the Trainer left off. One untimed round first. Prints each round's A,
B and B − A, then the paired difference over the rounds with its 95 % interval (paired t):
step_ab.py times single steps, which leaves out what other callbacks do after the step's own
hooks; this times all of it.

    python benchmarks/fit_ab.py --experiment fast94 --b=callbacks.progress_bar.interval_s=0 \\
        --rounds 5 --threads 1 data.root=data/cifar10-jpeg trainer.accelerator=cpu \\
        trainer.precision=32-true 'model.widths=[8,8,8]' data.batch_size=8 data.train_size=384
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import b_overrides, parse, parser, run_config, save  # noqa: E402
from benchmarks.loop_overhead import Setup, run_lightning  # noqa: E402
from cifar_lightning.report.stats import paired  # noqa: E402
from cifar_lightning.report.tables import p_value  # noqa: E402


def fit_seconds(experiment: str, overrides: list[str], out: Path) -> float:
    """Trainer.fit's seconds for the recipe plus `overrides`, as train.py's trainer runs it."""
    with run_config(experiment, overrides, out) as cfg:
        setup = Setup(cfg, out)
        return run_lightning(setup, None)[1]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/fit_ab.json")
    b_overrides(p, "callbacks.progress_bar.interval_s=0")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    args = parse(p, argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2: a paired interval needs two rounds")
    variants = {"A": list(args.overrides), "B": [*args.overrides, *args.b]}
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0: untimed
            seconds = {}
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                seconds[name] = fit_seconds(args.experiment, variants[name], Path(tmp) / name)
            if r == 0:
                continue
            rounds.append(seconds)
            print(f"round {r}: A {seconds['A']:.3f} s, B {seconds['B']:.3f} s, "
                  f"B − A {seconds['B'] - seconds['A']:+.3f} s", flush=True)  # fmt: skip
    d = paired([x["B"] for x in rounds], [x["A"] for x in rounds])
    print(f"B − A over {args.rounds} rounds: {d.diff:+.3f} s [{d.ci_low:+.3f}, {d.ci_high:+.3f}] "
          f"(95 %, paired t, p {p_value(d.p)}); B: {' '.join(args.b)}")  # fmt: skip
    return save({"experiment": args.experiment, "overrides": args.overrides, "b": args.b,
                 "rounds": rounds, "diff_s": d.diff, "ci_s": [d.ci_low, d.ci_high],
                 "p": d.p, "test": d.test}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
