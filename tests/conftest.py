from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from tests.synthetic import write_folder_layout, write_torchvision_layout

REPO = Path(__file__).resolve().parents[1]
# train.py's settings for a few seconds' run on the synthetic data (folder_root).
FAST = ["data.batch_size=32", "data.num_workers=0", "data.val_size=50", "augment=standard"]


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_layout(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="session")
def torchvision_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_torchvision_layout(tmp_path_factory.mktemp("tv"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread does them fastest, above all on a busy machine. A module asks
    for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def basic_sweep(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/test_sweep.py's 4-job sweep, uninterrupted, with Hydra's basic launcher: what the
    resumed and the SLURM sweeps must end as."""
    from tests.test_sweep import command, run  # here, not at the top: that module imports this

    folder = tmp_path_factory.mktemp("basic_sweep") / "whole"
    run(command(folder_root, folder))
    return folder


def run_cli(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train.py / eval.py as a user would, from the repository root."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def trained_run(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of train.py (seed_cnn, 4 epochs on folder_root), once per session: the tests of
    eval.py, predict.py and export.py read its checkpoints (checkpoints/best.ckpt, last.ckpt)."""
    run = tmp_path_factory.mktemp("runs") / "train"
    proc = run_cli(
        "train.py",
        f"data.root={folder_root}",
        *FAST,
        "trainer.max_epochs=4",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run / "console.txt").write_text(proc.stdout + proc.stderr)
    return run


@contextlib.contextmanager
def task_config(config_name: str, overrides: list[str], out: Path) -> Iterator[DictConfig]:
    """A script's config as Hydra hands it to its task, with `out` as the run folder and
    HydraConfig set until the block ends: the task runs in this process (a subprocess costs
    seconds of imports)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None
