"""Seconds per training epoch: Lightning's Trainer.fit vs a plain PyTorch loop, same work.

Both run the project's Classifier as the recipe builds it (Hydra config `--experiment`, fast_cpu
by default, at the recipe's fastnet widths, batch size, optimizer, schedule, precision and
first-epoch input size; label smoothing, channels_last, BN biases at 64x lr), on the same
batches: a DeviceBatches over the same uint8 tensors with the recipe's BatchAugment and seed,
from the same initial weights. The plain loop does what Trainer.fit + Classifier do per fit and
per step, and nothing else: whitening init, set_epoch, channels_last, forward, label-smoothed
cross-entropy, the train accuracy metric, the epoch's loss sum, zero_grad, backward, optimizer
step, scheduler step, and the metric's compute/reset at the end. Lightning runs without logger,
checkpointing, progress bar, model summary, sanity check and callbacks (no Lookahead or health
checks: the plain loop has none either). Each timed run is Trainer.fit itself (its setup
included; building the Trainer is timed apart) vs the whole plain loop; the two alternate, after
one warm-up round, and the medians are compared. The warm-up round also checks that both end
with the same weights (same work, same numbers).

    python benchmarks/loop_overhead.py                        # random images, one epoch
    python benchmarks/loop_overhead.py --data-root data/cifar10-jpeg --threads 2
    python benchmarks/loop_overhead.py --steps 20 --repeats 3  # quicker, per-step overhead only
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
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
from cifar_lightning.data import BatchAugment, DeviceBatches, normalize  # noqa: E402
from cifar_lightning.data.augment import AugmentPreset  # noqa: E402
from cifar_lightning.memory import retain_freed_memory  # noqa: E402
from cifar_lightning.module import Classifier  # noqa: E402

WHITENING_IMAGES = 5000  # what Classifier.on_fit_start asks the datamodule for


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if args.data_root:
        from cifar_lightning.data import sources

        sources.prepare_cache(args.data_root, allow_download=False)
        splits = sources.load_splits(args.data_root)
        return splits.train_x[: args.images].contiguous(), splits.train_y[: args.images].clone()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (args.images,), generator=g)


def compose_config(args: argparse.Namespace) -> DictConfig:
    """The recipe's config; --widths and --batch-size override it when given, and are set to
    the recipe's values otherwise."""
    overrides = []
    if args.widths:
        overrides.append("model.widths=[" + ",".join(str(w) for w in args.widths) + "]")
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    cfg = compose_recipe(args.experiment, overrides)
    args.widths, args.batch_size = list(cfg.model.widths), int(cfg.data.batch_size)
    return cfg


class Batches(L.LightningDataModule):
    """The datamodule Trainer.fit gets: the given DeviceBatches, and the whitening images
    Classifier.on_fit_start asks for (as CIFAR10DataModule.whitening_images: the first
    training images, normalised, never augmented). No validation or test data."""

    def __init__(self, batches: DeviceBatches, whitening: torch.Tensor) -> None:
        super().__init__()
        self.batches, self.whitening = batches, whitening

    def train_dataloader(self) -> DeviceBatches:
        return self.batches

    def whitening_images(self, n: int) -> torch.Tensor:
        return self.whitening[:n]


class Setup:
    """Everything both loops share: config, data, initial weights."""

    def __init__(self, args: argparse.Namespace, cfg: DictConfig) -> None:
        self.args, self.cfg = args, cfg
        self.device = torch.device(args.device)
        x, y = load_data(args)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.preset = AugmentPreset.from_config(OmegaConf.to_container(cfg.augment))
        self.seed = int(cfg.seed or 0)
        # One BatchAugment for every run: it draws from per-batch seeds, so runs still see the
        # same batches, and its padded copy of the images is made once.
        self.augment = None
        if self.preset.is_random or cfg.data.alternating_flip:
            alternating = cfg.data.alternating_flip
            self.augment = BatchAugment(self.preset, alternating, flip_seed=self.seed)
        # As CIFAR10DataModule.whitening_images: on the host, moved by the module.
        self.whitening = normalize(x[:WHITENING_IMAGES], self.preset.mean, self.preset.std)
        torch.manual_seed(self.seed)
        self.net = instantiate(cfg.model)  # the initial weights; every run starts from a copy
        self.precision = str(cfg.trainer.precision)
        if self.precision not in ("32-true", "32", "bf16-mixed"):
            raise SystemExit(f"precision {self.precision!r}: only 32-true and bf16-mixed here")

    def batches(self) -> DeviceBatches:
        """A fresh pass over the same batches (as CIFAR10DataModule._device_batches)."""
        return DeviceBatches(
            self.x, self.y, self.args.batch_size, shuffle=True, augment=self.augment,
            mean=self.preset.mean, std=self.preset.std, seed=self.seed, drop_last=True,
        )  # fmt: skip

    def module(self) -> Classifier:
        cfg = self.cfg
        return instantiate(
            cfg.module,
            net=copy.deepcopy(self.net),
            optimizer=instantiate(cfg.optimizer),
            scheduler=instantiate(cfg.scheduler),
        )

    def steps(self) -> int:
        n = len(self.batches())
        return n if self.args.steps is None else min(self.args.steps, n)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        # What Lightning's precision plugin wraps training_step in.
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def run_lightning(s: Setup) -> tuple[float, float, Classifier]:
    """(Trainer construction s, Trainer.fit s, the trained module)."""
    module = s.module()
    data = Batches(s.batches(), s.whitening)
    with tempfile.TemporaryDirectory() as tmp:  # nothing should be written; if so, not here
        start = time.perf_counter()
        trainer = instantiate(
            s.cfg.trainer,
            accelerator="gpu" if s.device.type == "cuda" else "cpu",
            devices=1,
            max_epochs=1,
            max_steps=-1 if s.args.steps is None else s.args.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[],
            default_root_dir=tmp,
        )
        built = time.perf_counter()
        trainer.fit(module, datamodule=data)
        s.sync()
        end = time.perf_counter()
    if trainer.global_step != s.steps():
        raise RuntimeError(f"Lightning ran {trainer.global_step} steps, expected {s.steps()}")
    return built - start, end - built, module


def run_plain(s: Setup) -> tuple[float, Classifier]:
    """(seconds, the trained module): Trainer.fit's work for this Classifier, by hand."""
    module = s.module()  # its net, criterion, metric and optimizer/scheduler factories only
    net, batches, total = module.net, s.batches(), s.steps()
    s.sync()
    start = time.perf_counter()
    # Trainer.fit: model to the device; setup(): channels_last; on_fit_start: whitening.
    net.to(s.device)
    module.train_acc.to(s.device)
    if module.channels_last:
        net.to(memory_format=torch.channels_last)
    if not bool(net.whitened):
        net.init_whitening(s.whitening.to(s.device))
    # configure_optimizers: the same parameter groups, optimizer and schedule length.
    optimizer = module.build_optimizer()
    scheduler = None
    if module.make_scheduler is not None:
        scheduler = module.make_scheduler(optimizer, total)["scheduler"]
    net.train()
    net.on_train_epoch_start(0)  # Classifier.on_train_epoch_start
    batches.set_epoch(0)
    loss_sum = torch.zeros((), device=s.device)  # what self.log("train/loss", on_epoch) sums
    for x, y in itertools.islice(batches, total):
        if module.channels_last:  # as Classifier does with its inputs
            x = x.contiguous(memory_format=torch.channels_last)
        x = module.resize_for_training(x, 0)  # progressive resizing, as training_step
        with s.autocast():  # training_step
            logits = net(x)
            loss = module.criterion(logits, y)
            preds = logits.detach().argmax(1)
            module.train_acc(preds, y)
        loss_sum += loss.detach()
        optimizer.zero_grad()  # Lightning: inside the closure, after training_step
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    # Epoch end: the logged epoch values are computed (one host sync), the metric reset.
    float(module.train_acc.compute())
    float(loss_sum / total)
    module.train_acc.reset()
    s.sync()
    return time.perf_counter() - start, module


def max_weight_diff(a: Classifier, b: Classifier) -> float:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return max(
        (sa[k].double() - sb[k].double()).abs().max().item() if sa[k].numel() else 0.0 for k in sa
    )


def quiet() -> None:
    # Lightning's start-up banner ("GPU available ...") and its hints about loggers.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The recipe has no validation data either (val_size=0): the same skip as train.py's.
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`")


def timed_rounds(s: Setup, repeats: int, report: Callable[[str], None]) -> dict[str, Any]:
    """A warm-up round (which also compares the final weights), then `repeats` timed rounds."""
    _, fit_s, lit = run_lightning(s)
    plain_s, ref = run_plain(s)
    diff = max_weight_diff(lit, ref)
    report(f"warm-up      lightning {fit_s:8.3f} s   plain {plain_s:8.3f} s   "
           f"max |weight difference| {diff:.3g}")  # fmt: skip
    lightning, plain, builds = [], [], []
    for r in range(repeats):
        b, t, _ = run_lightning(s)
        p, _ = run_plain(s)
        lightning.append(t)
        plain.append(p)
        builds.append(b)
        report(f"round {r + 1:<6} lightning {t:8.3f} s   plain {p:8.3f} s   ratio {t / p:6.3f}")
    return {"lightning_s": lightning, "plain_s": plain, "trainer_build_s": builds,
            "max_weight_diff": diff}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="fast_cpu", help="conf/experiment/<name>.yaml")
    parser.add_argument("--widths", type=int, nargs=3, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--images", type=int, default=50000, help="training images per epoch")
    parser.add_argument("--steps", type=int, help="steps per run instead of one full epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data-root", help="use the project's CIFAR-10 cache instead of noise")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads (default: torch's default; other jobs share the CPUs)",
    )
    parser.add_argument(
        "--no-retain-memory",
        action="store_true",
        help="run without the recipe's retain_cpu_memory (cifar_lightning/memory.py)",
    )
    parser.add_argument("--out", default="benchmarks/results/loop_overhead.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()

    cfg = compose_config(args)
    # As pipeline.train does for train.py: both loops run in this process with the same setting.
    retained = cfg.retain_cpu_memory and not args.no_retain_memory and retain_freed_memory()
    s = Setup(args, cfg)
    steps = s.steps()
    if steps < 1:
        raise SystemExit(f"{args.images} images make no batch of {args.batch_size}")
    data = args.data_root or "random uint8"
    print(
        f"{args.experiment}: fastnet {args.widths}, batch {args.batch_size}, {steps} steps per "
        f"run ({len(s.batches())} per epoch), {s.precision}, {args.device}, "
        f"{torch.get_num_threads()} threads, retain_cpu_memory {retained}, data: {data}"
    )

    times = timed_rounds(s, args.repeats, print)
    med_l, med_p = statistics.median(times["lightning_s"]), statistics.median(times["plain_s"])
    ratio = med_l / med_p
    unit = "s/epoch" if args.steps is None or steps == len(s.batches()) else f"s/{steps} steps"
    print()
    print(f"{'loop':<10} {'median ' + unit:>18} {'ms/step':>9} {'min s':>8} {'max s':>8}")
    for name, ts in (("lightning", times["lightning_s"]), ("plain", times["plain_s"])):
        med = statistics.median(ts)
        print(f"{name:<10} {med:>18.3f} {1000 * med / steps:>9.1f} {min(ts):>8.3f} "
              f"{max(ts):>8.3f}")  # fmt: skip
    print(f"ratio lightning/plain: {ratio:.3f} (target <= 1.03); Trainer() construction "
          f"{1000 * statistics.median(times['trainer_build_s']):.0f} ms, not timed")  # fmt: skip

    result = {
        **times,
        "retain_cpu_memory": retained,
        "median_lightning_s": med_l,
        "median_plain_s": med_p,
        "ratio": ratio,
        "target_ratio": 1.03,
        "steps_per_run": steps,
        "steps_per_epoch": len(s.batches()),
        "experiment": args.experiment,
        "widths": args.widths,
        "batch_size": args.batch_size,
        "images": len(s.y),
        "repeats": args.repeats,
        "precision": s.precision,
        "device": args.device,
        "data": args.data_root or "random uint8",
        "pytorch_lightning": L.__version__,
        **machine(),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
