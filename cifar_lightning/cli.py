"""The command-line entry of train.py and eval.py: every error the user can fix ends as one
`error: ...` line on stderr and exit status 2, wherever it is raised.

- before Hydra starts (check_cli): an output folder that cannot be written, a Hydra plugin or
  tracker package that is not installed, errors Hydra would only report with a traceback;
- while Hydra composes the config (run_main): an unknown option or key, a malformed override,
  with Hydra's own text (e.g. the list of valid options) on that one line;
- in the task (cli_guard): a UserError, also inside Hydra's "Error in call to target" wrapper;
  a ValueError or TypeError a constructor raised for the config's values; Lightning's
  MisconfigurationException (e.g. trainer=gpu on a machine without one).

HYDRA_FULL_ERROR=1 keeps tracebacks for all but UserErrors, for debugging.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from hydra.types import RunMode
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pytorch_lightning.utilities import rank_zero_only

from cifar_lightning import provenance
from cifar_lightning.errors import EXIT_USAGE, UserError

log = logging.getLogger(__name__)

# `group=option` on the command line -> (module the option needs, pip extra that installs it):
# Hydra plugins, and the experiment trackers' packages (logger=many includes mlflow).
PLUGINS = {
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "sweep"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/sweeper=optuna_study": ("optuna", "sweep"),  # the project's (cifar_lightning/study.py)
    "hparams_search=optuna_lr": ("optuna", "sweep"),
    "logger=mlflow": ("mlflow", "mlflow"),
    "logger=many": ("mlflow", "mlflow"),
    "logger=wandb": ("wandb", "wandb"),
}
FULL_ERROR = "HYDRA_FULL_ERROR"
TRACEBACKS = "CIFAR_LIGHTNING_TRACEBACKS"  # run_main: "1" when the user set HYDRA_FULL_ERROR=1
_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")


def exit_with(message: str) -> NoReturn:
    # Under DDP every rank may hit the same error: one `error:` line, the others labelled.
    rank = f"[rank {rank_zero_only.rank}] " if rank_zero_only.rank else ""
    print(f"{rank}error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _one_line(text: str) -> str:
    """Hydra's and OmegaConf's multi-line messages on one line: tab-indented lists (the valid
    options) joined with commas, the config search path and key details left out."""
    out = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            break
        if not line or line.startswith(_NOISE):
            continue
        if not out:
            out = line
        elif raw.startswith("\t") and not out.endswith(":"):
            out += f", {line}"  # the next item of a list
        else:
            out += (" " if out.endswith((".", ":", "?", "!")) else ". ") + line
    return out or text.strip()


def _causes(err: BaseException) -> list[BaseException]:
    """err and what it was raised from (`raise ... from`), outermost first."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    return chain


def _trainer_message(err: BaseException) -> str:
    message = f"Lightning cannot use these trainer settings: {_one_line(str(err))}"
    if not torch.cuda.is_available() and re.search(r"gpu|cuda", str(err), re.IGNORECASE):
        job = HydraConfig.get().job.name if HydraConfig.initialized() else "train"
        if job not in ("eval", "predict", "export"):
            message += (
                " This machine has no GPU: train on the CPU with trainer=cpu (for "
                "experiment=fast94, use experiment=fast_cpu, its CPU recipe)."
            )
        else:  # a trained run's own trainer settings, of which only the device may change
            message += (
                f" This machine has no GPU: run {job}.py on the CPU with trainer.accelerator=cpu"
                + (" (the run's other trainer settings, precision included, stay)." if
                   job == "eval" else ".")
            )  # fmt: skip
    return message


def _built_message(err: InstantiationException) -> str:
    """Hydra's "Error in call to target 'T': ValueError(...) full_key: K" as one sentence."""
    text = str(err)
    target = re.search(r"target '([^']+)'", text)
    key = re.search(r"full_key: (\S+)", text)
    where = key.group(1) if key else "the config"
    what = f" ({target.group(1)})" if target else ""
    return f"cannot build {where}{what} from its settings: {_one_line(str(err.__cause__))}"


def user_message(err: BaseException) -> str | None:
    """The one-line message of an error raised while the task ran that the user can fix, or
    None for a bug (which keeps its traceback)."""
    chain = _causes(err)
    for e in chain:
        if isinstance(e, UserError):
            return str(e)
    if os.environ.get(TRACEBACKS) == "1":
        return None
    for e in chain:
        if isinstance(e, MisconfigurationException):
            return _trainer_message(e)
    refused = isinstance(err.__cause__, ValueError | TypeError)  # by a constructor: bad values
    if isinstance(err, InstantiationException) and refused:
        return _built_message(err)
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} has no value (???): pass {err.full_key}=VALUE."
    if isinstance(err, ValueError) and str(err).strip().startswith("`val_check_interval` ("):
        return _trainer_message(err)  # Lightning's check against the epoch's batch count
    return None


def config_message(err: BaseException, app: str = "train") -> str | None:
    """The one-line message of an error Hydra raised while composing `app`.py's config."""
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {_one_line(err.message)}"
    if isinstance(err, HydraException | OmegaConfBaseException):
        message = _one_line(str(err))
        unknown = re.match(r"Could not override '([^']+)'\. (To append|No match)", message)
        # Hydra's "+key" hint would add a key that nothing reads (a typo kept), except under
        # trainer, where any Lightning Trainer argument may be added that way.
        if unknown and unknown.group(2) == "No match":
            group, script = unknown.group(1), f"{app}.py"
            device = " (the device: trainer.accelerator=cpu or gpu)" if group == "trainer" else ""
            return (f"{script} has no config group {group}{device}: check the spelling (python "
                    f"{script} --help lists its groups).")  # fmt: skip
        if unknown and not unknown.group(1).startswith("trainer."):
            return (f"{unknown.group(1)} is not a key of this config: check its spelling "
                    f"(python {app}.py --cfg job lists the keys).")  # fmt: skip
        if isinstance(err.__cause__, OmegaConfBaseException):
            message += f" ({_one_line(str(err.__cause__))})"
        return message
    return None


def cli_guard(task: Callable[[Any], Any], cfg: Any) -> Any:
    """Run a Hydra task, turning an error the user can fix (user_message) into one message and
    exit status 2.

    In a multirun the error is re-raised instead: SystemExit would abort the remaining jobs,
    whereas an exception lets Hydra finish the sweep and fail at its end (run_main then
    prints it).
    """
    try:
        return task(cfg)
    except Exception as err:
        message = user_message(err)
        if message is None:  # a bug: its traceback on the console, its last line in the log
            _log_to_files(f"error: {type(err).__name__}: {_one_line(str(err))}")
            raise
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            # Each failed job says so on the console as it ends; run_main prints the sweep's
            # error once more at its end, when the others have run.
            log.error("error: %s", message)
            raise
        _log_to_files(f"error: {message}")
        exit_with(message)


def _log_to_files(message: str) -> None:
    """An ERROR record for the run's log file only (the report reads a failed run's reason
    there): exit_with prints the console's one line, which the console handler would repeat."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    logger: logging.Logger | None = log
    while logger is not None:  # the handlers a record of `log` reaches, as Logger.handle walks
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        logger = logger.parent if logger.propagate else None


def _in_task(err: BaseException) -> bool:
    return any(f.f_code is cli_guard.__code__ for f, _ in traceback.walk_tb(err.__traceback__))


def run_main(hydra_main: Callable[[], Any], argv: list[str]) -> None:
    """train.py's and eval.py's entry: check_cli, then the @hydra.main function.

    Hydra prints its own report of a config error and exits 1; with HYDRA_FULL_ERROR=1 it
    raises instead, which lets this print it as one line and exit 2. Only errors raised before
    the task ran are read as config errors: one from inside the task is a bug unless
    user_message says otherwise, and keeps its traceback."""
    app = Path(inspect.getfile(inspect.unwrap(hydra_main))).stem  # train, eval, ...: Hydra's job
    try:
        check_cli(argv, app=app)
    except UserError as err:
        exit_with(str(err))
    provenance.code_at_start()  # the code this process imported, before a long sweep goes on
    if TRACEBACKS not in os.environ:  # what the user asked for, kept for child processes (DDP)
        os.environ[TRACEBACKS] = "1" if os.environ.get(FULL_ERROR) == "1" else "0"
    if os.environ[TRACEBACKS] == "1":
        hydra_main()
        return
    os.environ[FULL_ERROR] = "1"
    try:
        hydra_main()
    except Exception as err:
        # A UserError outside the task: the sweeper's (e.g. an unreachable study storage).
        in_task = _in_task(err) or isinstance(err, UserError)
        message = user_message(err) if in_task else config_message(err, app)
        if message is None:
            raise
        exit_with(message)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"cannot write run outputs to {folder} ({err.strerror or err}). "
                        f"Choose a writable folder with {key}=PATH.") from err  # fmt: skip


# Keys of earlier versions -> what replaced them.
RENAMED = {"data_root": "data.root"}
# Options of earlier versions -> why they went and what replaced them.
REPLACED = {
    "hydra/sweeper=optuna": "hydra/sweeper=optuna was hydra-optuna-sweeper's, which needs optuna<3 "
    "(no database storage beside SQLAlchemy 2): use hydra/sweeper=optuna_study, the project's",
}


def check_cli(argv: list[str], default_dir: str = "outputs", app: str | None = None) -> None:
    """Hydra plugins the arguments name are installed; the run (or sweep) folder is writable,
    and (for `app`, the script's name) not another script's run folder."""
    args = [a.lstrip("+") for a in argv]
    for arg in args:
        old = arg.split("=", 1)[0]
        if old in RENAMED:
            raise UserError(f"{old}= is no longer a key: use {RENAMED[old]}=PATH, the same key "
                            f"as train.py's.")  # fmt: skip
        if arg in REPLACED:
            raise UserError(REPLACED[arg])
        if arg in PLUGINS and not _installed(PLUGINS[arg][0]):
            module, extra = PLUGINS[arg]
            raise UserError(f"{arg} needs {module}, which is not installed. "
                            f"Install it with: pip install -e '.[{extra}]'")  # fmt: skip
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    chosen = [a for a in args if a.startswith(f"{key}=")]
    folder = _static_folder(chosen[-1]) if chosen else Path(default_dir)
    if folder is not None:
        check_writable(folder, key)
    if chosen and folder is not None and not multirun and app is not None:
        check_own_folder(folder, app)


def check_own_folder(folder: Path, app: str) -> None:
    """A run folder another script made (eval.py pointed at train.py's run, say) is refused
    before Hydra starts: Hydra would replace its .hydra/ record, and the script its
    results.json, metrics.csv or predictions. The same script's folder is its own to reuse
    (train.py resumes or reruns a job there)."""
    try:
        record = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())
        made_by = record["hydra"]["job"]["name"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return  # no readable record of another script: nothing of one to lose
    if made_by != app:
        raise UserError(
            f"hydra.run.dir={folder} is a {made_by}.py run's folder: {app}.py would overwrite "
            f"its record (.hydra/, results). Pass another hydra.run.dir, or leave it out "
            f"({app}.py then makes a new folder under outputs/)."
        )


def _static_folder(override: str) -> Path | None:
    """The folder a `key=value` override names, as far as it is known before Hydra resolves
    it: the value as Hydra parses it (quotes and escapes: Lightning's DDP relaunch passes
    hydra.run.dir="..."), and for a value with an interpolation (outputs/${now:...}) the folder
    above it, so that no literal '${' folder is made. None: Hydra will reject the override."""
    try:
        value = OverridesParser.create().parse_override(override).value()
    except HydraException:
        return None  # run_main reports Hydra's own message
    if not isinstance(value, str):
        return None
    if "${" in value:
        return Path(value.split("${", 1)[0] + "x").parent  # the part before it, as a folder
    return Path(value)
