"""Resumable sweeps: rerun a killed `python train.py -m ...` with the same `hydra.sweep.dir` and
it continues where it stopped. What a job does is decided from its own output folder
(hydra.sweep.dir/<override_dirname>, or a fixed hydra.run.dir):

- done: results.json, written once (atomically) at the end of a run, records the same overrides.
  The job is skipped before anything is built: it returns its recorded best_val_acc and writes
  nothing (no Trainer, so no logger touching metrics.csv).
- resume: checkpoints/last.ckpt holds the same run config. Training continues from it, which is
  also what a requeued SLURM job needs.
- new: anything else. A results.json or last.ckpt of a run with another config is reported and
  overwritten by this run.

"The same" ignores ckpt_path (how a run was resumed, not what it is), hydra.* (where outputs go)
and the keys that do not name the job folder (hydra.job.config.override_dirname.exclude_keys:
data.root and data.num_workers, where the data lies and how it is loaded, not what is learnt):
a job is what names its folder. A last.ckpt is compared by the resolved run config it carries,
so a changed default in conf/ or a reused hydra.run.dir with other overrides never resumes
into a different run. Only the basic sweeper's job list can be expanded ahead of the launch;
Optuna (and other sweepers') trials are chosen as the study goes, so their sweeps are not
summarised, though a trial whose folder holds its finished results is skipped all the same.
The project's Optuna sweeper (cifar_lightning/study.py) resumes its study from its database and
says itself what is done.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Hydra's own job expansion and folder naming (private in Hydra 1.3, which pyproject pins), so
# the summary reads exactly the folders the launcher will use.
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cifar_lightning import checkpoint
from cifar_lightning.errors import UserError
from cifar_lightning.results import RESULTS_NAME

log = logging.getLogger("cifar_lightning")

DONE, RESUME, NEW = "done", "resume", "new"
IGNORED = ("ckpt_path",)  # besides hydra.* and the folder name's exclude_keys


@dataclass(frozen=True)
class Job:
    """What a job finds in its folder: `results` when done, `ckpt` to resume from."""

    state: str
    results: dict[str, Any] | None = None
    ckpt: Path | None = None


def identity(overrides: Sequence[str], exclude: Sequence[str] = ()) -> list[str] | None:
    """The overrides that make a job what it is, normalised and sorted; None if unparsable."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return None
    ignored = {*IGNORED, *exclude}
    return sorted(
        f"{o.get_key_element()}={o.get_value_element_as_str()}"
        for o in parsed
        if not o.is_hydra_override() and o.key_or_group not in ignored
    )


def finished_results(
    out_dir: Path, overrides: Sequence[str], exclude: Sequence[str] = ()
) -> dict[str, Any] | None:
    """The folder's results.json when a run with the same overrides wrote it, else None."""
    path = out_dir / RESULTS_NAME
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s): running the job again", path, err)
        return None
    recorded = results.get("overrides") if isinstance(results, dict) else None
    before = identity(recorded, exclude) if isinstance(recorded, list) else None
    now = identity(overrides, exclude)
    if before is None or before != now:
        differing = recorded if before is None else sorted(set(before) ^ set(now or []))
        log.warning("%s is from a run with other overrides (differing: %s): running this job "
                    "and overwriting it", path, differing)  # fmt: skip
        return None
    return results


def drop_results(out_dir: Path) -> None:
    """Remove the folder's results.json before a run fits there: a finished run of the same
    overrides was skipped (check_job), so it is another run's, and a run that then fails must
    not leave it naming other settings beside its own checkpoints and log."""
    (out_dir / RESULTS_NAME).unlink(missing_ok=True)


def last_checkpoint(out_dir: Path) -> Path | None:
    path = out_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def _without(config: dict, keys: Sequence[str]) -> dict:
    config = copy.deepcopy(config)
    for key in keys:
        *parents, leaf = key.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys(), key=str)
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]  # fmt: skip
    return [] if a == b else [prefix.rstrip(".")]


def resumable(ckpt: Path, run_config: dict, exclude: Sequence[str] = ()) -> bool:
    """Whether `ckpt` was written by a run with this (resolved) config, ignored keys aside."""
    try:
        stored = checkpoint.load(ckpt).get("run_config")
    except UserError as err:
        log.warning("%s: not resuming from it (%s)", ckpt, err)
        return False
    ignored = [*IGNORED, *exclude]
    diff = _differences(_without(stored or {}, ignored), _without(run_config, ignored))
    if diff:
        log.warning("%s is from a run with another config (differs in %s): starting afresh and "
                    "overwriting it (pass ckpt_path=%s to resume from it explicitly)",
                    ckpt, ", ".join(diff[:5]), ckpt)  # fmt: skip
    return not diff


def inspect_job(
    out_dir: Path,
    overrides: Sequence[str],
    exclude: Sequence[str] = (),
    run_config: dict | None = None,
) -> Job:
    """What a job with these overrides (and resolved config) should do in `out_dir`. Without
    `run_config` (the sweep summary has no job's config) any last.ckpt counts as resumable."""
    results = finished_results(out_dir, overrides, exclude)
    if results is not None:
        return Job(DONE, results=results)
    ckpt = last_checkpoint(out_dir)
    if ckpt is not None and (run_config is None or resumable(ckpt, run_config, exclude)):
        return Job(RESUME, ckpt=ckpt)
    return Job(NEW)


def job_state(
    out_dir: Path,
    overrides: Sequence[str],
    exclude: Sequence[str] = (),
    run_config: dict | None = None,
) -> str:
    """DONE, RESUME or NEW: inspect_job's verdict alone."""
    return inspect_job(out_dir, overrides, exclude, run_config).state


def check_job(cfg: DictConfig, out_dir: Path) -> Job:
    """train()'s first step, before anything writes to `out_dir`: what this job's folder says it
    should do. An explicit ckpt_path wins (the job runs as told), and train=false runs as told
    too (there is no training to resume or skip)."""
    if cfg.ckpt_path is not None or not cfg.train:
        return Job(NEW)
    hydra = HydraConfig.get()
    job = inspect_job(
        out_dir,
        overrides=list(hydra.overrides.task),
        exclude=list(hydra.job.config.override_dirname.exclude_keys),
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    if job.state == DONE:
        log.info("skipped: finished earlier with the same overrides (results.json kept)")
    elif job.state == RESUME:
        log.info("resuming from %s", job.ckpt)
    return job


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The basic sweeper's jobs, each a list of overrides, expanded as it does."""
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments = params + list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    # The config loader lets glob() sweeps over config groups expand.
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return [job for batch in batches for job in batch]


def job_dirname(config: DictConfig, overrides: Sequence[str]) -> str:
    """hydra.job.override_dirname of a job with these overrides, as Hydra computes it."""
    spec = config.hydra.job.config.override_dirname
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return get_overrides_dirname(
        overrides=[o for o in parsed if not o.is_hydra_override()],
        exclude_keys=list(spec.exclude_keys),
        item_sep=spec.item_sep,
        kv_sep=spec.kv_sep,
    )


class SweepSummary(Callback):
    """Says at the start of a multirun how many of its jobs are done, resumed or new (each job
    decides for itself in train(); this only reads the job folders)."""

    def __init__(self, config_names: Sequence[str] = ("train",)) -> None:
        self.config_names = list(config_names)  # apps whose task runs check_job

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.config_name not in self.config_names:
            return
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        if sweeper.startswith("hydra_plugins.cifar_lightning_optuna."):
            return  # its study, in its storage, knows what is done: the sweeper says so
        if not sweeper.endswith(".BasicSweeper"):
            log.info("sweep: %s chooses its jobs as it goes; only basic sweeps are resumed as a "
                     "whole (a job whose folder holds its finished results is still skipped)",
                     sweeper)  # fmt: skip
            return
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
        if subdir != "${hydra.job.override_dirname}":
            log.info("sweep: job folders are not named by their overrides (hydra.sweep.subdir="
                     "%s): no summary; each job still checks its own folder", subdir)  # fmt: skip
            return
        root = Path(config.hydra.sweep.dir)
        exclude = list(config.hydra.job.config.override_dirname.exclude_keys)
        states = Counter(
            job_state(root / job_dirname(config, job), job, exclude)
            for job in sweep_jobs(config)
        )  # fmt: skip
        log.info("sweep: %d jobs in %s: %d done (skipped), %d resumed from last.ckpt, %d new",
                 sum(states.values()), root, states[DONE], states[RESUME], states[NEW])  # fmt: skip
