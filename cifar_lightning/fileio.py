"""Atomic file writes for everything a later run or tool trusts (cache, results, checkpoints)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cifar_lightning.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through a temporary sibling and an atomic rename.

    A reader, or a run started after a killed writer, never sees a half-written file under the
    final name; two processes writing the same path at once each leave a complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # no inode left
        _raise_if_disk_full(err, path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _raise_if_disk_full(err, path)
        raise


def _raise_if_disk_full(err: BaseException, path: Path) -> None:
    if _disk_full(err):
        raise UserError(
            f"no space left to write {path}: its folder's disk (or quota) is full. Nothing was "
            f"replaced (a file already there is as it was); free some space and rerun."
        ) from err


def _disk_full(err: BaseException) -> bool:
    """Whether a write failed for want of space (a Ctrl-C or exit that came meanwhile stays
    itself). torch.save reports it as a RuntimeError ("unexpected pos ...") raised while
    handling the file's OSError: the chain is searched."""
    if not isinstance(err, Exception):
        return False
    cause: BaseException | None = err
    for _ in range(20):  # a chain, never a cycle, but bounded all the same
        if cause is None:
            return False
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
