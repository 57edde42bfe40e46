"""On a CUDA GPU: does a recipe's training step, or a batch of its test, ever wait for the device
outside a logging point?

Runs the recipe as train.py trains it (its callbacks, health checks, checkpoints, logger) with
`torch.cuda.set_sync_debug_mode("error")` switched on for every training step that is not a
logging point (`trainer.log_every_n_steps`, an epoch's last batch), the fetch of its batch
included, then tests it as train.py does, with the mode on inside every test batch but the
first: any synchronising CUDA call there (`item`, `.cpu()`, `nonzero`, a blocking copy) raises
and names the line. Unchecked: logging points, epoch ends, validation and checkpoint saves (that
is where the loop reads its metrics and writes its files), each epoch's start up to its first
step (the epoch's order copied to the device, the first chunk of augmented batches), the fit's
first step and the test's first batch (cuDNN's algorithm search under trainer.benchmark, once
per shape), and the test's set-up and end. The CPU-side twin of this check is
benchmarks/op_count.py (host reads counted on any machine; tests/test_benchmarks.py runs this
script on a CPU with that count standing in for CUDA's mode); this one is authoritative for
CUDA.

    python benchmarks/sync_check.py --experiment fast94 --steps 150 data.root=data/cifar10-jpeg
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import logging_point, parse, parser, run_config, save  # noqa: E402
from cifar_lightning.pipeline import build, build_callbacks, make_trainer  # noqa: E402


class SyncGuard(L.Callback):
    """Errors on synchronising CUDA calls from one step's start to the next's, except around
    logging points. Listed first, so that its hooks run before every other callback's."""

    def __init__(self) -> None:
        self.checked = 0  # steps run under the guard
        self.checked_test = 0  # test batches run under it

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        # The batch was fetched under the previous step's mode: a step after a logging point
        # fetches unchecked, all others checked.
        # The fit's first step neither: cuDNN's algorithm search (trainer.benchmark) runs
        # there, once, and may wait for the device.
        guarded = trainer.global_step > 0 and not logging_point(trainer, batch_idx)
        torch.cuda.set_sync_debug_mode("error" if guarded else "default")
        self.checked += guarded

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, idx=0) -> None:  # noqa: ANN001
        # The first batch searches cuDNN's algorithms for the test's shapes (TTA's views).
        torch.cuda.set_sync_debug_mode("error" if batch_idx else "default")
        self.checked_test += batch_idx > 0

    def on_test_batch_end(self, trainer, pl_module, out, batch, batch_idx, idx=0) -> None:  # noqa: ANN001
        torch.cuda.set_sync_debug_mode("default")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:  # noqa: ANN001
        # A save copies the state to the host: allowed (the next step's start guards again).
        # Listed first, this runs before the other callbacks' on_save_checkpoint.
        torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer, pl_module, exception) -> None:  # noqa: ANN001
        torch.cuda.set_sync_debug_mode("default")


def cuda_ready() -> bool:
    """Whether a CUDA GPU is there (a CPU test stands in for one by replacing this)."""
    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/sync_check.json")
    p.add_argument(
        "--steps",
        type=int,
        default=150,
        help="training steps (fast94: 150 reaches Lookahead's first averages)",
    )
    args = parse(p, argv)
    if not cuda_ready():
        raise SystemExit("sync_check needs a CUDA GPU (benchmarks/op_count.py counts host reads "
                         "on any machine)")  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_config(
            args.experiment,
            [f"trainer.max_steps={args.steps}", "test=false", *args.overrides],
            Path(tmp) / "run",
        ) as cfg,
    ):
        seed = L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, module = build(cfg, seed)
        module.run_config = {}
        callbacks, _, _ = build_callbacks(cfg, datamodule)
        guard = SyncGuard()
        trainer = make_trainer(cfg.trainer, cfg.logger, [guard, *callbacks], Path(tmp) / "run")
        error = None
        try:
            trainer.fit(module, datamodule=datamodule)
            trainer.test(module, datamodule=datamodule)
        except RuntimeError as err:  # the synchronising call, with its stack in the message
            error = str(err).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # A pass that checked nothing proves nothing: each part with a batch past its first must
    # have had it checked.
    tested = sum(trainer.num_test_batches) > 1
    ok = (error is None and trainer.global_step == args.steps and guard.checked > 0
          and (guard.checked_test > 0 or not tested))  # fmt: skip
    print(
        f"{args.experiment}: {trainer.global_step} steps, {guard.checked} of them and "
        f"{guard.checked_test} test batches under set_sync_debug_mode('error'): "
        f"{'no synchronising call' if ok else error}"
    )
    result = save({**vars(args), "steps_run": trainer.global_step, "steps_checked": guard.checked,
                   "test_batches_checked": guard.checked_test, "error": error, "ok": ok},
                  args.out)  # fmt: skip
    if not ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
