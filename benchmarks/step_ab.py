"""A/B rounds of a recipe's training step: is a change to the step faster, measured side by side?

Each round runs the recipe's real training steps (benchmarks/cpu_limit.py's real_steps: train.py's
Trainer, callbacks, optimizer and data) once as A (the recipe) and once as B (the recipe plus
--b's overrides), alternating which goes first, at one input size; per run the median of
--steps steps after --warmup. Prints, per round, A's and B's median step and B/A, then the
median ratio over the rounds with its least and greatest: a change is worth keeping only where
every round agrees. Speed only: whether B learns the same is a question for a selection.

    python benchmarks/step_ab.py data.root=data/cifar10-jpeg --threads 2 --size 32 \\
        --b=module.compile=true --rounds 3
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import b_overrides, parse, parser, run_config, save, spread  # noqa: E402
from benchmarks.cpu_limit import real_steps  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/step_ab.json")
    b_overrides(p, "module.compile=true")
    p.add_argument("--size", type=int, default=32, help="training input side")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="steps timed per run")
    p.add_argument("--warmup", type=int, default=2, help="steps left off per run")
    args = parse(p, argv)
    variants = {"A": list(args.overrides), "B": [*args.overrides, *args.b]}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            medians = {}
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                out = Path(tmp) / f"{name}{r}"
                with run_config(args.experiment, variants[name], out) as cfg:
                    times = real_steps(cfg, args.size, args.warmup + args.steps, out)
                medians[name] = statistics.median(times[args.warmup :])
            rounds.append({**medians, "ratio": medians["B"] / medians["A"]})
            print(f"round {r + 1}: A {medians['A']:.3f} s, B {medians['B']:.3f} s, "
                  f"B/A {rounds[-1]['ratio']:.3f}", flush=True)  # fmt: skip
    ratio = spread([x["ratio"] for x in rounds])
    print(f"B/A over {args.rounds} rounds: median {ratio['median']:.3f} "
          f"(range {ratio['min']:.3f}-{ratio['max']:.3f}); B: {' '.join(args.b)}")  # fmt: skip
    return save({"experiment": args.experiment, "overrides": args.overrides, "b": args.b,
                 "size": args.size, "steps": args.steps, "warmup": args.warmup,
                 "rounds": rounds, "ratio": ratio}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
