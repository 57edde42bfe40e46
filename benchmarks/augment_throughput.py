"""Images/s of the per-image torchvision pipeline vs the device path's batched augmentation.

(a) torchvision: train_transform(preset) per image in a DataLoader (num_workers=2, batch 512,
    shuffled) over uint8 tensors, as CIFAR10DataModule does with data.loader=torch; (b) the
    device path, as with data.loader=device: DeviceBatches (batch 512, shuffled) with
    BatchAugment over the uint8 images on one device. Both presets, same process, one run.
    After an untimed pass of each, timed rounds alternate, torchvision then device; a round
    repeats its pass as often as it takes to last at least --min-seconds (sized by one timed
    pass). The ratio is the median of the per-round ratios.

    python benchmarks/augment_throughput.py                       # random images, CPU
    python benchmarks/augment_throughput.py --device cuda --data-root data/
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import machine, save  # noqa: E402
from cifar_lightning.data import BatchAugment, DeviceBatches  # noqa: E402
from cifar_lightning.data.augment import AugmentPreset, train_transform  # noqa: E402
from cifar_lightning.data.datamodule import ImageTensorDataset  # noqa: E402
from cifar_lightning.memory import retain_freed_memory  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "augment"


def load_images(args: argparse.Namespace) -> torch.Tensor:
    if args.data_root:
        from cifar_lightning.data import sources

        sources.prepare_cache(args.data_root, allow_download=False)
        x = sources.load_splits(args.data_root).train_x
        reps = -(-args.images // len(x))  # repeat a small cache up to --images
        return x.repeat(reps, 1, 1, 1)[: args.images].contiguous()
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)


def sized_rounds(passes: Callable[[int], float], min_seconds: float) -> Callable[[], dict]:
    """A timed round: `passes(count)` (seconds for count passes). One untimed pass first (worker
    start-up, one-time copies, first-use allocations), then one timed pass sizes the rounds so
    that each lasts at least min_seconds. A round returns its count and seconds."""
    passes(1)
    count = max(1, math.ceil(min_seconds / passes(1)))

    def round_() -> dict:
        seconds = passes(count)
        return {"passes": count, "seconds": seconds}

    return round_


def torchvision_pass(
    x: torch.Tensor, preset: AugmentPreset, args: argparse.Namespace
) -> Callable[[], dict]:
    """A function that times a round of DataLoader passes over x."""
    y = torch.zeros(len(x), dtype=torch.long)
    dataset = ImageTensorDataset(x, y, train_transform(preset))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)  # fmt: skip

    def passes(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            for _ in loader:
                pass
        return time.perf_counter() - start

    return sized_rounds(passes, args.min_seconds)  # the untimed pass starts the workers


def device_pass(
    x: torch.Tensor, preset: AugmentPreset, args: argparse.Namespace
) -> Callable[[], dict]:
    """A function that times a round of device-path passes over x:
    DeviceBatches as data.loader=device trains with it, i.e. a new permutation per epoch, the
    gather of each batch and BatchAugment."""
    x = x.to(args.device)
    y = torch.zeros(len(x), dtype=torch.long, device=x.device)
    batches = DeviceBatches(x, y, args.batch_size, shuffle=True, augment=BatchAugment(preset),
                            mean=preset.mean, std=preset.std)  # fmt: skip
    sync = torch.cuda.synchronize if x.device.type == "cuda" else lambda: None
    done = 0  # passes so far: each is an epoch of its own (new order, new parameters)

    def passes(count: int) -> float:
        nonlocal done
        sync()
        start = time.perf_counter()
        for epoch in range(done, done + count):
            batches.set_epoch(epoch)
            for _ in batches:
                pass
        sync()
        done += count
        return time.perf_counter() - start

    return sized_rounds(passes, args.min_seconds)


def measure(x: torch.Tensor, preset: AugmentPreset, args: argparse.Namespace) -> dict:
    """Alternating rounds, torchvision then device: this machine's speed drifts by tens of
    percent within a minute (other tenants), and back-to-back rounds see the same drift, so the
    ratio is taken per round and its median reported."""
    tv_round, dev_round = torchvision_pass(x, preset, args), device_pass(x, preset, args)
    tv, dev = [], []
    for _ in range(args.repeats):
        tv.append(tv_round())
        dev.append(dev_round())
    tv_img_s = [len(x) * r["passes"] / r["seconds"] for r in tv]
    dev_img_s = [len(x) * r["passes"] / r["seconds"] for r in dev]
    ratios = [d / t for d, t in zip(dev_img_s, tv_img_s, strict=True)]
    return {"torchvision_img_s": statistics.median(tv_img_s),
            "device_img_s": statistics.median(dev_img_s), "ratio": statistics.median(ratios),
            "round_ratios": ratios, "torchvision_rounds": tv, "device_rounds": dev}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["seed", "standard"])
    parser.add_argument("--images", type=int, default=20480, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (torchvision)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median counts")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=4.0,
        help="least length of a round: short passes are repeated within it",
    )
    parser.add_argument("--device", default="cpu", help="BatchAugment's device, e.g. cuda")
    parser.add_argument("--data-root", help="use the project's CIFAR-10 cache instead of noise")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads for BatchAugment "
        "(default: torch's default; use 1 on a machine other jobs keep busy)",
    )
    parser.add_argument(
        "--no-retain-memory",
        action="store_true",
        help="skip train.py's default retain_cpu_memory (cifar_lightning/memory.py); "
        "by default both pipelines run with it (DataLoader workers inherit it)",
    )
    parser.add_argument("--out", default="benchmarks/results/augment_throughput.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    retained = not args.no_retain_memory and retain_freed_memory()

    x = load_images(args)
    rows = []
    for name in args.presets:
        preset = AugmentPreset.from_config(yaml.safe_load((CONF / f"{name}.yaml").read_text()))
        rows.append({"preset": name, **measure(x, preset, args)})

    print(f"{'preset':<10} {'torchvision img/s':>18} {'device img/s':>14} {'ratio':>8}   "
          f"ratio per round")  # fmt: skip
    for r in rows:
        rounds = " ".join(f"{q:.1f}" for q in r["round_ratios"])
        print(f"{r['preset']:<10} {r['torchvision_img_s']:>18,.0f} {r['device_img_s']:>14,.0f} "
              f"{r['ratio']:>7.1f}x   {rounds}")  # fmt: skip
    result = {
        "rows": rows,
        "images": len(x),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "min_seconds": args.min_seconds,
        "device": args.device,
        "data": args.data_root or "random uint8",
        "retain_cpu_memory": retained,
        **machine(),
    }
    save(result, args.out)


if __name__ == "__main__":
    main()
