"""experiment=fast94_muon (airbench94_muon's recipe) on a CPU: its values against the reference's,
its parameter groups, a couple of training steps on tiny synthetic data, and the compile
options (torch.compile recorded, never run: compiling takes seconds to minutes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as L
import torch
from omegaconf import OmegaConf

from cifar_lightning import optim
from cifar_lightning.models.fastnet import FastNet
from cifar_lightning.module import Classifier
from cifar_lightning.pipeline import build, build_callbacks, load_trained, make_trainer
from tests.conftest import task_config

# airbench94_muon.py's constants: loss summed over batches of BATCH, so its learning rates are
# per example; decay per step is lr * weight_decay = WD for every SGD group; logits = head / 256
# with head weights of std 1.
BATCH, HEAD_LR, BIAS_LR, WD, HEAD_SCALE = 2000, 0.67, 0.053, 2e-6 * 2000, 1 / 256
FILTER_LR, FILTER_MOMENTUM, SGD_MOMENTUM = 0.24, 0.6, 0.85
# On the synthetic data (400 training images): 2 batches of 50, then stop.
TINY = ["trainer.accelerator=cpu", "data.batch_size=50", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "++trainer.enable_progress_bar=false"]  # fmt: skip


class CompileRecorder:
    """Stands in for torch.compile: records what it was asked to compile, with which options,
    and hands the function back uncompiled."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, fn: Callable, **kwargs: Any) -> Callable:
        self.calls.append((fn, kwargs))
        return fn

    def options_for(self, fn: Any) -> list[dict[str, Any]]:
        return [kw for f, kw in self.calls if f is fn]


@pytest.fixture
def compile_calls(monkeypatch: pytest.MonkeyPatch) -> CompileRecorder:
    recorder = CompileRecorder()
    monkeypatch.setattr(torch, "compile", recorder)
    return recorder


def recipe(root: Path | str, out: Path, *overrides: str):  # noqa: ANN201 - a context manager
    return task_config("train", ["experiment=fast94_muon", f"data.root={root}", *overrides], out)


def test_the_recipe_is_the_references_steps_in_the_projects_parametrisation(tmp_path):
    with recipe("data/", tmp_path) as cfg:
        model, opt, data = cfg.model, cfg.optimizer, cfg.data
        assert data.batch_size == BATCH and data.val_size == 0 and data.alternating_flip
        assert cfg.trainer.max_epochs * (50_000 // BATCH) == 200  # the reference's 8 epochs
        assert cfg.scheduler._target_ == "cifar_lightning.schedulers.linear"
        assert cfg.callbacks.lookahead is None and cfg.module.tta_level == 2
        assert cfg.module.label_smoothing == 0.2 and cfg.module.compile == "max-autotune"
        assert (opt.filter_lr, opt.filter_momentum, opt.momentum) == (
            FILTER_LR, FILTER_MOMENTUM, SGD_MOMENTUM)  # fmt: skip
        # The same head function: weights k times the reference's, logits x 1/9 for x 1/256.
        k = model.head_std
        assert k * model.scaling == pytest.approx(HEAD_SCALE, rel=1e-12)
        # A mean loss is the sum / BATCH; weights k times as large take k^2 times the lr.
        assert opt.lr == pytest.approx(HEAD_LR * BATCH * k**2, rel=1e-3)
        assert opt.lr * model.norm_bias_lr_scale == pytest.approx(BIAS_LR * BATCH, rel=1e-3)
        assert model.whiten_bias_lr_scale == model.norm_bias_lr_scale
        assert opt.lr * opt.weight_decay == pytest.approx(WD, rel=1e-3)
        assert cfg.health.loss_window_steps < 200 / 2  # two windows fit in the run
    with recipe("data/", tmp_path, "health=off") as cfg:
        assert cfg.health is None


def test_muon_steps_exactly_the_conv_filters_and_sgd_the_rest(folder_root, tmp_path, monkeypatch):
    with recipe(folder_root, tmp_path, "optimizer.ns_compile=false", "module.compile=false") as cfg:
        L.seed_everything(0)
        _, module = build(cfg, 0)
    net = module.net
    optimizer = module.build_optimizer()
    assert isinstance(optimizer, optim.Muon)
    filters = {f"groups.{i}.conv{j}.weight" for i in range(3) for j in (1, 2)}
    names = {id(p): n for n, p in net.named_parameters()}
    head, norm, whiten = optimizer.param_groups
    assert {names[id(p)] for p in head["params"]} == filters | {"head.weight"}
    assert {names[id(p)] for p in norm["params"]} == {
        f"groups.{i}.norm{j}.bias" for i in range(3) for j in (1, 2)}  # fmt: skip
    assert [names[id(p)] for p in whiten["params"]] == ["whiten.bias"]  # whiten.weight: frozen
    for group in (norm, whiten):
        assert group["lr"] == pytest.approx(BIAS_LR * BATCH, rel=1e-3)
        assert group["lr"] * group["weight_decay"] == pytest.approx(WD, rel=1e-3)
    # One step: Muon orthogonalises one update per filter, of its (out, in * 3 * 3) shape.
    shapes = []

    def recording(g: torch.Tensor, steps: int) -> torch.Tensor:
        shapes.append((tuple(g.shape), steps))
        return torch.zeros_like(g)

    monkeypatch.setattr(optim, "orthogonalize", recording)
    params = dict(net.named_parameters())
    for p in net.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer.step()
    assert sorted(shapes) == sorted(
        ((params[n].shape[0], math.prod(params[n].shape[1:])), 3) for n in filters)  # fmt: skip
    for name, p in params.items():
        if name in filters:  # a zero update: only the renormalisation to norm sqrt(out)
            assert p.norm().item() == pytest.approx(p.shape[0] ** 0.5, rel=1e-5)
        elif not p.requires_grad:  # the whitening filters, the batch norms' scales
            assert torch.equal(p, before[name]), name
        else:  # SGD: -lr * (1 + momentum) * (grad + decay * p) with Nesterov, first step
            group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
            expected = before[name] - group["lr"] * (1 + SGD_MOMENTUM) * (
                1 + group["weight_decay"] * before[name])  # fmt: skip
            assert torch.allclose(p, expected, rtol=1e-5, atol=1e-6), name


def test_the_recipe_trains_on_a_cpu_with_its_compile_modes(folder_root, tmp_path, compile_calls):
    with recipe(folder_root, tmp_path, *TINY) as cfg:
        L.seed_everything(0)
        datamodule, module = build(cfg, 0)
        callbacks, health, _ = build_callbacks(cfg, datamodule)
        trainer = make_trainer(cfg.trainer, None, callbacks, tmp_path)
        before = module.net.head.weight.detach().clone()
        trainer.fit(module, datamodule=datamodule)
    assert health is not None  # the recipe keeps the project's health checks
    assert trainer.global_step == 2 and trainer.precision == "bf16-mixed"
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert not torch.equal(module.net.head.weight, before)
    # The network in the recipe's mode, static shapes; Newton-Schulz in torch's default mode.
    assert compile_calls.options_for(module.net) == [{"dynamic": False, "mode": "max-autotune"}]
    assert compile_calls.options_for(optim.orthogonalize) == [{"dynamic": False}]
    # No checkpoint inside the epochs (every_n_epochs: 0): one at the fit's end.
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_compile_speeds_up_training_only_and_a_checkpoint_loads_uncompiled(
    folder_root, tmp_path, monkeypatch
):
    # The test runs the network eager, as eval.py and predict.py do: they repeat it to the last
    # digit without compiling (max-autotune: minutes), and the test compiles no graph of its own.
    calls = {"train": 0, "eval": 0, "compiled": 0}

    def counting_compile(fn: Callable, **kwargs: Any) -> Callable:
        if not isinstance(fn, torch.nn.Module):
            return fn  # Muon's Newton-Schulz iteration

        def compiled(x: torch.Tensor) -> torch.Tensor:
            calls["train" if fn.training else "eval"] += 1
            return fn(x)

        calls["compiled"] += 1
        return compiled

    monkeypatch.setattr(torch, "compile", counting_compile)
    with recipe(folder_root, tmp_path, *TINY, "data.eval_batch_size=100") as cfg:
        L.seed_everything(0)
        datamodule, module = build(cfg, 0)
        module.run_config = OmegaConf.to_container(cfg, resolve=True)  # as pipeline.train
        trainer = make_trainer(cfg.trainer, None, build_callbacks(cfg, datamodule)[0], tmp_path)
        trainer.fit(module, datamodule=datamodule)
        trainer.test(module, datamodule=datamodule, verbose=False)
    assert calls == {"train": 2, "eval": 0, "compiled": 1}
    assert trainer.test_loop.batch_progress.total.completed > 0
    _, run_cfg, _, loaded = load_trained(tmp_path / "checkpoints" / "last.ckpt")
    assert calls["compiled"] == 1 and loaded._compiled is None
    assert run_cfg.module.compile == "max-autotune"  # the run's own config, as eval.py logs it


@pytest.mark.parametrize(("setting", "mode"), [(True, None), ("max-autotune", "max-autotune"),
                                               ("reduce-overhead", "reduce-overhead")])  # fmt: skip
def test_module_compile_takes_true_or_a_mode(setting, mode, compile_calls):
    net = FastNet(widths=(8, 16, 16))
    module = Classifier(net, optimizer=torch.optim.SGD, compile=setting)
    assert compile_calls.options_for(net) == [{"dynamic": False, "mode": mode}]
    assert module._compiled is net  # the recorder's "compiled" network is the one forward uses


def test_module_compile_false_compiles_nothing_and_a_bad_mode_is_one_clear_error(compile_calls):
    Classifier(FastNet(widths=(8, 16, 16)), optimizer=torch.optim.SGD, compile=False)
    assert compile_calls.calls == []
    with pytest.raises(ValueError, match=r"module.compile: 'fastest' is not .* max-autotune"):
        Classifier(FastNet(widths=(8, 16, 16)), optimizer=torch.optim.SGD, compile="fastest")


def test_muon_ns_compile_runs_the_compiled_iteration(monkeypatch):
    calls = []

    def fake_compile(fn: Callable, **kwargs: Any) -> Callable:
        def compiled(*args: Any) -> torch.Tensor:
            calls.append(fn)
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    conv = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    a = optim.Muon([conv], lr=0.1, ns_compile=True)
    b = optim.Muon([torch.nn.Parameter(conv.detach().clone())], lr=0.1)
    for opt in (a, b):
        opt.param_groups[0]["params"][0].grad = torch.ones_like(conv)
        opt.step()
    assert calls == [optim.orthogonalize]  # once, by `a` only
    assert torch.equal(a.param_groups[0]["params"][0], b.param_groups[0]["params"][0])


def test_head_std_and_zero_whiten_bias_leave_the_other_initial_weights_alone():
    torch.manual_seed(0)
    plain = FastNet(widths=(8, 16, 16))
    torch.manual_seed(0)
    ported = FastNet(widths=(8, 16, 16), head_std=0.03515625, zero_whiten_bias=False)
    assert ported.head.weight.std().item() == pytest.approx(0.03515625, rel=1e-6)
    # The rescaled draw: the same direction as the default head's.
    ratio = ported.head.weight / plain.head.weight
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))
    assert torch.equal(plain.whiten.bias, torch.zeros(24))
    bias = ported.whiten.bias
    assert bias.abs().max() <= 12**-0.5 and bias.abs().min() > 0  # PyTorch's uniform draw
    others = {n for n, _ in plain.named_parameters()} - {"head.weight", "whiten.bias"}
    for name in others:
        assert torch.equal(plain.get_parameter(name), ported.get_parameter(name)), name
