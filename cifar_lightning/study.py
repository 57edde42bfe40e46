"""Optuna searches whose study lives in a database (hydra/sweeper=optuna_study).

Optuna does the searching and the bookkeeping: the sampler proposes, the storage (SQLite by
default, any SQLAlchemy URL) holds every trial, and study.optimize runs each trial under a
heartbeat. This module only turns the sweeper's config into a study, a proposal into Hydra
overrides, and a trial into one job of Hydra's launcher (numbered by the trial, so its folder is
the trial's own). What follows from keeping the study in the storage:

- One study per search: its name is derived from the direction, the search space and the task's
  overrides (not n_trials, the sampler or where the data lies), so the same command finds the
  same study. One study per sweep folder: its trials' folders are numbered by the trial, so
  another search in a folder that holds a study's trials is refused (check_folder).
- n_trials is the study's size, not a number to run: a worker runs trials while fewer than
  n_trials are finished (COMPLETE or PRUNED) or running, so a rerun runs only what is owed and
  two workers on one study share it.
- A trial whose worker died stays RUNNING in the storage. Its heartbeat stops, and once it is
  grace_period old it is marked FAIL (a failed trial does not count, so its slot is asked
  again). A RUNNING trial with a fresh heartbeat belongs to a live worker and is left alone: a
  process cannot tell more than that about a trial another machine may run (study_storage.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.exceptions import ExperimentalWarning
from optuna.trial import Trial

from cifar_lightning.errors import UserError
from cifar_lightning.fileio import atomic_write
from cifar_lightning.study_storage import (
    BUSY,
    FOLDER_ATTR,
    counts,
    fail_stale,
    folder_owner,
    heartbeat_ages,
    open_storage,
    shown,
)
from cifar_lightning.sweep import identity

log = logging.getLogger("cifar_lightning")

RESULTS_NAME = "optimization_results.yaml"
DIRECTIONS = ("maximize", "minimize")


class SurplusTrial(Exception):
    """Another worker asked for the study's last owed trial at the same moment as this one."""


def distribution(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of a sweep override (choice, range, interval, tag(log, ...)), or
    None for a plain `key=value`, which every trial gets as it is."""
    if not override.is_sweep_override():
        return None
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())  # Hydra's range excludes its stop value
        if all(isinstance(v, int) for v in values) and values:
            step = values[1] - values[0] if len(values) > 1 else 1
            return IntDistribution(values[0], values[-1], step=step)
        return CategoricalDistribution(values)
    if override.is_interval_sweep():
        value = override.value()
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise UserError(f"{override.input_line}: the Optuna sweeper takes choice(), range(), "
                    f"interval() and tag(log, interval()) sweeps")  # fmt: skip


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """({key: distribution}, the plain overrides every trial gets) of the sweeper's params and
    the command line's task overrides (a sweep there joins the search space)."""
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except HydraException as err:
        raise UserError(f"the Optuna sweeper cannot parse its params: {err}") from err
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override, argument in zip(parsed, arguments, strict=True):
        dist = distribution(override)
        if dist is None:
            fixed.append(argument)
        else:
            space[override.get_key_element()] = dist
    if not space:
        raise UserError("the Optuna sweeper has nothing to search: give hydra.sweeper.params "
                        "(e.g. optimizer.lr: tag(log, interval(1e-4, 0.3)))")  # fmt: skip
    return space, fixed


def study_name(
    config_name: str,
    direction: str,
    space: dict[str, BaseDistribution],
    fixed: list[str],
    exclude: list[str],
) -> str:
    """`<config>-<digest>`: the same search (direction, space, the other task overrides but the
    folder-name exclude_keys such as data.root) gets the same name from any worker or rerun. The
    space is hashed as the storage writes distributions (distribution_to_json), so the spelling
    of a sweep (spaces, 1e-4 or 0.0001) does not matter."""
    normalised = identity(fixed, exclude)  # None: unparsable (Hydra will say so)
    key = {
        "direction": direction,
        "space": {k: distribution_to_json(v) for k, v in sorted(space.items())},
        "fixed": sorted(fixed) if normalised is None else normalised,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{config_name}-{digest}"


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


class StudySweep:
    """What the sweeper plugin (hydra_plugins/cifar_lightning_optuna) does; its config is
    conf/hydra/sweeper/optuna_study.yaml."""

    def __init__(
        self,
        direction: str,
        n_trials: int,
        storage: str,
        study_name: str | None,
        heartbeat_interval: int,
        grace_period: int,
        sampler: DictConfig,
        params: DictConfig | None,
    ) -> None:
        if direction not in DIRECTIONS:
            raise UserError(f"hydra.sweeper.direction={direction}: use maximize or minimize")
        if not 0 < heartbeat_interval < grace_period:
            raise UserError(f"hydra.sweeper.heartbeat_interval ({heartbeat_interval}) must be "
                            f"above 0 and below grace_period ({grace_period})")  # fmt: skip
        self.direction, self.n_trials, self.storage = direction, int(n_trials), str(storage)
        self.study_name = study_name
        self.heartbeat = (int(heartbeat_interval), int(grace_period))
        self.sampler_config = sampler
        self.params = [f"{k}={v}" for k, v in (params or {}).items()]

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
        if "hydra.job.num" not in str(subdir):
            log.warning("study: hydra.sweep.subdir=%s is not named by the trial number "
                        "(${hydra.job.num}): two trials with the same values, of two workers "
                        "say, would share a folder", subdir)  # fmt: skip

    def sampler(self, number: int) -> optuna.samplers.BaseSampler:
        """The sampler for trial `number`: seeded with seed + number when a seed is set, so one
        worker alone repeats its search, and two workers (whose trial numbers differ) never
        share a seed. seed: null leaves every sampler unseeded."""
        seed = self.sampler_config.get("seed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # e.g. TPE's constant_liar
            if seed is None:
                return instantiate(self.sampler_config)
            return instantiate(self.sampler_config, seed=int(seed) + number)

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space([*self.params, *arguments])
        hydra = self.config.hydra
        exclude = list(hydra.job.config.override_dirname.exclude_keys)
        name = self.study_name or study_name(
            hydra.job.config_name, self.direction, space, fixed, exclude
        )
        self.rdb = storage = open_storage(self.storage, *self.heartbeat)
        self.folder = str(Path(hydra.sweep.dir).resolve())
        self.check_folder(name)  # before the study is created: a refused search leaves none
        study = optuna.create_study(storage=storage, study_name=name, direction=self.direction,
                                    sampler=self.sampler(0), load_if_exists=True)  # fmt: skip
        if FOLDER_ATTR not in study.user_attrs:  # recorded before any trial is asked
            study.set_user_attr(FOLDER_ATTR, self.folder)
        # Seeded for the next trial's number, as run_trial seeds each trial's sampler: what is
        # drawn as a trial is asked, before run_trial (relative samplers: multivariate TPE,
        # CMA-ES), then repeats too for one worker.
        study.sampler = self.sampler(len(study.get_trials(deepcopy=False)))
        fail_stale(study, self.rdb, self.heartbeat[1])
        found = counts(study)
        log.info("study %s in %s: %d of %d trials finished, %d running in other workers, "
                 "%d failed", name, shown(self.storage), found["COMPLETE"] + found["PRUNED"],
                 self.n_trials, found["RUNNING"], found["FAIL"])  # fmt: skip
        self.asked, watching_since = 0, None
        # Bounded by n_trials asked here: trials failing without an error must not loop for ever.
        while self.asked < self.n_trials:
            fail_stale(study, self.rdb, self.heartbeat[1])
            found = counts(study)
            finished, running = found["COMPLETE"] + found["PRUNED"], found["RUNNING"]
            if finished + running < self.n_trials:  # slots owed: ask for them
                study.optimize(
                    lambda trial: self.run_trial(trial, space, fixed),
                    n_trials=self.n_trials - self.asked,
                    catch=(SurplusTrial,),
                    callbacks=[self.stop_when_taken],
                )
                watching_since = None
            elif finished >= self.n_trials or self.alive(study, watching_since):
                break
            else:
                watching_since = watching_since or time.monotonic()
                time.sleep(min(2, self.heartbeat[0]))
        self.report(study)

    def check_folder(self, name: str) -> None:
        """Refuse to run trials in a sweep folder that holds another study's: the trial_<number>
        folders and optimization_results.yaml would be overwritten, the other study's records
        left pointing at this one's. Checked again as each trial is asked (folder_owner): of two
        searches started at once in one folder, the one that asked later stops."""
        owner = folder_owner(self.rdb, name, self.folder)
        if owner is not None:
            raise UserError(f"hydra.sweep.dir={self.folder} already holds the trials of study "
                            f"{owner} ({shown(self.storage)}); this search's study {name} would "
                            f"overwrite its trial folders and {RESULTS_NAME}. Use another "
                            f"hydra.sweep.dir for this search, or the same search as {owner} "
                            f"(its params, direction and overrides) to continue it")  # fmt: skip

    def alive(self, study: optuna.Study, watching_since: float | None) -> bool:
        """Whether the trials that other workers run, with none owed here, are alive: each has
        beaten while this worker watched (1.5 heartbeat intervals). A dead worker's stops beating,
        is failed at grace_period, and its slot comes back to the loop in sweep(): so a rerun at
        once after a kill runs the killed trial's slot too."""
        window = 1.5 * self.heartbeat[0]
        if watching_since is None:
            log.info("study %s: the last trials run in other workers; watching their heartbeats "
                     "(a dead worker's trial is failed after %ds and run here)", study.study_name,
                     self.heartbeat[1])  # fmt: skip
            return False
        ages = heartbeat_ages(study, self.rdb).values()
        return time.monotonic() - watching_since >= window and all(a < window for a in ages)

    def stop_when_taken(self, study: optuna.Study, _trial: Any) -> None:
        """After each trial: fail the stale ones, stop when every slot is finished or taken."""
        fail_stale(study, self.rdb, self.heartbeat[1])
        if len(study.get_trials(deepcopy=False, states=BUSY)) >= self.n_trials:
            study.stop()

    def run_trial(
        self, trial: Trial, space: dict[str, BaseDistribution], fixed: list[str]
    ) -> float:
        # Two workers may ask at the same moment for the last slot: the trial with the higher
        # number (asked later) gives way, so the study never holds more than n_trials.
        self.asked += 1
        before = [t for t in trial.study.get_trials(deepcopy=False, states=BUSY)
                  if t.number < trial.number]  # fmt: skip
        if len(before) >= self.n_trials:
            trial.study.stop()
            raise SurplusTrial(f"the study's {self.n_trials} trials are finished or running")
        self.check_folder(trial.study.study_name)  # raises: this trial fails, the search stops
        trial.study.sampler = self.sampler(trial.number)
        values = {name: suggest(trial, name, dist) for name, dist in space.items()}
        overrides = [f"{name}={value}" for name, value in values.items()] + fixed
        # The job's number is the trial's: unique in the study, whichever worker runs it.
        [ret] = self.launcher.launch([overrides], initial_job_idx=trial.number)
        if ret.hydra_cfg is not None:
            trial.set_user_attr("output_dir", str(ret.hydra_cfg.hydra.runtime.output_dir))
        value = ret.return_value  # raises the job's error: the trial fails, the search stops
        if not isinstance(value, int | float):
            raise UserError(f"trial {trial.number} returned {value!r}, not a number to "
                            f"{self.direction}")  # fmt: skip
        return float(value)

    def report(self, study: optuna.Study) -> None:
        """The study's state, and its best trial in the sweep folder's optimization_results.yaml
        (over all workers' trials; each worker rewrites it as it ends; the folder's one study)."""
        fail_stale(study, self.rdb, self.heartbeat[1])
        found = counts(study)
        finished = found["COMPLETE"] + found["PRUNED"]
        if finished < self.n_trials and found["RUNNING"]:
            log.info("study %s: %d of %d trials finished, %d running in other workers, which "
                     "finish it", study.study_name, finished, self.n_trials,
                     found["RUNNING"])  # fmt: skip
        elif finished < self.n_trials:  # e.g. another worker's trial failed after this one ended
            log.warning("study %s: %d of %d trials finished: rerun to run the %d owed",
                        study.study_name, finished, self.n_trials,
                        self.n_trials - finished)  # fmt: skip
        if not found["COMPLETE"]:
            return
        best = study.best_trial
        log.info("study %s: best value %s, %s (trial %d)", study.study_name, best.value,
                 best.params, best.number)  # fmt: skip
        results = {
            "name": "optuna", "study_name": study.study_name, "storage": shown(self.storage),
            "best_params": best.params, "best_value": best.value, "best_trial": best.number,
            "trials": {state.lower(): n for state, n in found.items() if n},
        }  # fmt: skip
        text = OmegaConf.to_yaml(OmegaConf.create(results))
        atomic_write(
            Path(self.config.hydra.sweep.dir) / RESULTS_NAME, lambda f: f.write(text.encode())
        )
