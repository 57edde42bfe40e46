"""What train.py and eval.py do: build the pieces from the config, fit, test, write results."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint, ProgressBar

from cifar_lightning import (
    checkpoint,
    config_checks,
    matmul,
    memory,
    provenance,
    results,
    slurm,
    sweep,
    trackers,
)
from cifar_lightning.callbacks import LastCheckpoint
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.errors import UserError
from cifar_lightning.evaluation import score
from cifar_lightning.health import HealthCheck
from cifar_lightning.module import Classifier
from cifar_lightning.optim import MULTI_LR
from cifar_lightning.report.console import print_report

log = logging.getLogger("cifar_lightning")

ExtraCallbacks = Callable[[], list[L.Callback]]  # builds callbacks that the config leaves out


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


def build_callbacks(
    cfg: DictConfig, datamodule: CIFAR10DataModule, extra: ExtraCallbacks | None = None
) -> tuple[list[L.Callback], HealthCheck | None, ModelCheckpoint | None]:
    """train.py's callbacks: the config's, those `extra()` builds, then the health checks. Also
    returns the health check and the best-by-validation checkpoint callback (None without a
    validation split)."""
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    # Lightning refuses a progress bar or checkpoint callback with its switch off: the switch
    # wins, as a Lightning user expects (no bar; no checkpoint file written during the fit).
    if cfg.trainer.get("enable_progress_bar") is False:  # null: on, as in Lightning
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.get("enable_checkpointing") is False:  # null: on, as in Lightning
        callbacks = [c for c in callbacks if not isinstance(c, Checkpoint)]
    callbacks += extra() if extra is not None else []
    config_checks.check_health(cfg)
    health = instantiate(cfg.health)
    if health is not None:
        callbacks.append(health)
    best = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    if best is not None and not datamodule.has_val:
        best.monitor = None  # no validation split: the last epoch is the one to test
        best = None
    return callbacks, health, best


def make_trainer(
    trainer_cfg: DictConfig,
    logger_cfg: DictConfig | None,
    callbacks: list[L.Callback],
    out: Path,
    matmul_precision: str | None = "auto",
) -> L.Trainer:
    """The Trainer, and torch's float32 matmul precision for its device (matmul.apply: auto,
    as conf/train.yaml, unless given; None leaves torch's setting as it is)."""
    loggers = [instantiate(c) for c in (logger_cfg or {}).values()]
    trainer = instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=out,
        plugins=[checkpoint.AtomicCheckpointIO(), *slurm.cluster_plugins()],
    )
    matmul.apply(matmul_precision, trainer)
    return trainer


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

    # The range test sets one lr for every group; a recipe with several (scaled groups, Muon's
    # filter_lr, adam_to_sgd's sgd_lr) would silently lose their ratios.
    optimizer = module.build_optimizer()
    if len(optimizer.param_groups) > 1 or isinstance(optimizer, MULTI_LR):
        raise UserError(
            f"tune_lr=true tunes one learning rate, but this recipe's optimizer "
            f"({type(optimizer).__name__}) has {len(optimizer.param_groups)} parameter group(s) "
            f"or a second learning rate whose ratio the range test would lose. Search "
            f"optimizer.lr with a sweep (python train.py -m optimizer.lr=...) or "
            f"hparams_search=optuna_lr instead."
        )

    module.lr = None  # the finder writes its suggestion here; configure_optimizers reads it
    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, attr_name="lr", update_attr=True)
    log.info("tune_lr: suggested learning rate %.3g", finder.suggestion())


def after_fit_figures(
    trainer: L.Trainer, module: Classifier, datamodule: CIFAR10DataModule, test: dict | None
) -> dict[str, Any]:
    """Figures of the tested model beyond the test stage: its accuracy on the validation split
    with the run's TTA (what a recipe is selected by), on a fixed subset of the training split
    in eval mode without augmentation or TTA (its clean training accuracy), and, when it was
    tested, on the test set without TTA (from the test's pass: its plain view), so
    that train_acc_clean - test_acc_plain compares one model measured one way. The debug limits
    on test batches apply here too."""
    trainer.limit_predict_batches = trainer.limit_test_batches
    tta = module.tta_level
    figures: dict[str, Any] = {"tta_level": tta, "val_acc": None, "val_loss": None}
    if datamodule.has_val:
        figures["val_acc"], figures["val_loss"] = score(
            trainer, module, datamodule.eval_loader("val"), tta
        )
    clean = score(trainer, module, datamodule.eval_loader("train_clean"), 0)
    figures["train_acc_clean"], figures["train_loss_clean"] = clean
    if test is not None:  # from the test's own pass (Classifier.test_step)
        figures["test_acc_plain"] = test["test_acc_plain"] if tta else test["test_acc"]
        figures["test_loss_plain"] = test["test_loss_plain"] if tta else test["test_loss"]
    return figures


def save_results(
    out: Path,
    test: dict | None,
    health: Any,
    trainer: L.Trainer,
    datamodule: CIFAR10DataModule,
    **fields: Any,
) -> None:
    """results.json (the outputs contract) and the confusion matrix, for train.py and eval.py.
    test=None (test=false): the test fields are null and no confusion matrix is drawn."""
    test = test or {}
    summary = {
        "test_acc": test.get("test_acc"),
        "test_loss": test.get("test_loss"),
        "per_class_acc": test.get("per_class_acc"),
        "test_images": test.get("test_images"),  # k of n for the report's Wilson interval
        **fields,
        "overrides": list(HydraConfig.get().overrides.task),
        "health": health.findings if health is not None else [],
        "provenance": provenance.collect(
            str(trainer.precision), datamodule.fingerprint, datamodule.sizes
        ),
    }
    results.save(out, summary, test.get("confusion_matrix"), test.get("test_correct"))


def _scalar(metrics: dict, key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def train(cfg: DictConfig, extra_callbacks: ExtraCallbacks | None = None) -> float | None:
    """Fit, then test the best checkpoint. Returns what a sweeper optimises, the validation
    accuracy of the tested checkpoint (results.selection_value): the test set never shapes
    model selection.

    `extra_callbacks` builds callbacks that are not part of the run's config (a benchmark's
    clock), at the point where the config's callbacks are built; the checkpoints' run_config
    does not name them, so eval.py re-tests those checkpoints like any other."""
    provenance.code_at_start()  # read before a long run (train.py has read it before Hydra)
    out = output_dir()
    # A job continues from what its folder holds (a rerun sweep, a requeued SLURM job): skipped
    # when finished, before anything (the CSV logger) writes there; else resumed from last.ckpt.
    job = sweep.check_job(cfg, out)
    if job.state == sweep.DONE:
        return results.selection_value(job.results)
    config_checks.check_run(cfg)
    if cfg.retain_cpu_memory and not memory.retain_freed_memory():
        log.info("retain_cpu_memory: not glibc, left to the C library's allocator")
    if cfg.seed is not None and not isinstance(cfg.seed, int):
        raise UserError(f"seed={cfg.seed!r} is not an integer: pass seed=N, or seed=null")
    seed = L.seed_everything(cfg.seed, workers=True)
    datamodule, module = build(cfg, seed)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)

    ckpt_path = str(job.ckpt) if job.state == sweep.RESUME else resume_path(cfg, out)
    if ckpt_path is not None and cfg.train:
        checkpoint.check_resume(checkpoint.load(ckpt_path), cfg, ckpt_path)
    config_checks.check_optimizer(cfg)

    callbacks, health, ckpt_cb = build_callbacks(cfg, datamodule, extra_callbacks)
    trainer = make_trainer(cfg.trainer, cfg.logger, callbacks, out, cfg.get("matmul_precision"))

    fit_seconds, train_metrics = None, {}
    if cfg.train and cfg.tune_lr:
        tune_lr(trainer, module, datamodule)
    if cfg.train:
        if trainer.is_global_zero:  # after every check that can refuse the run
            sweep.drop_results(out)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        fit_seconds = time.perf_counter() - start
        train_metrics = dict(trainer.callback_metrics)

    tested, in_memory = None, False
    if cfg.train and ckpt_cb is not None and ckpt_cb.best_model_path:
        tested = ckpt_cb.best_model_path
    elif cfg.train and not trainer.fast_dev_run:
        # No best-by-validation checkpoint: the model after the last step is tested, saved after
        # fit (weight averaging's end in it) for eval.py. On one device the module in memory
        # holds exactly those weights (tests/test_tested_model.py): tested as it is. Under DDP
        # each rank's last forward updated its own batch-norm statistics: all read rank 0's.
        tested = str(out / "checkpoints" / "last.ckpt")
        in_memory = trainer.world_size == 1
        last = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
        if not (last and last[0].saved_at_end and Path(last[0].path) == Path(tested)):
            trainer.save_checkpoint(tested, weights_only=False)
    elif not cfg.train and ckpt_path is not None:
        tested = ckpt_path
    if tested is None and cfg.test:
        log.warning("no checkpoint was written (fast_dev_run?): testing the weights in memory")
    elif tested is not None and not in_memory:
        checkpoint.restore_weights(module, checkpoint.load(tested), tested)

    score = ckpt_cb.best_model_score if ckpt_cb is not None else None
    best_val = None if score is None else float(score)
    if not cfg.test and getattr(datamodule, "train_set", None) is None:
        # after_fit_figures reads the data, which a train=false run has not loaded (a fit's
        # ranks all have: under DDP only one per node checked it, and none need check again)
        datamodule.prepare_data()  # checked before it is loaded, as a Lightning stage does
        datamodule.setup("test")
    test = run_test(trainer, module, datamodule) if cfg.test else None
    figures = after_fit_figures(trainer, module, datamodule, test)
    if trainer.is_global_zero:
        save_results(
            out, test, health, trainer, datamodule,
            **figures,
            train_acc=_scalar(train_metrics, "train/acc"),
            train_loss=_scalar(train_metrics, "train/loss"),
            best_val_acc=best_val,
            epochs=trainer.current_epoch,
            fit_seconds=fit_seconds,
            seed=seed,
            checkpoint=tested,
        )  # fmt: skip
        trackers.log_run_files(trainer, out, module.run_config)
    return results.selection_value({**figures, "best_val_acc": best_val})


def load_trained(
    ckpt_path: str | Path, data_root: str | None = None
) -> tuple[dict[str, Any], DictConfig, CIFAR10DataModule, Classifier]:
    """A checkpoint train.py wrote, as eval.py, predict.py and export.py read it: loaded
    weights-only, its run config checked to build only the project's own components, then the
    datamodule and module built from that config with the checkpoint's weights. Returns (the
    checkpoint, its run config, datamodule, module); data_root replaces the run's data.root."""
    ckpt = checkpoint.load(ckpt_path)
    run_cfg = OmegaConf.create(ckpt.get("run_config") or {})
    # Checkpoints are data: their config may only build the project's own components.
    config_checks.check_targets(run_cfg, source=str(ckpt_path))
    if "data" not in run_cfg or "trainer" not in run_cfg:
        raise UserError(f"{ckpt_path} holds no run config; only checkpoints that train.py wrote "
                        f"can be read.")  # fmt: skip
    if data_root is not None:
        run_cfg.data.root = data_root
    else:  # the file's own data.root: never downloaded into (eval.py checks it is here)
        run_cfg.data.download = False
    # Built uncompiled (evaluation runs eager; the config returned, which eval.py logs, stays
    # as run), with the training run's seed (a drawn one, seed=null, is not in its config: the
    # test set does not depend on it).
    off = {"module": {"compile": False}} if "module" in run_cfg else {}
    datamodule, module = build(OmegaConf.merge(run_cfg, off), run_cfg.get("seed") or 0)
    checkpoint.restore_weights(module, ckpt, ckpt_path)
    return ckpt, run_cfg, datamodule, module


def evaluate(cfg: DictConfig) -> float:
    """Re-test a checkpoint exactly as its training run tested it: the run's own config for the
    data, model and trainer (precision, TTA, batch sizes, limits); only the data folder
    (data.root) and the device (trainer.accelerator/devices/strategy/num_nodes) may change."""
    provenance.code_at_start()  # read before a long run (train.py has read it before Hydra)
    out = output_dir()
    ckpt, run_cfg, datamodule, module = load_trained(cfg.ckpt_path, cfg.data.root)
    if cfg.data.root is None:  # predict.py and export.py read no data: only eval.py checks
        config_checks.check_stored_data_root(run_cfg, str(cfg.ckpt_path))
    best_val = None
    for state in ckpt.get("callbacks", {}).values():
        if state.get("monitor") is not None and state.get("best_model_score") is not None:
            best_val = float(state["best_model_score"])
    config_checks.check_health(cfg)
    health = instantiate(cfg.health)
    if health is not None:
        health.reference_acc = best_val  # what the model showed when it was trained
    trainer_cfg = run_cfg.trainer
    for key, value in config_checks.device_settings(cfg.trainer).items():
        trainer_cfg[key] = value  # the device may differ from the training run's
    trainer = make_trainer(trainer_cfg, cfg.logger, [health] if health is not None else [], out,
                           run_cfg.get("matmul_precision"))  # fmt: skip
    test = run_test(trainer, module, datamodule)  # trainer.test checks, then loads, the data
    figures = after_fit_figures(trainer, module, datamodule, test)
    if trainer.is_global_zero:
        save_results(
            out, test, health, trainer, datamodule,
            **figures,
            train_acc=None,  # training metrics live in the training run's results.json
            train_loss=None,
            best_val_acc=best_val,
            epochs=ckpt.get("epoch", -1) + 1,
            fit_seconds=None,
            seed=run_cfg.get("seed"),
            checkpoint=str(cfg.ckpt_path),
        )  # fmt: skip
        run = OmegaConf.to_container(run_cfg, resolve=True)
        trackers.log_run_files(trainer, out, {**run, "eval": OmegaConf.to_container(cfg)})
    return test["test_acc"]
