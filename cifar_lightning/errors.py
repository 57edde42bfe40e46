"""User-facing errors: one clear message and a non-zero exit, never a traceback wall."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger(__name__)

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input or environment the user can fix; the message names the problem and the fix."""


class DataError(UserError):
    """The data set is missing, unreadable or not in an accepted layout."""


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
    """Command-line checks before Hydra starts (see cifar_lightning.preflight)."""
    from cifar_lightning.preflight import check_cli

    try:
        check_cli(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
