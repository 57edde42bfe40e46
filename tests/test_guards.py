"""Checkpoints cannot act (trusted targets only, callback state confined to the resumed run),
resume refuses another run's checkpoint, and every bad setting ends as one `error:` line."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write
from pytorch_lightning.demos.boring_classes import BoringModel

from cifar_lightning import checkpoint, cli
from cifar_lightning.callbacks import BestCheckpoint, LastCheckpoint
from cifar_lightning.config_checks import check_optimizer, check_targets, target_allowed
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.errors import UserError
from cifar_lightning.pipeline import train
from tests.conftest import REPO, run_cli

CONF = REPO / "conf"


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- 1. a checkpoint's config builds only the project's components ---------------------------


def test_every_target_under_conf_is_allowed():
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        if path.relative_to(CONF).parts[0] == "hydra":
            continue  # Hydra's own settings (package `hydra`): never part of a run config
        tree = yaml.safe_load(path.read_text()) or {}
        check_targets(tree, str(path))  # raises on the first target it refuses
        found += [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                  if line.strip().startswith("_target_:") and "hydra" not in tree]  # fmt: skip
    assert len(found) >= 20
    assert {"torch.optim.SGD", "pytorch_lightning.Trainer", "cifar_lightning.module.Classifier",
            "pytorch_lightning.loggers.TensorBoardLogger"} <= set(found)  # fmt: skip
    # Whole composed configs too, as train.py stores them in checkpoints.
    composed = [[], ["experiment=fast94", "logger=tensorboard"], ["experiment=fast_cpu"],
                ["optimizer=adam_to_sgd", "scheduler=onecycle", "model=resnet18"]]  # fmt: skip
    for overrides in composed:
        check_targets(compose_train(*overrides), "composed")


UNTRUSTED = [
    "pathlib.Path.unlink", "builtins.open", "os.system", "subprocess.Popen", "torch.load",
    "cifar_lightning.callbacks.Path",  # pathlib.Path, imported into an allowed module
    "cifar_lightning.callbacks.atomic_write", "cifar_lightning.fileio.atomic_write",
    "cifar_lightning.data.sources.download", "cifar_lightning.callbacks._fmt",
    "cifar_lightning.callbacks.BestCheckpoint.load_state_dict",  # a method, not a component
    "torch.optim.Optimizer.load_state_dict", "torch.optim.lr_scheduler.OneCycleLR",
    "pytorch_lightning.Trainer.save_checkpoint",
]  # fmt: skip


@pytest.mark.parametrize("target", UNTRUSTED)
def test_untrusted_targets_are_refused_with_their_key(target):
    assert not target_allowed(target)
    cfg = {"data": {"_target_": "cifar_lightning.data.CIFAR10DataModule"},
           "model": {"inner": {"_target_": target}}}  # fmt: skip
    with pytest.raises(UserError, match=rf"ckpt is not trusted.*{target}.*model\.inner\._target_"):
        check_targets(cfg, "x.ckpt")


def test_args_and_non_string_targets_are_refused():
    with pytest.raises(UserError, match="_args_ at model"):
        check_targets({"model": {"_target_": "torch.optim.SGD", "_args_": [1]}}, "x.ckpt")
    with pytest.raises(UserError, match="not trusted"):
        check_targets({"model": {"_target_": ["pathlib", "Path"]}}, "x.ckpt")


def test_a_refused_target_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "gd_sideeffect.py").write_text(f"open({str(marker)!r}, 'w').close()\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError):
        check_targets({"model": {"_target_": "gd_sideeffect.X"}}, "x.ckpt")
    assert not marker.exists()


def crafted_checkpoint(tmp_path: Path, data_root: Path) -> tuple[Path, Path]:
    """A checkpoint whose run config would delete `victim` when eval.py builds its model."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_config = OmegaConf.to_container(compose_train(f"data.root={data_root}"), resolve=False)
    run_config.pop("callbacks"), run_config.pop("logger")  # ${hydra:...}: stored resolved
    run_config["model"] = {"_target_": "pathlib.Path.unlink", "self": str(victim)}
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "run_config": run_config}, path)
    return path, victim


def test_a_crafted_checkpoint_is_refused_and_its_target_never_runs(tmp_path, folder_root):
    path, victim = crafted_checkpoint(tmp_path, folder_root)
    ckpt = checkpoint.load(path)  # weights-only loading lets it through: it is plain data
    with pytest.raises(UserError, match=r"not trusted.*pathlib\.Path\.unlink.*model\._target_"):
        check_targets(ckpt["run_config"], str(path))
    assert victim.read_text() == "precious"


@pytest.mark.slow
def test_cli_eval_of_a_crafted_checkpoint_is_one_error(tmp_path, folder_root):
    path, victim = crafted_checkpoint(tmp_path, folder_root)
    proc = run_cli("eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert victim.read_text() == "precious"
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert "not trusted" in line and "pathlib.Path.unlink" in line


# --- 2. callback state never copies a file from outside the resumed run ----------------------


@pytest.fixture
def runs(tmp_path: Path) -> types.SimpleNamespace:
    old, new, outside = (tmp_path / d for d in ("old/checkpoints", "new/checkpoints", "outside"))
    for d in (old, new, outside):
        d.mkdir(parents=True)
    (outside / "secret.ckpt").write_bytes(b"not this run's")
    return types.SimpleNamespace(old=old, new=new, outside=outside)


def best_callback(runs: types.SimpleNamespace) -> BestCheckpoint:
    cb = BestCheckpoint(dirpath=str(runs.new), filename="best", monitor="val/acc", mode="max")
    fake_trainer = types.SimpleNamespace(ckpt_path=str(runs.old / "last.ckpt"))
    cb.on_load_checkpoint(fake_trainer, None, {})  # what Lightning calls before load_state_dict
    return cb


def state(runs: types.SimpleNamespace, best: Path) -> dict:
    return {"dirpath": str(runs.old), "best_model_path": str(best), "best_model_score": 0.9}


def test_the_best_checkpoint_of_the_resumed_run_is_copied_along(runs):
    (runs.old / "best.ckpt").write_bytes(b"the best")
    cb = best_callback(runs)
    assert cb.resumed_from == runs.old / "last.ckpt"
    cb.load_state_dict(state(runs, runs.old / "best.ckpt"))
    assert (runs.new / "best.ckpt").read_bytes() == b"the best"
    assert cb.best_model_path == str(runs.new / "best.ckpt")
    assert float(cb.best_model_score) == pytest.approx(0.9)


def test_callback_state_naming_a_file_outside_the_run_copies_nothing(runs, caplog):
    cb = best_callback(runs)
    cb.load_state_dict(state(runs, runs.outside / "secret.ckpt"))
    assert list(runs.new.iterdir()) == []
    assert cb.best_model_path == "" and cb.best_model_score is None  # the old score is dropped
    assert "nothing copied" in caplog.text
    # A symlink in the resumed folder that leads out of it, and a non-checkpoint file.
    (runs.old / "best.ckpt").symlink_to(runs.outside / "secret.ckpt")
    (runs.old / "notes.txt").write_text("x")
    for name in ("best.ckpt", "notes.txt"):
        cb = best_callback(runs)
        cb.load_state_dict(state(runs, runs.old / name))
        assert list(runs.new.iterdir()) == [] and cb.best_model_path == ""
    # State claiming this run's own folder (Lightning would restore it as it is) is no different.
    cb = best_callback(runs)
    cb.load_state_dict({**state(runs, runs.outside / "secret.ckpt"), "dirpath": str(runs.new)})
    assert list(runs.new.iterdir()) == [] and cb.best_model_path == ""


class RisingValAcc(BoringModel):
    """val/acc rises every epoch: each epoch is the best so far."""

    def validation_step(self, batch, batch_idx):  # noqa: ANN001
        self.log("val/acc", (self.current_epoch + 1) / 2)


def test_the_epoch_end_last_checkpoint_holds_that_epochs_best_score(tmp_path):
    # Listed as in conf/callbacks/default.yaml. A resume from last.ckpt at an epoch end must
    # know that epoch's best, or a worse later epoch becomes best.ckpt.
    dirpath = str(tmp_path / "checkpoints")
    callbacks = [
        BestCheckpoint(dirpath=dirpath, filename="best", monitor="val/acc", mode="max"),
        LastCheckpoint(dirpath=dirpath, every_n_train_steps=0),
    ]
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=False,
                        callbacks=callbacks, enable_progress_bar=False, default_root_dir=tmp_path,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(RisingValAcc())
    ckpt = checkpoint.load(tmp_path / "checkpoints" / "last.ckpt")
    [best_state] = [v for k, v in ckpt["callbacks"].items() if k.startswith("BestCheckpoint")]
    assert float(best_state["best_model_score"]) == 1.0  # the last epoch's, not the one before
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["best.ckpt", "last.ckpt"]


# --- 3. resume refuses another run's checkpoint ----------------------------------------------


def stored(*overrides: str) -> dict:
    """The checkpoint of a run with these overrides (its run config, as train.py stores it)."""
    cfg = compose_train(*overrides)
    keys = ("data", "augment", "model", "optimizer", "scheduler", "module", "trainer", "seed")
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k])
             else cfg[k] for k in keys}  # fmt: skip
    return {"run_config": plain}


def test_resume_with_the_same_settings_or_only_free_ones_changed_is_accepted():
    old = stored("optimizer=sgd_nesterov")
    checkpoint.check_resume(old, compose_train("optimizer=sgd_nesterov"), "last.ckpt")
    free = ["data.root=/elsewhere", "data.num_workers=7", "trainer.max_epochs=99",
            "trainer.devices=2", "module.label_smoothing=0.1", "module.tta_level=2",
            "module.train_resolution=[24,32]", "logger=tensorboard", "health=off",
            "data.eval_batch_size=7", "data.download=false"]  # fmt: skip
    checkpoint.check_resume(old, compose_train("optimizer=sgd_nesterov", *free), "last.ckpt")
    checkpoint.check_resume({"state_dict": {}}, compose_train(), "old.ckpt")  # nothing to compare


def test_a_key_added_to_conf_later_is_its_default_when_absent_and_differs_when_changed():
    old = stored()
    del old["run_config"]["augment"]["padding_mode"]  # a checkpoint from before the key
    checkpoint.check_resume(old, compose_train(), "last.ckpt")
    with pytest.raises(UserError, match="augment.padding_mode: constant → reflect"):
        checkpoint.check_resume(old, compose_train("augment.padding_mode=reflect"), "last.ckpt")


def test_resume_under_another_model_lists_each_difference_once():
    with pytest.raises(UserError) as err:
        checkpoint.check_resume(stored(), compose_train("model=resnet18"), "run/last.ckpt")
    message = str(err.value)
    assert message.startswith("checkpoint run/last.ckpt was written by a run with other settings")
    assert ("model._target_: cifar_lightning.models.seed_cnn.SeedCNN → "
            "cifar_lightning.models.resnet.ResNet18") in message  # fmt: skip
    assert "model.dropout: 0.1 → (not set)" in message and message.count("model._target_") == 1
    assert message.endswith("Resume with the same settings, or start a new run without ckpt_path.")
    assert len(message) < 600 and "\n" not in message


def test_resume_lists_optimizer_data_and_seed_changes():
    changed = compose_train("optimizer.lr=0.01", "data.batch_size=64", "data.val_size=100",
                            "seed=3", "+module.num_classes=12")  # fmt: skip
    with pytest.raises(UserError) as err:
        checkpoint.check_resume(stored(), changed, "last.ckpt")
    for diff in (
        "optimizer.lr: 0.001 → 0.01",
        "data.batch_size: 128 → 64",
        "data.val_size: 5000 → 100",
        "seed: 0 → 3",
        "module.num_classes: (not set) → 12",
    ):
        assert diff in str(err.value)  # fmt: skip


def test_with_a_schedule_the_run_length_must_stay():
    old = stored("scheduler=onecycle")
    with pytest.raises(UserError, match="trainer.max_epochs: 10 → 20"):
        checkpoint.check_resume(old, compose_train("scheduler=onecycle", "trainer.max_epochs=20"),
                                "last.ckpt")  # fmt: skip
    checkpoint.check_resume(stored(), compose_train("trainer.max_epochs=20"), "last.ckpt")


def test_a_length_key_the_old_run_config_lacks_counts_as_lightnings_default():
    # Checkpoints written before conf/trainer/default.yaml listed max_steps: -1 (and the other
    # length keys) at Lightning's default.
    old = stored("scheduler=onecycle")
    for key in ("max_steps", "limit_train_batches", "accumulate_grad_batches"):
        del old["run_config"]["trainer"][key]
    checkpoint.check_resume(old, compose_train("scheduler=onecycle"), "last.ckpt")
    with pytest.raises(UserError, match="trainer.max_steps: -1 → 100"):
        checkpoint.check_resume(old, compose_train("scheduler=onecycle", "trainer.max_steps=100"),
                                "last.ckpt")  # fmt: skip


# --- 4. every bad setting is one `error:` line and exit status 2 -----------------------------


def test_check_optimizer_refuses_bad_values():
    check_optimizer(compose_train("optimizer=muon", "scheduler=onecycle"))  # valid ones pass
    with pytest.raises(UserError, match="the optimizer settings are not valid: Invalid learning"):
        check_optimizer(compose_train("optimizer.lr=-1"))
    with pytest.raises(UserError, match="the scheduler settings are not valid: Expected float"):
        check_optimizer(compose_train("scheduler=onecycle", "scheduler.pct_start=2"))


def run_in_process(script_overrides: list[str], out: Path, capsys, monkeypatch) -> tuple[int, str]:
    """train.py's path through cli.run_main and cli_guard, with the config composed in this
    process (a subprocess costs seconds of imports per case)."""
    monkeypatch.setenv(cli.FULL_ERROR, "0")
    monkeypatch.setenv(cli.TRACEBACKS, "0")  # as a user without HYDRA_FULL_ERROR=1

    def hydra_main() -> None:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=script_overrides, return_hydra_config=True)
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]
        cli.cli_guard(train, cfg)

    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(hydra_main, [f"hydra.run.dir={out}"])
    finally:
        HydraConfig.instance().cfg = None
    return exit_info.value.code, capsys.readouterr().err


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
BAD_SETTINGS = [
    (["data.batch_size=0"], "data.batch_size and data.eval_batch_size must be >= 1, got 0"),
    (["data.val_size=-1"], "data.val_size=-1 must be between 0 and"),
    (["data.loader=bogus"], "data.loader='bogus' is not an option"),
    (["optimizer=foo"], "Could not find 'optimizer/foo'. Available options in 'optimizer': adam,"),
    (["data.foo=1"], "data.foo is not a key of this config: check its spelling"),
    (["data.batch_size=["], "cannot parse the override 'data.batch_size=['"),
    (["module.train_resolution=[4]"], "cannot build module (cifar_lightning.module.Classifier)"),
    (["+model.foo=1"], "unexpected keyword argument 'foo'"),
    (["model.dropout=2"], "cannot build model"),
    (["data.download=false"], "CIFAR-10 is not under"),  # data.root: a folder without data
    (["matmul_precision=fast"], "matmul_precision='fast' is not an option: use auto"),
    (["health=off", "+health.loss_window_steps=40"], "configure no health check"),
    (["test=no"], "test='no' is not a switch: pass test=true or test=false"),
    (["train=false"], "train=false test=true tests a checkpoint, and none was given"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    (["module.tta_level=5"], "module.tta_level must be 0, 1 or 2"),
    (["module.label_smoothing=2"], "module.label_smoothing must be in [0, 1]"),
    (["module.train_resolution=[24,32]"], "SeedCNN takes 32x32 inputs only"),
    (["health.collapse_max_share=abc"], "health.collapse_max_share must be a number in [0, 1]"),
    (
        ["scheduler=cosine", "trainer.max_epochs=-1", "trainer.max_time=00:00:00:05"],
        "the learning-rate schedule needs the run's length",
    ),
    (["ckpt_path=."], "is a folder, not a .ckpt file"),
    (["trainer.val_check_interval=5000"], "`val_check_interval` (5000) must be less than"),
    pytest.param(["trainer=gpu"], "with trainer=cpu", marks=NO_GPU),
    pytest.param(["experiment=fast94"], "experiment=fast_cpu", marks=NO_GPU),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_SETTINGS)
def test_bad_settings_are_one_error_line(overrides, expected, folder_root, tmp_path, capsys,
                                         monkeypatch):  # fmt: skip
    root = tmp_path / "empty" if "data.download=false" in overrides else folder_root
    base = [f"data.root={root}", "data.num_workers=0", "data.val_size=50", "trainer.max_epochs=1"]
    code, stderr = run_in_process([*base, *overrides], tmp_path / "run", capsys, monkeypatch)
    assert code == 2
    assert "Traceback" not in stderr
    [line] = error_lines(stderr)
    assert expected in line


def test_a_bad_optimizer_value_is_one_error_line(folder_root, tmp_path, capsys, monkeypatch):
    # Needs pipeline.train to call config_checks.check_optimizer(cfg) before fitting.
    base = [f"data.root={folder_root}", "data.num_workers=0", "data.val_size=50"]
    code, stderr = run_in_process([*base, "optimizer.lr=-1"], tmp_path, capsys, monkeypatch)
    assert code == 2 and "Invalid learning rate: -1" in error_lines(stderr)[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("train.py", ["optimizer=foo"], "Available options in 'optimizer': adam, adam_to_sgd"),
        pytest.param("train.py", ["experiment=fast94"], "experiment=fast_cpu", marks=NO_GPU),
        ("eval.py", [], "ckpt_path has no value (???): pass ckpt_path=VALUE."),
    ],
)
def test_cli_bad_settings_are_one_error_line(script, args, expected, folder_root, tmp_path):
    # The real hydra.main (cli.run_main's HYDRA_FULL_ERROR switch); the rest run in-process above.
    root = [f"data.root={folder_root}"] if script == "train.py" else []
    proc = run_cli(script, *root, *args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert expected in line
    assert "error:" not in proc.stdout  # printed once: the console log handler does not repeat it
    for log in tmp_path.glob("*.log"):  # an error inside the task: the run's log keeps it
        assert expected in log.read_text()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train_size=-5", "data.train_size >= 1 or null"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("augment.crop_padding=-1", "crop_padding must be >= 0"),
        ("augment.rotation=abc", "the augment settings are not valid"),
    ],
)
def test_bad_data_settings_fail_when_the_datamodule_is_built(override, message):
    cfg = compose_train(override)
    data = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if k != "_target_"}
    with pytest.raises(UserError, match=message):
        CIFAR10DataModule(**data, augment=OmegaConf.to_container(cfg.augment), seed=0)


def test_a_checkpoint_without_a_running_metric_state_still_loads_its_weights():
    from functools import partial

    from cifar_lightning.models.seed_cnn import SeedCNN
    from cifar_lightning.module import Classifier

    def make() -> Classifier:
        return Classifier(
            SeedCNN(widths=[[8, 8], [8, 8], [8, 8]]), partial(torch.optim.SGD, lr=0.1)
        )

    saved = {k: v for k, v in make().state_dict().items() if not k.startswith("train_loss.")}
    module = make()
    checkpoint.restore_weights(module, {"state_dict": saved}, "old.ckpt")  # written before it
    assert all(torch.equal(module.state_dict()[k], v) for k, v in saved.items())
    del saved["net.head.2.weight"]
    with pytest.raises(UserError, match="missing keys: net.head.2.weight"):
        checkpoint.restore_weights(make(), {"state_dict": saved}, "old.ckpt")


def test_a_batch_file_that_asks_for_code_is_refused_and_nothing_runs(tmp_path):
    # A pickle may name any callable to run as it loads; CIFAR-10's batches need only numpy's.
    import os
    import pickle

    from cifar_lightning.data import readers
    from cifar_lightning.errors import DataError
    from tests.synthetic import write_torchvision_layout

    root = write_torchvision_layout(tmp_path / "data")
    assert len(readers.read_torchvision(root).train_y) == 400  # the real format still reads
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match=r"asks to load \w+\.system, which a CIFAR-10 batch"):
        readers.read_torchvision(root)
    assert not marker.exists()


def test_a_checkpoints_own_data_root_is_never_downloaded_into_and_eval_needs_it_here(
    trained_run, tmp_path
):
    from cifar_lightning.config_checks import check_stored_data_root
    from cifar_lightning.pipeline import load_trained

    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["run_config"]["data"].update(root=str(tmp_path / "made" / "by" / "file"), download=True)
    torch.save(ckpt, tmp_path / "moved.ckpt")
    # predict.py and export.py read no data: the run's folder need not be here.
    _, run_cfg, _, _ = load_trained(tmp_path / "moved.ckpt")
    assert run_cfg.data.download is False  # no download into a place the file chose
    with pytest.raises(UserError, match="is not here: pass data.root=PATH"):
        check_stored_data_root(run_cfg, "moved.ckpt")  # eval.py's test needs it
    assert not (tmp_path / "made").exists()


def test_another_scripts_run_folder_is_refused_before_hydra_writes_in_it(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n")
    with pytest.raises(UserError, match=r"is a train.py run's folder: eval.py would overwrite"):
        cli.check_cli([f"hydra.run.dir={run}"], app="eval")
    cli.check_cli([f"hydra.run.dir={run}"], app="train")  # its own: a rerun or resume
    cli.check_cli([f"hydra.run.dir={tmp_path / 'new'}"], app="eval")  # no record: fine


def test_eval_may_change_the_device_only():
    from cifar_lightning.config_checks import device_settings

    assert device_settings({"accelerator": "cpu", "devices": None}) == {"accelerator": "cpu"}
    with pytest.raises(UserError, match="not precision"):
        device_settings({"accelerator": "cpu", "precision": "32-true"})  # from +trainer=cpu
    assert device_settings({"enable_progress_bar": False}) == {"enable_progress_bar": False}


def test_a_fixed_size_network_takes_a_train_resolution_of_its_own_size_only():
    from cifar_lightning.config_checks import check_module_options
    from cifar_lightning.models.seed_cnn import SeedCNN

    check_module_options(SeedCNN(), 0.0, 0, [32])  # changes nothing: accepted
    with pytest.raises(ValueError, match="SeedCNN takes 32x32 inputs only"):
        check_module_options(SeedCNN(), 0.0, 0, [24, 32])


@pytest.mark.slow
def test_cli_eval_into_a_train_runs_folder_is_refused_and_train_may_reuse_it(tmp_path):
    # The scripts' own names, as run_main finds them behind hydra.main's wrapper.
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n")
    proc = run_cli("eval.py", "ckpt_path=x.ckpt", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert "is a train.py run's folder: eval.py would overwrite" in line
    assert (tmp_path / ".hydra" / "hydra.yaml").read_text().endswith("name: train\n")
    proc = run_cli("train.py", "seed=abc", f"hydra.run.dir={tmp_path}")  # past the folder check
    assert proc.returncode == 2 and "seed='abc' is not an integer" in proc.stderr


def test_a_bug_keeps_its_traceback_and_the_run_log_gets_its_last_line(tmp_path):
    import logging

    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)

    def task(cfg):  # noqa: ANN001, ANN202
        raise RuntimeError("boom\nsecond line")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            cli.cli_guard(task, None)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert "error: RuntimeError: boom" in (tmp_path / "train.log").read_text()


def test_another_runs_results_go_when_a_run_fits_in_its_folder_not_when_refused(
    folder_root, tmp_path, capsys, monkeypatch
):
    # A run that then fails must not leave a results.json naming other settings beside its own
    # checkpoints and log; one refused before it starts leaves the folder as it was.
    from cifar_lightning.module import Classifier

    out = tmp_path / "run"
    out.mkdir()
    results = out / "results.json"
    results.write_text('{"overrides": ["seed=5"]}')
    base = [f"data.root={folder_root}", "data.num_workers=0", "data.val_size=50"]
    code, _ = run_in_process([*base, "test=no"], out, capsys, monkeypatch)
    assert code == 2 and results.exists()

    def failing(self, batch, batch_idx):  # noqa: ANN001, ANN202
        raise UserError("the step failed")

    monkeypatch.setattr(Classifier, "training_step", failing)
    code, stderr = run_in_process(base, out, capsys, monkeypatch)
    assert code == 2 and "the step failed" in stderr
    assert not results.exists()
