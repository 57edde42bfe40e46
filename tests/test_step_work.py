"""What a training step costs the host: no device value read back outside Lightning's logging
points, no more aten ops than airbench94's loop plus 10 %, and the arithmetic of a plain PyTorch
loop (issue 28). Counted with benchmarks/op_count.py, on tiny synthetic data: the counts do not
depend on image count or network width."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import pytest
import torch

from benchmarks import loop_overhead, op_count
from benchmarks.common import run_config
from cifar_lightning.metrics import ConfusionCounts, RunningMean, add_evaluated, upgrade_train_acc

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NARROW = ["model.widths=[8,8,8]"]  # fastnet at a fraction of the work, the same ops
# (epochs, batch to count at: 0 = the overrides' own, overrides): long enough to cross the
# health checks' logging points and loss windows, fast94's Lookahead phase (from epoch 3) and
# fast_cpu's change of input size.
RECIPES = {
    "fast94": (4, 8, NARROW),  # 48 steps an epoch (as on 50,000 images), logging every 48
    "fast_cpu": (2, 8, NARROW),  # 25 steps an epoch, logging every 5
    "none": (2, 0, ["data.batch_size=32", "data.val_size=50", "data.num_workers=0",
                    "trainer.log_every_n_steps=4"]),  # the default recipe, with validation
}  # fmt: skip


@pytest.fixture(scope="module")
def counts(folder_root: Path) -> dict[str, dict]:
    found = {}
    for name, (epochs, batch, overrides) in RECIPES.items():
        found[name] = op_count.run(
            name, [f"data.root={folder_root}", *overrides], epochs, batch, test=True
        )
    return found


def outside_logging_points(count: dict) -> list[str]:
    return [f"{r['op']} at epoch {r['epoch']} batch {r['batch']}: "
            f"{' <- '.join(reversed(r['stack'][-4:]))}" for r in count["host_reads"]
            if "step" in r and not r["logging_point"] and not r["host_resident"]]  # fmt: skip


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_training_steps_read_nothing_back_outside_logging_points(counts, recipe):
    count = counts[recipe]
    assert outside_logging_points(count) == []
    # The counter does see reads: the logging points read the epoch's metrics and health.
    at_points = [r for r in count["host_reads"] if r.get("logging_point") and not
                 r["host_resident"]]  # fmt: skip
    assert at_points


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_evaluation_batches_read_nothing_back_before_their_epochs_end(counts, recipe):
    # The test train.py runs after the fit, and the default recipe's validation: their metrics
    # sum on the device (metrics.py) and are read once, at the stage's end.
    reads = [r for r in counts[recipe]["host_reads"] if "stage" in r and not r["host_resident"]]
    inside = [f"{r['op']} in {r['stage']} batch {r['batch']}: "
              f"{' <- '.join(reversed(r['stack'][-4:]))}"
              for r in reads if not r["logging_point"]]  # fmt: skip
    assert inside == []
    assert op_count.summarise(counts[recipe])["evaluation_device_reads_in_batches"] == 0
    stages = {r["stage"] for r in reads if r["logging_point"]}  # the counter sees the ends
    assert stages == ({"validate", "test"} if recipe == "none" else {"test"})


def test_fast94_dispatches_no_more_ops_per_step_than_airbench94_plus_10_percent(counts):
    count = counts["fast94"]
    assert count["steps_per_epoch"] == 48 and count["log_every_n_steps"] == 48
    assert set(count["median_step_last_epoch"]) == {"plain", "averaging"}  # Lookahead counted
    assert op_count.summarise(count)["ops_per_step_last_epoch"] <= op_count.TARGET


def test_the_counter_sees_every_kind_of_host_read():
    x = torch.arange(6.0)
    with op_count.Count() as count:
        count.where = {"step": 0, "logging_point": False}
        x.sum().item(), float(x[0]), bool(x[1]), int(x[2])
        x.tolist(), x.numpy(), x.cpu()
        x.nonzero(), x.unique(), x[x > 2]
        torch.tensor(2.0), torch.as_tensor([1, 2])  # on a GPU: blocking copies from the host
        x * 2, torch.full((), 2.0), torch.as_tensor(x)  # none
    ops = [r["op"] for r in count.reads]
    assert ops.count("_local_scalar_dense") == 4
    assert {"tolist", "numpy", "cpu", "nonzero", "_unique2"} <= set(ops)
    assert {"index", "nonzero"} & set(ops[-4:-2])  # boolean-mask indexing
    assert ops[-2:] == ["lift_fresh", "lift_fresh"]
    assert torch.Tensor.tolist is not count._wrap  # restored on exit
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and len(count.reads) == len(ops)


def test_the_counter_sees_reads_under_inference_mode_and_answers_of_a_bool():
    # Lightning evaluates under torch.inference_mode, where `item` and `is_nonzero` reach the
    # counter instead of _local_scalar_dense; `equal` and `allclose` read in any mode.
    x = torch.arange(6.0)
    with op_count.Count() as count:
        count.where = {"stage": "test", "batch": 1, "logging_point": False}
        with torch.inference_mode():
            x.sum().item(), float(x[0]), int(x[2]), bool(x[1]), 1 if x.any() else 0
        torch.equal(x, x), torch.allclose(x, x)
    assert [r["op"] for r in count.reads] == ["item"] * 3 + ["is_nonzero"] * 2 + [
        "equal", "allclose"]  # fmt: skip


def test_the_hook_name_lightning_sets_around_each_hook_skips_nn_modules_checks():
    from torch import nn

    from cifar_lightning.module import Classifier

    module = Classifier(nn.Linear(2, 2), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    through_module, extra = [], nn.Linear(1, 1)
    original = nn.Module.__setattr__

    def counted(self, name, value):  # noqa: ANN001
        through_module.append(name)
        original(self, name, value)

    with mock.patch.object(nn.Module, "__setattr__", counted):
        module._current_fx_name = "training_step"  # stored as a plain attribute
        module.extra = extra  # anything else still goes through nn.Module
    assert through_module == ["extra"] and module._current_fx_name == "training_step"
    assert "extra" in module._modules and "extra" not in module.__dict__


def test_train_py_trainer_and_the_plain_loop_end_with_the_same_weights(folder_root, tmp_path):
    """fast94's first steps (fp32, CPU) through train.py's trainer, with every callback (health
    checks, checkpoints, Lookahead from its second epoch on, averaging every 2 steps), and
    through loop_overhead's plain PyTorch loop, which has none of the project's metric or
    health code: the same weights to the last bit. (CPU kernels only: says nothing of CUDA's.)"""
    overrides = [f"data.root={folder_root}", *NARROW, "trainer.accelerator=cpu",
                 "trainer.precision=32-true", "data.batch_size=32", "trainer.max_epochs=3",
                 "trainer.max_steps=-1", "callbacks.lookahead.start_epoch=1",
                 "callbacks.lookahead.every_n_steps=2"]  # fmt: skip
    with run_config("fast94", overrides, tmp_path / "run") as cfg:
        setup = loop_overhead.Setup(cfg, tmp_path / "run")
        _, _, lightning = loop_overhead.run_lightning(setup, None)
        _, plain = loop_overhead.run_plain(setup)
    assert setup.steps == 36
    assert loop_overhead.max_weight_diff(lightning, plain) == 0.0
    fresh = loop_overhead.Setup.module(setup)
    assert loop_overhead.max_weight_diff(fresh, plain) > 0  # it did train


def test_running_mean_weighs_a_partial_batch_by_its_size():
    mean = RunningMean()
    mean.update(torch.tensor(2.0) * 4, 4)  # batch of 4, mean loss 2
    mean.update(torch.tensor(5.0) * 1, 1)  # a last batch of 1, mean loss 5
    assert mean.compute().item() == pytest.approx(13 / 5)
    mean.reset()
    mean.update(torch.tensor(3.0), 4)  # 3 correct of 4
    assert mean.compute().item() == 0.75


def test_running_sums_stay_float32_when_the_module_is_cast_to_bf16():
    mean = RunningMean().to(torch.bfloat16)  # what precision=bf16-true does to the module
    for _ in range(49):  # an epoch of fast94's batches, mean loss 0.6836 each
        mean.update(torch.tensor(0.6836, dtype=torch.bfloat16) * 1024, 1024)
    assert mean.mean_value.dtype == torch.float32
    assert mean.compute().item() == pytest.approx(0.6836, abs=2e-3)  # bf16 sums gave 0.656
    mean.reset()
    assert mean.weight.dtype == torch.float32


def test_an_older_checkpoints_running_accuracy_counts_carry_over():
    # torchmetrics' micro MulticlassAccuracy: 30 of 40 correct (fn: the 10 wrong ones).
    state = {"train_acc.tp": torch.tensor(30), "train_acc.fp": torch.tensor(10),
             "train_acc.tn": torch.tensor(350), "train_acc.fn": torch.tensor(10)}  # fmt: skip
    upgrade_train_acc(state)
    mean = RunningMean()
    mean.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()}, strict=True)
    assert mean.compute().item() == 0.75


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_evaluation_sums_equal_torchmetrics_figures_to_the_bit(dtype):
    # What validation and test logged with torchmetrics' metrics before (they read values back
    # in every batch): the same figures from the project's sums, a partial last batch, a class
    # with no images (8) and a bf16 loss included. (Under precision=bf16-true Lightning also
    # cast torchmetrics' sums to bf16; the project's stay float32, so there they differ.)
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

    gen = torch.Generator().manual_seed(0)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    acc, mean_loss, confusion = RunningMean(), RunningMean(), ConfusionCounts(10)
    ref_acc, ref_loss = MulticlassAccuracy(10, average="micro"), MeanMetric()
    ref_class, ref_confusion = MulticlassAccuracy(10, average=None), MulticlassConfusionMatrix(10)
    for n in (500, 500, 37):
        logits = torch.randn(n, 10, generator=gen).to(dtype)
        y = torch.randint(0, 10, (n,), generator=gen)
        y[y == 8] = 9
        preds, loss = logits.argmax(1), criterion(logits, y)
        add_evaluated(acc, mean_loss, loss, preds == y)
        confusion.update(preds, y)
        ref_acc.update(preds, y), ref_loss.update(loss, weight=len(y))
        ref_class.update(preds, y), ref_confusion.update(preds, y)
    assert acc.compute().item() == ref_acc.compute().item()
    assert mean_loss.compute().item() == ref_loss.compute().item()
    assert torch.equal(confusion.compute(), ref_confusion.compute())
    mine, theirs = confusion.class_accuracy().tolist(), ref_class.compute().tolist()
    assert [a for i, a in enumerate(mine) if i != 8] == [a for i, a in enumerate(theirs) if i != 8]
    assert math.isnan(mine[8])  # no images: None in results.json, where torchmetrics gave 0.0
