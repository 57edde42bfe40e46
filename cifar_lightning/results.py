"""What a run leaves behind: results.json, the confusion matrix and per-image test correctness;
reading its overrides.

The console report of a test (`Total Accuracy`) is cifar_lightning/report/console.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cifar_lightning.fileio import atomic_write, write_json

log = logging.getLogger("cifar_lightning")

RESULTS_NAME = "results.json"
# Per-image correctness of the tested model: a bool array, one entry per test image in the test
# split's order (numpy's .npy), for the report's test-set sampling error of a difference.
CORRECT_NAME = "test_correct.npy"
# What selects between runs (a sweeper's objective, the report's best run), first found first:
# val_acc, the tested checkpoint on the validation split with the run's TTA; best_val_acc, the
# best per-epoch val/acc (no TTA), for results.json written before val_acc existed.
SELECTION_KEYS = ("val_acc", "best_val_acc")


def selection_value(summary: dict[str, Any]) -> float | None:
    """The first of SELECTION_KEYS that the results hold; None without a validation split."""
    for key in SELECTION_KEYS:
        value = summary.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def read_overrides(run_dir: Path) -> list[str]:
    """A run's command-line overrides, as Hydra saved them in .hydra/overrides.yaml."""
    return yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(
                j,
                i,
                n,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if n > 0.6 * top else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def save(
    out_dir: Path,
    results: dict[str, Any],
    confusion: Sequence[Sequence[int]] | None,
    correct: np.ndarray | None = None,
) -> None:
    """results.json, and when there was a test its confusion matrix and per-image correctness
    (CORRECT_NAME; none when the ranks' shares did not cover the first test images exactly).
    results.json comes last: a run folder that has it has the others."""
    if confusion is not None:
        plot_confusion(confusion, list(results["per_class_acc"]), out_dir / "confusion_matrix.png")
    if correct is not None:
        flags = np.asarray(correct, dtype=bool)
        atomic_write(out_dir / CORRECT_NAME, lambda f: np.save(f, flags, allow_pickle=False))
    else:
        (out_dir / CORRECT_NAME).unlink(missing_ok=True)  # an earlier test's, in this folder
    write_json(out_dir / RESULTS_NAME, results)
    log.info("results: %s", out_dir / RESULTS_NAME)
