"""The command-line entry of train.py and eval.py: checks before Hydra starts, for errors Hydra
would only report with a traceback (an output folder that cannot be written, a plugin that is
not installed), and a UserError turned into one message and exit status 2."""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from cifar_lightning.errors import EXIT_USAGE, UserError

log = logging.getLogger(__name__)

# `group=option` on the command line -> (module the option needs, pip extra that installs it)
PLUGINS = {
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "sweep"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
    "hparams_search=optuna_lr": ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
}


def cli_guard(task: Callable[[Any], Any], cfg: Any) -> Any:
    """Run a Hydra task, turning a UserError into one message and exit status 2.

    In a multirun the error is re-raised instead: SystemExit would abort the remaining jobs,
    whereas an exception lets Hydra finish the sweep and fail at its end.
    """
    try:
        return task(cfg)
    except UserError as err:
        log.error("error: %s", err)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def preflight(argv: list[str]) -> None:
    """check_cli on the command line's arguments; a UserError is one message and exit status 2."""
    try:
        check_cli(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


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


def check_cli(argv: list[str], default_dir: str = "outputs") -> None:
    """Hydra plugins the arguments name are installed; the run (or sweep) folder is writable."""
    args = [a.lstrip("+") for a in argv]
    for arg in args:
        if arg in PLUGINS and not _installed(PLUGINS[arg][0]):
            module, extra = PLUGINS[arg]
            raise UserError(f"{arg} needs a Hydra plugin that is not installed ({module}). "
                            f"Install it with: pip install -e '.[{extra}]'")  # fmt: skip
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    chosen = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")]
    check_writable(Path(chosen[-1] if chosen else default_dir), key)
