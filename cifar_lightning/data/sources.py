"""CIFAR-10 cached as uint8 tensors: the cache's check against its source, its building and loading.

Either accepted layout under the data root (readers.py: torchvision's batches or image folders)
is decoded once into `cifar10-uint8.pt` in the root; later runs load that in seconds.
The cache records what it was built from (a digest of every entry a read of the source judges,
file contents included, with a table of the files' stat keys so that a run reads only the files
that changed: filetable.py), a fingerprint of its own contents and a digest of each image: a run
that finds the source changed rebuilds it, so it accepts or refuses the source as a read without
the cache would, and results name the data they saw.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from cifar_lightning.data import filetable
from cifar_lightning.data.filetable import Check, Group, Table
from cifar_lightning.data.readers import (  # noqa: F401  (re-exported: sources' own API)
    BATCH_FILES,
    BATCHES_DIR,
    IMAGE_SUFFIXES,
    Splits,
    download,
    find_source,
    layouts_help,
    read_folder,
    read_torchvision,
    scan_split,
)
from cifar_lightning.errors import DataError
from cifar_lightning.fileio import atomic_write

log = logging.getLogger(__name__)

CACHE_NAME = "cifar10-uint8.pt"
# 2: source signature and fingerprint recorded; 3: the signature hashes contents; 4: with the
# table of the files' stat keys and digests (filetable) and per-image digests. A format-3 cache
# is updated in place when its source still matches (nothing decoded again).
CACHE_FORMAT = 4


def _groups(root: Path, source: str) -> list[Group]:
    """Everything a read of the source judges, as the records of its signature: for image
    folders, which split folders exist, the names of the folders in them, and the name and
    contents of every image in the class folders; for torchvision's layout, the contents of
    its six batch files."""
    if source == "torchvision":
        return [Group(None, str(root / BATCHES_DIR), "", list(BATCH_FILES))]
    groups = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            groups.append(Group((split, filetable.ABSENT), None, "", []))
            continue
        for folder, files in scan_split(root / split).items():
            p = f"{split}/{folder}/"
            groups.append(Group((p, filetable.FOLDER), str(root / split / folder), p, files))
    return groups


def check_source(
    root: Path, source: str, stored: Table | None = None, rehash_all: bool = False
) -> Check:
    """The source's signature (see filetable), reading again only the files whose stat key
    differs from `stored` or is too recent to vouch for them. Contents, not sizes and dates,
    decide: an edit that keeps a file's size and mtime still counts (its ctime changes), and a
    touched or copied file with the same bytes (data staged with its cache) forces no rebuild."""
    now = None if rehash_all else filetable.fs_now(root)  # before the first stat (see filetable)
    return filetable.check(_groups(root, source), stored, now, rehash_all)


def image_digests(x: torch.Tensor) -> torch.Tensor:
    """(N, 16) uint8: a 16-byte BLAKE2b digest of each image's bytes, for the health check's
    overlap of splits. Stored in the cache when it is built: no run hashes 60,000 images."""
    images = x.contiguous().numpy()
    joined = b"".join(hashlib.blake2b(img, digest_size=16).digest() for img in images)
    return filetable.bytes_tensor(joined).reshape(len(x), 16)


def fingerprint(splits: Splits) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in (splits.train_x, splits.train_y, splits.test_x, splits.test_y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _with_digests(d: dict) -> dict:
    """A cache's contents with each split's image digests (a format-3 cache has none)."""
    splits = [s for s in ("train", "test") if f"{s}_digests" not in d]
    return {**{f"{s}_digests": image_digests(d[f"{s}_x"]) for s in splits}, **d}


def _refresh(cache: Path, meta: dict, table: Table | None) -> None:
    """Rewrite the cache with `table` (and image digests, if it has none), its tensors as they
    are: the next check need not read again what this one read. Best effort: the cache is
    valid without it, and a read-only root just keeps the old table."""
    payload = {**_with_digests(meta), "format": CACHE_FORMAT}
    if table is not None:
        payload["files"] = table.to_payload()
    try:
        atomic_write(cache, lambda f: torch.save(payload, f))
    except OSError as err:
        log.warning("could not update the data cache %s (%s); it stays valid", cache, err)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file, unchanged: an atomic rewrite gives a new inode, an edit a new mtime."""
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_dev, b.st_size,
                                                              b.st_mtime_ns)  # fmt: skip


def _stale(cache: Path, root: Path, rehash_all: bool = False) -> tuple[str | None, Check | None]:
    """Why the cache no longer matches its source, or None when it does (or when the source is
    gone: the cache alone is then the data); and the check of the source, if one was made. A
    format-3 cache (no file table, no image digests) that still matches is brought up to date
    in place, without decoding anything again."""
    source = find_source(root)
    try:
        opened = cache.stat()
        meta = read_mapped(cache)
        fmt, recorded, signature = meta["format"], meta["source"], meta.get("source_signature")
        # torch.load(mmap=True) maps the tensors by the file's name, after reading the records
        # from the file it opened: a cache replaced meanwhile (another run's rewrite) can give
        # one file's records with the other's tensors. Checked, not rewritten, then.
        rewrite = not rehash_all and _same_file(opened, cache.stat())
    except Exception as err:
        if source is None:  # the cache alone is the data: load_splits reports it, and the fix
            return None, None
        # A check that cannot read the cache must not pass it: rebuilt from the source.
        return f"it cannot be read ({type(err).__name__}: {err})", None
    if fmt not in (3, CACHE_FORMAT):
        return "it was written by an older version of this project", None
    if source is None:
        if fmt != CACHE_FORMAT and rewrite:
            _refresh(cache, meta, None)
        return None, None
    if recorded != source:
        return f"it was built from {recorded}, the root now holds {source} data", None
    stored = None
    if fmt == CACHE_FORMAT and not rehash_all:
        try:
            stored = Table.from_payload(meta["files"], signature)
        except Exception:
            stored = None  # an unreadable table: read every file, as without one
    got = check_source(root, source, stored, rehash_all)
    if got.signature != signature:
        return ("entries were added, removed, renamed or changed under the data root since it "
                "was built"), got  # fmt: skip
    # Store the new keys once enough files were read that a table would spare (a copied or
    # touched source, an old cache); a few racy files are cheaper to read than a rewrite.
    if rewrite and (fmt != CACHE_FORMAT or got.newly_trusted * 100 >= len(got.table.names)):
        log.info("data cache %s: the source is unchanged; recording its files' new dates", cache)
        _refresh(cache, meta, got.table)
    return None, got


def _check_folder(root: Path) -> None:
    """A DataError when `root`, or a folder above it, is a file: else reading it says only that
    nothing is there, and a download into it fails with an OSError."""
    for path in (root, *root.parents):
        if path.exists():
            if not path.is_dir():
                where = f"data.root={root}" + (f": {path}" if path != root else "")
                raise DataError(
                    f"{where} is a file, not a folder. Pass data.root=FOLDER, a folder that "
                    f"holds CIFAR-10 (or a new one to download it into)."
                )
            return


def _make_folders(root: Path) -> list[Path]:
    """Create `root` and any missing folder above it; the ones this call created, deepest first
    (a folder another process made meanwhile is not among them)."""
    missing = [p for p in (root, *root.parents) if not p.exists()]
    created = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            created.insert(0, path)
    except OSError as err:
        _remove_if_empty(created)
        raise DataError(
            f"CIFAR-10 is not under {root}, and the folder cannot be created to download it "
            f"into ({err}). Pass data.root=FOLDER, a folder that holds CIFAR-10 or a writable "
            f"one to download it into."
        ) from err
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each folder (deepest first) while it is empty; one that is not stays, and so do
    the folders above it."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


def prepare_cache(root: str | Path, allow_download: bool, rehash_all: bool = False) -> Path:
    """Make sure `root` holds a cache of its current data, decoding (and downloading) only when
    the cache is missing or its source changed. `rehash_all` checks an existing cache by reading
    every file (the check before the file table; for benchmarks/data_check.py) and writes
    nothing when it matches."""
    root = Path(root)
    _check_folder(root)
    cache = root / CACHE_NAME
    got = None
    if cache.is_file():  # written atomically, so an existing cache is a complete one
        reason, got = _stale(cache, root, rehash_all)
        if reason is None:
            return cache
        log.warning("rebuilding the data cache %s: %s", cache, reason)
    source = find_source(root)
    if source is None:
        if not allow_download:
            raise DataError(
                f"CIFAR-10 is not under {root} (data.download=false). {layouts_help(root)}"
            )
        created = _make_folders(root)
        try:
            download(root)
        except BaseException:
            _remove_if_empty(created)  # a mistyped data.root leaves no folder behind
            raise
        source = "torchvision"
    if got is None or rehash_all:  # else the check that found the source changed stands
        got = check_source(root, source)
    splits = read_torchvision(root) if source == "torchvision" else read_folder(root)
    payload = {
        "format": CACHE_FORMAT,
        "source": splits.source,
        "source_signature": got.signature,
        "files": got.table.to_payload(),
        "fingerprint": fingerprint(splits),
        "train_x": splits.train_x,
        "train_y": splits.train_y,
        "test_x": splits.test_x,
        "test_y": splits.test_y,
    }
    payload = _with_digests(payload)
    try:
        atomic_write(cache, lambda f: torch.save(payload, f))
    except OSError as err:
        raise DataError(
            f"cannot write the data cache {cache} ({err}). Make {root} writable "
            f"or copy the data to a writable data.root."
        ) from err
    log.info("cached %d train / %d test images from %s (%s) in %s", len(splits.train_y),
             len(splits.test_y), root, source, cache)  # fmt: skip
    return cache


def read_mapped(cache: Path) -> dict:
    """The cache's contents with its tensors mapped, not read: its records cost a few ms."""
    # The name as a str: torch 2.2's mmap=True refuses a Path (2.11's takes one).
    try:
        return torch.load(str(cache), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a file system that cannot map it: read whole (a damaged file fails again)
        return torch.load(cache, map_location="cpu", weights_only=True)


def cache_fingerprint(root: str | Path) -> str | None:
    """The fingerprint (sources.fingerprint: of the images and labels) the data cache under
    `root` holds, or None without a readable cache. Cheap: the tensors are mapped, not read."""
    try:
        return str(read_mapped(Path(root) / CACHE_NAME)["fingerprint"])
    except Exception:
        return None


def load_splits(root: str | Path) -> Splits:
    """Load the cache that `prepare_cache` made."""
    cache = Path(root) / CACHE_NAME
    try:
        d = torch.load(cache, map_location="cpu", weights_only=True)
        if d["format"] not in (3, CACHE_FORMAT):  # 3: one that could not be updated (read-only)
            raise ValueError(f"format {d['format']!r}, expected {CACHE_FORMAT}")
        d = _with_digests(d)
        return Splits(d["train_x"], d["train_y"], d["test_x"], d["test_y"], source=d["source"],
                      fingerprint=d["fingerprint"], train_digests=d["train_digests"],
                      test_digests=d["test_digests"])  # fmt: skip
    except Exception as err:
        root, reason = cache.parent, f"{type(err).__name__}: {err}"
        if find_source(root) is not None:
            fix = f"Delete it; the next run rebuilds it from the data under {root}."
        else:  # the cache was the only copy of the data there
            fix = (
                f"{root} holds no CIFAR-10 source to rebuild it from. Delete it, then put the "
                f"CIFAR-10 files under {root} or run with data.download=true to download them "
                f"there; or point data.root=FOLDER at a folder that holds them."
            )
        raise DataError(f"the data cache {cache} is unusable ({reason}). {fix}") from err
