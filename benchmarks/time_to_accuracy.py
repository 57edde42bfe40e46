"""Time to accuracy of a recipe: what a user of train.py waits for until the final test accuracy
is known, and that accuracy.

Each run is pipeline.train itself, i.e. train.py's run of the recipe (Hydra config
`experiment=<--experiment>` plus the overrides given as arguments) in a temporary run folder:
its datamodule, model, callbacks, health checks, CSV log and trainer, the model it tests (after
Lookahead's last average; last.ckpt saved, the model tested in memory) and its test with TTA.
One callback is added after the config's (benchmarks/clock.py; not in the config, so eval.py
re-tests a kept checkpoint like any other) to stamp the stages on a clock (ON_CLOCK and
OFF_CLOCK below say what it counts) and to evaluate the test accuracy after each epoch, a
diagnostic off the clock (--no-epoch-eval: none). --seeds: one run per seed, in one process,
and their mean; --keep DIR keeps each run's folder (DIR/seed=S). --warmup-steps:
an untimed run first, so that one-time costs of the process (CUDA context, cuDNN's algorithm
search, torch.compile) stay off the clock.

    python benchmarks/time_to_accuracy.py data.root=data/cifar10-jpeg --threads 2
    python benchmarks/time_to_accuracy.py --experiment fast94 --seeds 0 1 2 3 4 \\
        --warmup-steps 150 data.root=data/cifar10-jpeg  # GPU: mean over 5 seeds
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.clock import EpochClock  # noqa: E402
from benchmarks.common import now, parse, parser, run_config, save  # noqa: E402
from cifar_lightning.pipeline import train  # noqa: E402

# Parts of the clock, in order: (the stamp that ends the part, what it holds).
ON_CLOCK = {
    "build_s": ("built", "retain_cpu_memory, seeding; datamodule, model, callbacks built"),
    "data_s": ("data_loaded", "Trainer built; data cache checked (made if missing), loaded, split"),
    "fit_setup_s": ("train_start", "fit set-up: training batches, whitening, optimizer"),
    "train_s": ("train_end", "the epochs, with train.py's callbacks, checks, log, progress bar"),
    "to_test_s": ("test_start", "end of fit; last.ckpt saved; test set-up"),
    "test_s": ("test_end", "the final test with TTA (trainer.test)"),
}
OFF_CLOCK = {
    "config_s": "the config composed by Hydra",
    "epoch_eval_s": "the per-epoch diagnostic test evaluations",
    "after_test_s": "train.py's work after its test: report, after-fit figures, results.json",
    "process": "process start-up and imports (not measured here: benchmarks/wall_time.py)",
}
CLOCK = {"on the clock": {k: v[1] for k, v in ON_CLOCK.items()}, "off the clock": OFF_CLOCK}


def run(
    args: Any, overrides: list[str], epoch_eval: bool, keep: Path | None = None
) -> dict[str, Any]:
    """One pipeline.train of the recipe, timed as the module docstring says; in the run folder
    `keep` (kept: checkpoints, results.json, log; it must be new or empty) or a temporary one."""
    gc.collect()  # the previous run's trainer and data sit in reference cycles
    EpochClock.made.clear()
    _check_keep(keep)
    folder = contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory()
    with folder as tmp:
        start = time.perf_counter()
        with run_config(args.experiment, overrides, Path(tmp)) as cfg:
            config_s = time.perf_counter() - start
            start = now()
            # The clock is built where train.py builds its callbacks, after the config's; it
            # stays out of the config, so eval.py re-tests a --keep checkpoint like any other.
            train(cfg, extra_callbacks=lambda: [EpochClock(epoch_eval=epoch_eval)])
            returned = now()
            config = OmegaConf.to_container(cfg, resolve=True)
        results = json.loads((Path(tmp) / "results.json").read_text())
    [clock] = EpochClock.made
    stamps = {k: v - start for k, v in clock.stamps.items()}
    missing = [stamp for stamp, _ in ON_CLOCK.values() if stamp not in stamps]
    if missing or results["test_acc"] is None:
        raise SystemExit(f"the run did not train and test (no {', '.join(missing)}): "
                         f"time_to_accuracy needs train=true test=true")  # fmt: skip
    parts, last = {}, 0.0
    for name, (stamp, _) in ON_CLOCK.items():
        parts[name], last = stamps[stamp] - last, stamps[stamp]
    rows, last = [], stamps["train_start"]
    for row in clock.rows:
        cum = row.pop("end") - start
        rows.append({**row, "epoch_s": cum - last, "cum_s": cum})
        last = cum
    on_clock = stamps["test_end"]
    points = [(r["cum_s"], r["test_acc"], r["epoch"]) for r in rows if r["test_acc"] is not None]
    points.append((on_clock, results["test_acc"], "final test"))
    hit = next((p for p in points if p[1] >= args.target), (None, None, None))
    off = returned - clock.paused - start - on_clock  # train.py's work after its test
    return {
        "experiment": args.experiment,
        "overrides": overrides,
        "seed": results["seed"],
        "final_test_acc": results["test_acc"],
        "final_test_loss": results["test_loss"],
        "tta_level": results["tta_level"],
        "epochs": results["epochs"],
        "on_clock_s": on_clock,
        "on_clock": parts,
        "off_clock": {"config_s": config_s, "epoch_eval_s": clock.paused, "after_test_s": off},
        "rows": rows,
        "target": args.target,
        "time_to_target_s": hit[0],
        "target_reached_at": hit[2],
        "run_dir": str(keep) if keep else None,
        "config": config,
    }


def _check_keep(keep: Path | None) -> None:
    # A finished run there would be skipped (a resumable sweep job), an unfinished one resumed.
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise SystemExit(f"--keep: {keep} is not empty; choose a new folder")


def print_run(r: dict[str, Any]) -> None:
    print(f"\n{r['experiment']} {' '.join(r['overrides'])}: seed {r['seed']}, tta {r['tta_level']}")
    print(f"{'epoch':>5} {'steps':>6} {'epoch s':>8} {'cum s':>8} {'train loss':>10} "
          f"{'train acc':>9} {'test acc':>9} {'eval s':>7}")  # fmt: skip
    for row in r["rows"]:
        cells = [f"{row[k]:.4f}" if row[k] is not None else "-"
                 for k in ("train_loss", "train_acc", "test_acc")]  # fmt: skip
        print(f"{row['epoch']:>5} {row['steps']:>6} {row['epoch_s']:>8.1f} {row['cum_s']:>8.1f} "
              f"{cells[0]:>10} {cells[1]:>9} {cells[2]:>9} {row['eval_s']:>7.1f}")  # fmt: skip
    print(f"final test (TTA) {r['final_test_acc']:.4f}, known after {r['on_clock_s']:.1f} s on "
          f"the clock. cum s: on the clock at each epoch's end; test acc before the last epoch: "
          f"diagnostics, off the clock. Time to {r['target']:.2%}: "
          + ("not reached" if r["time_to_target_s"] is None else
             f"{r['time_to_target_s']:.1f} s (epoch {r['target_reached_at']})"))  # fmt: skip
    for title, part in (("on the clock", r["on_clock"]), ("off the clock", r["off_clock"])):
        print(f"{title}:")
        for key, what in CLOCK[title].items():
            print(f"  {f'{part[key]:8.2f} s' if key in part else '         -'}  {what}")


def seed_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of the final accuracy and the on-clock time, and each seed's
    time to the target accuracy (None where a seed did not reach it)."""
    accs = [r["final_test_acc"] for r in runs]
    clocks = [r["on_clock_s"] for r in runs]
    summary = {
        "seeds": [r["seed"] for r in runs],
        "final_test_acc_per_seed": accs,
        "mean_final_test_acc": statistics.fmean(accs),
        "std_final_test_acc": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "on_clock_s_per_seed": clocks,
        "mean_on_clock_s": statistics.fmean(clocks),
        "max_on_clock_s": max(clocks),
        "time_to_target_s_per_seed": [r["time_to_target_s"] for r in runs],
    }
    print(f"\n{'seed':>5} {'on-clock s':>10} {'test acc':>9} {'s to target':>12}")
    for r in runs:
        hit = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.2f}"
        print(f"{r['seed']:>5} {r['on_clock_s']:>10.2f} {r['final_test_acc']:>9.4f} {hit:>12}")
    print(f"mean over {len(runs)} seeds: test acc {summary['mean_final_test_acc']:.4f} "
          f"(std {summary['std_final_test_acc']:.4f}), {summary['mean_on_clock_s']:.2f} s on the "
          f"clock (max {summary['max_on_clock_s']:.2f} s)")  # fmt: skip
    return summary


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = parser(__doc__, "benchmarks/results/time_to_accuracy_{experiment}.json")
    p.add_argument("--target", type=float, default=0.90, help="test accuracy to reach")
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed (default: the config's)")
    p.add_argument("--warmup-steps", type=int, default=0, help="an untimed run of N steps first")
    p.add_argument("--no-epoch-eval", dest="epoch_eval", action="store_false",
                   help="no per-epoch diagnostic test evaluations")  # fmt: skip
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep each run's folder, DIR/seed=S or DIR/run (eval.py re-tests "
                   "its checkpoints)")  # fmt: skip
    return parse(p, argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    seeds = [[f"seed={s}"] for s in args.seeds] if args.seeds else [[]]
    keeps = [args.keep / (seed[0] if seed else "run") if args.keep else None for seed in seeds]
    for keep in keeps:  # all of them before the first timed run
        _check_keep(keep)
    warmup = None
    if args.warmup_steps:
        # The same recipe, cut short: its kernels, cuDNN's algorithm choices and compiled graphs
        # are then ready before the clock of the timed runs starts.
        print(f"warm-up: {args.warmup_steps} steps, not timed", flush=True)
        began = time.perf_counter()
        warm = run(args, [*args.overrides, f"trainer.max_steps={args.warmup_steps}"], False)
        warmup = {"steps": args.warmup_steps, "on_clock_s": warm["on_clock_s"],
                  "process_s": time.perf_counter() - began}  # fmt: skip
        print(f"warm-up done in {warmup['process_s']:.1f} s (compilations included)", flush=True)
    out = args.out.format(experiment=args.experiment)
    if warmup is not None:  # its time (compilations) kept should a limit stop the first run
        save({"runs": [], "complete": False, "warmup": warmup}, out)
    runs = []
    for seed, keep in zip(seeds, keeps, strict=True):
        runs.append(run(args, [*args.overrides, *seed], args.epoch_eval, keep))
        print_run(runs[-1])
        if len(runs) < len(seeds):  # the seeds so far, in case a time limit stops the rest
            save({"runs": runs, **seed_summary(runs), "complete": False, "warmup": warmup}, out)
    result = runs[0] if len(runs) == 1 else {"runs": runs, **seed_summary(runs)}
    result.update(clock=CLOCK, epoch_eval=args.epoch_eval, warmup=warmup)
    return save(result, out)


if __name__ == "__main__":
    main()
