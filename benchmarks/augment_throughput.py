"""Images/s of the per-image torchvision pipeline vs BatchAugment on whole batches.

(a) torchvision: train_transform(preset) per image in a DataLoader (num_workers=2, batch 512)
    over uint8 tensors, as CIFAR10DataModule does; (b) BatchAugment on batches of 512 on one
    device. Both presets, same process, one run; the median of a few timed rounds after warm-up
    (a device round repeats its pass for at least --min-seconds).

    python benchmarks/augment_throughput.py                       # random images, CPU
    python benchmarks/augment_throughput.py --device cuda --data-root data/
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import machine, save  # noqa: E402
from cifar_lightning.augment import AugmentPreset, train_transform  # noqa: E402
from cifar_lightning.data.datamodule import ImageTensorDataset  # noqa: E402
from cifar_lightning.data.device import BatchAugment  # noqa: E402
from cifar_lightning.memory import retain_freed_memory  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "augment"


def load_images(args: argparse.Namespace) -> torch.Tensor:
    if args.data_root:
        from cifar_lightning.data import sources

        sources.prepare(args.data_root, allow_download=False)
        x = sources.load(args.data_root).train_x
        reps = -(-args.images // len(x))  # repeat a small cache up to --images
        return x.repeat(reps, 1, 1, 1)[: args.images].contiguous()
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)


def time_torchvision(x: torch.Tensor, preset: AugmentPreset, args: argparse.Namespace) -> float:
    y = torch.zeros(len(x), dtype=torch.long)
    dataset = ImageTensorDataset(x, y, train_transform(preset))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)  # fmt: skip
    for _ in loader:  # warm-up: starts the workers, fills caches
        break
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def time_device(x: torch.Tensor, preset: AugmentPreset, args: argparse.Namespace) -> float:
    x = x.to(args.device)
    augment = BatchAugment(preset)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else lambda: None
    batches = list(x.split(args.batch_size))

    def passes(count: int, first: int) -> float:
        sync()
        start = time.perf_counter()
        for r in range(first, first + count):
            for i, b in enumerate(batches):
                augment(b, seed=r * len(batches) + i, epoch=r)
        sync()
        return time.perf_counter() - start

    # Warm-up, which also sizes a timed round: a pass can take only tens of milliseconds, too
    # short to time on a shared machine, so each round repeats it for at least --min-seconds.
    count = max(1, math.ceil(args.min_seconds / passes(1, 0)))
    times = [passes(count, 1 + r * count) / count for r in range(args.repeats)]
    return len(x) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["seed", "standard"])
    parser.add_argument("--images", type=int, default=20480, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (torchvision)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median counts")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="least length of a device round"
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
        tv = time_torchvision(x, preset, args)
        dev = time_device(x, preset, args)
        rows.append({"preset": name, "torchvision_img_s": tv, "device_img_s": dev,
                     "ratio": dev / tv})  # fmt: skip

    print(f"{'preset':<10} {'torchvision img/s':>18} {'device img/s':>14} {'ratio':>8}")
    for r in rows:
        print(f"{r['preset']:<10} {r['torchvision_img_s']:>18,.0f} {r['device_img_s']:>14,.0f} "
              f"{r['ratio']:>7.1f}x")  # fmt: skip
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
