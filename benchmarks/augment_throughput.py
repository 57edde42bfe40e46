"""Images/s of the per-image torchvision pipeline vs the device path's batched augmentation.

Both are the datamodule's training batches (CIFAR10DataModule, over the first --images training
images of --data-root, batch 512): (a) data.loader=torch, its train_dataloader(): the preset's
per-image torchvision transforms in a DataLoader with --workers workers, each image's
augmentation seeded by its draw; (b) data.loader=device, its device_batches("train"): the split
on --device, shuffled, gathered and augmented batch by batch (BatchAugment). Both presets, same
process. After an untimed pass of each, timed rounds alternate, torchvision then device; a
round repeats its pass as often as it takes to last at least --min-seconds (sized by one timed
pass). The ratio is the median of the per-round ratios. Each round prints as it ends: with the
defaults a run takes at least 80 s (2 presets x 5 rounds x 2 paths x 4 s, plus the untimed
passes); --images 5120 --repeats 3 --min-seconds 1 is a quick look.

    python benchmarks/augment_throughput.py --data-root data/cifar10-jpeg --threads 1
    python benchmarks/augment_throughput.py --device cuda --data-root data/cifar10-jpeg
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import CONF, now, parse, parser, save  # noqa: E402
from cifar_lightning.data import CIFAR10DataModule  # noqa: E402
from cifar_lightning.memory import retain_freed_memory  # noqa: E402


def sized_rounds(batches: Iterable, min_seconds: float) -> Callable[[], dict]:
    """A timed round of passes over `batches` (an epoch each: set_epoch, a new order). One
    untimed pass first (worker start-up, one-time copies, first-use allocations), then one
    timed pass sizes the rounds so that each lasts at least min_seconds."""
    done = 0

    def passes(count: int) -> float:
        nonlocal done
        start = now()
        for epoch in range(done, done + count):
            batches.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
            for _ in batches:
                pass
        done += count
        return now() - start

    passes(1)
    count = max(1, math.ceil(min_seconds / passes(1)))
    return lambda: {"passes": count, "seconds": passes(count)}


def measure(datamodule: CIFAR10DataModule, args: Any, name: str) -> dict[str, Any]:
    """Alternating rounds, torchvision then device: this machine's speed drifts by tens of
    percent within a minute (other tenants), and back-to-back rounds see the same drift, so the
    ratio is taken per round and its median reported. Each round is printed as it ends (a run
    lasts minutes: its progress shows)."""
    print(f"{name}: untimed and sizing passes", flush=True)
    tv_round = sized_rounds(datamodule.train_dataloader(), args.min_seconds)
    device = datamodule.device_batches("train", train=True, device=args.device)
    dev_round = sized_rounds(device, args.min_seconds)
    n = len(datamodule.train_set)
    tv, dev, tv_img_s, dev_img_s, ratios = [], [], [], [], []
    for i in range(args.repeats):
        tv.append(tv_round())
        dev.append(dev_round())
        tv_img_s.append(n * tv[-1]["passes"] / tv[-1]["seconds"])
        dev_img_s.append(n * dev[-1]["passes"] / dev[-1]["seconds"])
        ratios.append(dev_img_s[-1] / tv_img_s[-1])
        print(f"{name} round {i + 1}/{args.repeats}: torchvision {tv_img_s[-1]:,.0f} img/s, "
              f"device {dev_img_s[-1]:,.0f} img/s, {ratios[-1]:.1f}x", flush=True)  # fmt: skip
    return {"torchvision_img_s": statistics.median(tv_img_s),
            "device_img_s": statistics.median(dev_img_s), "ratio": statistics.median(ratios),
            "round_ratios": ratios, "torchvision_rounds": tv, "device_rounds": dev}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/augment_throughput.json", False)
    p.add_argument("--data-root", default="data/", help="data.root (default: train.py's)")
    p.add_argument("--presets", nargs="+", default=["seed", "standard"], help="conf/augment/")
    p.add_argument("--images", type=int, default=20480, help="training images per pass")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (torchvision)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; the median counts")
    p.add_argument("--min-seconds", type=float, default=4.0, help="least length of a round")
    p.add_argument("--device", default="cpu", help="the device path's device, e.g. cuda")
    p.add_argument("--no-retain-memory", action="store_true",
                   help="without train.py's retain_cpu_memory (workers inherit it)")  # fmt: skip
    args = parse(p, argv)
    retained = not args.no_retain_memory and retain_freed_memory()

    rows = []
    for name in args.presets:
        preset = yaml.safe_load((CONF / "augment" / f"{name}.yaml").read_text())
        datamodule = CIFAR10DataModule(args.data_root, batch_size=args.batch_size, val_size=0,
                                       train_size=args.images, num_workers=args.workers,
                                       augment=preset)  # fmt: skip
        datamodule.prepare_data()
        datamodule.setup("fit")
        rows.append({"preset": name, **measure(datamodule, args, name)})

    print(f"{'preset':<10} {'torchvision img/s':>18} {'device img/s':>14} {'ratio':>8}   "
          f"ratio per round")  # fmt: skip
    for r in rows:
        rounds = " ".join(f"{q:.1f}" for q in r["round_ratios"])
        print(f"{r['preset']:<10} {r['torchvision_img_s']:>18,.0f} {r['device_img_s']:>14,.0f} "
              f"{r['ratio']:>7.1f}x   {rounds}")  # fmt: skip
    result = {**vars(args), "images": len(datamodule.train_set), "retain_cpu_memory": retained,
              "rows": rows}  # fmt: skip
    return save(result, args.out)


if __name__ == "__main__":
    main()
