"""The LightningModule: metrics against independent computations, and the Network and optimizer
hooks it drives."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn

from cifar_lightning import DISPLAY_NAMES
from cifar_lightning.callbacks import LastCheckpoint
from cifar_lightning.data import CIFAR10DataModule
from cifar_lightning.evaluation import score
from cifar_lightning.metrics import batch_counts
from cifar_lightning.models.fastnet import FastNet
from cifar_lightning.models.network import Network
from cifar_lightning.module import Classifier
from cifar_lightning.optim import EpochAware, Muon


def test_per_class_accuracy_and_confusion_match_a_direct_count(folder_root, tmp_path):
    torch.manual_seed(0)
    # An untrained net whose predictions spread over classes (a linear map of mean colours).
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
    module = Classifier(net, optimizer=torch.optim.SGD)
    dm = CIFAR10DataModule(
        root=str(folder_root), download=False, eval_batch_size=7, num_workers=0, val_size=50
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False
    )
    [metrics] = trainer.test(module, datamodule=dm, verbose=False)

    net.eval()
    with torch.no_grad():
        xs = torch.stack([dm.test_set[i][0] for i in range(len(dm.test_set))])
        pred = net(xs).argmax(1).numpy()
    true = dm.test_set.y.numpy()
    assert len(set(pred.tolist())) > 1, "the check needs a net that predicts several classes"
    assert np.isclose(metrics["test/acc"], (pred == true).mean())
    per_class = module.test_report["per_class_acc"]
    assert list(per_class) == list(DISPLAY_NAMES)
    for k, name in enumerate(DISPLAY_NAMES):
        assert np.isclose(per_class[name], (pred[true == k] == k).mean())
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (true, pred), 1)
    assert module.test_report["confusion_matrix"] == confusion.tolist()
    assert module.test_report["test_images"] == len(true)
    # Per-image correctness, in the test split's order (eval_batch_size 7: several batches).
    assert np.array_equal(module.test_report["test_correct"], pred == true)


def test_a_class_without_test_images_has_no_accuracy(folder_root, tmp_path):
    # One test batch of 3 images (trainer.limit_test_batches): at least 7 classes go untested.
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
    module = Classifier(net, optimizer=torch.optim.SGD)
    dm = CIFAR10DataModule(
        root=str(folder_root), download=False, eval_batch_size=3, num_workers=0, val_size=50
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, limit_test_batches=1)  # fmt: skip
    trainer.test(module, datamodule=dm, verbose=False)
    report = module.test_report
    tested = {DISPLAY_NAMES[k] for k in dm.test_set.y[:3].tolist()}  # the unshuffled first batch
    assert report["test_images"] == 3
    assert {name for name, acc in report["per_class_acc"].items() if acc is not None} == tested
    assert len(tested) < len(DISPLAY_NAMES)


def test_the_tests_figures_without_tta_equal_a_separate_pass_without_it(folder_root, tmp_path):
    # A test with TTA also counts its plain view (results.json's test_acc_plain): to the last
    # digit what evaluation.score gives in a pass of its own at level 0, which it replaces.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # not flip-invariant
    module = Classifier(net, optimizer=torch.optim.SGD, tta_level=2)
    dm = CIFAR10DataModule(
        root=str(folder_root), download=False, eval_batch_size=7, num_workers=0, val_size=50
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False
    )
    [metrics] = trainer.test(module, datamodule=dm, verbose=False)
    report = module.test_report
    acc, loss = score(trainer, module, dm.eval_loader("test"), 0)
    assert (report["test_acc_plain"], report["test_loss_plain"]) == (acc, loss)
    assert report["test_loss_plain"] != pytest.approx(metrics["test/loss"])  # TTA's differs
    # A compiled module (module.compile) evaluates eager, as eval.py loads it: a stand-in for
    # the compiled network whose logits differ changes neither the test nor a level-0 pass.
    shifted = nn.Sequential(net, nn.Linear(10, 10))
    object.__setattr__(module, "_compiled", shifted)
    [again] = trainer.test(module, datamodule=dm, verbose=False)
    assert score(trainer, module, dm.eval_loader("test"), 0) == (acc, loss)
    assert (module.test_report["test_acc_plain"], module.test_report["test_loss_plain"]) == (
        acc,
        loss,
    )
    assert again == metrics


def test_batch_counts_stay_exact_under_bf16_weights():
    # Stacked with a bf16 loss, 499 correct images would round to 500.
    logits = torch.zeros(600, 10, dtype=torch.bfloat16)
    logits[:499, 1] = 1.0
    counts = batch_counts(logits, torch.ones(600, dtype=torch.long), nn.CrossEntropyLoss())
    assert counts.dtype == torch.float64
    assert counts[0].item() == 499 and counts[2].item() == 600


@pytest.mark.parametrize("rank", [0, 1])
def test_resumed_ranks_other_than_0_start_their_train_sums_from_zero(rank):
    # A checkpoint holds rank 0's running sums; loaded on every rank of a DDP run, they would
    # count rank 0's images of the interrupted epoch once per rank.
    saved = Classifier(nn.Linear(3, 10), optimizer=torch.optim.SGD)
    saved.train_loss.update(torch.tensor(6.0), 3)
    saved.train_acc.update(torch.tensor(2.0), 3)
    checkpoint = {"state_dict": saved.state_dict()}
    module = Classifier(nn.Linear(3, 10), optimizer=torch.optim.SGD)
    module.trainer = SimpleNamespace(global_rank=rank)  # what on_load_checkpoint asks of it
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    sums = [module.train_loss.mean_value, module.train_loss.weight, module.train_acc.mean_value,
            module.train_acc.weight]  # fmt: skip
    assert [float(v) for v in sums] == ([6.0, 3.0, 2.0, 3.0] if rank == 0 else [0.0] * 4)
    assert torch.equal(module.net.weight, saved.net.weight)  # the weights load on every rank


class TrainSums(L.Callback):
    """The running train sums at each epoch's end, before Lightning computes and resets them."""

    def __init__(self) -> None:
        self.images: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Classifier) -> None:
        self.images.append(float(pl_module.train_loss.weight))


def fit_linear(root: Path, out: Path, epochs: int, ckpt: Path | None, batch_size: int,
               *callbacks: L.Callback) -> Classifier:  # fmt: skip
    """A linear classifier fitted from seed 0 for `epochs` (resumed from `ckpt`), no validation,
    with `callbacks`; last.ckpt's folder is out/ckpt."""
    torch.manual_seed(0)
    module = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)),
                        optimizer=partial(torch.optim.SGD, lr=0.01))  # fmt: skip
    dm = CIFAR10DataModule(root=str(root), download=False, batch_size=batch_size, val_size=0,
                           num_workers=0)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, default_root_dir=out,
                        enable_progress_bar=False, callbacks=list(callbacks),
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return module


@pytest.mark.parametrize("every_n_train_steps", [0, 1])
def test_a_run_resumed_from_an_epoch_end_checkpoint_counts_each_epochs_images_once(
    folder_root, tmp_path, every_n_train_steps
):
    # last.ckpt written at an epoch's end holds that epoch's sums, taken before Lightning resets
    # them: the resumed run's next epoch must not add to them. every_n_train_steps=1: the
    # epoch's last step wrote last.ckpt before validation and the epoch's end; the epoch-end
    # save must still replace it.
    def fit(epochs: int, ckpt: Path | None, sums: TrainSums) -> None:
        last = LastCheckpoint(str(tmp_path / "ckpt"), every_n_train_steps, every_n_epochs=1)
        fit_linear(folder_root, tmp_path, epochs, ckpt, 50, last, sums)

    whole, first, resumed = TrainSums(), TrainSums(), TrainSums()
    fit(2, None, whole)
    fit(1, None, first)
    fit(2, tmp_path / "ckpt" / "last.ckpt", resumed)
    assert whole.images[0] == first.images[0] > 0
    assert resumed.images == whole.images[1:]  # the second epoch's images, once


class KilledBeforeTheEpochEnd(L.Callback):
    """Keeps the last.ckpt a run killed at its epoch's end would leave: the copy is taken before
    LastCheckpoint's own epoch-end save (Lightning runs checkpoint callbacks last)."""

    def __init__(self, copy: Path) -> None:
        self.copy = copy

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Classifier) -> None:
        shutil.copy(Path(trainer.default_root_dir) / "ckpt" / "last.ckpt", self.copy)


@pytest.mark.parametrize("every_n_epochs", [0, 1])
def test_a_run_killed_at_an_epochs_end_resumes_that_epochs_end(folder_root, tmp_path,
                                                               every_n_epochs):  # fmt: skip
    # A step save due at an epoch's last batch is put off to the epoch's end: resumed from a
    # checkpoint of that batch, Lightning skipped the epoch's end (validation, epoch-end
    # hooks) and the next epoch's start, so that epoch's train sums began at this one's.
    def fit(epochs: int, ckpt: Path | None, sums: TrainSums, *extra: L.Callback) -> Classifier:
        last = LastCheckpoint(str(tmp_path / "ckpt"), 1, every_n_epochs=every_n_epochs)
        return fit_linear(folder_root, tmp_path, epochs, ckpt, 100, last, sums, *extra)

    whole, first, resumed = TrainSums(), TrainSums(), TrainSums()
    ref = fit(2, None, whole)
    fit(1, None, first, KilledBeforeTheEpochEnd(tmp_path / "killed.ckpt"))
    got = fit(2, tmp_path / "killed.ckpt", resumed)
    assert resumed.images == whole.images  # the first epoch's end again, then the second
    pairs = zip(ref.state_dict().values(), got.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


class Sizes(nn.Module):
    """Records the input size of every call; a linear map of mean colours otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, int]] = []
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, x.shape[-1]))
        return self.head(x)


def test_train_resolution_resizes_training_batches_per_epoch_and_never_eval(folder_root, tmp_path):
    net = Sizes()
    module = Classifier(net, optimizer=torch.optim.SGD, train_resolution=[16, 24])
    dm = CIFAR10DataModule(root=str(folder_root), download=False, batch_size=50, val_size=50,
                           num_workers=0)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_checkpointing=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    steps = len(dm.train_dataloader())
    train_sizes = [size for training, size in net.seen if training]
    assert train_sizes == [16] * steps + [24] * steps * 2  # the last entry holds from epoch 1 on
    assert {size for training, size in net.seen if not training} == {32}


def test_train_resolution_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="train_resolution"):
        Classifier(Sizes(), optimizer=torch.optim.SGD, train_resolution=[4, 32])


def test_hparams_from_hydra_lists_load_weights_only(tmp_path):
    # Hydra hands list options over as ListConfig; saved as such, every checkpoint of the run
    # would hold a pickled object and be refused by the weights-only load of the test stage.
    module = Classifier(Sizes(), optimizer=torch.optim.SGD,
                        train_resolution=OmegaConf.create([24, 32]),
                        class_names=OmegaConf.create(list(DISPLAY_NAMES)))  # fmt: skip
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]
    assert loaded["train_resolution"] == [24, 32]
    assert loaded["class_names"] == list(DISPLAY_NAMES)


def _name_based_groups(net: nn.Module, make_optimizer: partial, scale: float) -> list[dict]:
    """The grouping the Network hook replaced (Classifier._param_groups until the hooks)."""
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if scale == 1.0:
        return [{"params": [p for _, p in params]}]
    opts = make_optimizer.keywords
    biases = [p for n, p in params if "norm" in n and n.endswith("bias")]
    others = [p for n, p in params if not ("norm" in n and n.endswith("bias"))]
    group = {"params": biases, "lr": opts["lr"] * scale}
    if opts.get("weight_decay"):
        group["weight_decay"] = opts["weight_decay"] / scale
    return [{"params": others}, group]


# fast94's and fast_cpu's optimizers as Hydra builds them (functools.partial), one without decay.
OPTIMIZERS = [
    partial(torch.optim.SGD, lr=1.5, momentum=0.85, nesterov=True, weight_decay=1.33e-3),
    partial(Muon, lr=1.66, momentum=0.85, nesterov=True, weight_decay=2.4e-3, filter_lr=0.24),
    partial(torch.optim.SGD, lr=0.3, momentum=0.9, weight_decay=0.0),
]


@pytest.mark.parametrize("scale", [1.0, 64.0, 3.0])
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_optimizer_from_the_network_groups_equals_the_name_based_one(make_optimizer, scale):
    net = FastNet(widths=(8, 16, 16), norm_bias_lr_scale=scale)
    built = Classifier(net, optimizer=make_optimizer).build_optimizer()
    reference = make_optimizer(_name_based_groups(net, make_optimizer, scale))
    assert len(built.param_groups) == len(reference.param_groups) == (1 if scale == 1 else 2)
    for ours, theirs in zip(built.param_groups, reference.param_groups, strict=True):
        assert ours.keys() == theirs.keys()  # no lr_scale left in the optimizer's groups
        for key, value in theirs.items():
            if key == "params":
                assert [id(p) for p in ours[key]] == [id(p) for p in value]  # same order
            else:
                assert ours[key] == value and type(ours[key]) is type(value), key


def test_the_lr_finder_lr_replaces_every_groups_lr():
    make_optimizer = OPTIMIZERS[0]
    module = Classifier(FastNet(widths=(8, 16, 16), norm_bias_lr_scale=64.0), make_optimizer)
    module.lr = 0.123  # what Tuner.lr_find(attr_name="lr") writes
    others, biases = module.build_optimizer().param_groups
    assert others["lr"] == biases["lr"] == 0.123
    assert biases["weight_decay"] == make_optimizer.keywords["weight_decay"] / 64.0


class Hooked(Network):
    """Records the hook calls; a linear map of mean colours otherwise."""

    data_init_size = 7

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))

    def init_from_data(self, images: torch.Tensor) -> None:
        self.calls.append(("init_from_data", tuple(images.shape)))

    def on_train_epoch_start(self, epoch: int) -> None:
        self.calls.append(("epoch", epoch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class EpochSGD(torch.optim.SGD, EpochAware):
    def __init__(self, params, **kw) -> None:  # noqa: ANN001
        super().__init__(params, **kw)
        self.epochs: list[int] = []

    def on_train_epoch_start(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_the_network_and_optimizer_hooks_are_called(folder_root, tmp_path):
    net = Hooked()
    module = Classifier(net, optimizer=partial(EpochSGD, lr=0.1))
    dm = CIFAR10DataModule(root=str(folder_root), download=False, batch_size=50, val_size=50,
                           num_workers=0)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert net.calls == [("init_from_data", (7, 3, 32, 32)), ("epoch", 0), ("epoch", 1)]
    assert trainer.optimizers[0].epochs == [0, 1]


class LrRecorder(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []  # per step, before the optimizer step: each group's lr

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_the_whitening_bias_group_decays_to_zero_over_its_epochs_then_freezes(
    folder_root, tmp_path
):
    # airbench94_muon's grouping: whitening bias at 64x the lr, linear to zero over its epochs
    # (here 1 epoch of 4 steps), while the rest follows the run's schedule over all 12 steps.
    from cifar_lightning.schedulers import linear

    net = FastNet(widths=(8, 16, 16), whiten_bias_epochs=1, norm_bias_lr_scale=64.0,
                  whiten_bias_lr_scale=64.0)  # fmt: skip
    make_optimizer = partial(Muon, lr=0.1, momentum=0.85, weight_decay=2.4e-3, filter_lr=0.2)
    module = Classifier(net, make_optimizer, scheduler=linear)
    dm = CIFAR10DataModule(root=str(folder_root), download=False, batch_size=50, val_size=50,
                           num_workers=0, loader="device")  # fmt: skip
    record = LrRecorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=4, logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, callbacks=[record],
                        enable_checkpointing=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    groups = trainer.optimizers[0].param_groups
    assert [len(g["params"]) for g in groups][2] == 1 and groups[2]["params"][0] is net.whiten.bias
    assert groups[2]["weight_decay"] == pytest.approx(2.4e-3 / 64)
    for step, (others, norm, whiten) in enumerate(record.lrs):
        assert others == pytest.approx(0.1 * (1 - step / 12))
        assert norm == pytest.approx(6.4 * (1 - step / 12))
        assert whiten == pytest.approx(6.4 * max(0.0, 1 - step / 4))
    assert len(record.lrs) == 12
    assert not net.whiten.bias.requires_grad  # frozen after its epoch


def test_tune_lr_refuses_a_recipe_with_several_learning_rates():
    from cifar_lightning.errors import UserError
    from cifar_lightning.pipeline import tune_lr

    module = Classifier(FastNet(widths=(8, 16, 16), norm_bias_lr_scale=64.0), OPTIMIZERS[0])
    with pytest.raises(UserError, match="tune_lr=true tunes one learning rate.*2 parameter"):
        tune_lr(None, module, None)
    muon = Classifier(FastNet(widths=(8, 16, 16)), partial(Muon, lr=0.1))
    with pytest.raises(UserError, match=r"\(Muon\)"):
        tune_lr(None, muon, None)


def test_cosine_warmup_rises_then_decays_to_zero_and_without_it_is_torchs():
    from cifar_lightning.schedulers import cosine

    def lrs(**kw: float) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        sched = cosine(opt, total_steps=20, **kw)["scheduler"]
        out = []
        for _ in range(20):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out + [opt.param_groups[0]["lr"]]

    warm = lrs(warmup=0.1)  # 2 warm-up steps
    assert warm[:3] == pytest.approx([0.5 / 3, 1.0 / 3, 0.5])
    assert all(a >= b for a, b in zip(warm[2:], warm[3:], strict=False))
    assert warm[-1] == pytest.approx(0.0, abs=1e-12)
    assert warm[11] == pytest.approx(0.25)  # halfway through the 18 cosine steps
    plain = lrs()
    assert plain[0] == 0.5 and plain[10] == pytest.approx(0.25) and plain[-1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup"):
        lrs(warmup=1.0)
    # Its length travels in the scheduler's state (checkpoints), like the other schedules'.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    saved = cosine(opt, total_steps=20, warmup=0.1)["scheduler"].state_dict()
    fresh = cosine(opt, total_steps=99, warmup=0.5)["scheduler"]
    fresh.load_state_dict(saved)
    assert fresh.lr_lambdas[0].total == 20 and fresh.lr_lambdas[0].warm == 2
