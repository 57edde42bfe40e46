"""Optimizers beyond torch.optim.

AdamToSGD: Adam first, then SGD with Nesterov momentum (the SWATS idea, Keskar & Socher 2017).
The phase lives in each param group ("adam" or "sgd"), so it is part of the optimizer's state
dict and survives checkpoint/resume. While Adam runs, the optimizer keeps the SWATS estimate of
the SGD learning rate that would take steps of the same size as Adam's (the projection of Adam's
step onto the gradient, averaged with beta2). That estimate is the SGD learning rate after the
switch unless `sgd_lr` is given: a mis-scaled SGD learning rate is what makes a switch spike.

Muon: SGD with Nesterov momentum whose conv-filter updates are orthogonalised (Keller Jordan's
Muon, as airbench94_muon uses it for CIFAR-10: the same accuracy in about 20 % fewer epochs).

EpochAware: the hook for optimizers that change with the epoch (AdamToSGD's fixed-epoch switch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

log = logging.getLogger("cifar_lightning")


class EpochAware:
    """An optimizer that changes with the epoch: the LightningModule calls
    on_train_epoch_start(epoch) (0-based) at the start of every training epoch."""

    def on_train_epoch_start(self, epoch: int) -> None:
        """The epoch that starts; nothing changes by default."""


class AdamToSGD(Optimizer, EpochAware):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        switch: str = "epoch",
        switch_epoch: int = 2,
        sgd_lr: float | None = None,
        momentum: float = 0.9,
        nesterov: bool = True,
        swats_tol: float = 1e-5,
    ) -> None:
        if switch not in ("epoch", "swats"):
            raise ValueError(f"switch must be 'epoch' or 'swats', got {switch!r}")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, momentum=momentum,
            nesterov=nesterov, phase="adam", sgd_lr=sgd_lr, lr_estimate=0.0, steps=0,
        )  # fmt: skip
        super().__init__(params, defaults)
        self.switch, self.switch_epoch, self.swats_tol = switch, switch_epoch, swats_tol

    @property
    def phase(self) -> str:
        return self.param_groups[0]["phase"]

    def on_train_epoch_start(self, epoch: int) -> None:
        """The fixed-epoch switch (EpochAware's hook)."""
        if self.switch == "epoch" and epoch >= self.switch_epoch:
            for group in self.param_groups:
                self._to_sgd(group, epoch=epoch)

    def _to_sgd(self, group: dict, **where: int) -> None:
        if group["phase"] == "sgd":
            return
        if group["sgd_lr"] is None:
            # Bias-corrected SWATS estimate; fall back to Adam's lr before any step was taken.
            k, beta2 = group["steps"], group["betas"][1]
            estimate = float(group["lr_estimate"]) / (1 - beta2**k) if k else 0.0
            if not (estimate > 0 and math.isfinite(estimate)):
                estimate = group["lr"]
            # Momentum multiplies SGD's steady step by 1 / (1 - momentum): scale it back so
            # SGD's steps keep the size of Adam's (SWATS matches plain steps).
            group["sgd_lr"] = estimate * (1 - group["momentum"])
        group["phase"] = "sgd"
        log.info(
            "adam_to_sgd: switching to SGD (nesterov) with lr %.4g at %s",
            group["sgd_lr"],
            ", ".join(f"{k} {v}" for k, v in where.items()),
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = _evaluate(closure)
        for group in self.param_groups:
            if group["phase"] == "adam":
                self._adam_step(group)
            else:
                self._sgd_step(group)
        return loss

    def _adam_step(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        group["steps"] += 1
        k = group["steps"]
        step_dot_grad, step_sq = 0.0, 0.0
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v / (1 - beta2**k)).sqrt_().add_(group["eps"])
            update = (m / (1 - beta1**k)).div_(denom).mul_(-group["lr"])
            p.add_(update)
            # The dot products stay tensors until the end of the step: one sync per step.
            step_dot_grad = step_dot_grad + (update * grad).sum()
            step_sq = step_sq + (update * update).sum()
        if not isinstance(step_dot_grad, torch.Tensor):
            return
        # gamma: the SGD lr whose step, projected on Adam's step, has the same length. Kept as a
        # tensor (no host sync per step) and only updated when Adam's step descends (p.g < 0).
        gamma = step_sq / (-step_dot_grad).clamp_min(1e-30)
        est = torch.as_tensor(group["lr_estimate"], dtype=gamma.dtype, device=gamma.device)
        est = torch.where(step_dot_grad < 0, beta2 * est + (1 - beta2) * gamma, est)
        group["lr_estimate"] = est
        if self.switch == "swats" and k > 1:
            if (est / (1 - beta2**k) - gamma).abs().item() < self.swats_tol:
                self._to_sgd(group, step=k)

    def _sgd_step(self, group: dict) -> None:
        # A scheduler scales Adam's lr; the SGD lr follows the same factor.
        lr = group["sgd_lr"] * _schedule_factor(group)
        for p in group["params"]:
            if p.grad is not None:
                _sgd_update(p, self.state[p], group, lr)


def _evaluate(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """torch's optimizer contract: step(closure) re-computes the loss, with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _schedule_factor(group: dict) -> float:
    """How far a scheduler has moved this group's lr from where it started (1 without one)."""
    initial = group.get("initial_lr", group["lr"])
    return group["lr"] / initial if initial else 1.0


def _sgd_update(p: torch.Tensor, state: dict, group: dict, lr: float) -> None:
    """One step of torch.optim.SGD (momentum, optional Nesterov, L2 weight decay) on p."""
    grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = state["momentum_buffer"] = grad.clone()
    else:
        buf.mul_(group["momentum"]).add_(grad)
    p.add_(grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf, alpha=-lr)


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Roughly U V^T for the 2-D g = U S V^T: every singular value pushed towards 1.

    A quintic Newton-Schulz iteration on X = g / |g| (so the singular values start in [0, 1]),
    X <- a X + b (X X^T) X + c (X X^T)^2 X. Muon's coefficients make the map steep at 0, so few
    steps lift small singular values a lot; it does not converge to exactly 1 (values end up
    around 0.7..1.2), which the Muon experiments found does not matter. bf16 matmuls: the result
    is a direction, and bf16 is twice as fast on CPUs with AVX-512 BF16 and on GPUs.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16)
    x = x / (x.norm() + eps)
    wide = x.size(0) <= x.size(1)  # iterate on the smaller Gram matrix
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


class Muon(Optimizer):
    """Conv filters (4-D parameters) take Muon steps, everything else SGD steps.

    The project keeps its own rather than torch.optim.Muon, which takes 2-D parameters only:
    this one orthogonalises 4-D conv filters (as out x in*kh*kw matrices), renormalises each
    filter before its step as airbench94_muon does, and takes SGD steps for all other
    parameters in the same optimizer (so one scheduler drives both). Where the two coincide
    (tests/test_muon.py) the steps agree to bf16 accuracy: our momentum buffer is torch's times
    1 / (1 - momentum), which the orthogonalisation's normalisation cancels; torch also scales a
    tall matrix's step by sqrt(rows / cols) and decays the weights, ours does neither.

    A filter's step: Nesterov momentum `filter_momentum` on its gradient, the result reshaped to
    (out_channels, in_channels * kh * kw) and orthogonalised, times `filter_lr`. Before each step
    the filter is rescaled to norm sqrt(out_channels), as airbench94_muon does: its scale does
    not matter to the batch norm after it, and a fixed norm keeps the step's relative size (and
    so the schedule) meaningful; weight decay would be moot and is not applied to filters.
    Other parameters (biases, the linear head) take torch.optim.SGD's step with `lr`,
    `momentum`, `nesterov` and `weight_decay`. A scheduler scales `lr`; filter steps follow the
    same factor. The orthogonalised step has a fixed size whatever the loss's scale, so
    `filter_lr` is the same for a summed or a mean loss.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        filter_lr: float = 0.24,
        filter_momentum: float = 0.6,
        ns_steps: int = 3,
        ns_compile: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            filter_lr=filter_lr, filter_momentum=filter_momentum, ns_steps=ns_steps,
        )  # fmt: skip
        super().__init__(params, defaults)
        # ns_compile: the Newton-Schulz iteration torch.compile'd (airbench94_muon compiles
        # it), its elementwise kernels fused around the matmuls; one graph per filter shape.
        # Not in the groups: an option of this process, not of the saved state.
        self._compiled_ns = torch.compile(orthogonalize, dynamic=False) if ns_compile else None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = _evaluate(closure)
        for group in self.param_groups:
            factor = _schedule_factor(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim == 4:
                    self._filter_step(p, group, group["filter_lr"] * factor)
                else:
                    _sgd_update(p, self.state[p], group, group["lr"])
        return loss

    def _filter_step(self, p: torch.Tensor, group: dict, lr: float) -> None:
        state, m = self.state[p], group["filter_momentum"]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(p)
        buf.mul_(m).add_(p.grad)
        grad = p.grad.add(buf, alpha=m)  # Nesterov
        p.mul_(len(p) ** 0.5 / p.norm())
        # Looked up at each call, not kept: benchmarks/profile_step.py labels it by name.
        ns = orthogonalize if self._compiled_ns is None else self._compiled_ns
        update = ns(grad.reshape(len(grad), -1), group["ns_steps"])
        p.add_(update.view_as(p), alpha=-lr)


# Optimizers with a learning rate besides `lr` (Muon's filter_lr, AdamToSGD's sgd_lr), which
# Lightning's LR range test (tune_lr=true) would not scale along with it.
MULTI_LR = (AdamToSGD, Muon)
