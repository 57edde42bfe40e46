"""Checkpoints: atomic writes, safe loading (weights-only, strict keys), ckpt_path=last lookup."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning_fabric.plugins import TorchCheckpointIO
from torch import nn

from cifar_lightning.errors import UserError
from cifar_lightning.fileio import atomic_write
from cifar_lightning.results import read_overrides


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file and a rename: a run killed while
    saving leaves the previous checkpoint intact instead of a truncated one.

    Kept although Lightning 2.6's own TorchCheckpointIO (lightning_fabric _atomic_save) writes
    through fsspec's transaction: fsspec puts its temporary file in $TMPDIR, not beside the
    checkpoint, and when that is another filesystem (a tmpfs /tmp, a network or scratch run
    folder) shutil.move falls back to copying onto the checkpoint in place, so a kill during the
    copy truncates it (tests/test_faults.py); nor is the file fsync'ed before it replaces the
    old one. Ours writes a sibling temporary file, fsyncs it, and renames it over the old one."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def load(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist. Pass ckpt_path=PATH to a .ckpt file "
            f"(runs keep theirs in outputs/<run>/checkpoints/)."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refusing to load {path}: it holds pickled objects that weights-only loading does "
            f"not allow ({str(err).splitlines()[0]}). Only load checkpoints written by this "
            f"project from a source you trust."
        ) from err
    except Exception as err:
        raise UserError(f"cannot read checkpoint {path} ({err}); is it a .ckpt file?") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict).")
    return ckpt


def restore_weights(module: nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Load the weights strictly: a missing or unexpected key is an error, never a silently
    untrained model (the seed's 9.75 %)."""
    try:
        result = module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches
        raise UserError(f"checkpoint {path} does not fit the model: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"checkpoint {path} does not match the model: missing keys "
            f"{result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]}. "
            f"Was it written by a run with another model= option?"
        )


def _run_overrides(run_dir: Path) -> list[str] | None:
    try:
        items = read_overrides(run_dir)
    except (OSError, yaml.YAMLError):
        return None
    return sorted(i for i in items if not i.startswith(("ckpt_path=", "hydra.")))


def find_last(overrides: list[str], search: list[Path], exclude: Path) -> Path:
    """`ckpt_path=last`: the newest checkpoints/last.ckpt of a run with the same overrides."""
    wanted = sorted(i for i in overrides if not i.startswith(("ckpt_path=", "hydra.")))
    found = set()
    for root in search:
        for ckpt in root.glob("**/checkpoints/last.ckpt"):
            run_dir = ckpt.parent.parent
            if run_dir.resolve() != exclude.resolve() and _run_overrides(run_dir) == wanted:
                found.add(ckpt.resolve())
    if not found:
        raise UserError(
            f"ckpt_path=last: no earlier run with the overrides {wanted} has "
            f"checkpoints/last.ckpt under {', '.join(map(str, search))}. Pass ckpt_path=PATH."
        )
    return max(found, key=lambda p: p.stat().st_mtime)
