"""Reading CIFAR-10's two accepted layouts from disk into uint8 tensors (sources.py caches them):
  1. torchvision's `cifar-10-batches-py/` (downloaded by torchvision when absent), and
  2. image folders `train/<class>/*` and `test/<class>/*` (PNG or JPEG, official class names).
Every problem is a DataError that names the file or folder and the fix."""

from __future__ import annotations

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

log = logging.getLogger(__name__)

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
    train_digests: torch.Tensor | None = None  # (N, 16) uint8, see image_digests
    test_digests: torch.Tensor | None = None


def layouts_help(root: Path) -> str:
    return (
        f"Accepted layouts under {root}: (1) torchvision's {root / BATCHES_DIR}/ "
        f"(data_batch_1..5, test_batch), downloaded there when data.download=true and the "
        f"network allows; (2) image folders {root / 'train'}/<class>/*.png|jpg and "
        f"{root / 'test'}/<class>/*.png|jpg with the class folders {', '.join(CLASSES)}. "
        f"Put the data there, or point data.root=PATH at a folder that holds one of them."
    )


# What an official batch file (a Python pickle of a dict of lists and a numpy array) may ask the
# unpickler for: numpy's array reconstruction under its old and new module names, and the bytes
# codec of protocol-2 pickles. A pickle can ask for any callable; a file under data.root is not
# trusted to run code.
_BATCH_GLOBALS = {
    *((f"numpy.{core}.{mod}", name) for core in ("core", "_core")
      for mod, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}  # fmt: skip


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _BATCH_GLOBALS:
            raise pickle.UnpicklingError(
                f"it asks to load {module}.{name}, which a CIFAR-10 batch file never does"
            )
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            # The official format is a Python pickle: read with only numpy's array globals.
            d = _BatchUnpickler(f, encoding="latin1").load()
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
    # What splitext's suffix test says for a name not starting with ".", 3x faster.
    return name.lower().endswith(_SUFFIXES) and not name.startswith(".")


_SUFFIXES = tuple(IMAGE_SUFFIXES)


def scan_split(split_dir: Path) -> dict[str, list[str]]:
    """What a read of one split judges, listed once for the read and the cache's source check
    alike, so the two cannot disagree: every visible folder by name (files at this level are
    not data and are ignored) and, in each official class folder, the names of its visible
    entries with an image suffix, sorted. An unknown folder's contents are not listed: its name
    alone fails the read. os.scandir and os.listdir rather than pathlib: a Path object per file
    made this ten times slower for 60,000 images."""
    try:
        with os.scandir(split_dir) as entries:
            folders = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
        listing = {}
        for name in folders:
            listing[name] = []
            if name in CLASSES:
                listing[name] = sorted(filter(_is_image, os.listdir(split_dir / name)))
    except OSError as err:
        raise DataError(
            f"cannot list the folder {err.filename} ({err.strerror}). Make it readable, or "
            f"point data.root at another copy of the data."
        ) from err
    return listing


def _read_split(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}. {layouts_help(split_dir.parent)}")
    listing = scan_split(split_dir)
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
        images += [_decode(split_dir / name / file) for file in listing[name]]
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
