"""optimizer=muon: orthogonalised conv-filter steps, torch.optim.SGD's steps for the rest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifar_lightning.optim import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalize_pushes_every_singular_value_towards_one(shape):
    torch.manual_seed(0)
    # A badly conditioned matrix: singular values from 0.1 to 10.
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    g = u[:, :k] @ torch.diag(torch.logspace(-1, 1, k)) @ v[:, :k].T
    out = orthogonalize(g, steps=5)
    assert out.shape == g.shape and out.dtype == g.dtype
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.3 and s.max() < 1.5, s
    # The direction is g's: same singular vectors, so g^T out is symmetric positive semi-definite.
    sym = g.T @ out if shape[0] >= shape[1] else out @ g.T
    assert torch.allclose(sym, sym.T, atol=0.05 * sym.abs().max())


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))  # fmt: skip


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_muon_takes_sgd_steps_on_everything_but_conv_filters():
    hp = dict(lr=0.1, momentum=0.85, nesterov=True, weight_decay=5e-3)
    a, b = net(), net()
    train(a, Muon(a.parameters(), **hp, filter_lr=0.0))  # filters frozen (renormalised only)
    sgd_params = [p for p in b.parameters() if p.ndim != 4]
    train(b, torch.optim.SGD(sgd_params, **hp))
    conv_a, conv_b = a[0].weight, b[0].weight
    # The filter was only rescaled to norm sqrt(out_channels); everything else is SGD's.
    assert torch.allclose(conv_a, conv_b * (len(conv_b) ** 0.5 / conv_b.norm()), atol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if pa.ndim != 4:
            assert torch.allclose(pa, pb, atol=1e-6), name


def test_muon_filter_step_is_orthogonalised_and_follows_the_schedule():
    model = net()
    conv = model[0].weight
    opt = Muon(model.parameters(), lr=0.1, filter_lr=0.2, filter_momentum=0.0, ns_steps=5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # lr factor 0.5
    assert sched.get_last_lr() == [0.05]
    train(model, opt, steps=0)
    opt.zero_grad()
    x = torch.randn(16, 3, 8, 8)
    nn.functional.cross_entropy(model(x), torch.randint(0, 4, (16,))).backward()
    before = (conv * (len(conv) ** 0.5 / conv.norm())).detach().clone()
    grad = conv.grad.clone()
    opt.step()
    step = (before - conv.detach()).reshape(len(conv), -1)
    # Step = 0.2 (filter_lr) * 0.5 (schedule) * orthogonalize(grad): singular values near 0.1.
    assert torch.allclose(step, 0.1 * orthogonalize(grad.reshape(len(grad), -1), 5), atol=1e-6)
    s = torch.linalg.svdvals(step)
    assert 0.03 < s.min() and s.max() < 0.15
