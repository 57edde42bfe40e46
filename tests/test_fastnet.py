"""FastNet (airbench94's network), the Lookahead callback and test-time augmentation."""

from __future__ import annotations

import io
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifar_lightning.lookahead import Lookahead
from cifar_lightning.models.fastnet import FastNet
from cifar_lightning.module import Classifier
from cifar_lightning.tta import tta_logits

# Narrow widths keep the tests fast; the structure is the same as the default (64, 256, 256).
SMALL = (8, 16, 16)


def correlated_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Images whose 2x2 patches are far from white: smooth (upsampled 8x8 noise), with mixed
    channels, plus a little pixel noise so that no patch direction has zero variance."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=32, mode="bilinear")
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    x = torch.einsum("dc,nchw->ndhw", mix, smooth) + 0.2 * torch.randn(n, 3, 32, 32, generator=g)
    return (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)


def second_moment(features: torch.Tensor) -> torch.Tensor:
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double()
    return flat.T @ flat / len(flat)


def test_shapes_channels_last_and_backward():
    torch.manual_seed(0)
    net = FastNet(widths=SMALL)
    x = torch.randn(4, 3, 32, 32)
    assert net(x).shape == (4, 10)
    assert FastNet(widths=SMALL, num_classes=7)(x).shape == (4, 7)

    net = net.to(memory_format=torch.channels_last)
    net.init_whitening(correlated_images(8))
    x = x.to(memory_format=torch.channels_last)
    assert net.whiten.weight.is_contiguous(memory_format=torch.channels_last)
    out = net(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert net.whiten.weight.grad is None  # frozen
    assert net.whiten.bias.grad is not None and net.head.weight.grad is not None
    assert all(g.conv1.weight.grad is not None for g in net.groups)


def test_a_bf16_network_returns_bf16_logits():  # precision=bf16-true: no float32 left inside
    net = FastNet(widths=SMALL).to(torch.bfloat16)
    out = net(torch.randn(4, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_default_architecture():
    net = FastNet()
    assert [g.conv2.out_channels for g in net.groups] == [64, 256, 256]
    assert net.whiten.weight.shape == (24, 3, 2, 2)
    assert net.head.bias is None and net.head.in_features == 256
    bn = net.groups[0].norm1
    assert bn.momentum == pytest.approx(0.4) and bn.eps == 1e-12
    assert net.scaling == pytest.approx(1 / 9)
    # Identity init: the first in_channels filters of each 3x3 conv are dirac deltas.
    w = net.groups[1].conv1.weight  # 64 -> 256
    delta = torch.zeros(64, 64, 3, 3)
    delta[torch.arange(64), torch.arange(64), 1, 1] = 1
    assert torch.equal(w[:64], delta)
    assert not torch.equal(w[64:], torch.zeros_like(w[64:]))
    assert all(isinstance(m, nn.GELU) for m in (net.act, net.groups[2].act))


def test_activation_option_swaps_every_activation_and_rejects_unknown_names():
    net = FastNet(widths=(8, 16, 16), activation="silu")
    acts = [m for m in net.modules() if isinstance(m, (nn.GELU, nn.SiLU))]
    assert len(acts) == 4 and all(isinstance(m, nn.SiLU) for m in acts)
    with pytest.raises(ValueError, match="model.activation: unknown activation 'relu'"):
        FastNet(activation="relu")


def test_whitening_init_whitens_the_patches():
    images = correlated_images(64)
    net = FastNet(widths=SMALL)
    patches = F.unfold(images, 2).transpose(1, 2).reshape(-1, 12, 1, 1)
    before = second_moment(patches)
    eye = torch.eye(12, dtype=torch.float64)
    assert (before - eye).abs().max() > 0.5  # far from white

    assert not net.whitened
    net.init_whitening(images)
    assert net.whitened
    out = F.conv2d(images, net.whiten.weight)  # no bias, no activation
    assert out.shape == (64, 24, 31, 31)
    cov = second_moment(out[:, :12])
    # Exactly: direction i has variance lambda_i / (lambda_i + eps), largest lambda first, and
    # the directions are uncorrelated.
    lam = torch.linalg.eigvalsh(before).flip(0)
    assert torch.allclose(cov, torch.diag(lam / (lam + net.whiten_eps)), atol=1e-5)
    # With eps = 5e-4 and these images (smallest lambda ~0.04) that is the identity, nearly.
    assert torch.allclose(cov, eye, atol=2e-2)
    # The second half of the filters are the negatives of the first.
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_whitening_weights_frozen_and_bias_frozen_after_its_epochs():
    net = FastNet(widths=SMALL, whiten_bias_epochs=3)
    assert not net.whiten.weight.requires_grad
    for epoch in range(3):
        net.on_train_epoch_start(epoch)
        assert net.whiten.bias.requires_grad
    for epoch in (3, 4, 10):
        net.on_train_epoch_start(epoch)
        assert not net.whiten.bias.requires_grad

    # A frozen bias is untouched by an optimizer step, weight decay included.
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    net.whiten.bias.data.fill_(0.5)
    opt.zero_grad(set_to_none=True)
    net(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()
    assert torch.equal(net.whiten.bias, torch.full((24,), 0.5))


def test_batch_norm_has_no_learned_scale():
    net = FastNet(widths=SMALL)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6
    for bn in bns:
        assert not bn.weight.requires_grad and torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert bn.bias.requires_grad


def test_data_init_asks_for_5000_images_until_whitened():
    net = FastNet(widths=SMALL)
    assert net.data_init_size == 5000
    images = correlated_images(16)
    net.init_from_data(images)
    assert net.whitened and net.data_init_size == 0
    reference = FastNet(widths=SMALL)
    reference.init_whitening(images)
    assert torch.equal(net.whiten.weight, reference.whiten.weight)
    # A network loaded from a checkpoint of a whitened one asks for nothing.
    loaded = FastNet(widths=SMALL)
    loaded.load_state_dict(net.state_dict())
    assert loaded.data_init_size == 0


def _by_name(net: nn.Module, params: list) -> list[str]:
    names = {id(p): n for n, p in net.named_parameters()}
    return [names[id(p)] for p in params]


def test_param_groups_put_the_norm_biases_apart_only_when_scaled():
    net = FastNet(widths=SMALL)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    [group] = net.param_groups()
    assert group["lr_scale"] == 1.0 and _by_name(net, group["params"]) == trainable

    net = FastNet(widths=SMALL, norm_bias_lr_scale=64.0)
    others, biases = net.param_groups()
    assert others["lr_scale"] == 1.0 and biases["lr_scale"] == 64.0
    # The grouping by name it replaces (and its order): BN biases apart, the whitening bias
    # with the head and the filters.
    norm_biases = [n for n in trainable if "norm" in n and n.endswith("bias")]
    assert _by_name(net, biases["params"]) == norm_biases
    assert _by_name(net, others["params"]) == [n for n in trainable if n not in norm_biases]
    assert "whiten.bias" in _by_name(net, others["params"])


# --- Lookahead ---------------------------------------------------------------------------------


def fake_trainer(step: int, epoch: int = 0, total: int = 100, batches: int = 1000):
    return SimpleNamespace(
        global_step=step,
        current_epoch=epoch,
        estimated_stepping_batches=total,
        num_training_batches=batches,
    )


def perturb(net: nn.Module, seed: int) -> None:
    """An optimizer step's stand-in: move every float tensor a little."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in Lookahead._tensors(net).values():
            t.add_(0.1 * torch.randn(t.shape, generator=g))


def test_lookahead_updates_on_every_kth_step_and_pulls_weights_to_the_average():
    torch.manual_seed(0)
    net = FastNet(widths=SMALL)
    cb = Lookahead(decay=0.5, every_n_steps=2, start_epoch=1, decay_pow=0.0)
    rho = 0.5**2

    # Epochs before start_epoch: nothing happens.
    cb.on_train_batch_end(fake_trainer(2, epoch=0), net, None, None, 0)
    assert cb.ema is None

    # First due step: the average starts as a copy of the weights.
    cb.on_train_batch_end(fake_trainer(2, epoch=1), net, None, None, 0)
    start = {n: t.clone() for n, t in Lookahead._tensors(net).items()}
    assert all(torch.equal(cb.ema[n], start[n]) for n in start)

    # A step that is not due: the weights move on, the average stays.
    perturb(net, 1)
    cb.on_train_batch_end(fake_trainer(3, epoch=1), net, None, None, 1)
    moved = {n: t.clone() for n, t in Lookahead._tensors(net).items()}
    assert all(torch.equal(cb.ema[n], start[n]) for n in start)

    # Due step: ema = lerp(ema, weights, 1 - rho) and the weights are set to it.
    perturb(net, 2)
    moved = {n: t.clone() for n, t in Lookahead._tensors(net).items()}
    cb.on_train_batch_end(fake_trainer(4, epoch=1), net, None, None, 2)
    for name, t in Lookahead._tensors(net).items():
        expected = rho * start[name] + (1 - rho) * moved[name]
        assert torch.allclose(cb.ema[name], expected, atol=1e-6)
        assert torch.equal(t, cb.ema[name])
    # The integer buffers are not averaged.
    assert "whitened" not in cb.ema
    assert not any(n.endswith("num_batches_tracked") for n in cb.ema)

    # Repeated calls for the same optimizer step (gradient accumulation) do not update again.
    ema = {n: t.clone() for n, t in cb.ema.items()}
    perturb(net, 3)
    cb.on_train_batch_end(fake_trainer(4, epoch=1), net, None, None, 3)
    assert all(torch.equal(cb.ema[n], ema[n]) for n in ema)

    # End of the epoch and end of training: the weights go back to the average.
    cb.on_train_batch_end(fake_trainer(5, epoch=1, batches=5), net, None, None, 4)
    assert all(torch.equal(t, ema[n]) for n, t in Lookahead._tensors(net).items())
    perturb(net, 4)
    cb.on_train_end(fake_trainer(6, epoch=1), net)
    assert all(torch.equal(t, ema[n]) for n, t in Lookahead._tensors(net).items())


def test_lookahead_decay_schedule():
    cb = Lookahead(decay=0.95, every_n_steps=5, decay_pow=3.0)
    assert cb.rho(50, 100) == pytest.approx(0.95**5 * 0.5**3)
    assert cb.rho(100, 100) == pytest.approx(0.95**5)
    assert cb.rho(100, float("inf")) == pytest.approx(0.95**5)


def test_lookahead_state_dict_round_trip():
    net = FastNet(widths=SMALL)
    cb = Lookahead(every_n_steps=1, start_epoch=0)
    cb.on_train_batch_end(fake_trainer(7), net, None, None, 0)
    buffer = io.BytesIO()
    torch.save({"callbacks": {cb.state_key: cb.state_dict()}}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["callbacks"][cb.state_key]

    restored = Lookahead(every_n_steps=1, start_epoch=0)
    restored.load_state_dict(loaded)
    assert restored.last_step == 7 and restored.ema.keys() == cb.ema.keys()
    assert all(torch.equal(restored.ema[n], cb.ema[n]) for n in cb.ema)

    # Before the first update there is no average, and it stays that way after a round trip.
    empty = Lookahead()
    empty.load_state_dict(Lookahead().state_dict())
    assert empty.ema is None and empty.last_step == -1


# --- test-time augmentation --------------------------------------------------------------------


def test_tta_levels():
    torch.manual_seed(0)
    net = FastNet(widths=SMALL).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain, flipped = net(x), net(x.flip(-1))
        assert torch.equal(tta_logits(net, x, 0), plain)
        assert torch.allclose(tta_logits(net, x, 1), (plain + flipped) / 2, atol=1e-6)

        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = [x, padded[..., :32, :32], padded[..., 2:, 2:]]
        weights = [1 / 4, 1 / 8, 1 / 8]
        expected = sum(w * (net(v) + net(v.flip(-1))) for w, v in zip(weights, views, strict=True))
        assert torch.allclose(tta_logits(net, x, 2), expected, atol=1e-5)
    with pytest.raises(ValueError):
        tta_logits(net, x, 3)


def _gradient(model: nn.Module, x: Tensor, bf16: bool) -> Tensor:
    for p in model.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    F.cross_entropy(logits.float(), torch.arange(len(x)) % 10).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.slow  # torch.compile's first call builds C++ kernels: ~10 s on 2 cores
@pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_classifier_gradients_match_eager_under_bf16_autocast():
    torch.manual_seed(0)
    net = FastNet(widths=SMALL)
    net.init_whitening(correlated_images(64))
    x = correlated_images(32, seed=3)
    exact = _gradient(net, x, bf16=False)
    eager = _gradient(net, x, bf16=True)
    module = Classifier(net, optimizer=torch.optim.SGD, compile=True)
    try:
        compiled = _gradient(module, x, bf16=True)
    finally:
        torch._dynamo.reset()
    # bf16 rounds differently in the fused kernels: as far from the fp32 gradient as eager bf16,
    # and finite (a bf16 amax after GELU gave NaN gradients under compile).
    assert torch.isfinite(compiled).all()
    assert (compiled - exact).norm() <= 2 * (eager - exact).norm()
    metrics = ("train_acc", "train_loss")  # persistent torchmetrics states
    assert all(key.startswith(("net.", *metrics)) for key in module.state_dict())
