from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import write_folder_layout, write_torchvision_layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_layout(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="session")
def torchvision_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_torchvision_layout(tmp_path_factory.mktemp("tv"))


def run_cli(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train.py / eval.py as a user would, from the repository root."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
