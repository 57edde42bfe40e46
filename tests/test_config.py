"""Every option of every config group composes, and the pieces it names instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from cifar_lightning.data.augment import AugmentPreset, train_transform
from cifar_lightning.models.network import Network
from cifar_lightning.schedulers import _LinearDecay, _Triangle
from tests.conftest import REPO, run_cli

CONF = REPO / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_groups_named_in_the_contract_exist():
    assert options("data") == ["cifar10"]
    assert set(options("augment")) >= {"seed", "standard", "none"}
    assert set(options("model")) >= {"seed_cnn", "resnet18"}
    assert set(options("optimizer")) >= {"adam", "sgd_nesterov", "sgd", "adamw"}
    assert set(options("scheduler")) >= {"none", "cosine", "onecycle"}
    assert set(options("trainer")) >= {"default", "cpu", "gpu", "ddp"}
    assert set(options("logger")) >= {"csv", "tensorboard"}
    assert set(options("debug")) >= {"fdr", "overfit", "limit"}
    assert "seed_reproduction" in options("experiment")


def test_defaults():
    cfg = compose_train()
    assert cfg.seed == 0 and cfg.ckpt_path is None and cfg.train and cfg.test
    assert cfg.data.root == "data/" and cfg.data.download is True and cfg.data.val_size == 5000
    assert cfg.optimizer._partial_ is True
    assert cfg.scheduler is None


@pytest.mark.parametrize("option", options("model"))
def test_model_options(option):
    net = instantiate(compose_train(f"model={option}").model)
    assert isinstance(net, Network)  # the hooks the LightningModule drives it through
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_norm_bias_lr_scale_is_a_fastnet_option_only():
    assert compose_train("model=fastnet", "model.norm_bias_lr_scale=64").model.norm_bias_lr_scale
    with pytest.raises(ConfigCompositionException, match="norm_bias_lr_scale"):
        compose_train("model=seed_cnn", "model.norm_bias_lr_scale=64")


def test_resnet18_is_torchvisions_with_the_cifar_stem():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    ours = instantiate(compose_train("model=resnet18").model).state_dict()
    torch.manual_seed(0)
    reference = resnet18(num_classes=10)  # what the model config built before it was a Network
    reference.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    reference.maxpool = nn.Identity()
    expected = reference.state_dict()
    assert list(ours) == list(expected)  # checkpoints keep their keys
    assert all(torch.equal(ours[k], expected[k]) for k in expected)  # the same initial draw


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_options(option):
    cfg = compose_train(f"optimizer={option}")
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("option", options("scheduler"))
def test_scheduler_options(option):
    cfg = compose_train(f"scheduler={option}")
    factory = instantiate(cfg.scheduler)
    if option == "none":
        assert factory is None
        return
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    sched = factory(opt, 100)
    assert sched["interval"] == "step"


@pytest.mark.parametrize("total", [0, 1, 7, 225, 475])
def test_linear_schedule_is_the_triangle_with_start_1_peak_0_end_0_bit_for_bit(total):
    # fast_cpu's schedule was scheduler=triangle with these values: its learning rates must not
    # change by a single bit.
    triangle, linear = _Triangle(total, 1.0, 0.0, 0.0), _LinearDecay(total)
    assert [linear(s) for s in range(total + 3)] == [triangle(s) for s in range(total + 3)]
    assert linear(0) == 1.0 and linear(max(total, 1)) == 0.0


@pytest.mark.parametrize("option", options("augment"))
def test_augment_options(option):
    cfg = compose_train(f"augment={option}")
    preset = AugmentPreset.from_config(OmegaConf.to_container(cfg.augment))
    out = train_transform(preset)(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_seed_augment_is_the_seeds_order():
    cfg = compose_train("augment=seed")
    tf = train_transform(AugmentPreset.from_config(OmegaConf.to_container(cfg.augment)))
    names = [type(t).__name__ for t in tf.transforms]
    assert names == [
        "RandomCrop", "RandomHorizontalFlip", "RandomAffine", "RandomPerspective",
        "ColorJitter", "RandomRotation", "ToDtype", "Normalize",
    ]  # fmt: skip
    assert list(cfg.augment.mean) == [0.5, 0.5, 0.5] and list(cfg.augment.std) == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option, tmp_path: Path):
    cfg = compose_train(f"trainer={option}")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if option in ("default", "cpu"):
        trainer = instantiate(cfg.trainer, logger=False, default_root_dir=tmp_path)
        assert trainer.max_epochs == cfg.trainer.max_epochs
    if option == "ddp":
        assert cfg.trainer.strategy == "ddp"


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(option, tmp_path: Path):
    cfg = compose_train(f"logger={option}")
    for node in cfg.logger.values():
        node.save_dir = str(tmp_path)
        if "tracking_uri" in node:  # MLflow opens its store as the logger is built
            node.tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
            node.artifact_location = str(tmp_path / "mlartifacts")
        instantiate(node)


@pytest.mark.parametrize("option", options("debug"))
def test_debug_options(option):
    cfg = compose_train(f"debug={option}")
    assert cfg.trainer.max_epochs >= 1


def test_callbacks_default():
    cfg = compose_train()
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc"
    assert cfg.callbacks.last_checkpoint.every_n_train_steps > 0


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose_and_their_pieces_instantiate(experiment):
    cfg = compose_train(f"experiment={experiment}")
    assert isinstance(instantiate(cfg.model), Network)
    if experiment != "optimizer_study":  # its lr is picked by the sweep's optimizer name
        opt = instantiate(cfg.optimizer)([nn.Parameter(torch.zeros(3))])
        if cfg.scheduler is not None:
            instantiate(cfg.scheduler)(opt, 100)
    if (cfg.callbacks or {}).get("lookahead") is not None:
        instantiate(cfg.callbacks.lookahead)


def test_seed_reproduction_experiment():
    cfg = compose_train("experiment=seed_reproduction")
    assert cfg.model._target_.endswith("SeedCNN")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.augment.rotation == 30 and cfg.augment.affine.degrees == 40
    assert cfg.data.batch_size == 4 and cfg.trainer.max_epochs == 4


def test_seed_cnn_shapes():
    net = instantiate(compose_train("model=seed_cnn").model)
    feats = net.features(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 120, 4, 4)  # the head's Linear(120*4*4, 512)
    block1 = [type(m).__name__ for m in net.features[0]]
    assert block1 == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    assert (net.features[0][0].in_channels, net.features[0][0].out_channels) == (3, 32)
    assert net.features[0][3].out_channels == 64


def test_unknown_option_lists_valid_ones():
    proc = run_cli("train.py", "optimizer=foo")
    assert proc.returncode != 0
    assert "Could not find 'optimizer/foo'" in proc.stderr
    for name in ("adam", "sgd_nesterov", "sgd", "adamw"):
        assert name in proc.stderr


@pytest.mark.parametrize("config", ["train", "eval"])
def test_runs_started_in_the_same_second_get_separate_output_folders(config):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        first, second = (compose(config, return_hydra_config=True) for _ in range(2))
    assert first.hydra.run.dir != second.hydra.run.dir


@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd_nesterov", "adam_to_sgd"])
def test_optimizer_study_gives_each_optimizer_its_own_lr_and_weight_decay(opt, tmp_path):
    from benchmarks.common import run_config

    with run_config("optimizer_study", [f"optimizer={opt}"], tmp_path) as cfg:
        assert cfg.optimizer.lr == cfg.study.lr[opt]
        assert cfg.optimizer.weight_decay == (5e-2 if opt == "adamw" else 5e-4)
        made = instantiate(cfg.optimizer)([nn.Parameter(torch.zeros(3))])
        assert made.defaults["weight_decay"] == cfg.optimizer.weight_decay
        instantiate(cfg.scheduler)(made, 100)
