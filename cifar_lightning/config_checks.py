"""Checks of a config before anything is built from it.

check_targets: a checkpoint's stored run config is data from wherever the file came from, yet
eval.py builds the data module, network, optimizer and schedule by Hydra's `instantiate` of
the `_target_`s in it. Hydra's own blocklist stops os.system and the like, not e.g.
`pathlib.Path.unlink` or `builtins.open`: so only the project's components and the torch and
Lightning classes the configs use may be named.

check_optimizer: the optimizer and schedule are partials, first called inside trainer.fit,
where torch's ValueError for e.g. optimizer.lr=-1 surfaces as a traceback mid-run. Calling
them once on a stand-in parameter brings that error forward as one UserError.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.errors import UserError

# Modules whose own classes and functions a config may name. Matched against where the object
# is *defined* (its __module__), not where it is looked up: `cifar_lightning.callbacks.Path`
# is pathlib.Path, imported there. The data readers and cache (cifar_lightning.data.readers,
# .sources) are left out: their functions download and write files.
PROJECT_MODULES = (
    "cifar_lightning.data.datamodule",
    "cifar_lightning.models",
    "cifar_lightning.module",
    "cifar_lightning.optim",
    "cifar_lightning.schedulers",
    "cifar_lightning.callbacks",
    "cifar_lightning.lookahead",
    "cifar_lightning.health",
)
# Single functions of project modules that also hold others: the logger factories (the rest of
# cifar_lightning.trackers uploads files).
PROJECT_FUNCTIONS = {
    "cifar_lightning.trackers.mlflow_logger",
    "cifar_lightning.trackers.wandb_logger",
}
# Third-party classes: (prefix of the `_target_` string, the base class every target must be).
# The base is named by string and checked after import, so nothing else gets imported.
THIRD_PARTY = (
    ("torch.optim.", "torch.optim.Optimizer"),
    ("pytorch_lightning.loggers.", "pytorch_lightning.loggers.Logger"),
    ("pytorch_lightning.Trainer", "pytorch_lightning.Trainer"),
)
# Hydra's instantiate keys a config may use. `_args_` (positional arguments) is not used by any
# config here, so a checkpoint that has one was not written by this project.
ALLOWED_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_"}


def _defined_in_project(obj: Any) -> bool:
    module = obj.__module__ or ""
    return any(module == m or module.startswith(f"{m}.") for m in PROJECT_MODULES)


def target_allowed(target: str) -> bool:
    """True when `target` names a top-level public class or function of the project's
    component modules, or a subclass of one of the THIRD_PARTY bases."""
    name = target.rpartition(".")[2]
    if not name or name.startswith("_") or ".." in target:
        return False
    project = target.startswith("cifar_lightning.")
    bases = [base for prefix, base in THIRD_PARTY if target.startswith(prefix)]
    if not project and not bases:
        return False  # decided before importing anything: an import runs the module's code
    try:
        obj = get_object(target)  # resolved as instantiate will resolve it
    except Exception:  # noqa: BLE001 - whatever the lookup raises, the target is not usable
        return False
    # A top-level definition, not a method or an attribute reached through a class.
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__qualname__ != name:
        return False
    if project:
        return _defined_in_project(obj) or target in PROJECT_FUNCTIONS
    return inspect.isclass(obj) and any(issubclass(obj, get_object(b)) for b in bases)


def _walk(node: Any, path: str) -> list[tuple[str, Any]]:
    """(key path, node) of every mapping in a plain config tree."""
    found = []
    if isinstance(node, Mapping):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def _reserved(key: str) -> bool:
    return len(key) > 2 and key.startswith("_") and key.endswith("_")  # Hydra's `_name_` keys


def check_targets(cfg: DictConfig | Mapping, source: str) -> None:
    """Refuse a config (from `source`, e.g. a checkpoint's path) that names anything but the
    allowed targets or uses instantiate keys the project's configs do not. Hydra's own settings
    (a top-level `hydra` node: sweepers, launchers) are not the project's to build and are
    skipped. Interpolations are not resolved: a checkpoint's run config was stored resolved."""
    tree = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    if not isinstance(tree, Mapping):
        raise UserError(f"{source} is not trusted: its config is not a mapping of settings.")
    for path, node in _walk({k: v for k, v in tree.items() if k != "hydra"}, ""):
        where = path or "(top level)"
        odd = sorted(k for k in map(str, node) if _reserved(k) and k not in ALLOWED_KEYS)
        if odd:
            raise UserError(
                f"{source} is not trusted: its config uses {', '.join(odd)} at "
                f"{where}, which this project's configs never do. Use checkpoints written by "
                f"this project's train.py."
            )
        target = node.get("_target_")
        if target is not None and not (isinstance(target, str) and target_allowed(target)):
            raise UserError(
                f"{source} is not trusted: its config would build {target!r} at "
                f"{where}._target_, which is not one of the project's components or the torch "
                f"and Lightning classes its configs use. Use checkpoints written by this "
                f"project's train.py."
            )


def check_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer (and the schedule over 100 steps) once on a stand-in conv filter and
    bias, so that a setting torch refuses is one UserError before training starts."""
    params = [torch.nn.Parameter(torch.zeros(2, 1, 3, 3)), torch.nn.Parameter(torch.zeros(2))]
    key = "optimizer"
    try:
        optimizer = instantiate(cfg.optimizer)([{"params": params}])
        if cfg.get("scheduler") is not None:
            key = "scheduler"
            instantiate(cfg.scheduler)(optimizer, 100)
    except (ValueError, TypeError, InstantiationException) as err:
        if isinstance(err, InstantiationException):  # not a partial: Hydra's wrapper
            err = err.__cause__ or err
        raise UserError(
            f"the {key} settings are not valid: {err}. Fix them on the command line "
            f"(python train.py --cfg job -p {key} shows them)."
        ) from err


def check_health(cfg: DictConfig) -> None:
    """The `health` node is a health check's settings (with its `_target_`) or null (health=off).
    Settings without a `_target_` come from `health.*` keys set on top of health=off (by a
    recipe, or on the command line with `+health.KEY=...`): Hydra's instantiate would hand back
    a plain dict, which Lightning refuses mid-set-up as a callback it cannot use."""
    node = cfg.get("health")
    if node is None or (isinstance(node, Mapping) and "_target_" in node):
        return
    keys = ", ".join(f"health.{k}" for k in node) if isinstance(node, Mapping) else repr(node)
    raise UserError(
        f"the health settings ({keys}) configure no health check: health=off switched the "
        f"checks off, but these keys were set on top. Keep health=off and drop them, or choose "
        f"a health option (conf/health/) and set the keys on it, e.g. health=default "
        f"health.loss_window_steps=40."
    )
