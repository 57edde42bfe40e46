"""The project's SLURM launcher, where Hydra takes launchers from (it instantiates plugins only
from the hydra_plugins namespace; conf/hydra/launcher/slurm.yaml names this class). What it adds
to Hydra's submitit launcher, and why: cifar_lightning/slurm.py."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf

from cifar_lightning.slurm import collect, quiet_sacct

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
except ImportError:  # hydra-submitit-launcher is not installed (.[slurm]); cli.py says so
    submitit_launcher = None

if submitit_launcher is not None:

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            import submitit

            assert self.config is not None and len(job_overrides) > 0
            quiet_sacct()
            # As Hydra's BaseSubmititLauncher.launch (hydra-submitit-launcher 1.2): the executor,
            # its parameters and the job array; only the collection of results differs (below).
            init_keys = {"max_num_timeout", "submitit_folder"}
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR,
                folder=self.params["submitit_folder"],
                **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]},
            )
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items() if k not in init_keys
            })  # fmt: skip
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            params = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                               Singleton.get_state()))  # fmt: skip
            jobs = executor.map_array(self, *zip(*params, strict=True))
            log.info(f"SLURM jobs {', '.join(j.job_id for j in jobs)} submitted; waiting for all")
            try:
                results = collect(jobs, job_overrides, initial_job_idx)
            except KeyboardInterrupt:
                # Ctrl-C: the jobs still queued or running are cancelled too, or a rerun would
                # start them a second time in the same folders while they still run.
                left = [j for j in jobs if not j.done()]
                for job in left:
                    job.cancel(check=False)
                log.info(f"interrupted: cancelled SLURM jobs {', '.join(j.job_id for j in left)}")
                raise
            log.info(f"all {len(jobs)} jobs ended with results")
            return results
