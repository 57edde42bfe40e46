"""A sweep killed with SIGKILL in its third job and rerun with the same command ends exactly like
an uninterrupted sweep: finished jobs skipped and untouched, the killed one resumed, the unstarted
one run. Then the same folder with the joblib launcher; then job_state's rules in-process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cifar_lightning.sweep import DONE, NEW, RESUME, check_job, identity, job_state
from tests.conftest import REPO

STEPS_PER_EPOCH = 4  # data.train_size=128 / batch 32
JOBS = ["optimizer=adam,seed=0", "optimizer=sgd,seed=0", "optimizer=adam,seed=1",
        "optimizer=sgd,seed=1"]  # fmt: skip  # the launch order: seed varies slowest
# Timings and paths, legitimately different in another sweep folder or after a resume.
VOLATILE = {"fit_seconds", "checkpoint", "provenance"}
UNTOUCHED = ["results.json", "metrics.csv", "confusion_matrix.png", "checkpoints/best.ckpt",
             "checkpoints/last.ckpt"]  # fmt: skip


def command(
    root: Path, sweep_dir: Path, *extra: str, seeds: str = "0,1", optimizers: str = "adam,sgd"
) -> list[str]:
    return [
        sys.executable, "train.py", "-m", f"data.root={root}", "data.num_workers=0",
        "data.batch_size=32", "data.val_size=50", "data.train_size=128",
        "model.widths=[[8,8],[8,8],[8,8]]", "trainer.max_epochs=2", "trainer.deterministic=true",
        "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.sweep.dir={sweep_dir}",
        *extra, f"seed={seeds}", f"optimizer={optimizers}",
    ]  # fmt: skip


# One thread per process: on 2 shared cores two threads per process spin-wait on each other (10x
# slower). Every sweep here runs with it, so their results stay comparable bit for bit.
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def job_dir(sweep_dir: Path, job: str) -> Path:
    [found] = [d for d in sweep_dir.iterdir() if d.is_dir() and f",{job}," in f",{d.name},"]
    return found


def results(folder: Path, resumed: bool = False) -> dict:
    data = {k: v for k, v in json.loads((folder / "results.json").read_text()).items()
            if k not in VOLATILE}  # fmt: skip
    if resumed:
        # Resumed inside an epoch, the training accuracy the health checks quote (in their
        # messages) covers only the steps after the resume. train_acc and train_loss, persistent
        # torchmetrics in the checkpoint, are exact.
        data["health"] = [(h["check"], h["stage"]) for h in data["health"]]
    return data


def step_of(ckpt: Path) -> int | None:
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    except Exception:  # not written yet
        return None


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {name: ((folder / name).stat().st_mtime_ns, (folder / name).read_bytes())
            for name in UNTOUCHED}  # fmt: skip


def kill_in_third_job(cmd: list[str], sweep_dir: Path) -> int:
    """Start the sweep; SIGKILL its process group once the third job's last.ckpt is inside its
    second epoch. Returns the step it was killed at."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline, step = time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        third = [d for d in sweep_dir.glob("*") if f",{JOBS[2]}," in f",{d.name},"]
        if third and not (third[0] / "results.json").exists():
            step = step_of(third[0] / "checkpoints" / "last.ckpt")
            if step is not None and step > STEPS_PER_EPOCH:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    return step


@pytest.fixture(scope="module")
def sweeps(folder_root: Path, basic_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sweep")
    whole, killed = basic_sweep, tmp / "killed"
    out: dict = {"whole": whole, "killed": killed}
    out["killed_at"] = kill_in_third_job(command(folder_root, killed), killed)
    third = job_dir(killed, JOBS[2])
    out["third_had_results"] = (third / "results.json").exists()
    out["fourth_started"] = any(f",{JOBS[3]}," in f",{d.name}," for d in killed.iterdir())
    shutil.copytree(third / "checkpoints", tmp / "third_at_kill")
    out["before"] = {job: snapshot(job_dir(killed, job)) for job in JOBS[:2]}
    out["rerun"] = run(command(folder_root, killed))
    out["after"] = {job: snapshot(job_dir(killed, job)) for job in JOBS}
    out["rerun_results"] = results(third, resumed=True)
    # The joblib launcher on the same folder, put back to the kill for the third job: it resumes
    # in a joblib worker, the other three are skipped there.
    (third / "results.json").unlink()
    shutil.rmtree(third / "checkpoints")
    shutil.copytree(tmp / "third_at_kill", third / "checkpoints")
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    out["joblib"] = run(command(folder_root, killed, *extra))
    out["after_joblib"] = {job: snapshot(job_dir(killed, job)) for job in JOBS}
    return out


@pytest.mark.slow
def test_the_rerun_says_what_it_continues(sweeps: dict):
    assert (
        sweeps["killed_at"] > STEPS_PER_EPOCH
    )  # in the 2nd epoch (at its end if the poll is late)
    assert not sweeps["third_had_results"] and not sweeps["fourth_started"]
    line = f"sweep: 4 jobs in {sweeps['killed']}: 2 done (skipped), 1 resumed from last.ckpt, 1 new"
    assert line in sweeps["rerun"], sweeps["rerun"][-3000:]
    assert sweeps["rerun"].count("(results.json kept)") == 2
    assert re.search(r"resuming from \S*last\.ckpt", sweeps["rerun"])


@pytest.mark.slow
def test_every_job_ends_as_in_an_uninterrupted_sweep(sweeps: dict):
    for job in JOBS:
        resumed = job == JOBS[2]
        expected = results(job_dir(sweeps["whole"], job), resumed)
        assert results(job_dir(sweeps["killed"], job), resumed) == expected, job


@pytest.mark.slow
def test_finished_jobs_are_left_untouched(sweeps: dict):
    for job in JOBS[:2]:
        assert sweeps["after"][job] == sweeps["before"][job], job
    for job in (JOBS[0], JOBS[1], JOBS[3]):  # skipped by the joblib rerun too
        assert sweeps["after_joblib"][job] == sweeps["after"][job], job


@pytest.mark.slow
def test_joblib_launcher_skips_and_resumes(sweeps: dict):
    line = f"sweep: 4 jobs in {sweeps['killed']}: 3 done (skipped), 1 resumed from last.ckpt, 0 new"
    assert line in sweeps["joblib"], sweeps["joblib"][-3000:]
    third = job_dir(sweeps["killed"], JOBS[2])
    assert results(third, resumed=True) == sweeps["rerun_results"]


def write_results(folder: Path, overrides: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"best_val_acc": 0.5, "overrides": overrides}))


def write_last(folder: Path, run_config: dict) -> None:
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "run_config": run_config}, folder / "checkpoints/last.ckpt")


def test_identity_ignores_paths_and_how_a_run_was_resumed():
    exclude = ["data.root", "data.num_workers"]
    a = ["seed=1", "trainer.deterministic=true", "data.root=/x", "ckpt_path=/a/last.ckpt"]
    b = ["data.root=/y", "data.num_workers=4", "trainer.deterministic=True", "seed=1"]
    assert identity(a, exclude) == identity(b, exclude) == ["seed=1", "trainer.deterministic=True"]
    assert identity(["seed=1"], exclude) != identity(["seed=2"], exclude)
    assert identity(["seed=[1"]) is None


def test_job_state(tmp_path: Path):
    assert job_state(tmp_path / "absent", ["seed=1"]) == NEW
    write_results(tmp_path, ["seed=1", "data.root=/x"])
    assert job_state(tmp_path, ["data.root=/y", "seed=1"], ["data.root"]) == DONE
    assert job_state(tmp_path, ["seed=2"]) == NEW  # another run's results: run, not skip
    write_last(tmp_path, {"seed": 1, "ckpt_path": None, "data": {"root": "/x", "size": 3}})
    assert job_state(tmp_path, ["seed=2"]) == RESUME  # the sweep summary: no config to compare
    now = {"seed": 1, "ckpt_path": "/c", "data": {"root": "/y", "size": 3}}
    assert job_state(tmp_path, ["seed=2"], ["data.root"], run_config=now) == RESUME
    other = {"seed": 2, "ckpt_path": None, "data": {"root": "/x", "size": 3}}
    assert job_state(tmp_path, ["seed=2"], ["data.root"], run_config=other) == NEW
    (tmp_path / "results.json").write_text("{trunc")  # unreadable: not done
    assert job_state(tmp_path, ["seed=1"]) == RESUME
    shutil.rmtree(tmp_path / "checkpoints")
    assert job_state(tmp_path, ["seed=1"]) == NEW


def test_an_explicit_ckpt_path_wins_over_the_folder(tmp_path: Path):
    write_results(tmp_path, [])
    cfg = OmegaConf.create({"ckpt_path": "/elsewhere/last.ckpt", "train": True})
    assert check_job(cfg, tmp_path).state == NEW


def test_sacct_errors_become_one_line_that_says_what_they_mean(caplog: pytest.LogCaptureFixture):
    import logging

    from cifar_lightning.slurm import NO_ACCOUNTING, quiet_sacct

    quiet_sacct()
    quiet_sacct()  # once per process: a second call adds nothing
    logger = logging.getLogger("submitit")
    with caplog.at_level(logging.INFO, logger="submitit"):
        for call in (1, 2, 3):
            logger.warning(
                f"Call #{call} - Bypassing sacct error Command '['sacct', '-j', '7']' "
                "returned non-zero exit status 1., status may be inaccurate."
            )
        logger.warning("Bypassing signal SIGTERM")  # other warnings still show
        logger.error("a real error")
    assert [r.getMessage() for r in caplog.records] == [
        NO_ACCOUNTING,
        "Bypassing signal SIGTERM",
        "a real error",
    ]
    assert "a cancelled job is not seen" in NO_ACCOUNTING
