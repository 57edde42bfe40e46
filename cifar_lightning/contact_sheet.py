"""predict.py figure=true: a contact sheet, each image as the model saw it (32x32, after
conversion and resizing) beside a bar chart of its top-3 class probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cifar_lightning.fileio import atomic_write

SHEET_MAX = 64  # images on one sheet: the first ones predicted
COLUMNS = 4  # image + bars pairs per row


def draw(
    images: np.ndarray,
    names: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    labels: Sequence[int | None],
    path: Path,
) -> int:
    """Write the sheet of the first SHEET_MAX images to `path` (PNG); returns how many it shows.
    images: uint8 (N, 32, 32, 3); probs: (N, classes); labels: the folder's class or None."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    n = min(len(images), SHEET_MAX)
    cols = min(COLUMNS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(3.6 * cols, 1.5 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6] * cols})  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        img_ax, bar_ax = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        img_ax.imshow(images[i], interpolation="nearest")
        img_ax.set_title(Path(names[i]).name[-18:], fontsize=7)
        top = np.argsort(-probs[i])[:3]
        # The true class (from the folder name) in green when it is among the three.
        colours = ["tab:green" if labels[i] == k else "tab:blue" for k in top]
        bar_ax.axis("on")
        bar_ax.barh(range(3), probs[i][top], color=colours)
        bar_ax.set_yticks(range(3), [class_names[k] for k in top], fontsize=7)
        bar_ax.invert_yaxis()  # the most probable class on top
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return n
