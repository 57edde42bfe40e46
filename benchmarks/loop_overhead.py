"""Seconds per training epoch: Lightning's Trainer.fit vs a plain PyTorch loop, same work; and
Lightning as train.py configures it, with what each of its features costs.

Every run trains the recipe as train.py builds it (Hydra config `experiment=<--experiment>`,
fast_cpu by default, plus overrides) for --epochs epochs (default 1; at most --steps steps) from
the same initial weights, on the same datamodule (its batches on the device, its whitening
images):
  plain      the loop below, written out on purpose: what Trainer.fit + Classifier do with the
             recipe's Lookahead, if any, no more; its clock starts once the data is ready;
  lightning  Trainer.fit without logger, checkpoints, progress bar, summary or callbacks other
             than the recipe's Lookahead (Lightning's own overhead; target <= 1.03x plain);
  train.py   pipeline.build_callbacks + make_trainer, writing into a temporary run folder;
  +Feature   lightning plus one feature of train.py's trainer (a callback, Lightning's own
             progress bar or checkpoints, a logger); its cost: its time less lightning's.
A timed Lightning run is Trainer.fit (building the Trainer is timed apart), which makes the
batches as a run does; the plain loop does so before its clock starts, so that cost counts
against Lightning. The data cache is checked once, before any run (a datamodule checks it once,
as in a train.py run, however often Lightning asks). A warm-up round
(plain, lightning, train.py) also checks that lightning and plain end with the same weights;
then each round runs every variant in turn, and ratios and costs are taken within a round.

    python benchmarks/loop_overhead.py data.root=data/cifar10-jpeg --threads 2
    python benchmarks/loop_overhead.py --steps 5 --no-features data.root=...  # quick
    python benchmarks/loop_overhead.py --experiment fast94 --epochs 10 --steps 475 data.root=...
"""

from __future__ import annotations

import gc
import itertools
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint, ModelSummary, ProgressBar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import now, parse, parser, run_config, save, spread  # noqa: E402
from cifar_lightning.lookahead import Lookahead  # noqa: E402
from cifar_lightning.memory import retain_freed_memory  # noqa: E402
from cifar_lightning.models.network import Network  # noqa: E402
from cifar_lightning.module import Classifier  # noqa: E402
from cifar_lightning.optim import EpochAware  # noqa: E402
from cifar_lightning.pipeline import build, build_callbacks, make_trainer  # noqa: E402
from cifar_lightning.schedulers import GroupDecay  # noqa: E402

PLAIN, BARE, TRAIN_PY = "plain", "lightning", "train.py"  # the variants of the docstring


class Setup:
    """What every run shares: the config, the loaded datamodule, the seed, the run folder."""

    def __init__(self, cfg: DictConfig, out: Path) -> None:
        if cfg.data.loader != "device" or cfg.data.val_size:
            raise SystemExit("loop_overhead.py and fit_ab.py need data.loader=device and "
                             "data.val_size=0")  # fmt: skip
        self.cfg, self.out = cfg, out
        self.retained = bool(cfg.retain_cpu_memory) and retain_freed_memory()  # as train.py
        self.seed = L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.datamodule, _ = build(cfg, self.seed)
        self.datamodule.prepare_data()
        self.datamodule.setup("fit")
        self.run_config = OmegaConf.to_container(cfg, resolve=True)
        full = self.trainer(None)
        self.device = full.strategy.root_device
        self.precision = str(full.precision)
        if self.precision not in ("32-true", "bf16-mixed"):
            raise SystemExit(f"precision {self.precision}: only 32-true and bf16-mixed here")
        # train.py's features: the callbacks its trainer ends up with (Lightning's own included),
        # and its loggers.
        self.features = {type(c).__name__: type(c) for c in full.callbacks
                         if not isinstance(c, Lookahead)}  # fmt: skip
        self.features.update((type(lg).__name__, type(lg)) for lg in full.loggers)
        per_epoch = len(self.datamodule.device_batches("train", train=True, device=self.device))
        self.steps = per_epoch * cfg.trainer.max_epochs
        if cfg.trainer.max_steps != -1:
            self.steps = min(self.steps, cfg.trainer.max_steps)
        self.per_epoch = per_epoch

    def module(self) -> Classifier:
        """A fresh module with the same initial weights as every other run's."""
        L.seed_everything(self.seed, workers=True, verbose=False)
        _, module = build(self.cfg, self.seed)
        module.run_config = self.run_config  # as pipeline.train: saved in its checkpoints
        return module

    def lookahead(self) -> Lookahead | None:
        """A fresh Lookahead as the recipe configures it (callbacks.lookahead), or None."""
        cfg = (self.cfg.callbacks or {}).get("lookahead")
        return instantiate(cfg) if cfg is not None else None

    def trainer(self, features: set[str] | None) -> L.Trainer:
        """train.py's trainer (features=None), or Lightning bare plus the named features."""
        cfg = self.cfg
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        callbacks, _, _ = build_callbacks(cfg, self.datamodule)
        if features is None:
            return make_trainer(cfg.trainer, cfg.logger, callbacks, self.out)
        kinds = [self.features[f] for f in features]
        flags = {f"enable_{name}": any(issubclass(k, kind) for k in kinds) for name, kind in
                 (("checkpointing", Checkpoint), ("progress_bar", ProgressBar),
                  ("model_summary", ModelSummary))}  # fmt: skip
        trainer_cfg = OmegaConf.create({**OmegaConf.to_container(cfg.trainer), **flags})
        loggers = {k: c for k, c in (cfg.logger or {}).items()
                   if c._target_.rsplit(".", 1)[-1] in features}  # fmt: skip
        # The recipe's weight averaging is part of its training, not a feature: always there.
        kept = [c for c in callbacks if type(c).__name__ in features or isinstance(c, Lookahead)]
        return make_trainer(trainer_cfg, OmegaConf.create(loggers), kept, self.out)


def run_lightning(s: Setup, features: set[str] | None) -> tuple[float, float, Classifier]:
    """(Trainer construction s, Trainer.fit s, the trained module)."""
    module = s.module()
    gc.collect()
    start = now()
    trainer = s.trainer(features)
    built = now()
    trainer.fit(module, datamodule=s.datamodule)
    end = now()
    if trainer.global_step != s.steps:
        raise RuntimeError(f"Lightning ran {trainer.global_step} steps, expected {s.steps}")
    return built - start, end - built, module


def run_plain(s: Setup) -> tuple[float, Classifier]:
    """(seconds, the trained module): Trainer.fit's work for this Classifier and the recipe's
    Lookahead, by hand. The clock starts once the data is ready (cache checked, batches on the
    device), as a plain script's would after its data loading."""
    module = s.module()  # its net, criterion and optimizer/scheduler factories only
    net, dm, device, total = module.net, s.datamodule, s.device, s.steps
    dm.trainer = None  # the last Lightning run's: the plain loop has none
    gc.collect()
    batches = dm.device_batches("train", train=True, device=device)
    start = now()
    net.to(device)  # Trainer.fit: model to the device; setup(): channels_last
    if module.channels_last:
        net.to(memory_format=torch.channels_last)
    n = net.data_init_size if isinstance(net, Network) else 0
    if n:  # on_fit_start: the data-dependent init (whitening)
        net.init_from_data(dm.whitening_images(n, device))
    # configure_optimizers: the same groups, optimizer, schedule, and groups' own decay.
    optimizer = module.build_optimizer()
    schedulers = []
    if module.make_scheduler is not None:
        schedulers.append(module.make_scheduler(optimizer, total)["scheduler"])
    groups = net.param_groups() if isinstance(net, Network) else []
    decay = {i: max(1, g["decay_epochs"] * s.per_epoch)
             for i, g in enumerate(groups) if g.get("decay_epochs")}  # fmt: skip
    if decay:
        schedulers.append(GroupDecay(optimizer, decay))
    look = s.lookahead()
    net.train()
    step = 0
    for epoch in itertools.count():
        if step == total:
            break
        if isinstance(net, Network):  # on_train_epoch_start
            net.on_train_epoch_start(epoch)
        if isinstance(optimizer, EpochAware):
            optimizer.on_train_epoch_start(epoch)
        batches.set_epoch(epoch)
        # what self.log("train/loss"/"train/acc", on_epoch) sums
        loss_sum, correct, seen = torch.zeros((), device=device), 0, 0
        for b, (x, y) in enumerate(itertools.islice(batches, total - step)):
            if module.channels_last:  # as Classifier does with its inputs
                x = x.contiguous(memory_format=torch.channels_last)
            x = module.resize_for_training(x, epoch)  # progressive resizing, as training_step
            # training_step, in what Lightning's precision plugin wraps it in
            with torch.autocast(device.type, torch.bfloat16, enabled=s.precision == "bf16-mixed"):
                logits = net(x)
                loss = module.criterion(logits, y)
            loss_sum += loss.detach() * len(y)
            correct = correct + (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            optimizer.zero_grad()  # Lightning: inside the closure, after training_step
            loss.backward()
            optimizer.step()
            for scheduler in schedulers:
                scheduler.step()
            step += 1
            if look is not None:  # Lookahead.on_train_batch_end
                if epoch >= look.start_epoch and step % look.every_n_steps == 0:
                    look.update(net, look.rho(step, total))
                if look.ema is not None and (b + 1 == s.per_epoch or step == total):
                    look.update(net, 1.0)  # the epoch's (or the run's) end
        # Epoch end: the logged epoch values are read (one host sync each).
        float(loss_sum / seen), float(correct / seen)
    return now() - start, module


def max_weight_diff(a: Classifier, b: Classifier) -> float:
    # On the CPU: Lightning's teardown leaves its module there, the plain loop's stays put.
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return max((sa[k].cpu().double() - sb[k].cpu().double()).abs().max().item()
               if sa[k].numel() else 0.0 for k in sa)  # fmt: skip


def measure(s: Setup, repeats: int, features: list[str]) -> dict[str, Any]:
    """The warm-up round, then `repeats` rounds of every variant in turn."""
    _, _, lit = run_lightning(s, set())
    _, ref = run_plain(s)
    run_lightning(s, None)
    diff = max_weight_diff(lit, ref)
    print(f"warm-up: max |weight difference| lightning vs plain {diff:.3g}", flush=True)
    variants = {PLAIN: None, BARE: set(), TRAIN_PY: None, **{f"+{f}": {f} for f in features}}
    fit = {v: [] for v in variants}
    build_s = {v: [] for v in variants if v != PLAIN}
    for r in range(repeats):
        for v, chosen in variants.items():
            if v == PLAIN:
                fit[v].append(run_plain(s)[0])
            else:
                b, t, _ = run_lightning(s, chosen)
                build_s[v].append(b)
                fit[v].append(t)
        print(f"round {r + 1}: " + "  ".join(f"{v} {fit[v][-1]:.2f}" for v in variants))
    # Within each round: this machine's speed drifts, and a round's runs see the same drift.
    ratios = {v: [t / p for t, p in zip(ts, fit[PLAIN], strict=True)] for v, ts in fit.items()}
    costs = {v[1:]: [t - b for t, b in zip(fit[v], fit[BARE], strict=True)] for v in fit
             if v.startswith("+")}  # fmt: skip
    return {
        "max_weight_diff": diff,
        "fit_s": {v: spread(ts) for v, ts in fit.items()},
        "ratio_to_plain": {v: spread(rs) for v, rs in ratios.items()},
        "ratio": statistics.median(ratios[BARE]),
        "target_ratio": 1.03,
        "train_py_ratio": statistics.median(ratios[TRAIN_PY]),
        "feature_costs_s": {f: spread(cs) for f, cs in costs.items()},
        "trainer_build_s": {v: spread(ts) for v, ts in build_s.items()},
    }


def print_table(m: dict[str, Any], steps: int, unit: str) -> None:
    print(f"\n{'variant':<20} {'median ' + unit:>16} {'ms/step':>8} {'min':>8} {'max':>8} "
          f"{'x plain (rounds)':>24} {unit + ' vs lightning (rounds)':>30}")  # fmt: skip
    for v, t in m["fit_s"].items():
        r, c = m["ratio_to_plain"][v], m["feature_costs_s"].get(v[1:])
        cost = "" if c is None else f"{c['median']:+.3f} ({c['min']:+.3f} to {c['max']:+.3f})"
        print(f"{v:<20} {t['median']:>16.3f} {1000 * t['median'] / steps:>8.1f} "
              f"{t['min']:>8.3f} {t['max']:>8.3f} "
              f"{r['median']:>7.3f} ({r['min']:.3f}-{r['max']:.3f}) {cost:>30}")  # fmt: skip
    builds = {v: round(1000 * t["median"]) for v, t in m["trainer_build_s"].items()}
    print(f"lightning/plain {m['ratio']:.3f} (target <= 1.03), train.py/plain "
          f"{m['train_py_ratio']:.3f}: medians of the rounds' ratios. Trainer() construction, "
          f"timed apart, ms: {builds}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/loop_overhead.json")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    p.add_argument("--steps", type=int, help="at most this many steps per run")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    p.add_argument("--no-features", dest="per_feature", action="store_false",
                   help="only plain, lightning and train.py")  # fmt: skip
    args = parse(p, argv)
    overrides = [*args.overrides, f"trainer.max_epochs={args.epochs}",
                 f"trainer.max_steps={args.steps or -1}"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, run_config(args.experiment, overrides,
                                                          Path(tmp) / "run") as cfg:  # fmt: skip
        s = Setup(cfg, Path(tmp) / "run")
        features = sorted(s.features) if args.per_feature else []
        print(f"{args.experiment} {' '.join(args.overrides)}: {s.steps} steps per run "
              f"({s.per_epoch} per epoch), {s.precision}, {s.device}, {torch.get_num_threads()} "
              f"threads, retain_cpu_memory {s.retained}; train.py's features: "
              f"{', '.join(sorted(s.features))}", flush=True)  # fmt: skip
        m = measure(s, args.repeats, features)
    unit = "s/epoch" if s.steps == s.per_epoch else f"s/{s.steps} steps"
    print_table(m, s.steps, unit)
    result = dict(**vars(args), **m, unit=unit, features=features, steps_per_run=s.steps,
                  steps_per_epoch=s.per_epoch, train_py_features=sorted(s.features),
                  precision=s.precision, device=str(s.device),
                  retain_cpu_memory=s.retained)  # fmt: skip
    return save(result, args.out)


if __name__ == "__main__":
    main()
