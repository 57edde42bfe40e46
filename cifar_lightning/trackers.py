"""Experiment trackers beside the CSV log (logger=mlflow, wandb, many): Lightning's MLflow and W&B
loggers named after the run's folder, and the run's resolved config and files (results.json, the
confusion matrix) handed to every tracker once the run has written them.

mlflow and wandb are optional (the pip extras of the same names): they are imported only when a
tracker is made or fed. Lightning's logger classes import them lazily too, so the isinstance
checks below work without either installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as L
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from cifar_lightning.errors import UserError
from cifar_lightning.results import RESULTS_NAME

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

CONFUSION_NAME = "confusion_matrix.png"
# MLflow's limits: 100 params per call, 6000 characters a value (mlflow >= 2.8). Lightning's own
# log_hyperparams cuts values at 250 characters and joins nested keys with "/".
_PARAMS_PER_CALL = 100
_PARAM_CHARS = 6000


def _require(package: str, option: str) -> None:
    # The CLI checks the command line before Hydra starts; this catches a logger chosen elsewhere
    # (an experiment config, a multirun job) with the same one-line error.
    if importlib.util.find_spec(package) is None:
        raise UserError(f"logger={option} needs {package}: pip install -e '.[{package}]'")


def mlflow_logger(save_dir: str, **kwargs: Any) -> MLFlowLogger:
    """Lightning's MLFlowLogger for the run whose output folder is `save_dir`: the MLflow run is
    named after that folder (in a multirun, the job's overrides) and tagged with its path. The
    store itself is `tracking_uri`; the other arguments are MLFlowLogger's."""
    _require("mlflow", "mlflow")
    run_dir = Path(save_dir).resolve()
    kwargs.setdefault("run_name", run_dir.name)
    kwargs["tags"] = {"run_dir": str(run_dir), **(kwargs.get("tags") or {})}
    return MLFlowLogger(save_dir=save_dir, **kwargs)


def wandb_logger(save_dir: str, **kwargs: Any) -> WandbLogger:
    """Lightning's WandbLogger writing into `save_dir` (the run's output folder) and named after
    it; the other arguments are WandbLogger's (offline, project, group, ...)."""
    _require("wandb", "wandb")
    import wandb

    if wandb.run is not None:
        # The previous job of a multirun in this process: Lightning would log into that run
        # instead of starting one per job.
        wandb.finish()
    kwargs.setdefault("name", Path(save_dir).resolve().name)
    Path(save_dir).mkdir(parents=True, exist_ok=True)  # older W&B clients write to /tmp if absent
    return WandbLogger(save_dir=save_dir, **kwargs)


def flatten(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested config -> ("optimizer._target_", "torch.optim.Adam"), ...; lists stay values."""
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@rank_zero_only
def log_run_files(trainer: L.Trainer, out_dir: Path, config: Mapping[str, Any]) -> None:
    """Give each tracker among the trainer's loggers the run's resolved `config` (MLflow: params
    with dotted keys; W&B: its config) and the files the run wrote into `out_dir` (results.json,
    the confusion matrix: MLflow artifacts, W&B run files, TensorBoard text and image).

    Call after results.save; Lightning itself logs only the LightningModule's hparams. The CSV
    log needs nothing: its folder already holds everything.
    """
    files = [out_dir / n for n in (RESULTS_NAME, CONFUSION_NAME) if (out_dir / n).is_file()]
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            _to_mlflow(logger, config, files)
        elif isinstance(logger, WandbLogger):
            _to_wandb(logger, config, files)
        elif isinstance(logger, TensorBoardLogger):
            _to_tensorboard(logger.experiment, files, trainer.global_step)


def _to_mlflow(logger: MLFlowLogger, config: Mapping[str, Any], files: list[Path]) -> None:
    from mlflow.entities import Param

    client, run_id = logger.experiment, logger.run_id
    params = [Param(key, str(value)[:_PARAM_CHARS]) for key, value in flatten(config)]
    for start in range(0, len(params), _PARAMS_PER_CALL):
        client.log_batch(run_id, params=params[start : start + _PARAMS_PER_CALL])
    for path in files:
        client.log_artifact(run_id, str(path))


def _to_wandb(logger: WandbLogger, config: Mapping[str, Any], files: list[Path]) -> None:
    run = logger.experiment
    run.config.update(dict(config), allow_val_change=True)
    for path in files:
        # A copy in the W&B run's own files/ folder: `wandb sync` later still finds it if the
        # run folder has moved (run.save of an outside file leaves an absolute symlink).
        copy = Path(run.dir) / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)  # older W&B clients make it lazily
        shutil.copy2(path, copy)
        run.save(str(copy), base_path=run.dir, policy="now")


def _to_tensorboard(writer: SummaryWriter, files: list[Path], step: int) -> None:
    for path in files:
        if path.name == CONFUSION_NAME:
            import matplotlib.image

            image = matplotlib.image.imread(path)[..., :3]  # RGBA floats in [0, 1]
            writer.add_image("test/confusion_matrix", image, step, dataformats="HWC")
        else:
            text = json.dumps(json.loads(path.read_text()), indent=2)
            writer.add_text(path.stem, f"```\n{text}\n```", step)  # markdown: keep it verbatim
    writer.close()  # Lightning closed it after the test; adding reopened it
