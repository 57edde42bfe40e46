"""A run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 11  # 350 training images / batch 32


def args(root: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", f"data.root={root}", "data.batch_size=32",
        "data.num_workers=0", "data.val_size=50", "augment=standard", "trainer.max_epochs=3",
        "trainer.deterministic=true", "callbacks.last_checkpoint.every_n_train_steps=4",
        "model.dropout=0.3", f"hydra.run.dir={run}", *extra,
    ]  # fmt: skip


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def step_of(ckpt: Path) -> int | None:
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    except Exception:  # not there yet
        return None


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(folder_root, tmp_path):
    whole, killed, resumed = tmp_path / "whole", tmp_path / "killed", tmp_path / "resumed"
    run(args(folder_root, whole))

    # Kill at a random mid-epoch checkpoint: the newest last.ckpt must be inside an epoch.
    target = random.Random(os.getpid()).choice([s for s in range(4, 30, 4) if s % 11])
    proc = subprocess.Popen(args(folder_root, killed), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        step = step_of(last)
        if step is not None and step >= target and step % STEPS_PER_EPOCH:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = step_of(last)
    assert killed_at % STEPS_PER_EPOCH, "resuming from inside an epoch"

    run(args(folder_root, resumed, f"ckpt_path={last}"))
    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs (killed at {killed_at})"
    ra = json.loads((whole / "results.json").read_text())
    rb = json.loads((resumed / "results.json").read_text())
    for key in ("test_acc", "per_class_acc", "best_val_acc", "train_acc", "train_loss", "epochs"):
        assert ra[key] == rb[key], key
