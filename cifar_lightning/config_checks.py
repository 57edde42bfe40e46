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
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.errors import UserError
from cifar_lightning.tta import LEVELS as TTA_LEVELS

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


# train.py's switches: Hydra reads only true/false as booleans, and a string such as "no" would
# count as true (test=no would test).
RUN_SWITCHES = ("train", "test", "tune_lr", "retain_cpu_memory", "module.channels_last")


def switch_error(key: str, value: Any, why: str = "") -> UserError:
    """The one message for a switch set to something other than true or false."""
    return UserError(f"{key}={as_override(value)} is not a switch: pass {key}=true or "
                     f"{key}=false{why}.")  # fmt: skip


def check_switches(cfg: DictConfig, keys: Sequence[str]) -> None:
    """Each of `keys` that is set is true or false, not a string or a number."""
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise switch_error(key, value)


def check_run(cfg: DictConfig) -> None:
    """train.py's settings that Lightning would take without a word: its switches, and a run
    that would test a network it neither trained nor loaded."""
    check_switches(cfg, RUN_SWITCHES)
    if not cfg.train and cfg.test and cfg.get("ckpt_path") is None:
        raise UserError(
            "train=false test=true tests a checkpoint, and none was given: pass ckpt_path=PATH "
            "(or ckpt_path=last), or eval.py ckpt_path=PATH."
        )
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if cfg.train and cfg.trainer.get(key) == 0:  # -1 and null: unlimited
            raise UserError(
                f"trainer.{key}=0 trains nothing: pass a positive trainer.{key}, or test a "
                f"trained model with eval.py ckpt_path=PATH."
            )


def check_stored_data_root(run_cfg: DictConfig, source: str) -> None:
    """A checkpoint's own data.root, used by eval.py when the command gives none: read only
    where the data already is (load_trained has switched its download off). The file does not
    get to make folders or download into a place it names."""
    if not Path(run_cfg.data.root).is_dir():
        raise UserError(
            f"the data folder {source}'s run was trained on, {run_cfg.data.root}, is not here: "
            f"pass data.root=PATH (a folder with CIFAR-10, or an empty one to download it into)."
        )


def check_module_options(
    net: torch.nn.Module, label_smoothing: float, tta_level: int, train_resolution: Any
) -> None:
    """The Classifier's options, refused when it is built rather than at the first step or, for
    the TTA level, at the test after the whole fit (ValueError: Hydra names the component)."""
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"module.label_smoothing must be in [0, 1], got {label_smoothing}")
    if tta_level not in TTA_LEVELS or isinstance(tta_level, bool):
        raise ValueError(f"module.tta_level must be 0, 1 or 2 (cifar_lightning/tta.py), got "
                         f"{tta_level!r}")  # fmt: skip
    if train_resolution and min(train_resolution) < 8:
        raise ValueError(f"module.train_resolution: sizes must be >= 8, got {train_resolution}")
    if (
        train_resolution
        and set(train_resolution) != {32}
        and not getattr(net, "any_input_size", True)
    ):
        raise ValueError(
            f"module.train_resolution: {type(net).__name__} takes 32x32 inputs only; use a "
            f"network that takes any size (model=fastnet, model=resnet18) or "
            f"module.train_resolution=null"
        )


DEVICE_KEYS = ("accelerator", "devices", "strategy", "num_nodes")
DISPLAY_KEYS = ("enable_progress_bar", "enable_model_summary")  # change no figure


def device_settings(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """eval.py's trainer settings that replace the run's (those not null). Only the device may
    change: other keys (from +trainer=cpu, say) would test otherwise than the run did."""
    free = (*DEVICE_KEYS, *DISPLAY_KEYS)
    others = sorted(k for k, v in trainer.items() if k not in free and v is not None)
    if others:
        raise UserError(
            f"eval.py tests as the training run did: of its trainer settings only the device "
            f"({', '.join(DEVICE_KEYS)}) and the display ({', '.join(DISPLAY_KEYS)}) may "
            f"change, not {', '.join(others)}. Pass only those, e.g. trainer.accelerator=cpu."
        )
    return {k: v for k, v in trainer.items() if v is not None}


def as_override(value: Any) -> str:
    """A value as a command-line override spells it."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value) if isinstance(value, str) else str(value)


def check_types(
    prefix: str,
    given: Mapping[str, Any],
    ints: Sequence[str],
    bools: Sequence[str],
    examples: Mapping[str, Any],
    nullable: Sequence[str] = (),
) -> None:
    """One UserError for the first of a component's settings `given` of the wrong type, naming
    `prefix.key`, the value and an example: integers (not bools, which are ints to Python; the
    `nullable` ones also null) and real booleans. Hydra passes a value as written
    (`data.val_size=abc` as "abc", `data.download=no` as the truthy "no"), which would otherwise
    fail far from its setting, or be taken for what it is not."""
    for key in ints:
        value = given[key]
        if (isinstance(value, Integral) and not isinstance(value, bool)) or (
            value is None and key in nullable
        ):
            continue
        also = " or null" if key in nullable else ""
        raise UserError(f"{prefix}.{key}={as_override(value)} must be an integer{also}: pass e.g. "
                        f"{prefix}.{key}={as_override(examples[key])}")  # fmt: skip
    for key in bools:
        if not isinstance(given[key], bool):
            raise switch_error(f"{prefix}.{key}", given[key])
