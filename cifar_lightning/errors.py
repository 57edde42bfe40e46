"""User-facing errors: one clear message and a non-zero exit, never a traceback wall (the exit is
cifar_lightning.cli's)."""

from __future__ import annotations

EXIT_USAGE = 2  # the exit status of a UserError on the command line
EXIT_BAD_IMAGES = 3  # predict.py: some input files could not be read (their rows say why)


class UserError(Exception):
    """Bad input or environment the user can fix; the message names the problem and the fix."""


class DataError(UserError):
    """The data set is missing, unreadable or not in an accepted layout."""
