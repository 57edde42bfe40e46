"""The Optuna study's database for cifar_lightning/study.py: opening it, and telling a dead
worker's trial from a live one's.

A trial is RUNNING from the moment it is asked. Optuna's heartbeat (RDBStorage's
heartbeat_interval and grace_period) then updates a timestamp for it from the worker's process;
its fail_stale_trials fails a RUNNING trial whose timestamp is older than grace_period, and
leaves one with a fresh timestamp alone, whichever machine runs it. It skips a trial that has no
timestamp at all, which is what a worker killed between the ask and its first heartbeat leaves
(milliseconds, but a kill can land there): such a trial would count as running for ever.
Every worker of these studies writes heartbeats, so fail_stale also fails a trial with none
that was asked more than grace_period ago.

A sweep folder holds one study's trials (trial_<number>/, optimization_results.yaml): each study
records its folder (FOLDER_ATTR) before it asks a trial, and folder_owner names another study
whose trials are in the folder first, by the storage's trial ids (given in the order asked, across
studies, by the database itself), so of two searches started at once in one folder exactly one
goes on.
"""

from __future__ import annotations

import logging
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from sqlalchemy import Column, DateTime, Integer, String

from cifar_lightning.errors import UserError

log = logging.getLogger("cifar_lightning")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BUSY = (*FINISHED, TrialState.RUNNING)  # what takes one of the study's n_trials slots
FOLDER_ATTR = "sweep_dir"  # the study's user attribute: the sweep folder its trials run in
# Optuna's schema, as far as it is read here (tables trials and trial_heartbeats, unchanged since
# optuna 2.x): nothing in Optuna's API reads heartbeats.
_SCHEMA = sqlalchemy.MetaData()
_TRIALS = sqlalchemy.Table(
    "trials", _SCHEMA, Column("trial_id", Integer), Column("number", Integer),
    Column("study_id", Integer),
)  # fmt: skip
_STUDIES = sqlalchemy.Table(
    "studies", _SCHEMA, Column("study_id", Integer), Column("study_name", String)
)
_BEATS = sqlalchemy.Table(
    "trial_heartbeats", _SCHEMA, Column("trial_id", Integer), Column("heartbeat", DateTime)
)


def shown(url: str) -> str:
    """The storage URL for the console, its password hidden."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(
    url: str, heartbeat_interval: int, grace_period: int
) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage at `url` with the heartbeat on; a UserError for what the user can fix
    (a malformed URL, a missing database driver, a schema of another Optuna version)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Two workers on one file: wait for the other's write lock rather than fail after 5 s.
        engine_kwargs = {"connect_args": {"timeout": 60}}
        database = sqlalchemy.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    # Workers started together may race to create the tables and the schema stamp; the loser's
    # statement fails on the winner's primary keys and a retry finds them in place.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # the heartbeat arguments
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                )  # fmt: skip
        except sqlalchemy.exc.ArgumentError as err:
            raise UserError(f"hydra.sweeper.storage={shown(url)} is not a SQLAlchemy URL (e.g. "
                            f"sqlite:///optuna.db, postgresql://host/db)") from err  # fmt: skip
        except ImportError as err:
            raise UserError(f"hydra.sweeper.storage={shown(url)} needs a database driver that is "
                            f"not installed: {err.__cause__ or err}") from err  # fmt: skip
        except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as err:
            if attempt == 4 or isinstance(err, RuntimeError):  # RuntimeError: schema mismatch
                raise UserError(f"cannot open the Optuna storage {shown(url)}: "
                                f"{str(err).splitlines()[0]}") from err  # fmt: skip
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def heartbeat_ages(study: optuna.Study, storage: optuna.storages.RDBStorage) -> dict[int, float]:
    """Seconds since each RUNNING trial's last heartbeat (the database's clock, as Optuna's own
    rule), or for one without any since it was asked; {} where the schema cannot be read."""
    try:
        study_id = storage.get_study_id_from_name(study.study_name)
        query = (
            sqlalchemy.select(_TRIALS.c.number, _BEATS.c.heartbeat)
            .select_from(_TRIALS.outerjoin(_BEATS, _BEATS.c.trial_id == _TRIALS.c.trial_id))
            .where(_TRIALS.c.study_id == study_id)  # the state is filtered below: its column
            # is an enum type in PostgreSQL, which a string does not compare with
        )
        with storage.engine.connect() as connection:
            db_now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            beats = dict(connection.execute(query).all())
    except sqlalchemy.exc.SQLAlchemyError as err:  # another schema: Optuna's rule alone
        log.debug("study: cannot read the trials' heartbeats (%s)", err)
        return {}
    db_now = db_now.replace(tzinfo=None)  # PostgreSQL's is aware, its stored heartbeats naive
    ages = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number not in beats:
            continue
        beat = beats[trial.number]
        # Without a heartbeat: datetime_start, the asking worker's clock (Optuna's
        # datetime.now()); across machines this assumes clocks within grace_period.
        since = db_now - beat if beat is not None else datetime.now() - trial.datetime_start
        ages[trial.number] = since.total_seconds()
    return ages


def fail_stale(
    study: optuna.Study, storage: optuna.storages.RDBStorage, grace_period: int
) -> list[int]:
    """Mark FAIL the RUNNING trials of dead workers (the module's docstring says which); returns
    their numbers. A FAIL trial does not count towards n_trials: its slot is asked again."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    # What Optuna's rule leaves: trials that never beat (a kill between the ask and the beat).
    silent = [n for n, age in heartbeat_ages(study, storage).items() if age > grace_period]
    for number in silent:
        try:
            study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker failed it first
            pass
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    stale = sorted(t.number for t in failed if t.number in running)
    for number in stale:
        log.warning("study: trial %d was left RUNNING by a worker that stopped (no heartbeat "
                    "for %ds): marked FAIL, its slot is asked again", number,
                    grace_period)  # fmt: skip
    return stale


def counts(study: optuna.Study) -> dict[str, int]:
    """The number of the study's trials in each state, by the state's name."""
    trials = study.get_trials(deepcopy=False)
    return {state.name: sum(t.state == state for t in trials) for state in TrialState}


def folder_owner(storage: optuna.storages.RDBStorage, study_name: str, folder: str) -> str | None:
    """The name of another study with trials in `folder` (FOLDER_ATTR) whose first trial was
    asked before study_name's first (all of them, if it has none), or None: the folder is
    study_name's to use. A study that records its folder before it asks has no trial older than
    the check of any trial asked since, so two studies never both go on."""
    others = [
        other.study_name
        for other in storage.get_all_studies()
        if other.study_name != study_name and other.user_attrs.get(FOLDER_ATTR) == folder
    ]
    if not others:
        return None
    query = (
        sqlalchemy.select(_STUDIES.c.study_name, sqlalchemy.func.min(_TRIALS.c.trial_id))
        .select_from(_STUDIES.join(_TRIALS, _TRIALS.c.study_id == _STUDIES.c.study_id))
        .where(_STUDIES.c.study_name.in_([*others, study_name]))
        .group_by(_STUDIES.c.study_name)
    )
    with storage.engine.connect() as connection:
        first = dict(connection.execute(query).all())
    mine = first.get(study_name, float("inf"))
    earlier = sorted((first[name], name) for name in others if first.get(name, mine) < mine)
    return earlier[0][1] if earlier else None
