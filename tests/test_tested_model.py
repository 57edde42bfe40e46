"""The model train.py tests when it has no best-by-validation checkpoint: the one in memory after
the fit, which must be exactly what the last.ckpt written after the fit holds (eval.py re-tests
that file: tests/test_e2e.py). fast94 writes no checkpoint inside its epochs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytorch_lightning as L
import torch
from PIL import Image

from benchmarks.common import run_config
from cifar_lightning import CLASSES, pipeline
from cifar_lightning.data import datamodule, sources
from tests.conftest import task_config


class Observe(L.Callback):
    """Whether each checkpoint save happened inside the fit, and the weights the test starts
    from."""

    def __init__(self) -> None:
        self.saves: list[str] = []
        self.tested: dict[str, torch.Tensor] = {}
        self.ended = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ended = (
            True  # before any checkpoint callback's on_train_end: Lightning runs those last
        )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:  # noqa: ANN001
        self.saves.append("at the end" if self.ended else f"in epoch {trainer.current_epoch}")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tested = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}


def test_fast94_tests_the_model_in_memory_which_equals_last_ckpt(
    folder_root: Path, tmp_path, monkeypatch
):
    seen = Observe()
    checks = []  # the data cache is checked once a run, not at each of its Lightning stages
    real = datamodule.prepare_cache
    monkeypatch.setattr(datamodule, "prepare_cache", lambda *a: checks.append(a) or real(*a))
    overrides = [f"data.root={folder_root}", "model.widths=[8,8,8]", "trainer.accelerator=cpu",
                 "trainer.precision=32-true", "data.batch_size=64", "data.eval_batch_size=50",
                 "trainer.max_epochs=2", "trainer.max_steps=-1",
                 "callbacks.lookahead.start_epoch=1"]  # fmt: skip
    with run_config("fast94", overrides, tmp_path / "run") as cfg:
        pipeline.train(cfg, extra_callbacks=lambda: [seen])
    assert len(checks) == 1  # fit, test and two after-test predictions: one check
    assert seen.saves == ["at the end"]  # one save, at the fit's end: none inside its epochs
    saved = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert seen.tested.keys() == saved.keys()
    assert all(torch.equal(seen.tested[k], saved[k]) for k in saved)


def test_without_epoch_end_saves_last_ckpt_is_written_at_the_fits_end(folder_root, tmp_path):
    # With a validation split train.py tests best.ckpt and writes no last.ckpt itself: the
    # callback's save at the fit's end must leave one, of the final step, to resume or re-test.
    overrides = [f"data.root={folder_root}", "data.batch_size=32", "data.val_size=50",
                 "data.num_workers=0", "trainer.max_epochs=2", "test=false",
                 "callbacks.last_checkpoint.every_n_epochs=0"]  # fmt: skip
    with run_config("none", overrides, tmp_path / "run") as cfg:
        pipeline.train(cfg)
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * 11  # 350 images, 11 batches of 32 an epoch


def test_eval_checks_the_data_cache_before_it_loads_the_data(
    trained_run: Path, folder_root: Path, tmp_path, monkeypatch
):
    # Set up before the check, a stale cache would be evaluated as it is; and a load made
    # while the check runs (prepare_data) must not be used once the check rebuilt the cache.
    root = tmp_path / "data"
    shutil.copytree(folder_root, root)
    sources.prepare_cache(root, allow_download=False)  # the copy's own cache, then a change
    stale = sources.cache_fingerprint(root)
    image = sorted((root / "test" / CLASSES[0]).iterdir())[0]
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(image)
    calls = []
    check, setup = datamodule.prepare_cache, datamodule.CIFAR10DataModule.setup

    def checked(*a):  # noqa: ANN002, ANN202
        check(*a)
        calls.append("checked")

    def set_up(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append("setup")
        setup(self, *a, **k)

    monkeypatch.setattr(datamodule, "prepare_cache", checked)
    monkeypatch.setattr(datamodule.CIFAR10DataModule, "setup", set_up)
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    with task_config("eval", [f"ckpt_path={ckpt}", f"data.root={root}"], tmp_path / "eval") as cfg:
        pipeline.evaluate(cfg)
    assert calls[:2] == ["checked", "setup"] and calls.count("checked") == 1
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    rebuilt = sources.cache_fingerprint(root)
    assert rebuilt != stale and evaluated["provenance"]["data"]["fingerprint"] == rebuilt
