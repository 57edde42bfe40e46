"""What train.py and eval.py do: build the pieces from the config, fit, test, write results."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from cifar_lightning import checkpoint, memory, results
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.errors import UserError
from cifar_lightning.module import Classifier
from cifar_lightning.report.console import print_report

log = logging.getLogger("cifar_lightning")

# The CSV log shares the run folder with Hydra's files, which this warning mistakes for old logs.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def build(cfg: DictConfig, seed: int) -> tuple[CIFAR10DataModule, Classifier]:
    """The datamodule and the LightningModule of a (train-time) config; `seed` is the run's
    (what L.seed_everything returned). Call after seeding: the datamodule, then the module, in
    this order, so that the network's initial weights are the same draw in every run."""
    datamodule = instantiate(cfg.data, augment=OmegaConf.to_container(cfg.augment), seed=seed)
    module = instantiate(
        cfg.module,
        net=instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
    )
    return datamodule, module


def make_trainer(cfg: DictConfig, callbacks: list[L.Callback], out: Path) -> L.Trainer:
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=out,
        plugins=[checkpoint.AtomicCheckpointIO()],
    )


def resume_path(cfg: DictConfig, out: Path) -> str | None:
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    overrides = list(HydraConfig.get().overrides.task)
    found = checkpoint.find_last(overrides, [out.parent, Path("outputs")], exclude=out)
    log.info("ckpt_path=last: resuming from %s", found)
    return str(found)


def run_test(trainer: L.Trainer, module: Classifier, datamodule: CIFAR10DataModule) -> dict:
    [metrics] = trainer.test(module, datamodule=datamodule, verbose=False)
    report = module.test_report
    if trainer.is_global_zero:
        print_report(metrics["test/acc"], report["per_class_acc"])
    return {"test_acc": metrics["test/acc"], "test_loss": metrics["test/loss"], **report}


def tune_lr(trainer: L.Trainer, module: Classifier, datamodule: CIFAR10DataModule) -> None:
    """Lightning's LR range test on the training data; the suggestion replaces optimizer.lr."""
    from pytorch_lightning.tuner import Tuner

    module.lr = None  # the finder writes its suggestion here; configure_optimizers reads it
    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, attr_name="lr", update_attr=True)
    log.info("tune_lr: suggested learning rate %.3g", finder.suggestion())


def save_results(out: Path, test: dict, health: Any, **fields: Any) -> None:
    """results.json (the outputs contract) and the confusion matrix, for train.py and eval.py."""
    summary = {
        "test_acc": test["test_acc"],
        "test_loss": test["test_loss"],
        "per_class_acc": test["per_class_acc"],
        **fields,
        "overrides": list(HydraConfig.get().overrides.task),
        "health": health.findings if health is not None else [],
    }
    results.save(out, summary, test["confusion_matrix"])


def _scalar(metrics: dict, key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def train(cfg: DictConfig) -> float | None:
    """Fit, then test the best checkpoint. Returns the best val/acc (what a sweeper optimises:
    the test set never shapes model selection)."""
    out = output_dir()
    if cfg.retain_cpu_memory and not memory.retain_freed_memory():
        log.info("retain_cpu_memory: not glibc, left to the C library's allocator")
    seed = L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg, seed)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)

    ckpt_path = resume_path(cfg, out)

    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    health = instantiate(cfg.health)
    if health is not None:
        callbacks.append(health)
    ckpt_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    if ckpt_cb is not None and not datamodule.has_val:
        ckpt_cb.monitor = None  # no validation split: the last epoch is the one to test
    trainer = make_trainer(cfg, callbacks, out)

    fit_seconds, train_metrics = None, {}
    if cfg.train and cfg.tune_lr:
        tune_lr(trainer, module, datamodule)
    if cfg.train:
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        fit_seconds = time.perf_counter() - start
        train_metrics = dict(trainer.callback_metrics)

    tested = None
    if cfg.train and ckpt_cb is not None and ckpt_cb.best_model_path:
        tested = ckpt_cb.best_model_path
    elif cfg.train and not trainer.fast_dev_run:
        # No best-by-validation checkpoint (no model_checkpoint callback): the model after the
        # last step is the one to test. Saved after fit, so end-of-training callbacks (weight
        # averaging) are in it, and eval.py can reproduce the test.
        tested = str(out / "checkpoints" / "last.ckpt")
        trainer.save_checkpoint(tested)
    elif not cfg.train and ckpt_path is not None:
        tested = ckpt_path
    if tested is not None:
        checkpoint.restore_weights(module, checkpoint.load(tested), tested)
    elif cfg.test:
        log.warning("no checkpoint was written (fast_dev_run?): testing the weights in memory")

    best_val = None
    if ckpt_cb is not None and ckpt_cb.monitor is not None and ckpt_cb.best_model_score is not None:
        best_val = float(ckpt_cb.best_model_score)
    if not cfg.test:
        return best_val
    test = run_test(trainer, module, datamodule)
    if trainer.is_global_zero:
        save_results(
            out, test, health,
            train_acc=_scalar(train_metrics, "train/acc"),
            train_loss=_scalar(train_metrics, "train/loss"),
            best_val_acc=best_val,
            epochs=trainer.current_epoch,
            fit_seconds=fit_seconds,
            seed=seed,
            checkpoint=tested,
        )  # fmt: skip
    return best_val


def evaluate(cfg: DictConfig) -> float:
    """Re-test a checkpoint with the config it was trained with."""
    out = output_dir()
    ckpt = checkpoint.load(cfg.ckpt_path)
    run_cfg = OmegaConf.create(ckpt.get("run_config") or {})
    if "data" not in run_cfg:
        raise UserError(
            f"{cfg.ckpt_path} holds no run config; eval.py reads checkpoints that train.py wrote."
        )
    if cfg.data_root is not None:
        run_cfg.data.root = cfg.data_root
    # The training run's seed (a drawn one, seed=null, is not in its config: the test set does
    # not depend on it).
    datamodule, module = build(run_cfg, run_cfg.get("seed") or 0)
    checkpoint.restore_weights(module, ckpt, cfg.ckpt_path)
    best_val = None
    for state in ckpt.get("callbacks", {}).values():
        if state.get("monitor") is not None and state.get("best_model_score") is not None:
            best_val = float(state["best_model_score"])
    health = instantiate(cfg.health)
    if health is not None:
        health.reference_acc = best_val  # what the model showed when it was trained
    trainer = make_trainer(cfg, [health] if health is not None else [], out)
    test = run_test(trainer, module, datamodule)
    if trainer.is_global_zero:
        save_results(
            out, test, health,
            train_acc=None,  # training metrics live in the training run's results.json
            train_loss=None,
            best_val_acc=best_val,
            epochs=ckpt.get("epoch", -1) + 1,
            fit_seconds=None,
            seed=run_cfg.get("seed"),
            checkpoint=str(cfg.ckpt_path),
        )  # fmt: skip
    return test["test_acc"]
