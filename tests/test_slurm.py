"""Sweeps and DDP on a real SLURM cluster: the one-node cluster of scripts/slurm-local.sh (with
job accounting), through Hydra's submitit launcher (hydra/launcher=slurm).

Every job is tests/test_sweep.py's tiny run, one thread, deterministic, so its results.json must
equal the uninterrupted basic-launcher sweep's (`basic_sweep`), however SLURM ran it: in a job
array, requeued mid-epoch, requeued at its time limit, cancelled and rerun. Pace (tests/probes.py)
slows the jobs that a test must catch while they train; it changes nothing they learn and is
left out of the job folders' names. A requeued job waits 2 minutes before SLURM starts it again
(its fixed requeue delay); the tests move its start time to now, as `scontrol update` allows.

Without the cluster these tests skip with one line naming the script; under CI=true they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_sweep import ENV, JOBS, command, job_dir, results, step_of

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = Path(
    os.environ.get("SLURM_LOCAL_DIR") or Path(tempfile.gettempdir(), "cifar-lightning-slurm")
)
SLURM_CONF = Path(os.environ.get("SLURM_CONF") or CLUSTER / "slurm.conf")
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]  # fmt: skip
PACE_KEYS = ["callbacks.pace._target_", "callbacks.pace.seconds", "callbacks.pace.until_restart"]
EXCLUDE = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(
    ["ckpt_path", "data.root", "data.num_workers", *PACE_KEYS]) + "]"  # fmt: skip
STEPS = 8  # 2 epochs of 4 steps


def paced(seconds: float, until_restart: bool = False) -> list[str]:
    return ["+callbacks.pace._target_=tests.probes.Pace", f"+callbacks.pace.seconds={seconds}",
            f"+callbacks.pace.until_restart={until_restart}", EXCLUDE]  # fmt: skip


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    env = {**ENV, "SLURM_CONF": str(SLURM_CONF)}
    reason = None
    if shutil.which("sbatch") is None:
        reason = "SLURM is not installed"
    elif not SLURM_CONF.exists():
        reason = f"no cluster configuration at {SLURM_CONF}"
    else:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        if proc.returncode or not proc.stdout.strip().startswith(("idle", "mixed", "alloc")):
            reason = f"the cluster does not answer: {(proc.stdout + proc.stderr).strip()[:200]}"
    if reason:
        message = (
            f"needs the local SLURM cluster: sudo bash scripts/slurm-local.sh start ({reason})"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI starts the cluster: a skip there would hide a break
        pytest.skip(message)
    return env


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, log: Path, env: dict[str, str], timeout: float = 400) -> str:
    """Wait for a sweep, moving requeued jobs' start times to now; its console output."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        release_requeued(env)
        time.sleep(1)
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
        cancel_jobs(log.parent, env)  # the console log lies in the sweep folder
        pytest.fail(f"the sweep did not end in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def squeue(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Job id (N_i) -> (state, reason) of the jobs SLURM still lists."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r"], env=env, capture_output=True,
                         text=True, timeout=30).stdout  # fmt: skip
    return {i: (s, r) for i, s, r in (line.split("|") for line in out.split())}


def release_requeued(env: dict[str, str]) -> None:
    for job, (state, reason) in squeue(env).items():
        if state == "PENDING" and reason == "BeginTime":
            subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], env=env,
                           capture_output=True, timeout=30)  # fmt: skip


def scontrol(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(["scontrol", *args], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def job_id(sweep_dir: Path, index: int) -> str:
    """SLURM's id of the sweep's job #index, from submitit's folders: N_index in a job array, N
    for a sweep of one job."""
    names = [d.name for d in (sweep_dir / ".submitit").iterdir() if d.is_dir()]
    [found] = [n for n in names if n.endswith(f"_{index}")] or names
    return found


def wait_for_step(folder: Path, low: int, timeout: float = 120) -> int:
    """The step of folder's last.ckpt once it is at least `low` (mid-training)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = step_of(folder / "checkpoints" / "last.ckpt") if folder.exists() else None
        if step is not None and step >= low:
            assert step < STEPS, f"{folder.name} finished before the test could act on it"
            return step
        time.sleep(0.1)
    pytest.fail(f"no last.ckpt at step >= {low} in {folder} after {timeout:.0f} s")


def same_results(folder: Path, basic_sweep: Path, job: str, resumed: bool = False) -> None:
    got = {k: v for k, v in results(folder, resumed).items() if k != "overrides"}
    expected = {k: v for k, v in results(job_dir(basic_sweep, job), resumed).items()
                if k != "overrides"}  # fmt: skip
    assert got == expected, job


# The time-limit job runs for minutes, mostly asleep: it starts first and is checked last.
# SLURM checks time limits about every 30 s and sends the warning signal at the first check
# within signal_delay_s + 30 s of the limit: with a 1-minute limit a delay of 30 s signals at
# once, before Python has installed submitit's handler (the job dies); 10 s signals 20-50 s in.
@pytest.fixture(scope="module")
def timeout_sweep(env, folder_root: Path, tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("slurm_timeout") / "sweep"
    folder.mkdir()
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10",
             "hydra.launcher.max_num_timeout=1"]  # fmt: skip
    cmd = command(folder_root, folder, *LAUNCHER, *limit, *paced(10.0, until_restart=True),
                  seeds="1", optimizers="sgd")  # fmt: skip
    proc = start(cmd, env, folder / "console.log")
    yield {"folder": folder, "log": folder / "console.log", "proc": proc}
    if proc.poll() is None:  # deselected or failed: leave no process or job behind
        os.killpg(proc.pid, 9)
    cancel_jobs(folder, env)


def cancel_jobs(sweep_dir: Path, env: dict[str, str]) -> None:
    """scancel every job the sweep in sweep_dir submitted (the ids of submitit's folders)."""
    ids = {d.name.split("_")[0] for d in (sweep_dir / ".submitit").glob("*") if d.is_dir()}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], env=env, capture_output=True, timeout=30)


def test_a_sweep_through_slurm_ends_as_with_the_basic_launcher(
    env, timeout_sweep, folder_root: Path, basic_sweep: Path, tmp_path: Path
):
    proc = subprocess.run(command(folder_root, tmp_path, *LAUNCHER), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"sweep: 4 jobs in {tmp_path}: 0 done (skipped), 0 resumed from last.ckpt, 4 new" in out
    assert "Bypassing sacct error" not in out  # the cluster has accounting: states are read
    assert len(list((tmp_path / ".submitit").glob("*_[0-3]"))) == 4  # one job array, 4 tasks
    for job in JOBS:
        same_results(job_dir(tmp_path, job), basic_sweep, job)


def test_a_requeued_job_resumes_from_its_last_checkpoint(
    env, folder_root: Path, basic_sweep: Path, tmp_path: Path
):
    # Preemption as SLURM does it: the job is killed and requeued, mid-epoch, after its first
    # last.ckpt; it starts again in its folder and resumes by itself.
    cmd = command(folder_root, tmp_path, *LAUNCHER, *paced(1.0), seeds="0", optimizers="adam")
    proc = start(cmd, env, tmp_path / "console.log")
    folder = tmp_path / job_dir_name(tmp_path, proc)
    step = wait_for_step(folder, low=2)
    scontrol(env, "requeue", job_id(tmp_path, 0))
    out = finish(proc, tmp_path / "console.log", env)
    assert proc.returncode == 0, out[-3000:]
    log = (folder / "train.log").read_text()
    assert log.count("resuming from ") == 1 and "last.ckpt" in log, log[-2000:]
    assert 2 <= step < STEPS
    # Lightning's auto-requeue is off in submitit's jobs: submitit alone requeues.
    err = "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*_log.err"))
    assert "SLURM auto-requeueing enabled" not in err
    same_results(folder, basic_sweep, JOBS[0], resumed=True)


def job_dir_name(sweep_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    """The name of the (single) job folder once the job has made it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = [d.name for d in sweep_dir.iterdir() if d.is_dir() and "seed=" in d.name]
        if found:
            return found[0]
        time.sleep(0.1)
    pytest.fail(f"no job folder in {sweep_dir}")


def test_a_cancelled_job_ends_the_sweep_with_its_name_and_a_rerun_runs_only_it(
    env, folder_root: Path, basic_sweep: Path, tmp_path: Path
):
    cmd = command(folder_root, tmp_path, *LAUNCHER, *paced(1.0), seeds="0")
    proc = start(cmd, env, tmp_path / "console.log")
    wait_for_dirs(tmp_path, 2)
    sgd = job_dir(tmp_path, JOBS[1])
    wait_for_step(sgd, low=1)
    cancelled = job_id(tmp_path, 1)
    subprocess.run(["scancel", cancelled], env=env, check=True, timeout=30)
    out = finish(proc, tmp_path / "console.log", env)
    assert proc.returncode != 0
    [line] = [x for x in out.splitlines() if f"SLURM job {cancelled} " in x]
    assert "CANCELLED" in line and "optimizer=sgd" in line, out[-3000:]
    assert (job_dir(tmp_path, JOBS[0]) / "results.json").exists()  # the other job was waited for
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    again = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, again[-3000:]
    assert (
        f"sweep: 2 jobs in {tmp_path}: 1 done (skipped), 1 resumed from last.ckpt, 0 new" in again
    )
    same_results(job_dir(tmp_path, JOBS[0]), basic_sweep, JOBS[0])
    same_results(sgd, basic_sweep, JOBS[1], resumed=True)


def wait_for_dirs(sweep_dir: Path, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len([d for d in sweep_dir.iterdir() if d.is_dir() and "seed=" in d.name]) >= n:
            return
        time.sleep(0.1)
    pytest.fail(f"fewer than {n} job folders in {sweep_dir} after {timeout:.0f} s")


def test_a_job_at_its_time_limit_is_requeued_once_by_submitit_and_resumes(
    env, timeout_sweep: dict, basic_sweep: Path
):
    proc, folder = timeout_sweep["proc"], timeout_sweep["folder"]
    out = finish(proc, timeout_sweep["log"], env, timeout=400)
    assert proc.returncode == 0, out[-3000:]
    [run] = [d for d in folder.iterdir() if d.is_dir() and "seed=" in d.name]
    log = (run / "train.log").read_text()
    assert log.count("resuming from ") == 1, log[-2000:]
    submitit = "".join(p.read_text() for p in (folder / ".submitit").rglob("*_log.*"))
    # Each line is there twice (submitit's handler and the run's log); the run's once.
    assert submitit.count("[submitit][WARNING] - Caught signal SIGUSR2") == 1, submitit[-3000:]
    [requeued] = [x for x in submitit.splitlines() if "[submitit][INFO] - Requeued job" in x]
    assert "(0 remaining timeouts)" in requeued  # max_num_timeout=1: requeued once, no more
    # Lightning's auto-requeue (SIGUSR1, hpc_ckpt files) is off: submitit alone acted.
    assert "SLURM auto-requeueing enabled" not in submitit
    assert not list(run.rglob("hpc_ckpt_*.ckpt"))
    same_results(run, basic_sweep, JOBS[3], resumed=True)


def test_ddp_under_slurm_runs_two_ranks_and_counts_each_test_image_once(
    env, folder_root: Path, tmp_path: Path
):
    # The trainer keys are left out of the job folder's name, which would pass 255 characters.
    exclude = EXCLUDE.replace("]", ",trainer,trainer.accelerator,trainer.devices]")
    ddp = ["hydra.launcher.tasks_per_node=2", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", exclude]  # fmt: skip
    cmd = command(folder_root, tmp_path, *LAUNCHER, *ddp, seeds="0", optimizers="adam")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    [folder] = [d for d in tmp_path.iterdir() if d.is_dir() and "seed=" in d.name]
    logs = "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*_log.*"))
    for rank in (0, 1):  # Lightning set the two ranks up from SLURM's environment
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in logs, logs[-3000:]
    assert len(list(tmp_path.rglob("results.json"))) == 1
    from tests.test_e2e import single_process_eval_matches

    single_process_eval_matches(folder, tmp_path / "single")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
