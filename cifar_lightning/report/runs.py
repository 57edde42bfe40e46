"""Finding runs and reading what train.py left in them: `.hydra/`, results.json, metrics.csv.

A run's figures come from its results.json (fractions in 0..1, None where the run has none);
config values it did not override come from `.hydra/hydra.yaml` (config group choices) and
`.hydra/config.yaml` (everything else), where Hydra saved them.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cifar_lightning.errors import UserError
from cifar_lightning.results import CORRECT_NAME, RESULTS_NAME, SELECTION_KEYS, read_overrides

# What a group averages over.
# val_acc: the tested checkpoint on the validation split, with the run's TTA (the selection
# metric); best_val_acc: the best per-epoch validation figure (no TTA).
METRICS = ("val_acc", "test_acc", "train_acc_clean", "gap", "best_val_acc")
CURVES = ("train/loss", "train/acc", "val/acc", "val/loss")


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    results: dict[str, Any] | None
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> epoch -> value
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.results is not None

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's resolved-at-launch config (.hydra/config.yaml), {} when absent."""
        return _yaml(self.path / ".hydra" / "config.yaml")

    @cached_property
    def choices(self) -> dict[str, str]:
        """Config group choices (hydra.runtime.choices in .hydra/hydra.yaml): optimizer -> adam."""
        hydra = _yaml(self.path / ".hydra" / "hydra.yaml").get("hydra") or {}
        choices = (hydra.get("runtime") or {}).get("choices") or {}
        return {str(k): str(v) for k, v in choices.items() if v is not None}

    def value(self, key: str) -> str | None:
        """A config key's value: the override, else the group choice, else the config's scalar."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return _compact(node)

    @property
    def tta_level(self) -> int:
        """The test-time augmentation level the run tested with (0: none)."""
        if self.results is not None and self.results.get("tta_level") is not None:
            return int(self.results["tta_level"])
        level = self.value("module.tta_level")
        try:
            return int(level) if level not in (None, "null") else 0
        except ValueError:
            return 0

    @property
    def test_images(self) -> int | None:
        """How many test images test_acc counts: results.json's `test_images`, else the test
        split's size in its provenance when the run tested all of it (trainer.limit_test_batches
        1.0, no fast_dev_run); None when that is not known."""
        results = self.results or {}
        recorded = results.get("test_images")
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
            return recorded
        provenance = results.get("provenance")
        data = provenance.get("data") if isinstance(provenance, dict) else None
        split = data.get("test") if isinstance(data, dict) else None
        if not self.config or not isinstance(split, int) or isinstance(split, bool) or split < 1:
            return None  # without the saved config, the test's limits are unknown
        whole = self.value("trainer.limit_test_batches") in (None, "1.0")  # an int 1: one batch
        whole = whole and self.value("trainer.fast_dev_run") in (None, "False", "false", "0")
        return split if whole else None

    @cached_property
    def correct(self) -> np.ndarray | None:
        """Per-image correctness of the tested checkpoint (results.CORRECT_NAME: one bool per
        test image, in the test split's order); None when the run kept none. A file that is not
        the test_acc and test_images of its results.json is an error, not silently used."""
        path = self.path / CORRECT_NAME
        acc = self.metric("test_acc")
        if acc is None or not path.is_file():
            return None
        try:
            flags = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is unreadable ({err}): delete it, and the report bounds "
                            f"the test-set error without it.") from None  # fmt: skip
        n = self.test_images
        if (flags.dtype != bool or flags.ndim != 1 or not len(flags) or n not in (None, len(flags))
                or abs(flags.mean() - acc) * len(flags) > 0.01):  # fmt: skip
            raise UserError(f"{path} holds {flags.dtype} {flags.shape}, {int(flags.sum())} "
                            f"correct, but results.json says test_acc {acc:.6f} of "
                            f"{n or 'unknown'} images: not this run's test. Delete it, and the "
                            f"report bounds the test-set error without it.")  # fmt: skip
        return flags

    def metric(self, name: str) -> float | None:
        """One figure of the run (see METRICS; any other results.json number by its key)."""
        if self.results is None:
            return None
        if name == "gap":
            return self.gap
        value = self.results.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    @property
    def gap(self) -> float | None:
        """Clean training accuracy minus plain (no-TTA) test accuracy of the tested checkpoint.

        Without a `test_acc_plain` figure, `test_acc` stands in when the run tested without TTA;
        with TTA there is no plain figure to compare with, and the gap is None.
        """
        clean = self.metric("train_acc_clean")
        plain = self.metric("test_acc_plain")
        if plain is None and self.tta_level == 0:
            plain = self.metric("test_acc")
        return None if clean is None or plain is None else clean - plain


def _compact(node: Any) -> str | None:
    """A saved config value as an override writes it: 0.1, adam, [64,256,256], [[32,64],[64,96]].
    None for a mapping, a null, or an interpolation the saved config leaves unresolved."""
    if isinstance(node, list):
        items = [_compact(x) for x in node]
        return None if None in items else "[" + ",".join(items) + "]"  # type: ignore[arg-type]
    if node is None or isinstance(node, dict) or "${" in str(node):
        return None
    return str(node)


def _yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _overrides(run_dir: Path) -> dict[str, str]:
    pairs = {}
    for item in read_overrides(run_dir):
        if "=" in item and not item.startswith("~"):
            key, value = item.split("=", 1)
            pairs[key.lstrip("+")] = value  # +key / ++key: added keys, named as any other
    return pairs


def _curves(metrics_csv: Path) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    if not metrics_csv.is_file():
        return curves
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for key in CURVES:
                if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                    curves[key][int(row["epoch"]) + 1] = float(row[key])
    return curves


def _failure_reason(run_dir: Path) -> str:
    for log in run_dir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "error:" in line:
                return line.split("error:", 1)[1].strip()
    return "no results.json (failed or still running)"


def read_run(run_dir: Path) -> Run:
    results_file = run_dir / RESULTS_NAME
    results, problem = None, ""
    if results_file.is_file():
        try:
            results = json.loads(results_file.read_text())
        except json.JSONDecodeError as err:
            problem = f"unreadable results.json ({err})"
        else:
            if not isinstance(results, dict):
                results, problem = None, "unreadable results.json (not an object)"
    else:
        problem = _failure_reason(run_dir)
    return Run(run_dir, _overrides(run_dir), results, _curves(run_dir / "metrics.csv"), problem)


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run folder (one with .hydra/overrides.yaml) under the paths, each once."""
    runs, seen = [], set()
    for root in paths:
        for hydra_dir in sorted(root.glob("**/.hydra")):
            run_dir = hydra_dir.parent
            if not (hydra_dir / "overrides.yaml").is_file() or run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            runs.append(read_run(run_dir))
    return runs


def best_run(runs: list[Run]) -> Run | None:
    """The complete run with the highest validation accuracy (selection_key's figure); None when
    no run has one. Validation only: the test set selects nothing, not even between runs tied
    on validation (the first such run in folder order is taken)."""
    key = selection_key(runs)
    scored = [(v, r) for r in runs if r.ok and (v := r.metric(key)) is not None]
    return max(scored, key=lambda vr: vr[0])[1] if scored else None


def selection_key(runs: list[Run]) -> str:
    """The figure that compares these runs: the first of SELECTION_KEYS that any run has
    (val_acc, with TTA), so that runs are never ranked on a mix of two different figures."""
    for key in SELECTION_KEYS:
        if any(r.metric(key) is not None for r in runs):
            return key
    return SELECTION_KEYS[0]
