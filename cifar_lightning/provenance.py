"""Where a result came from: code, software, device, precision and data, for results.json.

    {"code": {"commit": str | None, "dirty": bool | None, "version": str},
     "torch": str, "lightning": str, "cuda": str | None,
     "device": str, "precision": str,
     "data": {"fingerprint": str, "train": int, "val": int, "test": int}}

commit and dirty come from git, run in this package's folder: None when the package is not in
a git checkout (an installed wheel) or git is missing or slow. dirty counts untracked files that
git does not ignore too: they may be code the run imported. The report (`python -m
cifar_lightning.report`) warns when the runs it compares differ in commit, dirty state, data
fingerprint or device.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
GIT_TIMEOUT_S = 5.0
DISTRIBUTION = "cifar-lightning"


def _git(*args: str) -> str | None:
    """git's stdout in the package folder; None when git fails, is missing or times out."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            # Read-only: no index refresh lock, which could collide with a concurrent git command
            # (or the other runs of a sweep starting at the same moment).
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the working tree differs from it) of the package's checkout."""
    # The package tracked in the checkout git finds: otherwise it is installed inside some
    # other repository (a virtualenv in a project), whose commit says nothing about it.
    tracked = _git("ls-files", "--", "__init__.py")
    if not tracked or not tracked.strip():
        return None, None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain")
    return commit.strip(), None if status is None else bool(status.strip())


@functools.cache
def code_at_start() -> tuple[str | None, bool | None]:
    """git_state() as first read in this process (train.py reads it before Hydra starts): the
    code the process imported. A multirun's later jobs, which run in the same process, record
    it too, whatever the checkout holds by the time they start."""
    return git_state()


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo's "model name", else platform.processor()) and core count."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model} ({os.cpu_count() or '?'} cores)"


def device_name() -> str:
    """The GPU's name where CUDA is available (count x name for several), else the CPU's."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name()
        return name if count == 1 else f"{count} x {name}"
    return cpu_name()


def collect(precision: str, data_fingerprint: str, sizes: dict[str, int]) -> dict[str, Any]:
    """The provenance record of a run; sizes: images in the train, val and test splits. The code
    is code_at_start()'s: what the process imported."""
    import pytorch_lightning
    import torch

    commit, dirty = code_at_start()
    return {
        "code": {"commit": commit, "dirty": dirty, "version": version()},
        "torch": torch.__version__,
        "lightning": pytorch_lightning.__version__,
        "cuda": torch.version.cuda,
        "device": device_name(),
        "precision": str(precision),
        "data": {
            "fingerprint": data_fingerprint,
            **{split: int(sizes[split]) for split in ("train", "val", "test")},
        },
    }
