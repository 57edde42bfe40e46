"""Checkpoints: atomic writes, safe loading (weights-only, strict keys), resuming only the run
that wrote them, ckpt_path=last lookup."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning_fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torchmetrics import Metric

from cifar_lightning.errors import UserError
from cifar_lightning.fileio import atomic_write
from cifar_lightning.results import read_overrides

log = logging.getLogger("cifar_lightning")

# What a checkpoint's saved state means depends on these settings; resuming under others would
# mix two runs, or die inside Lightning with a wall of state-dict keys. Whole groups: another
# network or augmentation is another run, and torch restores the saved optimizer's lr, momentum
# and decay and the schedule's parameters over the new ones, so a change there would be ignored.
RESUME_GROUPS = ("model", "optimizer", "scheduler", "augment")
# data: which images are training images (the split), what a saved batch position counts, and
# the flip pattern (augmentation kept in data).
RESUME_DATA_KEYS = ("val_size", "train_size", "split_seed", "batch_size", "loader",
                    "alternating_flip")  # fmt: skip
# module: all but options that change the loss, the test or the input size, not saved state.
RESUME_FREE_MODULE_KEYS = ("label_smoothing", "tta_level", "train_resolution", "channels_last",
                           "compile")  # fmt: skip
# With a schedule: the settings that give the run's length in steps, which the schedule's
# saved state was sized for (OneCycleLR fails past it; cosine would rise again, linear stay 0).
RESUME_LENGTH_KEYS = ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches")
# A run config without one of them ran as Lightning runs without it (conf/trainer/default.yaml
# did not always list max_steps): an absent key equals Lightning's default (all batches: 1.0).
LIGHTNING_DEFAULTS = {"max_epochs": None, "max_steps": -1, "limit_train_batches": 1.0,
                      "accumulate_grad_batches": 1}  # fmt: skip
# Keys added to conf/ after checkpoints were written: a run config without one ran as with this.
ADDED_KEYS = {"augment.padding_mode": "constant"}
_ABSENT = object()


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
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt"))[:3]
        hint = (f"in it: {', '.join(found)}" if found else
                "it holds none; runs keep theirs in outputs/<run>/checkpoints/")  # fmt: skip
        raise UserError(f"checkpoint {path} is a folder, not a .ckpt file. Pass ckpt_path=PATH "
                        f"to a .ckpt file ({hint}).")  # fmt: skip
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
    except Exception as err:  # torch's errors for a damaged file say little (KeyError(101))
        why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise UserError(
            f"cannot read checkpoint {path} ({why}): the file is damaged, cut short or not a "
            f"checkpoint. Pass ckpt_path=PATH to a .ckpt file that train.py wrote."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict).")
    return ckpt


def _names(keys: list[str]) -> str:
    """At most three key names and the count: a wrong model lists hundreds."""
    more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def restore_weights(module: nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Load the weights strictly: a missing or unexpected key is an error, never a silently
    untrained model (the seed's 9.75 %)."""
    own = module.state_dict()
    saved = ckpt["state_dict"]
    # Running metric states (train_acc, train_loss) are not weights: a checkpoint written before
    # one of them was kept may lack it, and loads with the metric's fresh state; one written by
    # an older kind of metric (train_acc's torchmetrics counts) has states this one lacks,
    # which are left out.
    metrics = tuple(f"{n}." for n, m in module.named_modules() if n and isinstance(m, Metric))
    missing = [k for k in own if k not in saved and not k.startswith(metrics)]
    unexpected = [k for k in saved if k not in own and not k.startswith(metrics)]
    saved = {k: v for k, v in saved.items() if k in own}
    shapes = [
        f"{k} (file {list(saved[k].shape)}, model {list(v.shape)})"
        for k, v in own.items()
        if k in saved and isinstance(saved[k], torch.Tensor) and saved[k].shape != v.shape
    ]
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("other shapes", shapes))
    problems = [f"{label}: {_names(keys)}" for label, keys in found if keys]
    if problems:
        raise UserError(
            f"checkpoint {path} does not fit the model ({'; '.join(problems)}). Was it "
            f"written by a run with another model= option, or is the file damaged?"
        )
    try:
        module.load_state_dict({**own, **saved}, strict=True)  # absent metric states: fresh
    except RuntimeError as err:  # anything the key and shape checks above let through
        brief = " ".join(str(err).split())[:300]
        raise UserError(f"checkpoint {path} does not fit the model: {brief}") from err


def _plain(cfg: Mapping, key: str) -> Any:
    value = cfg.get(key, _ABSENT)
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _resume_settings(cfg: Mapping, scheduled: bool) -> dict[str, Any]:
    """The settings a resume must keep, as `dotted.key: value`, from a run config."""
    out = {}
    for group in RESUME_GROUPS:
        out.update(_flat(_plain(cfg, group), group))
    for key, default in ADDED_KEYS.items():
        if key.split(".")[0] in cfg:
            out.setdefault(key, default)
    data, module, trainer = (_plain(cfg, k) for k in ("data", "module", "trainer"))
    data = data if isinstance(data, Mapping) else {}
    out.update({f"data.{k}": data.get(k, _ABSENT) for k in RESUME_DATA_KEYS})
    if isinstance(module, Mapping):
        kept = {k: v for k, v in module.items() if k not in RESUME_FREE_MODULE_KEYS}
        out.update(_flat(kept, "module"))
    if scheduled and isinstance(trainer, Mapping):
        out.update(
            {f"trainer.{k}": trainer.get(k, LIGHTNING_DEFAULTS[k]) for k in RESUME_LENGTH_KEYS}
        )
    out["seed"] = _plain(cfg, "seed")
    return out


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value)


def check_resume(ckpt: dict[str, Any], cfg: DictConfig | Mapping, path: str | Path) -> None:
    """Refuse to resume a checkpoint under settings that change what its saved state means
    (RESUME_*): one UserError listing each differing key as `old → new`. Settings of where and
    how the run happens (data.root, num_workers, trainer.devices, loggers, callbacks, health,
    max_epochs without a schedule) may differ."""
    old = ckpt.get("run_config")
    if not isinstance(old, Mapping):
        log.warning("checkpoint %s holds no run config: cannot check that it is this run's", path)
        return
    scheduled = old.get("scheduler") is not None
    before, after = _resume_settings(old, scheduled), _resume_settings(cfg, scheduled)
    keys = sorted(set(before) | set(after), key=lambda k: (not k.endswith("._target_"), k))
    diffs = [
        f"{k}: {_show(before.get(k, _ABSENT))} → {_show(after.get(k, _ABSENT))}"
        for k in keys
        if before.get(k, _ABSENT) != after.get(k, _ABSENT)
    ]
    if not diffs:
        return
    shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
    raise UserError(
        f"checkpoint {path} was written by a run with other settings ({shown}). Resume with "
        f"the same settings, or start a new run without ckpt_path."
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
