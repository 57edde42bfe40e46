"""Reading CIFAR-10 from disk and caching it as uint8 tensors.

Two layouts are accepted under the data root:
  1. torchvision's `cifar-10-batches-py/` (downloaded by torchvision when absent), and
  2. image folders `train/<class>/*` and `test/<class>/*` (PNG or JPEG, official class names).
Either is decoded once into `cifar10-uint8.pt` in the root; later runs load that in seconds.
The cache records what it was built from (a digest of every entry a read of the source judges,
file contents included) and a fingerprint of its own contents: a run that finds the source
changed rebuilds it, so it accepts or refuses the source as a read without the cache would, and
results name the data they saw.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cifar_lightning import CLASSES
from cifar_lightning.errors import DataError
from cifar_lightning.fileio import atomic_write

log = logging.getLogger(__name__)

CACHE_NAME = "cifar10-uint8.pt"
CACHE_FORMAT = 3  # 2: source signature and fingerprint recorded; 3: the signature hashes contents
BATCHES_DIR = "cifar-10-batches-py"
BATCH_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]  # what its read reads
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class Splits:
    train_x: torch.Tensor  # (N, 3, 32, 32) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    fingerprint: str = ""  # a hash of the four tensors: which data a result was computed on


def layouts_help(root: Path) -> str:
    return (
        f"Accepted layouts under {root}: (1) torchvision's {root / BATCHES_DIR}/ "
        f"(data_batch_1..5, test_batch), downloaded there when data.download=true and the "
        f"network allows; (2) image folders {root / 'train'}/<class>/*.png|jpg and "
        f"{root / 'test'}/<class>/*.png|jpg with the class folders {', '.join(CLASSES)}. "
        f"Put the data there, or point data.root=PATH at a folder that holds one of them."
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="latin1")  # the official format is a Python pickle
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d["labels"], dtype=np.int64)
    except FileNotFoundError as err:
        raise DataError(
            f"missing CIFAR-10 batch file {path}. Re-download it by removing "
            f"{path.parent} and running with data.download=true."
        ) from err
    except Exception as err:
        raise DataError(
            f"cannot read CIFAR-10 batch file {path} ({err}). Remove {path.parent} "
            f"and let torchvision download it again (data.download=true)."
        ) from err
    if len(x) != len(y):
        raise DataError(f"{path} has {len(x)} images but {len(y)} labels; re-download it.")
    return x, y


def read_torchvision(root: Path) -> Splits:
    base = root / BATCHES_DIR
    *train, (test_x, test_y) = [_read_batch(base / name) for name in BATCH_FILES]
    return Splits(
        torch.from_numpy(np.concatenate([x for x, _ in train])),
        torch.from_numpy(np.concatenate([y for _, y in train])),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        source="torchvision",
    )


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except Exception as err:
        raise DataError(f"cannot read image {path} ({err}). Replace or delete the file.") from err
    if arr.shape != (32, 32, 3):
        raise DataError(
            f"image {path} is {arr.shape[1]}x{arr.shape[0]} pixels; CIFAR-10 images must be "
            f"32x32. Resize the data set to 32x32 or point data.root at the right folder."
        )
    return arr


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _scan_split(split_dir: Path) -> dict[str, list[os.DirEntry]]:
    """What a read of one split judges, listed once for the read and the cache's source check
    alike, so the two cannot disagree: every visible folder by name (files at this level are
    not data and are ignored) and, in each official class folder, its visible entries with an
    image suffix, sorted by name. An unknown folder's contents are not listed: its name alone
    fails the read. os.scandir rather than pathlib: a Path object per file made this ten times
    slower for 60,000 images."""
    try:
        with os.scandir(split_dir) as entries:
            folders = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
        listing = {}
        for name in folders:
            listing[name] = []
            if name in CLASSES:
                with os.scandir(split_dir / name) as entries:
                    images = (e for e in entries if _is_image(e.name))
                    listing[name] = sorted(images, key=lambda e: e.name)
    except OSError as err:
        raise DataError(
            f"cannot list the folder {err.filename} ({err.strerror}). Make it readable, or "
            f"point data.root at another copy of the data."
        ) from err
    return listing


def _read_split(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}. {layouts_help(split_dir.parent)}")
    listing = _scan_split(split_dir)
    unknown = [name for name in listing if name not in CLASSES]
    missing = [c for c in CLASSES if c not in listing]
    if unknown:
        raise DataError(
            f"unknown class folder(s) {', '.join(unknown)} in {split_dir}; class folders must be "
            f"the official CIFAR-10 names: {', '.join(CLASSES)}. Rename or remove them."
        )
    if missing:
        raise DataError(
            f"missing class folder(s) {', '.join(missing)} in {split_dir}; each of "
            f"{', '.join(CLASSES)} needs a folder of images."
        )
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        images += [_decode(Path(e.path)) for e in listing[name]]
        labels += [label] * len(listing[name])
    if not images:
        raise DataError(f"no images (.png/.jpg/.jpeg) in {split_dir}: the split is empty.")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def read_folder(root: Path) -> Splits:
    train_x, train_y = _read_split(root / "train")
    test_x, test_y = _read_split(root / "test")
    return Splits(train_x, train_y, test_x, test_y, source="folder")


def find_source(root: Path) -> str | None:
    if (root / BATCHES_DIR).is_dir():
        return "torchvision"
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "folder"
    return None


def download(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    log.info("CIFAR-10 not found under %s: downloading it with torchvision", root)
    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as err:
        raise DataError(
            f"CIFAR-10 is not under {root} and the download failed ({err}). {layouts_help(root)}"
        ) from err


# Stand-ins for a file's 16-byte digest: a folder, a split folder that is absent, and a file
# the read will fail on (a folder named like an image, a dangling link, no read permission).
FOLDER, ABSENT, UNREADABLE = b"/" * 16, b"-" * 16, b"?" * 16


def _digest(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).digest()
    except OSError:
        return UNREADABLE


def _record(h: hashlib.blake2b, rel: str, digest: bytes) -> None:
    # A path holds no NUL and a digest is 16 bytes: the records cannot run into one another.
    # fsencode: a file name need not be valid UTF-8.
    h.update(os.fsencode(rel) + b"\0" + digest)


def source_signature(root: Path, source: str) -> str:
    """A digest of everything a read of the source judges: for image folders, which split
    folders exist, the names of the folders in them, and the name and contents of every image
    in the class folders; for torchvision's layout, the contents of its six batch files.

    Contents are hashed rather than stat'ed, so that an edit keeping a file's size and mtime
    still counts, and a touched or copied file with the same bytes (data staged with its cache)
    does not force a rebuild. The price, for CIFAR-10's 60,000 JPEGs on a shared 2-core Xeon:
    0.45-1 s with the files in the page cache (a stat of each instead: about half that), 5-7 s
    when they must come from disk; decoding them anew takes 10 s and more."""
    h = hashlib.blake2b(digest_size=16)
    if source == "torchvision":
        for name in BATCH_FILES:
            _record(h, name, _digest(str(root / BATCHES_DIR / name)))
        return h.hexdigest()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            _record(h, split, ABSENT)
            continue
        for folder, images in _scan_split(root / split).items():
            _record(h, f"{split}/{folder}/", FOLDER)
            for e in images:
                _record(h, f"{split}/{folder}/{e.name}", _digest(e.path))
    return h.hexdigest()


def fingerprint(splits: Splits) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in (splits.train_x, splits.train_y, splits.test_x, splits.test_y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _stale(cache: Path, root: Path) -> str | None:
    """Why the cache no longer matches its source, or None when it does (or when the source is
    gone: the cache alone is then the data)."""
    source = find_source(root)
    if source is None:
        return None
    try:
        meta = torch.load(cache, map_location="cpu", weights_only=True, mmap=True)
        recorded = (meta["format"], meta["source"], meta.get("source_signature"))
    except Exception:
        return None  # load_splits reports a damaged cache with its own message
    if recorded[0] != CACHE_FORMAT:
        return "it was written by an older version of this project"
    if recorded[1] != source:
        return f"it was built from {recorded[1]}, the root now holds {source} data"
    if recorded[2] == source_signature(root, source):
        return None
    return "entries were added, removed, renamed or changed under the data root since it was built"


def prepare_cache(root: str | Path, allow_download: bool) -> Path:
    """Make sure `root` holds a cache of its current data, decoding (and downloading) only when
    the cache is missing or its source changed."""
    root = Path(root)
    cache = root / CACHE_NAME
    if cache.is_file():  # written atomically, so an existing cache is a complete one
        reason = _stale(cache, root)
        if reason is None:
            return cache
        log.warning("rebuilding the data cache %s: %s", cache, reason)
    source = find_source(root)
    if source is None:
        if not allow_download:
            raise DataError(
                f"CIFAR-10 is not under {root} (data.download=false). {layouts_help(root)}"
            )
        download(root)
        source = "torchvision"
    signature = source_signature(root, source)
    splits = read_torchvision(root) if source == "torchvision" else read_folder(root)
    payload = {
        "format": CACHE_FORMAT,
        "source": splits.source,
        "source_signature": signature,
        "fingerprint": fingerprint(splits),
        "train_x": splits.train_x,
        "train_y": splits.train_y,
        "test_x": splits.test_x,
        "test_y": splits.test_y,
    }
    try:
        atomic_write(cache, lambda f: torch.save(payload, f))
    except OSError as err:
        raise DataError(
            f"cannot write the data cache {cache} ({err}). Make {root} writable "
            f"or copy the data to a writable data.root."
        ) from err
    log.info(
        "cached %d train / %d test images from %s (%s) in %s",
        len(splits.train_y),
        len(splits.test_y),
        root,
        source,
        cache,
    )
    return cache


def load_splits(root: str | Path) -> Splits:
    """Load the cache that `prepare_cache` made."""
    cache = Path(root) / CACHE_NAME
    try:
        d = torch.load(cache, map_location="cpu", weights_only=True)
        if d["format"] != CACHE_FORMAT:
            raise ValueError(f"format {d['format']!r}, expected {CACHE_FORMAT}")
        return Splits(d["train_x"], d["train_y"], d["test_x"], d["test_y"], source=d["source"],
                      fingerprint=d["fingerprint"])  # fmt: skip
    except Exception as err:
        raise DataError(
            f"the data cache {cache} is unusable ({err}). Delete it; the next run "
            f"rebuilds it from the data under {cache.parent}."
        ) from err
