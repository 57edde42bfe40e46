"""Optuna searches keep their study in a database (cifar_lightning/study.py): a search killed with
SIGKILL and rerun runs only the trials it still owes, its killed trial marked FAIL; two workers
started at once on one study share its trials, each with its own values and folder. Then the
pieces in-process: the search space, the study's name, the heartbeat rule, one study a folder."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cifar_lightning import cli
from cifar_lightning.errors import UserError
from tests.conftest import REPO

optuna = pytest.importorskip("optuna", minversion="3.1")
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from cifar_lightning import study as studies  # noqa: E402
from cifar_lightning import study_storage  # noqa: E402

N_TRIALS = 4
# One thread per process (2 shared cores); see tests/test_sweep.py.
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}


def command(root: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", "hparams_search=optuna_lr", f"data.root={root}",
        "data.num_workers=0", "data.batch_size=32", "data.val_size=50", "data.train_size=128",
        "model.widths=[[8,8],[8,8],[8,8]]", "trainer.max_epochs=2",
        f"hydra.sweeper.n_trials={N_TRIALS}", f"hydra.sweep.dir={sweep_dir}", *extra,
    ]  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def states(db: Path) -> list[str]:
    """The trials' states as the worker wrote them, read-only (no table yet: none); "BEATING"
    for a RUNNING trial whose heartbeat is recorded."""
    query = ("SELECT CASE WHEN state = 'RUNNING' AND trial_heartbeats.trial_id IS NOT NULL "
             "THEN 'BEATING' ELSE state END FROM trials LEFT JOIN trial_heartbeats "
             "ON trial_heartbeats.trial_id = trials.trial_id")  # fmt: skip
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [row[0] for row in con.execute(query)]
    except sqlite3.OperationalError:
        return []


def load(sweep_dir: Path) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    [study] = storage.get_all_studies()  # one search, one study
    return optuna.load_study(study_name=study.study_name, storage=storage)


def by_state(study: optuna.Study, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(state,))


@pytest.fixture(scope="module")
def killed(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4-trial search SIGKILLed while its third trial runs and beats (heartbeat every second,
    stale after 15 s), then the same command again at once. The rerun mostly starts within the
    15 s, sees the killed trial as running, runs trial 3, then watches it stop beating until it
    is stale; on a crowded machine it starts later and fails it first. Either way: the same."""
    sweep = tmp_path_factory.mktemp("optuna") / "killed"
    cmd = command(folder_root, sweep, "hydra.sweeper.heartbeat_interval=1",
                  "hydra.sweeper.grace_period=15")  # fmt: skip
    proc = start(cmd, sweep.parent / "first.log")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = states(sweep / "optuna.db")
        if found.count("COMPLETE") == 2 and "BEATING" in found:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before it could be killed"
    at_kill = states(sweep / "optuna.db")
    rerun = finish(start(cmd, sweep.parent / "rerun.log"), sweep.parent / "rerun.log")
    return {"sweep": sweep, "at_kill": at_kill, "rerun": rerun, "study": load(sweep)}


@pytest.mark.slow
def test_a_killed_search_rerun_runs_only_the_trials_it_owes(killed: dict):
    assert sorted(killed["at_kill"]) == ["BEATING", "COMPLETE", "COMPLETE"]
    study = killed["study"]
    assert len(by_state(study, TrialState.COMPLETE)) == N_TRIALS
    assert by_state(study, TrialState.RUNNING) == []
    assert [t.number for t in by_state(study, TrialState.FAIL)] == [2]  # the killed one
    assert "trial 2 was left RUNNING by a worker that stopped" in killed["rerun"]
    # Finished trials are not repeated: the rerun launched the two owed trials, 3 and 4.
    launched = [line.split("#")[1].split(" :")[0] for line in killed["rerun"].splitlines()
                if "[HYDRA] \t#" in line]  # fmt: skip
    assert launched == ["3", "4"], killed["rerun"][-3000:]
    assert "2 of 4 trials finished" in killed["rerun"]


@pytest.mark.slow
def test_each_trial_has_its_own_folder_and_results(killed: dict):
    sweep, study = killed["sweep"], killed["study"]
    for trial in by_state(study, TrialState.COMPLETE):
        folder = Path(trial.user_attrs["output_dir"])
        assert folder == sweep / f"trial_{trial.number}"
        assert (folder / "results.json").is_file()
    best = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in best and "complete: 4" in best


@pytest.mark.slow
def test_two_workers_share_one_study(folder_root: Path, tmp_path: Path):
    sweep = tmp_path / "shared"
    procs = [(start(command(folder_root, sweep), tmp_path / f"w{i}.log"), tmp_path / f"w{i}.log")
             for i in range(2)]  # fmt: skip
    logs = [finish(proc, log) for proc, log in procs]
    study = load(sweep)
    complete = by_state(study, TrialState.COMPLETE)
    assert len(complete) == N_TRIALS and by_state(study, TrialState.RUNNING) == []
    values = [t.params["optimizer.lr"] for t in complete]
    assert len(set(values)) == N_TRIALS, values  # none proposed twice (both have seed 0)
    folders = {t.user_attrs["output_dir"] for t in complete}
    assert len(folders) == N_TRIALS and all(Path(f, "results.json").is_file() for f in folders)
    # No trial ran twice: each job number (the trial's) was launched by one worker only.
    launched = [line.split("#")[1].split(" :")[0] for text in logs for line in text.splitlines()
                if "[HYDRA] \t#" in line]  # fmt: skip
    assert len(launched) == len(set(launched)), launched


# --- in-process: the pieces ---------------------------------------------------------------------


def test_the_search_space_comes_from_hydras_sweep_syntax():
    space, fixed = studies.search_space(
        ["optimizer.lr=tag(log, interval(1e-4, 0.3))", "optimizer=choice(adam,sgd)",
         "trainer.max_epochs=range(2,8,2)", "module.label_smoothing=interval(0,0.2)", "seed=1"]
    )  # fmt: skip
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 0.3, log=True),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "trainer.max_epochs": IntDistribution(2, 6, step=2),  # range() excludes its stop
        "module.label_smoothing": FloatDistribution(0.0, 0.2),
    }
    assert fixed == ["seed=1"]
    with pytest.raises(UserError, match="nothing to search"):
        studies.search_space(["seed=1"])


def test_the_study_name_is_fixed_by_the_search_not_by_where_the_data_lies():
    def name(params: list[str], direction: str = "maximize") -> str:
        space, fixed = studies.search_space(params)
        return studies.study_name("train", direction, space, fixed, ["data.root"])

    lr = "optimizer.lr=tag(log,interval(0.0001,0.3))"
    same = name([lr, "optimizer=sgd", "data.root=/a"])
    assert same.startswith("train-")
    assert name(["optimizer=sgd", "optimizer.lr=tag(log, interval(1e-4, 0.3))"]) == same
    assert name([lr, "optimizer=adam"]) != same
    assert name(["optimizer.lr=interval(0.0001,0.3)", "optimizer=sgd"]) != same
    assert name([lr, "optimizer=sgd"], "minimize") != same
    assert name([lr, "data.root=/a"]) == name([lr]) == name([lr, "data.root=/b"])


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # ask() here
def test_only_the_trials_of_dead_workers_are_failed(tmp_path: Path):
    storage = study_storage.open_storage(f"sqlite:///{tmp_path / 's.db'}", 1, 2)
    study = optuna.create_study(storage=storage, study_name="s")
    live, dead, unborn = study.ask(), study.ask(), study.ask()  # unborn: killed before a beat
    storage.record_heartbeat(dead._trial_id)
    time.sleep(3.1)  # past grace_period (SQLite keeps whole seconds) since the dead one's beat
    storage.record_heartbeat(live._trial_id)  # a live worker beats every heartbeat_interval
    young = study.ask()  # asked just now, its first beat not written yet: alive
    assert study_storage.fail_stale(study, storage, 2) == [dead.number, unborn.number]
    running = by_state(study, TrialState.RUNNING)
    assert [t.number for t in running] == [live.number, young.number]


class Launcher:
    """Hydra's launcher for the in-process sweeps: each job returns 0.5 at once."""

    def __init__(self) -> None:
        self.launched: list[int] = []

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list:
        self.launched.append(initial_job_idx)
        return [SimpleNamespace(hydra_cfg=None, return_value=0.5)]


def in_process(sweep_dir: Path, n_trials: int = 2, db: Path | None = None) -> studies.StudySweep:
    """The sweeper as its plugin sets it up, its trials launched by Launcher."""
    sweep = studies.StudySweep(
        direction="maximize", n_trials=n_trials,
        storage=f"sqlite:///{db or sweep_dir / 'optuna.db'}", study_name=None,
        heartbeat_interval=30, grace_period=120,
        sampler=OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0}),
        params=None,
    )  # fmt: skip
    job = {"config_name": "train", "config": {"override_dirname": {"exclude_keys": []}}}
    sweep.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "job": job}})
    sweep.launcher = Launcher()
    return sweep


LR_A, LR_B = ["optimizer.lr=interval(0.1,0.2)"], ["optimizer.lr=interval(0.3,0.4)"]


def test_another_search_in_a_folder_with_a_studys_trials_is_refused(tmp_path: Path):
    first = in_process(tmp_path)
    first.sweep(LR_A)
    assert first.launcher.launched == [0, 1]
    other = in_process(tmp_path)
    with pytest.raises(UserError, match="another hydra.sweep.dir") as refused:
        other.sweep(LR_B)  # its trial_0, trial_1 would be the first search's
    assert other.launcher.launched == []
    study = load(tmp_path)  # the refused search created no study
    assert study.study_name in str(refused.value) and "the same search" in str(refused.value)
    more = in_process(tmp_path, n_trials=3)  # the same search continues in its folder
    more.sweep(LR_A)
    assert more.launcher.launched == [2]
    # The other search in a folder of its own, its study in the same storage (a shared server).
    elsewhere = in_process(tmp_path / "b", db=tmp_path / "optuna.db")
    elsewhere.sweep(LR_B)
    assert elsewhere.launcher.launched == [0, 1]


def test_of_two_searches_started_at_once_in_one_folder_the_later_one_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sweep, real = in_process(tmp_path), study_storage.folder_owner
    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def racing(storage: optuna.storages.RDBStorage, name: str, folder: str) -> str | None:
        owner = real(storage, name, folder)
        if not storage.get_all_studies():  # the first check: a rival asks its trial just after
            rival = optuna.create_study(storage=optuna.storages.RDBStorage(url), study_name="rival")
            rival.set_user_attr(study_storage.FOLDER_ATTR, folder)
            rival.ask()
        return owner

    monkeypatch.setattr(studies, "folder_owner", racing)
    with pytest.raises(UserError, match="trials of study rival"):
        sweep.sweep(LR_A)  # its first trial was asked after the rival's: it gives way
    assert sweep.launcher.launched == []
    storage = optuna.storages.RDBStorage(url)
    mine = [s.study_name for s in storage.get_all_studies() if s.study_name != "rival"]
    assert [t.state for t in optuna.load_study(study_name=mine[0], storage=storage).trials] == [
        TrialState.FAIL
    ]
    assert study_storage.folder_owner(storage, "rival", str(tmp_path.resolve())) is None


def test_the_search_config_keeps_its_study_in_the_sweep_folder():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna_lr", "hydra.sweep.dir=/s"],
                      return_hydra_config=True)  # fmt: skip
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.startswith("hydra_plugins.cifar_lightning_optuna.")
    assert sweeper.storage == "sqlite:////s/optuna.db" and sweeper.study_name is None
    assert sweeper.heartbeat_interval < sweeper.grace_period
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert subdir == "trial_${hydra.job.num}"


def test_the_old_optuna_sweeper_option_says_what_replaced_it(tmp_path: Path):
    with pytest.raises(UserError, match="hydra/sweeper=optuna_study"):
        cli.check_cli(["-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path}"])
