"""What every benchmark records beside its figures, and how it saves them."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from cifar_lightning.fileio import write_json


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
