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


# --- against torch.optim.Muon ------------------------------------------------------------------
# torch.optim.Muon (torch >= 2.9) takes 2-D parameters only; ours orthogonalises 4-D conv filters
# and takes SGD steps for everything else, so the two meet on a 1x1 filter (out, in, 1, 1) against
# the same (out, in) matrix. Where they differ: ours renormalises the filter before each step
# (done by hand on torch's side below) and applies no weight decay to filters (torch's decoupled
# decay is set to 0); our momentum buffer is torch's times 1 / (1 - momentum), which the
# orthogonalisation's normalisation cancels; torch scales a tall matrix's step by
# sqrt(rows / cols), so the matrix here is wide. Newton-Schulz: the same quintic and
# coefficients, both in bf16, but torch fuses the products with addmm while ours rounds each
# one, so the two agree to bf16 accuracy (a few per cent), not bit for bit.

NS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's coefficients, ours and torch's


def newton_schulz_float64(g: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = NS
    x = g.double() / g.double().norm()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
@pytest.mark.parametrize("steps", [3, 5])
def test_orthogonalize_matches_torchs_newton_schulz(shape, steps):
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _zeropower_via_newtonschulz

    assert (DEFAULT_A, DEFAULT_B, DEFAULT_C) == NS
    torch.manual_seed(0)
    g = torch.randn(shape)
    ours = orthogonalize(g, steps)
    theirs = _zeropower_via_newtonschulz(g, NS, steps, EPS)
    exact = newton_schulz_float64(g, steps)
    # Both are the float64 iteration up to bf16 rounding (ours rounds more often: ~2 % vs ~1 %
    # after 3 steps), and so each other's.
    assert relative_error(ours, exact) < 0.05 and relative_error(theirs, exact) < 0.03
    assert relative_error(ours, theirs) < 0.05


@pytest.mark.parametrize("momentum", [0.6, 0.85])
def test_filter_steps_match_torch_muon_on_a_1x1_filter(momentum):
    out_c, in_c, lr = 16, 24, 0.2
    torch.manual_seed(1)
    w = torch.randn(out_c, in_c)
    w *= out_c**0.5 / w.norm()
    filt = nn.Parameter(w.clone().view(out_c, in_c, 1, 1))
    matrix = nn.Parameter(w.clone())
    ours = Muon([filt], lr=0.1, filter_lr=lr, filter_momentum=momentum, ns_steps=3)
    theirs = torch.optim.Muon([matrix], lr=lr, weight_decay=0.0, momentum=momentum,
                              nesterov=True, ns_steps=3)  # fmt: skip
    for _ in range(5):
        g = torch.randn(out_c, in_c)
        filt.grad, matrix.grad = g.clone().view_as(filt), g.clone()
        with torch.no_grad():
            matrix.mul_(out_c**0.5 / matrix.norm())  # our renormalisation, on torch's side
        before = matrix.detach().clone()
        ours.step()
        theirs.step()
        step_ours = before - filt.detach().view(out_c, in_c)
        step_theirs = before - matrix.detach()
        assert relative_error(step_ours, step_theirs) < 0.05
        with torch.no_grad():
            matrix.copy_(filt.view(out_c, in_c))  # the next step from the same weights
