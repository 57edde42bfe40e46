"""Time to accuracy of a training recipe: wall time and test accuracy after every epoch.

The recipe comes from the project's Hydra config (conf/, `experiment=<--experiment>` plus any
overrides given as arguments) and is built as train.py builds it (pipeline.build, the recipe's
callbacks and health checks, its trainer settings); one Trainer.fit runs it, so the schedule
is the recipe's. Not run: the logger and the checkpoint callbacks (no files are written; the
test below needs no checkpoint), and the progress bar (unless the config sets
trainer.enable_progress_bar).

Measured: data loading (cache prepare + load + split) and the copy of the training split to the
training device, apart; fit setup (Lightning's setup, health checks, whitening, optimizer), then
every epoch's wall time, the clock running continuously from the start of training so nothing
between epochs is lost. After each epoch a callback evaluates test accuracy with the recipe's
TTA (as Classifier.test_step: eval mode, no_grad, the trainer's precision), in place: every
module's train/eval flag is restored afterwards, batch-norm statistics, the optimizer and the
Lookahead average are untouched, and no random number is drawn. That time is kept out of the
training clock and reported apart. The last epoch is evaluated after on_train_end, i.e. after
Lookahead's final average, which is the model train.py tests.

With --seeds the recipe trains once per seed, in one process (the data loaded, the module
built and fitted anew each time); the mean and spread of the final accuracy and of the
training time are printed.
--warmup-steps first runs the recipe untimed for that many steps, so that one-time costs of
the process (CUDA context, cuDNN's algorithm search, torch.compile) stay off the clock.

    python benchmarks/time_to_accuracy.py data.root=data/cifar10-jpeg --threads 2
    python benchmarks/time_to_accuracy.py --experiment fast94 --seeds 0 1 2 3 4 \\
        --warmup-steps 150 data.root=data/cifar10-jpeg  # GPU: mean over 5 seeds
    python benchmarks/time_to_accuracy.py --target 0.92 --budget-minutes 5 --stop-at-budget \\
        data.root=data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import compose_recipe, machine, save  # noqa: E402
from cifar_lightning.data import CIFAR10DataModule  # noqa: E402
from cifar_lightning.memory import retain_freed_memory  # noqa: E402
from cifar_lightning.module import Classifier  # noqa: E402
from cifar_lightning.pipeline import build  # noqa: E402
from cifar_lightning.tta import tta_logits  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def test_accuracy(trainer: L.Trainer, module: Classifier, loader: Any) -> float:
    """Classifier.test_step's predictions (TTA at the module's level), counted on the device."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    correct = torch.zeros((), dtype=torch.long, device=module.device)
    total = 0
    try:
        with trainer.precision_plugin.test_step_context():
            for x, y in loader:
                x, y = x.to(module.device, non_blocking=True), y.to(module.device)
                if module.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                level = module.tta_level
                logits = tta_logits(module.net, x, level) if level else module(x)
                correct += (logits.argmax(1) == y).sum()
                total += len(y)
    finally:
        for m, training in modes.items():
            m.train(training)
    return int(correct) / max(total, 1)


class Recorder(L.Callback):
    """Per-epoch training time on a clock that stops while the test set is evaluated.

    Put it last in the callback list: its epoch-end and train-end hooks then run after the
    other callbacks' (the epoch's time includes theirs; the final test sees Lookahead's last
    average)."""

    def __init__(
        self, data_s: float, budget_s: float, stop_at_budget: bool, report: Callable[[dict], None]
    ) -> None:
        self.data_s, self.budget_s, self.stop_at_budget = data_s, budget_s, stop_at_budget
        self.report = report
        self.paused = 0.0  # seconds spent evaluating, removed from the clock
        self.fit_start = self.last = 0.0
        self.setup_s = 0.0
        self.test_copy_s = 0.0
        self.rows: list[dict[str, Any]] = []
        self._loader: Any = None
        self._pending: dict[str, Any] | None = None

    def clock(self) -> float:
        sync()
        return time.perf_counter() - self.paused

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last = self.clock()
        self.setup_s = self.last - self.fit_start  # the train split's copy included

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self.clock()
        row = {"epoch": trainer.current_epoch + 1, "steps": trainer.global_step,
               "epoch_s": now - self.last}  # fmt: skip
        self.last = now
        stopping = (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps) or (
            trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        )
        if stopping:  # the final model exists only after on_train_end (Lookahead)
            self._pending = row
        else:
            self._evaluate(trainer, pl_module, row)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            now = self.clock()
            self._pending["epoch_s"] += now - self.last
            self.last = now
            self._evaluate(trainer, pl_module, self._pending)
            self._pending = None

    def _evaluate(self, trainer: L.Trainer, module: L.LightningModule, row: dict) -> None:
        start = time.perf_counter()
        metrics = trainer.callback_metrics
        for key in ("train/loss", "train/acc"):
            row[key.replace("/", "_")] = float(metrics[key]) if key in metrics else None
        if self._loader is None:  # the first call copies the test split to the device
            self._loader = trainer.datamodule.test_dataloader()
            sync()
            self.test_copy_s = time.perf_counter() - start
        row["test_acc"] = test_accuracy(trainer, module, self._loader)
        sync()
        row["eval_s"] = time.perf_counter() - start
        self.paused += row["eval_s"]
        row["train_s"] = sum(r["epoch_s"] for r in self.rows) + row["epoch_s"]
        row["cum_s"] = self.data_s + self.setup_s + row["train_s"]
        self.rows.append(row)
        self.report(row)
        if self.stop_at_budget and row["cum_s"] >= self.budget_s:
            trainer.should_stop = True


def timed(fn: Callable[[], Any], into: dict[str, float], key: str) -> Callable[[], Any]:
    @functools.wraps(fn)
    def wrapper() -> Any:
        start = time.perf_counter()
        out = fn()
        sync()
        into[key] = into.get(key, 0.0) + time.perf_counter() - start
        return out

    return wrapper


def recipe_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The config's callbacks and health checks, as pipeline.train makes them, less the ones
    that write checkpoints."""
    callbacks = [
        instantiate(c)
        for c in (cfg.callbacks or {}).values()
        if c is not None and "Checkpoint" not in str(c.get("_target_", ""))
    ]
    health = instantiate(cfg.health)
    return callbacks + ([health] if health is not None else [])


def print_header() -> None:
    print(f"{'epoch':>5} {'steps':>6} {'epoch s':>8} {'cum s':>8} {'test acc':>9} "
          f"{'eval s':>7} {'train loss':>10} {'train acc':>9}", flush=True)  # fmt: skip


def print_row(row: dict) -> None:
    loss, acc = row["train_loss"], row["train_acc"]
    print(f"{row['epoch']:>5} {row['steps']:>6} {row['epoch_s']:>8.1f} {row['cum_s']:>8.1f} "
          f"{row['test_acc']:>9.4f} {row['eval_s']:>7.1f} "
          f"{'-' if loss is None else f'{loss:.4f}':>10} "
          f"{'-' if acc is None else f'{acc:.4f}':>9}", flush=True)  # fmt: skip


def quiet() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The recipes have no validation split (val_size=0): what train.py warns about too.
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`")
    warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")


def run(args: argparse.Namespace, overrides: list[str], report: bool = True) -> dict[str, Any]:
    """One training of the recipe, timed as the module docstring says; the result's figures."""
    run_start = time.perf_counter()
    cfg = compose_recipe(args.experiment, overrides)
    retained = bool(cfg.retain_cpu_memory) and retain_freed_memory()  # as pipeline.train does
    seed = L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module = build(cfg, seed)
    assert isinstance(datamodule, CIFAR10DataModule)

    start = time.perf_counter()
    datamodule.prepare_data()  # decodes the images into the cache only when it is missing
    datamodule.setup("fit")  # loads the cache, splits; Trainer.fit's own call is then a no-op
    data = {"load_s": time.perf_counter() - start}
    # Lightning calls this once, during fit setup; the device loader copies the split then.
    datamodule.train_dataloader = timed(datamodule.train_dataloader, data, "train_copy_s")

    budget_s = 60 * args.budget_minutes
    recorder = Recorder(data["load_s"], budget_s, args.stop_at_budget,
                        print_row if report else lambda row: None)  # fmt: skip
    callbacks = recipe_callbacks(cfg)
    extra = {} if "enable_progress_bar" in cfg.trainer else {"enable_progress_bar": False}
    print(f"{args.experiment} {' '.join(overrides)}: {len(datamodule.train_set)} training "
          f"images, batch {datamodule.batch_size}, {cfg.trainer.max_epochs} epochs "
          f"(max_steps {cfg.trainer.max_steps}), {cfg.trainer.precision}, tta "
          f"{module.tta_level}, {torch.get_num_threads()} threads, callbacks: "
          f"{', '.join(type(c).__name__ for c in callbacks) or '-'}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # nothing should be written; if so, not here
        trainer = instantiate(
            cfg.trainer,
            callbacks=[*callbacks, recorder],
            logger=False,
            enable_checkpointing=False,
            default_root_dir=tmp,
            **extra,
        )
        if report:
            print_header()
        recorder.fit_start = recorder.clock()
        trainer.fit(module, datamodule=datamodule)

    data["train_copy_s"] = data.get("train_copy_s", 0.0)
    data["test_copy_s"] = recorder.test_copy_s  # inside the first evaluation, not in cum s
    setup_s = recorder.setup_s - data["train_copy_s"]
    rows = recorder.rows
    hit = next((r for r in rows if r["test_acc"] >= args.target), None)
    within = [r for r in rows if r["cum_s"] <= budget_s]
    at_budget = within[-1] if within else None
    final = rows[-1] if rows else None
    if report:
        print_summary(args, data, setup_s, rows, hit, at_budget)

    keys = ("data", "augment", "model", "optimizer", "scheduler", "module", "trainer", "health")
    return {
        "experiment": args.experiment,
        "overrides": overrides,
        "seed": seed,
        "target": args.target,
        "budget_minutes": args.budget_minutes,
        "stop_at_budget": args.stop_at_budget,
        "data": data,
        "fit_setup_s": setup_s,
        "retain_cpu_memory": retained,
        "rows": rows,
        "time_to_target_s": hit["cum_s"] if hit else None,
        "target_epoch": hit["epoch"] if hit else None,
        "acc_at_budget": at_budget["test_acc"] if at_budget else None,
        "budget_epoch": at_budget["epoch"] if at_budget else None,
        "final_test_acc": final["test_acc"] if final else None,
        "final_cum_s": final["cum_s"] if final else None,
        "train_s": final["train_s"] if final else None,
        "eval_s": sum(r["eval_s"] for r in rows),
        "elapsed_s": time.perf_counter() - run_start,
        "callbacks": [type(c).__name__ for c in callbacks],
        "config": {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys if k in cfg},
        "device": str(module.device),
    }


def print_summary(args: argparse.Namespace, data: dict, setup_s: float, rows: list[dict],
                  hit: dict | None, at_budget: dict | None) -> None:  # fmt: skip
    print(f"data: cache load {data['load_s']:.2f} s, train split to device "
          f"{data['train_copy_s']:.2f} s (test split {data['test_copy_s']:.2f} s, in eval); "
          f"fit setup {setup_s:.2f} s; cum s counts all but eval")  # fmt: skip
    if hit is not None:
        print(f"time to {args.target:.2%}: {hit['cum_s']:.1f} s (epoch {hit['epoch']})")
    else:
        best = max((r["test_acc"] for r in rows), default=float("nan"))
        print(f"time to {args.target:.2%}: not reached (best {best:.4f})")
    if at_budget is not None:
        print(f"accuracy at {args.budget_minutes:g} min: {at_budget['test_acc']:.4f} "
              f"(epoch {at_budget['epoch']}, {at_budget['cum_s']:.1f} s)")  # fmt: skip
    else:
        print(f"accuracy at {args.budget_minutes:g} min: no epoch finished within the budget")
    if rows:
        print(f"final: {rows[-1]['test_acc']:.4f} after {rows[-1]['cum_s']:.1f} s "
              f"(+ {sum(r['eval_s'] for r in rows):.1f} s of test evaluations)")  # fmt: skip


def seed_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of the final accuracy and the training time, and each seed's
    time to the target accuracy (None where a seed did not reach it)."""
    done = [r for r in runs if r["final_test_acc"] is not None]  # runs that finished an epoch
    if not done:
        raise SystemExit("no run finished an epoch: nothing to summarise")
    accs = [r["final_test_acc"] for r in done]
    train = [r["train_s"] for r in done]
    summary = {
        "seeds": [r["seed"] for r in done],
        "final_test_acc_per_seed": accs,
        "mean_final_test_acc": statistics.fmean(accs),
        "std_final_test_acc": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "train_s_per_seed": train,
        "mean_train_s": statistics.fmean(train),
        "max_train_s": max(train),
        "time_to_target_s_per_seed": [r["time_to_target_s"] for r in done],
    }
    print(f"\n{'seed':>5} {'train s':>8} {'setup s':>8} {'test acc':>9} {'cum s to target':>16}")
    for r in done:
        hit = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.2f}"
        print(f"{r['seed']:>5} {r['train_s']:>8.2f} {r['fit_setup_s']:>8.2f} "
              f"{r['final_test_acc']:>9.4f} {hit:>16}")  # fmt: skip
    print(f"mean over {len(done)} seeds: test acc {summary['mean_final_test_acc']:.4f} "
          f"(std {summary['std_final_test_acc']:.4f}), training {summary['mean_train_s']:.2f} s "
          f"(max {summary['max_train_s']:.2f} s)")  # fmt: skip
    return summary


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options; Hydra overrides (key=value) may stand anywhere among them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="fast_cpu", help="conf/experiment/<name>.yaml")
    parser.add_argument("--target", type=float, default=0.90, help="test accuracy to reach")
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument(
        "--stop-at-budget",
        action="store_true",
        help="end training after the first epoch that ends past the budget",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads (default: torch's default; other jobs share the CPUs)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train once per seed and report the mean (default: the config's seed, once)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="first an untimed run of this many steps (CUDA/cuDNN start-up, torch.compile)",
    )
    parser.add_argument("--out", help="default: benchmarks/results/time_to_accuracy_<exp>.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=PATH")
    # `--seeds 0 1 2 data.root=PATH` would hand the override to --seeds as a fourth seed: take
    # the overrides (key=value, ~key) out first. An option's own value with "=" in it must be
    # joined to the option: `--out=a=b.json`, not `--out a=b.json`.
    overrides = [a for a in argv if ("=" in a and not a.startswith("-")) or a.startswith("~")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    args.overrides = [*args.overrides, *overrides]
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    script_start = time.perf_counter()

    warmup = None
    if args.warmup_steps:
        # The same recipe, cut short: its kernels, cuDNN's algorithm choices and compiled graphs
        # are then ready before the clock of the timed runs starts.
        print(f"warm-up: {args.warmup_steps} steps, not timed", flush=True)
        warm = run(args, [*args.overrides, f"trainer.max_steps={args.warmup_steps}"], False)
        warmup = {"steps": args.warmup_steps, "elapsed_s": warm["elapsed_s"]}
    runs = []
    for seed in [[f"seed={s}"] for s in args.seeds] if args.seeds else [[]]:
        # The previous run's trainer, data on the device and padded copy sit in reference
        # cycles: collect them before the next run allocates its own.
        gc.collect()
        runs.append(run(args, [*args.overrides, *seed]))
    result = runs[0] if len(runs) == 1 else {"runs": runs, **seed_summary(runs)}
    result.update(
        warmup=warmup,
        script_elapsed_s=time.perf_counter() - script_start,
        pytorch_lightning=L.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **machine(),
    )
    save(result, args.out or f"benchmarks/results/time_to_accuracy_{args.experiment}.json")


if __name__ == "__main__":
    main()
