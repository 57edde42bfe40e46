"""The data cache's source check on an unchanged folder: every file's contents read (the check
before the file table) against the keyed check (each file stat'ed, none read), side by side.

Each round times `sources.prepare_cache` on the same root once with rehash_all=True (old: list
the source, read and hash every file, compare the signature) and once as every run calls it
(new: list the source, stat every file, compare the keys with the cache's table), alternating
which goes first. Both load the same cache's header and write nothing. A warm-up call of each
goes first, so that the files are in the page cache and the table matches the folder; the
check's count of files read is reported (0 when the table vouches for every file). Prints each
round and the median new/old ratio with its least and greatest.

Then the health check's train/test overlap at test start, the same way: its sets of image
digests for the 50,000 training and 10,000 test images, old hashing every image, new taken from
the digests the cache stores (health._hashes with and without the datamodule).

Then the data made ready for training (prepare_data + setup of fast94's datamodule: all 50,000
training images, no validation split), the same way: old, the check and then the load; new,
the load on a thread while the check runs (CIFAR10DataModule.prepare_data). Both give the same
tensors (checked in the first round).

With --cold, the kernel's page, dentry and inode caches are dropped before each timed call
(Linux, as root: /proc/sys/vm/drop_caches), so that each reads the folder and the cache file
from the disk, as the first run after a reboot or a copy does.

    python benchmarks/data_check.py --data-root data/cifar10-jpeg --rounds 9
    python benchmarks/data_check.py --data-root data/cifar10-jpeg --rounds 5 --cold \
        --out benchmarks/results/data_check_cold.json
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import torch  # noqa: E402

from benchmarks.common import parse, parser, save, spread  # noqa: E402
from cifar_lightning import health  # noqa: E402
from cifar_lightning.data import CIFAR10DataModule, filetable, sources  # noqa: E402


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_caches() -> None:
    """Write dirty pages back, then drop the clean page cache and the dentries and inodes."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as e:
        raise SystemExit(f"--cold cannot drop the kernel's caches ({e}): it needs Linux and root "
                         f"(it writes {DROP_CACHES}); run without --cold") from None  # fmt: skip


def timed_check(root: Path, rehash_all: bool, cold: bool = False) -> float:
    if cold:
        drop_caches()
    start = time.perf_counter()
    sources.prepare_cache(root, allow_download=False, rehash_all=rehash_all)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/data_check.json", experiment=False)
    p.add_argument("--data-root", required=True, help="a data.root holding CIFAR-10")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--note", default="", help="conditions to record (e.g. shared cores)")
    p.add_argument(
        "--cold",
        action="store_true",
        help="drop the kernel's caches before each timed call (Linux, root)",
    )
    args = parse(p, argv)
    if args.cold:
        drop_caches()  # fails here, before any round, where it cannot
    root = Path(args.data_root)
    cache = sources.prepare_cache(root, allow_download=False)  # built here if missing
    for rehash_all in (True, False):  # warm-up: page cache, and a table that fits the folder
        timed_check(root, rehash_all)
    written = cache.stat().st_mtime_ns
    got = sources.check_source(root, sources.find_source(root), _stored(cache))
    files = sum(1 for n in got.table.names if not n.endswith("/"))
    print(f"{root}: {files} files; the keyed check reads {got.read} of them")
    rounds = []
    for r in range(args.rounds):
        t = {}
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            t[name] = timed_check(root, rehash_all=name == "old", cold=args.cold)
        rounds.append({**t, "ratio": t["new"] / t["old"]})
        print(f"round {r + 1}: old {t['old']:.3f} s, new {t['new']:.3f} s, "
              f"new/old {rounds[-1]['ratio']:.3f}", flush=True)  # fmt: skip
    if cache.stat().st_mtime_ns != written:
        raise SystemExit("the cache was rewritten during the rounds: the folder is not unchanged")
    result = {"files": files, "files_read_by_new": got.read, **summary("check", rounds)}
    result["overlap"] = summary("overlap", overlap_rounds(root, args.rounds, args.cold))
    result["ready"] = summary("ready", ready_rounds(root, args.rounds, args.cold))
    meta = {"cold": args.cold, "cpu_model": cpu_model(), "note": args.note}
    return save({**result, **meta}, args.out)


def overlap_rounds(root: Path, n: int, cold: bool = False) -> list[dict[str, float]]:
    dm = CIFAR10DataModule(root=str(root), download=False, val_size=0, num_workers=0)
    dm.setup()
    rounds = []
    for r in range(n):
        t, shared = {}, {}
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            source = dm if name == "new" else None  # None: no stored digests, hash the images
            if cold:
                drop_caches()
            start = time.perf_counter()
            test = health._hashes(source, "test", dm.test_set)
            shared[name] = len(test & health._hashes(source, "train", dm.train_set))
            t[name] = time.perf_counter() - start
        if shared["old"] != shared["new"]:
            raise SystemExit(f"the two overlaps differ: {shared}")
        rounds.append({**t, "ratio": t["new"] / t["old"], "shared": shared["new"]})
        print(f"overlap round {r + 1}: old {t['old']:.3f} s, new {t['new']:.3f} s, "
              f"new/old {rounds[-1]['ratio']:.3f}", flush=True)  # fmt: skip
    return rounds


def ready_rounds(root: Path, n: int, cold: bool = False) -> list[dict[str, float]]:
    rounds, first = [], {}
    for r in range(n):
        t = {}
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            dm = CIFAR10DataModule(root=str(root), download=False, val_size=0, num_workers=0,
                                   loader="device")  # fmt: skip
            gc.collect()  # the previous round's datasets go before the clock starts
            if cold:
                drop_caches()
            start = time.perf_counter()
            if name == "old":
                sources.prepare_cache(root, allow_download=False)
            else:
                dm.prepare_data()
                if dm._ahead is None:
                    raise SystemExit("the early load went unused: the cache changed")
            dm.setup("fit")
            t[name] = time.perf_counter() - start
            if r == 0:
                first[name] = (dm.train_set.x, dm.test_set.x, dm.fingerprint)
        if r == 0 and not all(
            a == b if isinstance(a, str) else torch.equal(a, b)
            for a, b in zip(first["old"], first["new"], strict=True)
        ):
            raise SystemExit("the two loads differ")
        first.clear()
        rounds.append({**t, "ratio": t["new"] / t["old"]})
        print(f"ready round {r + 1}: old {t['old']:.3f} s, new {t['new']:.3f} s, "
              f"new/old {rounds[-1]['ratio']:.3f}", flush=True)  # fmt: skip
    return rounds


def summary(what: str, rounds: list[dict[str, float]]) -> dict[str, Any]:
    ratio = spread([x["ratio"] for x in rounds])
    old, new = spread([x["old"] for x in rounds]), spread([x["new"] for x in rounds])
    print(f"{what}: old {old['median']:.3f} s, new {new['median']:.3f} s (medians); new/old "
          f"over {len(rounds)} rounds: median {ratio['median']:.3f} "
          f"(range {ratio['min']:.3f}-{ratio['max']:.3f})")  # fmt: skip
    return {"rounds": rounds, "old": old, "new": new, "ratio": ratio}


def _stored(cache: Path) -> filetable.Table:
    meta = sources.read_mapped(cache)
    return filetable.Table.from_payload(meta["files"], meta["source_signature"])


if __name__ == "__main__":
    main()
