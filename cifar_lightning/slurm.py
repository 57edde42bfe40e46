"""SLURM sweeps through Hydra's submitit launcher (hydra/launcher=slurm), with what a sweep on a
real cluster needs on top. The launcher itself is hydra_plugins/cifar_lightning_slurm (Hydra
takes launchers from that namespace only); its parts are here:

- Every job is waited for, then the jobs that ended without results (cancelled, failed, timed
  out for good) are named in one error. Hydra's launcher stops at the first such job in launch
  order while the others still run, and a rerun would then start them a second time in their
  folders. Rerunning the same command runs only the jobs without results (sweep.py).
- One requeue mechanism: submitit's. It asks SLURM for SIGUSR2 `signal_delay_s` before the time
  limit and requeues the job itself (up to `max_num_timeout` times); the requeued job resumes
  from its last.ckpt (sweep.py). Lightning's SLURM auto-requeue (SIGUSR1, its own hpc_ckpt
  files) is switched off in submitit's jobs (cluster_plugins), so that nothing else
  requeues or writes checkpoints. A plain `sbatch` job keeps Lightning's.
- A cluster without job accounting: submitit reads job states only with sacct, and warns three
  times at every poll when sacct fails. The first warning becomes one line that says what it
  means; the others are dropped (other warnings still show).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import filter_overrides

SACCT_ERROR = re.compile(r"Bypassing sacct error")
NO_ACCOUNTING = (
    "SLURM job accounting is off on this cluster (sacct fails): job states cannot be read, so "
    "a cancelled job is not seen and the sweep waits for it (stop it with Ctrl-C, which cancels "
    "its unfinished jobs; a rerun of the same command runs only what is missing). Further "
    "sacct errors are not shown."
)


class SacctErrorOnce(logging.Filter):
    """Turns submitit's first "Bypassing sacct error" warning into NO_ACCOUNTING and drops the
    rest; any other record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not SACCT_ERROR.search(record.getMessage()):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = NO_ACCOUNTING, ()
        return True


def quiet_sacct() -> None:
    """Install SacctErrorOnce on submitit's logger (once per process)."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, SacctErrorOnce) for f in logger.filters):
        logger.addFilter(SacctErrorOnce())


def collect(jobs: Sequence, job_overrides: Sequence[Sequence[str]], first: int) -> list:
    """Every job's result, once all have ended; one error naming each job that has none."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    results, missing = [], []
    for idx, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True), start=first):
        try:
            results.append(job.results()[0])
        except UncompletedJobError as e:
            # FailedJobError: the job raised (sacct may still say RUNNING for a moment); else it
            # was stopped from outside: CANCELLED, TIMEOUT, NODE_FAIL, ... (sacct's word).
            why = "it raised an error" if isinstance(e, FailedJobError) else job.state
            names = " ".join(filter_overrides(overrides))
            missing.append(f"SLURM job {job.job_id} (#{idx}: {names}) ended without results "
                           f"({why}); its log: {job.paths.stderr}")  # fmt: skip
    if missing:
        from cifar_lightning.errors import UserError

        lines = "\n  ".join(missing)
        raise UserError(
            f"{len(missing)} of {len(jobs)} jobs ended without results:\n  {lines}\n"
            "Rerun the same command (same hydra.sweep.dir) to run only the jobs without results."
        )
    return results


def cluster_plugins() -> list[Any]:
    """In a job that submitit started on SLURM (hydra/launcher=slurm): Lightning's SLURM
    environment without its auto-requeue, because submitit requeues such jobs itself
    (this module's docstring). Elsewhere none: Lightning detects SLURM, or not, by itself, and a
    plain sbatch job keeps Lightning's requeue on SIGUSR1."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]
