"""The machine's own limit for a recipe's training step, and how close the real step comes.

For each training input size of the recipe (module.train_resolution's sizes; 32 without one):

- flops: one training step's FLOPs (forward, loss, backward), counted by
  torch.utils.flop_counter.FlopCounterMode on the recipe's network at its batch size;
- ceiling: the sum, over the network's convolutions and linear layers, of the best measured time
  of each one's forward, input-gradient and weight-gradient computation alone (aten's own
  convolution_backward with one output at a time; matmuls for the linear layers), at the
  recipe's batch, precision and shapes, best over the memory layouts torch offers (contiguous,
  channels_last): what the step would take if nothing but its matrix work ran, each piece at
  this machine's best speed;
- real: the recipe's training steps as train.py runs them (its Trainer, callbacks, optimizer,
  data), the median of --steps steps after --warmup, timed by a callback at batch boundaries;
- GFLOP/s achieved, and ceiling / real: the fraction of the limit the step reaches.

Then the FLOPs to the final test: every epoch's steps at its size, plus the TTA test of the
10,000 test images. FLOPs here are multiply-adds x 2, as FlopCounterMode counts them.

    python benchmarks/cpu_limit.py data.root=data/cifar10-jpeg
    python benchmarks/cpu_limit.py data.root=data/cifar10-jpeg trainer.precision=32-true \\
        --out benchmarks/results/cpu_limit_fp32.json
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import now, parse, parser, run_config, save, spread  # noqa: E402
from cifar_lightning.pipeline import build, build_callbacks, make_trainer  # noqa: E402

TEST_IMAGES = 10_000


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: one-time allocation and kernel choice stay off the clock
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_inputs(net: nn.Module, x: Tensor) -> list[tuple[nn.Module, torch.Size]]:
    """Each convolution and linear layer with the shape of its input, in forward order."""
    found, hooks = [], []
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_hook(lambda m, i, o: found.append((m, i[0].shape))))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return found


def conv_padding(conv: nn.Conv2d) -> list[int]:
    if conv.padding == "same":  # odd kernels, stride 1: (k - 1) / 2 on each side
        return [d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
    return list(conv.padding)


def pieces(layer: nn.Module, shape: torch.Size, dtype: torch.dtype) -> dict[str, Callable]:
    """Forward, input-gradient and weight-gradient computations of one layer, alone, per
    memory layout: {"forward/contiguous": fn, ...}."""
    w = layer.weight.detach().to(dtype)
    out: dict[str, Callable] = {}
    if isinstance(layer, nn.Linear):
        x = torch.randn(shape, dtype=dtype)
        gy = torch.randn(shape[0], w.shape[0], dtype=dtype)
        out["forward/contiguous"] = lambda: x @ w.T
        out["input_grad/contiguous"] = lambda: gy @ w
        out["weight_grad/contiguous"] = lambda: gy.T @ x
        return out
    args = (layer.stride, conv_padding(layer), layer.dilation, False, [0, 0], layer.groups)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape, dtype=dtype).contiguous(memory_format=layout)
        wl = w.contiguous(memory_format=layout)
        y = torch.ops.aten.convolution(x, wl, None, *args)
        gy = torch.randn_like(y).contiguous(memory_format=layout)
        name = "contiguous" if layout is torch.contiguous_format else "channels_last"
        # Defaults bound now: each lambda keeps its own layout's tensors.
        out[f"forward/{name}"] = lambda x=x, wl=wl: torch.ops.aten.convolution(x, wl, None, *args)
        out[f"input_grad/{name}"] = lambda x=x, wl=wl, gy=gy: torch.ops.aten.convolution_backward(
            gy, x, wl, None, *args, [True, False, False]
        )
        out[f"weight_grad/{name}"] = lambda x=x, wl=wl, gy=gy: torch.ops.aten.convolution_backward(
            gy, x, wl, None, *args, [False, True, False])  # fmt: skip
    return out


def ceiling(net: nn.Module, x: Tensor, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """The step's matrix work, each piece at its best layout: seconds and FLOPs per piece. The
    pieces autograd skips are left out: the first layer's input gradient (the data needs
    none) and the gradients of frozen weights (fastnet's whitening filters)."""
    rows, total = [], 0.0
    for i, (layer, shape) in enumerate(layer_inputs(net, x)):
        by_piece: dict[str, tuple[float, str, int]] = {}
        for key, fn in pieces(layer, shape, dtype).items():
            piece, layout = key.split("/")
            if (piece == "input_grad" and i == 0) or (
                piece == "weight_grad" and not layer.weight.requires_grad
            ):
                continue
            with FlopCounterMode(display=False) as counter:
                fn()
            seconds = best_time(fn, repeats)
            if piece not in by_piece or seconds < by_piece[piece][0]:
                by_piece[piece] = (seconds, layout, counter.get_total_flops())
        for piece, (seconds, layout, flops) in by_piece.items():
            rows.append({"layer": f"{type(layer).__name__}{tuple(shape)[1:]}", "piece": piece,
                         "layout": layout, "seconds": seconds, "flops": flops,
                         "gflops_per_s": flops / seconds / 1e9})  # fmt: skip
            total += seconds
    return {"seconds": total, "pieces": rows}


def step_flops(module: L.LightningModule, x: Tensor, y: Tensor, autocast: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = module.criterion(module(x), y)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class StepClock(L.Callback):
    """Wall time of each training step, batch start to batch end (the optimizer step included).
    On a GPU the clock waits for the queued kernels at both ends (common.now), so that a step's
    time is its kernels' and not only their launch; steps then cannot overlap."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = now()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(now() - self._start)


def training_steps_per_epoch(datamodule: Any) -> int:
    """How many training steps an epoch of the set-up datamodule has (its loader's own count:
    the split's size, the batch size and its handling of a last partial batch)."""
    if datamodule.loader == "device":
        return len(datamodule.device_batches("train", train=True, device="cpu"))
    return len(datamodule.train_dataloader())


def real_steps(
    cfg: Any, size: int, steps: int, out: Path, extra: Sequence[L.Callback] = ()
) -> list[float]:
    """`steps` of the recipe's training at input size `size`, as train.py's Trainer runs them
    (with the `extra` callbacks after the config's); each step's seconds."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(cfg):
        cfg.module.train_resolution = [size]
        cfg.trainer.max_steps, cfg.trainer.limit_val_batches = steps, 0
        # train.py's callbacks as the recipe has them (progress bar and health checks included),
        # last.ckpt at epoch ends only (none falls inside these few steps).
        if cfg.callbacks.get("last_checkpoint"):
            cfg.callbacks.last_checkpoint.every_n_train_steps = 0
    seed = L.seed_everything(cfg.seed, verbose=False)
    datamodule, module = build(cfg, seed)
    clock = StepClock()
    callbacks, _, _ = build_callbacks(cfg, datamodule, lambda: [clock, *extra])
    trainer = make_trainer(cfg.trainer, None, callbacks, out)
    trainer.fit(module, datamodule=datamodule)
    return clock.times


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/cpu_limit.json")
    p.add_argument("--steps", type=int, default=8, help="real steps timed per size")
    p.add_argument("--warmup", type=int, default=2, help="real steps left off per size")
    p.add_argument("--repeats", type=int, default=5, help="timings per piece (best is kept)")
    args = parse(p, argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_config(args.experiment, args.overrides, Path(tmp)) as cfg,
    ):
        precision = str(cfg.trainer.precision)
        autocast, dtype = precision == "bf16-mixed", torch.bfloat16
        if not autocast:
            dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
        seed = L.seed_everything(cfg.seed, verbose=False)
        datamodule, module = build(cfg, seed)
        datamodule.prepare_data()
        datamodule.setup("fit")
        batch, epochs = cfg.data.batch_size, cfg.trainer.max_epochs
        sizes_by_epoch = list(cfg.module.train_resolution or [32])
        sizes_by_epoch += [sizes_by_epoch[-1]] * (epochs - len(sizes_by_epoch))
        steps_per_epoch = training_steps_per_epoch(datamodule)
        layout = torch.channels_last if cfg.module.channels_last else torch.contiguous_format
        y = torch.randint(0, 10, (batch,))
        rows = {}
        for size in sorted(set(sizes_by_epoch)):
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
            flops = step_flops(module.to(memory_format=layout), x, y, autocast)
            limit = ceiling(module.net, x.to(dtype) if not autocast else x, dtype, args.repeats)
            times = real_steps(cfg, size, args.steps + args.warmup, Path(tmp) / f"run{size}")
            real = statistics.median(times[args.warmup :])
            rows[size] = {"flops_per_step": flops, "real_step_s": spread(times[args.warmup :]),
                          "gflops_per_s": flops / real / 1e9, "ceiling_s": limit["seconds"],
                          "fraction_of_ceiling": limit["seconds"] / real,
                          "pieces": limit["pieces"]}  # fmt: skip
        tta = int(cfg.module.tta_level or 0)
        x = torch.randn(cfg.data.eval_batch_size, 3, 32, 32).contiguous(memory_format=layout)
        module.eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                module.eval_logits(x, tta)
        test_flops = counter.get_total_flops() * TEST_IMAGES / len(x)
    train_flops = sum(rows[s]["flops_per_step"] * steps_per_epoch for s in sizes_by_epoch)
    print(f"{args.experiment}, {precision}, batch {batch}, {steps_per_epoch} steps an epoch")
    print("| size | GFLOP/step | real s/step (median) | GFLOP/s | ceiling s | ceiling/real |")
    print("|---|---|---|---|---|---|")
    for size, r in rows.items():
        print(
            f"| {size} | {r['flops_per_step'] / 1e9:.1f} | {r['real_step_s']['median']:.3f} | "
            f"{r['gflops_per_s']:.0f} | {r['ceiling_s']:.3f} | {r['fraction_of_ceiling']:.2f} |"
        )
    print(
        f"FLOPs to the final test: {(train_flops + test_flops) / 1e12:.1f} TFLOP "
        f"(training {train_flops / 1e12:.1f}, TTA test {test_flops / 1e12:.2f})"
    )
    return save({"experiment": args.experiment, "overrides": args.overrides,
                 "precision": precision, "batch_size": batch, "steps_per_epoch": steps_per_epoch,
                 "sizes_by_epoch": sizes_by_epoch, "per_size": rows, "tta_level": tta,
                 "train_flops": train_flops, "test_flops": test_flops}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
