"""Small learnable CIFAR-10 look-alikes in both accepted layouts (the tests never download)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from cifar_lightning import CLASSES


def make_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images whose class is their dominant colour, plus texture noise:
    learnable in a few epochs, and unaffected by crops and flips."""
    rng = np.random.default_rng(seed)
    hues = np.linspace(0, 1, len(CLASSES), endpoint=False)
    x, y = [], []
    for label, h in enumerate(hues):
        colour = 127 + 100 * np.array([np.cos(2 * np.pi * (h + k / 3)) for k in range(3)])
        noise = rng.normal(0, 35, size=(n_per_class, 32, 32, 3))
        x.append(np.clip(colour + noise, 0, 255).astype(np.uint8))
        y += [label] * n_per_class
    return np.concatenate(x), np.array(y, dtype=np.int64)


def write_folder_layout(root: Path, n_train: int = 40, n_test: int = 10, fmt: str = "png") -> Path:
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = make_images(n, seed)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.{fmt}")
    return root


def write_torchvision_layout(root: Path, n_train: int = 40, n_test: int = 10) -> Path:
    """torchvision's cifar-10-batches-py: five train pickles and one test pickle."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    x, y = make_images(n_train, 0)
    order = np.random.default_rng(2).permutation(len(y))
    for i, part in enumerate(np.array_split(order, 5), start=1):
        flat = x[part].transpose(0, 3, 1, 2).reshape(len(part), -1)
        with (base / f"data_batch_{i}").open("wb") as f:
            pickle.dump({"data": flat, "labels": y[part].tolist()}, f)
    tx, ty = make_images(n_test, 1)
    with (base / "test_batch").open("wb") as f:
        pickle.dump(
            {"data": tx.transpose(0, 3, 1, 2).reshape(len(ty), -1), "labels": ty.tolist()}, f
        )
    return root
