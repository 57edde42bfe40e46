"""What every benchmark records beside its figures, and how it saves them."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cifar_lightning.fileio import write_json

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_recipe(experiment: str, overrides: list[str]) -> DictConfig:
    """train.py's config for `experiment=<experiment>` plus Hydra overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])


def machine() -> dict[str, Any]:
    """The conditions of a measurement: library, threads, cores and the load while it ran."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def save(result: dict[str, Any], out: str | Path) -> None:
    write_json(out, result)
    print(f"wrote {out}")
