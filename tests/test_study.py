"""The optimizer study: adam_to_sgd, the report over a sweep, and the launcher configs."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.module import Classifier
from cifar_lightning.optim import AdamToSGD
from cifar_lightning.report.cli import main as report_main
from tests.conftest import REPO, run_cli


def small_net() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 32), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(32, 10))  # fmt: skip


class Phases(L.Callback):
    def __init__(self) -> None:
        self.by_epoch: dict[int, str] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.by_epoch[trainer.current_epoch] = trainer.optimizers[0].phase


def fit(root: Path, out: Path, epochs: int, ckpt: str | None = None):
    L.seed_everything(0)
    dm = CIFAR10DataModule(root=str(root), download=False, batch_size=32, val_size=50,
                           num_workers=0)  # fmt: skip
    opt = lambda p: AdamToSGD(p, lr=3e-3, switch="epoch", switch_epoch=1)  # noqa: E731
    module = Classifier(small_net(), optimizer=opt)
    phases = Phases()
    saver = L.callbacks.ModelCheckpoint(dirpath=out, save_top_k=-1, every_n_epochs=1,
                                        filename="{epoch}")  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, deterministic=True,
                        callbacks=[phases, saver], enable_progress_bar=False,
                        use_distributed_sampler=False)  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    return module, phases


def test_adam_to_sgd_switches_at_the_configured_epoch_and_resumes_across_it(folder_root, tmp_path):
    whole, phases = fit(folder_root, tmp_path / "a", epochs=3)
    assert phases.by_epoch == {0: "adam", 1: "sgd", 2: "sgd"}
    group = whole.trainer.optimizers[0].param_groups[0]
    assert 0 < group["sgd_lr"] < 1, "SGD lr derived from Adam's steps"
    # Resume from before the switch (end of epoch 0) and from after it (end of epoch 1).
    for ckpt in ("epoch=0.ckpt", "epoch=1.ckpt"):
        resumed, phases = fit(folder_root, tmp_path / ckpt, 3, str(tmp_path / "a" / ckpt))
        assert set(phases.by_epoch.values()) == {"sgd"}
        for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                                strict=True):  # fmt: skip
            assert torch.allclose(a.float(), b.float(), atol=1e-6), (ckpt, name)


def test_adam_to_sgd_keeps_the_step_size_at_the_switch():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(50))
    opt = AdamToSGD([w], lr=0.01, switch_epoch=1)
    steps = []
    for i in range(200):
        if i == 100:
            opt.on_train_epoch_start(1)
        before = w.detach().clone()
        opt.zero_grad()
        ((w - 3) ** 2).sum().backward()
        opt.step()
        steps.append((w.detach() - before).norm().item())
    assert opt.phase == "sgd"
    # No spike: the first SGD steps are of the size of the last Adam steps (within 3x).
    assert max(steps[100:105]) < 3 * max(steps[95:100])


@pytest.mark.slow
def test_report_of_a_two_by_two_sweep(folder_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("train.py", "-m", f"data.root={folder_root}", "data.num_workers=0",
                   "data.batch_size=32", "data.val_size=50", "trainer.max_epochs=2",
                   "optimizer=adam,sgd", "seed=0,1", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    def job(opt: str, seed: int) -> Path:
        [path] = [p for p in sweep.iterdir() if f"optimizer={opt},seed={seed}," in p.name]
        return path

    # A fifth run that died before writing results.json.
    dead = sweep / "optimizer=adamw,seed=0"
    shutil.copytree(job("adam", 0) / ".hydra", dead / ".hydra")
    overrides = (dead / ".hydra" / "overrides.yaml").read_text()
    (dead / ".hydra" / "overrides.yaml").write_text(overrides.replace("=adam\n", "=adamw\n"))
    (dead / "train.log").write_text("[x][cifar_lightning][ERROR] - error: something broke\n")

    assert report_main([str(sweep), "--target", "0.2"]) == 0
    rows = {r["group"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert set(rows) == {"optimizer=adam", "optimizer=sgd", "optimizer=adamw"}
    for opt in ("adam", "sgd"):
        res = [json.loads((job(opt, s) / "results.json").read_text()) for s in (0, 1)]
        row = rows[f"optimizer={opt}"]
        assert row["runs"] == "2" and row["failed"] == "0"
        assert float(row["test_acc_mean"]) == pytest.approx(
            statistics.fmean(r["test_acc"] for r in res)
        )
        assert float(row["test_acc_std"]) == pytest.approx(
            statistics.stdev(r["test_acc"] for r in res)
        )
        # The gap: clean training accuracy minus the plain (no TTA) test accuracy of the tested
        # checkpoint; these runs test without TTA, so test_acc stands in where it is absent.
        gap = statistics.fmean(r["train_acc_clean"] - r.get("test_acc_plain", r["test_acc"])
                               for r in res)  # fmt: skip
        assert float(row["gap_mean"]) == pytest.approx(gap)
        assert float(row["best_val_acc_mean"]) == pytest.approx(
            statistics.fmean(r["best_val_acc"] for r in res)
        )
    assert rows["optimizer=adamw"]["runs"] == "0" and rows["optimizer=adamw"]["failed"] == "1"
    text = (sweep / "report.md").read_text()
    assert "something broke" in text and "optimizer=adamw,seed=0" in text
    for name in ("curves.png", "per_class_heatmap.png", "best_confusion_matrix.png"):
        assert (sweep / name).stat().st_size > 1000
    # Picked on validation: the confusion matrix is that of a run with the best val accuracy.
    best = max(json.loads(p.read_text())["best_val_acc"] for p in sweep.glob("*/results.json"))
    [picked] = re.findall(r"Picked by validation accuracy only: `([^`]+)`", text)
    assert json.loads((sweep / picked / "results.json").read_text())["best_val_acc"] == best
    assert "## Provenance" in text and "WARNING" not in text


def test_report_of_nothing_is_a_clear_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err


@pytest.mark.parametrize("launcher", ["joblib", "slurm"])
def test_launcher_configs_compose(launcher):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    if launcher == "slurm":
        assert target.endswith("SlurmLauncher")
        assert {"partition", "gpus_per_node", "timeout_min"} <= set(cfg.hydra.launcher)
    else:
        assert target.endswith("JoblibLauncher")


def test_optuna_search_composes_and_optimises_val_acc():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna_lr"], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "maximize"
    assert "optimizer.lr" in cfg.hydra.sweeper.params


@pytest.mark.slow
def test_tune_lr_and_optuna_search_run_on_validation_only(folder_root, tmp_path):
    common = [f"data.root={folder_root}", "data.num_workers=0", "data.batch_size=32",
              "data.val_size=50", "trainer.max_epochs=1"]  # fmt: skip
    proc = run_cli("train.py", *common, "tune_lr=true", f"hydra.run.dir={tmp_path / 'lr'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tune_lr: suggested learning rate" in proc.stdout + proc.stderr
    sweep = tmp_path / "optuna"
    proc = run_cli("train.py", *common, "hparams_search=optuna_lr",
                   "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "optimizer.lr" in best
    values = [json.loads(p.read_text())["val_acc"] for p in sweep.glob("*/results.json")]
    assert len(values) == 2 and f"best_value: {max(values)}" in best
