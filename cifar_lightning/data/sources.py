"""Reading CIFAR-10 from disk and caching it as uint8 tensors.

Two layouts are accepted under the data root:
  1. torchvision's `cifar-10-batches-py/` (downloaded by torchvision when absent), and
  2. image folders `train/<class>/*` and `test/<class>/*` (PNG or JPEG, official class names).
Either is decoded once into `cifar10-uint8.pt` in the root; later runs load that in seconds.
The cache records what it was built from (every source file's name, size and modification time;
for torchvision's files also their MD5 sums) and a fingerprint of its own contents: a run that
finds the source changed rebuilds it, and results name the data they saw.
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
CACHE_FORMAT = 2  # 2: source signature and fingerprint recorded
BATCHES_DIR = "cifar-10-batches-py"
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
    train = [_read_batch(base / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_batch(base / "test_batch")
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


def _read_split(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}. {layouts_help(split_dir.parent)}")
    found = {p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown, missing = sorted(found - set(CLASSES)), [c for c in CLASSES if c not in found]
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
        files = sorted(
            p for p in (split_dir / name).iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )  # fmt: skip
        images += [_decode(p) for p in files]
        labels += [label] * len(files)
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


def _source_files(root: Path, source: str) -> list[tuple[str, os.stat_result]]:
    """(path relative to root, stat) of every source file, sorted by path. os.scandir rather
    than pathlib: a Path object per file made this ten times slower for 60,000 images."""
    if source == "torchvision":
        folders = [BATCHES_DIR]
    else:
        folders = [f"{split}/{name}" for split in ("train", "test") for name in CLASSES]
    found = []
    for folder in folders:
        if not (root / folder).is_dir():
            continue
        with os.scandir(root / folder) as entries:
            for e in entries:
                keep = os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                if e.is_file() and not e.name.startswith(".") and (keep or source != "folder"):
                    found.append((f"{folder}/{e.name}", e.stat()))
    return sorted(found, key=lambda item: item[0])


def source_signature(root: Path, source: str) -> str:
    """A digest of the source files' names, sizes and modification times: one stat per file,
    no reading of their contents (0.1-0.2 s for CIFAR-10's 60,000 image files)."""
    lines = "".join(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n" for rel, st in
                    _source_files(root, source))  # fmt: skip
    return hashlib.blake2b(lines.encode(), digest_size=16).hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    """MD5 of torchvision's batch files (what torchvision itself checks them with)."""
    return {
        rel: hashlib.md5((root / rel).read_bytes(), usedforsecurity=False).hexdigest()
        for rel, _ in _source_files(root, "torchvision")
    }


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
    # torchvision's files: touched but identical contents still match.
    if source == "torchvision" and meta.get("checksums") == _checksums(root):
        return None
    return "files were added, removed or changed under the data root since it was built"


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
        "checksums": _checksums(root) if source == "torchvision" else {},
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
