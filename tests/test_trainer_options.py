"""The Trainer flags a user types are plain overrides that do what they say; recipes pick a
health option that health=off still switches off; matmul_precision; the DataLoader's GPU
settings. In-process: composed configs, built callbacks and Trainers, one tiny run."""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
import yaml
from pytorch_lightning.callbacks import Checkpoint, ProgressBar, Timer
from pytorch_lightning.profilers import SimpleProfiler

from cifar_lightning import matmul
from cifar_lightning.errors import UserError
from cifar_lightning.health import HealthCheck
from cifar_lightning.pipeline import build, build_callbacks, make_trainer, train
from tests.conftest import FAST, REPO, task_config

CONF = REPO / "conf"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def torch_globals() -> Iterator[None]:
    """Trainer flags and matmul_precision set process-wide torch state: put it back."""
    precision, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.benchmark = cudnn


def built(folder_root: Path, tmp_path: Path, *overrides: str) -> tuple[L.Trainer, list]:
    """The Trainer and callbacks train.py builds for these overrides."""
    with task_config("train", [f"data.root={folder_root}", *overrides], tmp_path) as cfg:
        datamodule, _ = build(cfg, 0)
        callbacks, _, _ = build_callbacks(cfg, datamodule)
        trainer = make_trainer(cfg.trainer, None, callbacks, tmp_path, cfg.matmul_precision)
    return trainer, callbacks


def test_every_key_of_the_trainer_config_is_a_trainer_argument():
    keys = set(yaml.safe_load((CONF / "trainer" / "default.yaml").read_text())) - {"_target_"}
    arguments = set(inspect.signature(L.Trainer.__init__).parameters)
    assert keys <= arguments, keys - arguments
    # The flags a user is likely to type, each a plain override (no `+trainer.`).
    assert keys >= {"max_epochs", "max_steps", "max_time", "enable_progress_bar",
                    "enable_checkpointing", "benchmark", "num_sanity_val_steps",
                    "val_check_interval", "limit_train_batches", "limit_val_batches",
                    "limit_test_batches", "precision", "gradient_clip_val",
                    "gradient_clip_algorithm", "accumulate_grad_batches", "log_every_n_steps",
                    "deterministic", "detect_anomaly", "profiler"}  # fmt: skip


def _timer(t: L.Trainer) -> float | None:
    found = [c for c in t.callbacks if isinstance(c, Timer)]
    return found[0]._duration if found else None


# (override, what the built Trainer shows for it)
FLAGS = [
    ("trainer.max_steps=100", lambda t: t.max_steps == 100),
    ("trainer.max_epochs=3", lambda t: t.max_epochs == 3),
    ("trainer.max_time=00:00:01:30", lambda t: _timer(t) == 90.0),
    ("trainer.enable_progress_bar=false", lambda t: t.progress_bar_callback is None),
    ("trainer.enable_checkpointing=false", lambda t: t.checkpoint_callbacks == []),
    ("trainer.benchmark=true", lambda t: torch.backends.cudnn.benchmark is True),
    ("trainer.num_sanity_val_steps=0", lambda t: t.num_sanity_val_steps == 0),
    ("trainer.val_check_interval=0.5", lambda t: t.val_check_interval == 0.5),
    ("trainer.val_check_interval=5", lambda t: t.val_check_interval == 5),
    ("trainer.limit_train_batches=3", lambda t: t.limit_train_batches == 3),
    ("trainer.gradient_clip_algorithm=value", lambda t: t.gradient_clip_algorithm == "value"),
    ("trainer.accumulate_grad_batches=2", lambda t: t.accumulate_grad_batches == 2),
    ("trainer.log_every_n_steps=7", lambda t: t.log_every_n_steps == 7),
    ("trainer.precision=bf16-mixed", lambda t: str(t.precision) == "bf16-mixed"),
    ("trainer.detect_anomaly=true", lambda t: t._detect_anomaly is True),
    ("trainer.profiler=simple", lambda t: isinstance(t.profiler, SimpleProfiler)),
]


@pytest.mark.parametrize(("override", "shows"), FLAGS, ids=[f[0] for f in FLAGS])
def test_a_trainer_flag_is_a_plain_override(override, shows, folder_root, tmp_path, monkeypatch):
    # cuDNN's benchmark flag is global: a trainer built earlier in the session (trainer=gpu's
    # benchmark: true, even on a CPU) leaves it set.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    default, _ = built(folder_root, tmp_path / "default")
    assert not shows(default)  # the check can fail: the configured default differs
    trainer, _ = built(folder_root, tmp_path, override)
    assert shows(trainer)


def test_the_progress_bar_is_on_unless_switched_off(folder_root, tmp_path):
    # `enable_progress_bar: null` would have read as off in build_callbacks' check.
    trainer, callbacks = built(folder_root, tmp_path)
    assert isinstance(trainer.progress_bar_callback, ProgressBar)
    assert any(isinstance(c, ProgressBar) for c in callbacks)
    trainer, callbacks = built(folder_root, tmp_path, "trainer.enable_progress_bar=null")
    assert any(isinstance(c, ProgressBar) for c in callbacks)  # null: Lightning's default, on


def test_switching_checkpointing_off_drops_the_projects_checkpoint_callbacks(folder_root, tmp_path):
    _, callbacks = built(folder_root, tmp_path)
    assert sum(isinstance(c, Checkpoint) for c in callbacks) == 2  # best.ckpt and last.ckpt
    trainer, callbacks = built(folder_root, tmp_path, "trainer.enable_checkpointing=false")
    assert not any(isinstance(c, Checkpoint) for c in callbacks)
    assert trainer.checkpoint_callbacks == []  # nor Lightning's own default one


def test_a_tiny_run_with_the_flags_set(folder_root, tmp_path):
    """Lightning accepts the flags together in a fit, and the run honours them: 3 steps, no
    sanity pass, validation every 2 batches, no checkpoint written during the fit, the matmul
    precision set before the fit."""
    seen: dict = {}

    class Spy(L.Callback):
        def on_sanity_check_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen["sanity"] = True

        def on_validation_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen.setdefault("validated_at", []).append(trainer.global_step)

        def on_fit_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen["step"] = trainer.global_step
            seen["matmul"] = torch.get_float32_matmul_precision()
            seen["files"] = sorted(p.name for p in (tmp_path / "checkpoints").glob("*"))

    overrides = [f"data.root={folder_root}", *FAST, "trainer.max_steps=3",
                 "trainer.num_sanity_val_steps=0", "trainer.val_check_interval=2",
                 "trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
                 "matmul_precision=medium", "data.val_size=64", "trainer.limit_val_batches=1",
                 "trainer.limit_test_batches=1"]  # fmt: skip
    with task_config("train", overrides, tmp_path) as cfg:
        train(cfg, extra_callbacks=lambda: [Spy()])
    assert seen["step"] == 3 and "sanity" not in seen
    assert seen["validated_at"] == [2]  # after batch 2; the fit stops at step 3
    assert seen["files"] == [] and seen["matmul"] == "medium"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_acc"] is not None and results["best_val_acc"] is None


# --- health options -----------------------------------------------------------------------

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("health_off", [False, True], ids=["health", "health=off"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_recipe_builds_its_callbacks_with_and_without_health(
    experiment, health_off, folder_root, tmp_path
):
    overrides = [f"data.root={folder_root}", f"experiment={experiment}"]
    overrides += ["health=off"] if health_off else []
    with task_config("train", overrides, tmp_path) as cfg:
        datamodule, _ = build(cfg, 0)
        callbacks, health, _ = build_callbacks(cfg, datamodule)
    assert all(isinstance(c, L.Callback) for c in callbacks)
    if health_off:
        assert health is None and not any(isinstance(c, HealthCheck) for c in callbacks)
        return
    assert isinstance(health, HealthCheck) and health in callbacks
    recipe = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text())
    assert "health" not in recipe  # recipes choose a health option, they set no health keys
    if experiment.startswith("fast"):  # runs of a few hundred steps: 40-step loss windows
        assert health.loss_window_steps == 40


def test_health_keys_set_on_top_of_health_off_are_one_error(folder_root, tmp_path):
    overrides = [f"data.root={folder_root}", "health=off", "+health.loss_window_steps=40"]
    with task_config("train", overrides, tmp_path) as cfg:
        datamodule, _ = build(cfg, 0)
        with pytest.raises(
            UserError,
            match=r"health settings \(health.loss_window_steps\) "
            r"configure no health check.*health=default",
        ):
            build_callbacks(cfg, datamodule)


# --- matmul_precision ---------------------------------------------------------------------


def _on(device: str) -> types.SimpleNamespace:
    """A stand-in trainer on `device`: what matmul.apply reads of one."""
    return types.SimpleNamespace(strategy=types.SimpleNamespace(root_device=torch.device(device)))


def test_matmul_precision_auto_is_high_on_cuda_only():
    torch.set_float32_matmul_precision("highest")
    assert matmul.apply("auto", _on("cpu")) is None
    assert torch.get_float32_matmul_precision() == "highest"  # CPU runs keep full fp32
    assert matmul.apply(None, _on("cuda")) is None  # a run config from before the option
    assert torch.get_float32_matmul_precision() == "highest"
    assert matmul.apply("auto", _on("cuda")) == "high"
    assert torch.get_float32_matmul_precision() == "high"
    assert matmul.apply("medium", _on("cpu")) == "medium"
    assert torch.get_float32_matmul_precision() == "medium"


def test_a_matmul_precision_torch_does_not_know_is_one_error():
    # torch itself only warns and keeps its setting.
    with pytest.raises(UserError, match="matmul_precision='fast' is not an option: use auto"):
        matmul.apply("fast", _on("cpu"))


def test_the_default_matmul_precision_is_auto(folder_root, tmp_path):
    with task_config("train", [f"data.root={folder_root}"], tmp_path) as cfg:
        assert cfg.matmul_precision == "auto"


# --- data.loader=torch on a GPU -------------------------------------------------------------


@pytest.mark.parametrize(("device", "pinned"), [(None, False), ("cpu", False), ("cuda", True)])
def test_torch_loader_pins_memory_for_a_cuda_trainer_and_keeps_its_workers(
    device, pinned, folder_root
):
    from cifar_lightning.data import CIFAR10DataModule

    datamodule = CIFAR10DataModule(root=str(folder_root), num_workers=2, val_size=50)
    datamodule.trainer = _on(device) if device else None
    options = datamodule._options()
    assert options["pin_memory"] is pinned and options["persistent_workers"] is True
    datamodule.num_workers = 0
    assert datamodule._options()["persistent_workers"] is False  # torch refuses it without


def test_submitit_jobs_leave_requeueing_to_submitit(monkeypatch: pytest.MonkeyPatch):
    """In-process, no cluster needed: a job submitit started gets Lightning's SLURM environment
    with auto-requeue off; anywhere else the trainer gets no such plugin."""
    from cifar_lightning.slurm import cluster_plugins

    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert cluster_plugins() == []
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    [env] = cluster_plugins()
    assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue is False
