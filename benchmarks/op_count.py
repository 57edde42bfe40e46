"""aten ops dispatched per training step, and the values read back to the host, of a recipe as
train.py trains it.

A GPU step costs host time per op launched and a stall per value read back; both can be counted
on any machine. This runs the recipe through train.py's own Trainer (its callbacks, health checks,
checkpoints, logger) under a TorchDispatchMode that sees every aten op below autograd (forward,
backward, optimizer, schedule, data, metrics, callbacks), and splits the count by step:

  per step   ops of an epoch (from its first batch to the next epoch's first batch: the loader's
             per-epoch work, Lightning's epoch end and the epoch's checkpoint included) divided by
             its steps, for each epoch; plain and averaging (Lookahead) steps apart;
  host reads every op that hands a tensor's value to Python (`item`, `bool`/`float`/`int` of a
             tensor, `tolist`, `numpy`, `.cpu()`, `nonzero`, `unique`, boolean-mask indexing),
             with the step it happened in and whether that step was a logging point
             (`trainer.log_every_n_steps`, the epoch end); tensors made from host values are
             counted with them (made on a GPU, a blocking copy). Reads of values that stay on
             the host in a GPU run too (torchvision's per-image transforms, the DataLoader,
             torch.optim's step counters, a GradScaler) are marked host-resident, not device
             reads.
  evaluation the same reads in each validation batch (and, with --test, each batch of the test
             train.py runs after the fit), from its start to the next batch's; those after the
             stage's last batch belong to its epoch's end (a logging point).

Counted as CUDA would run the recipe: fp32 (`trainer.precision=32-true`: no autocast casts) and
torch.optim with `foreach=True` (CUDA's default; CPU's is the per-parameter loop). The count does
not depend on the batch size, so `--count-batch B` trains on batches of B images and
keeps the recipe's step count per epoch (fast94: 48) at a fraction of the time. airbench94.py's
loop, counted the same way outside this project: 155 ops per step (issue 28).

    python benchmarks/op_count.py --experiment fast94 data.root=data/cifar10-jpeg
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from omegaconf import open_dict
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import logging_point, parse, parser, run_config, save  # noqa: E402
from cifar_lightning.pipeline import build, build_callbacks, make_trainer  # noqa: E402

TARGET = 170  # ops per step: airbench94's 155 + 10 % (issue 28)
# Ops that hand a tensor's value to the host: `item`/`bool`/`float`/`int` end in
# _local_scalar_dense, except under torch.inference_mode (Lightning's evaluation loops), where
# the mode sees `item` and `is_nonzero` instead; `equal` and `allclose` answer a Python bool;
# `nonzero`, `unique` and boolean-mask indexing need the count of their output before it exists.
READS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "_unique2",
         "unique_dim", "unique_consecutive", "masked_select", "nonzero_static"}  # fmt: skip
# Tensors made from host values (`torch.tensor`, `as_tensor` of a number or list, `from_numpy`),
# counted whatever their device: one made on a GPU (or moved there) is a blocking copy, which
# waits for the device as a read does (CUDA's sync debug mode flags it). A CPU tensor moved to
# the device later dispatches nothing here: the count of such copies is a lower bound.
TO_DEVICE = {"lift_fresh"}
# Values that live on the host in a GPU run too: not device reads (issue 28). torch.optim
# keeps its step counters on the host (device="cpu") unless capturable or fused; its weight
# averaging and ReduceLROnPlateau read device values, and stay counted.
HOST_RESIDENT = ("torch/optim/", "torchvision/", "torch/utils/data/",
                 "torch/amp/grad_scaler.py")  # fmt: skip
DEVICE_READERS = ("torch/optim/swa_utils.py", "torch/optim/lr_scheduler.py")


# torch's own wrappers between a read and the code that asked for it.
WRAPPERS = ("torch/_dynamo/", "torch/_compile.py", "torch/_tensor.py", "torch/functional.py",
            "torch/overrides.py", "torch/utils/_python_dispatch.py")  # fmt: skip


def caller(stack: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame that is not one of torch's wrappers: who read."""
    for frame in reversed(stack):
        if not any(w in frame.filename.replace("\\", "/") for w in WRAPPERS):
            return frame
    return None


class Count(TorchDispatchMode):
    """Counts every aten op by name; records each host read with its Python stack."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.total = 0
        self.reads: list[dict[str, Any]] = []
        self.where: dict[str, Any] = {}  # set by Steps: the step being run

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func._schema.name.split("::")[-1]
        self.total += 1
        self.ops[name] += 1
        bool_index = name == "index" and any(
            t is not None and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else ())
        )
        if name in READS or name in TO_DEVICE or bool_index:
            self.read(name)
        return func(*args, **(kwargs or {}))

    def read(self, name: str) -> None:
        stack = traceback.extract_stack()[:-2]
        frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack[-12:]]
        who = caller(stack)
        path = who.filename.replace("\\", "/") if who else ""
        self.reads.append({"op": name, **self.where,
                           "host_resident": any(h in path for h in HOST_RESIDENT)
                           and not any(d in path for d in DEVICE_READERS),
                           "by": f"{Path(path).name}:{who.lineno} {who.name}" if who else "?",
                           "stack": frames})  # fmt: skip

    # Reads that dispatch no op when the tensor already is on the CPU (as on this machine): a
    # GPU run would copy the value back for each of them, so they are counted too.
    PATCHED = ("tolist", "numpy", "cpu")

    def __enter__(self) -> Count:
        self._saved = {m: getattr(torch.Tensor, m) for m in self.PATCHED}
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, self._wrap(method, original))
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, original)

    def _wrap(self, method: str, original: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.read(method)
            return original(tensor, *args, **kwargs)

        return counted


class Steps(L.Callback):
    """Marks where each training step starts in the count, and whether Lightning logs at it;
    and each validation and test batch, up to its stage's epoch end."""

    def __init__(self, count: Count) -> None:
        self.count = count
        self.starts: list[dict[str, Any]] = []  # one per step: epoch, batch, ops so far

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        logs = logging_point(trainer, batch_idx)
        self.count.where = {"epoch": trainer.current_epoch, "batch": batch_idx,
                            "step": trainer.global_step, "logging_point": logs}  # fmt: skip
        self.starts.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                            "ops": self.count.total})  # fmt: skip

    # An evaluation batch: from its start to the next batch's, or to the end of its stage's last
    # batch, after which the epoch's end reads the metrics (logging_point: true).
    def _evaluating(self, trainer: L.Trainer, batch_idx: int, end: bool, idx: int) -> None:
        stage = "test" if trainer.testing else "validate"
        batches = trainer.num_test_batches if trainer.testing else trainer.num_val_batches
        last = end and batch_idx + 1 == batches[idx]
        self.count.where = {"stage": stage, "batch": batch_idx, "logging_point": last}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, idx=0) -> None:  # noqa: ANN001
        self._evaluating(trainer, batch_idx, False, idx)

    def on_validation_batch_end(self, trainer, pl_module, out, batch, batch_idx, idx=0) -> None:  # noqa: ANN001
        self._evaluating(trainer, batch_idx, True, idx)

    on_test_batch_start = on_validation_batch_start
    on_test_batch_end = on_validation_batch_end


@contextmanager
def counting() -> Iterator[tuple[Count, Steps]]:
    count = Count()
    with count:
        yield count, Steps(count)


def per_step(steps: Steps, fit_ops: int, every: int, start_epoch: int) -> dict[str, Any]:
    """Ops per step per epoch (an epoch ends where the next one's first step starts; the last
    epoch's at the end of fit), and in the last epoch the median plain and averaging step (its
    first and last steps left out: they carry the epoch's start and end)."""
    starts = [*steps.starts, {"epoch": None, "step": None, "ops": fit_ops}]
    deltas = [(s["epoch"], s["step"], n["ops"] - s["ops"])
              for s, n in zip(starts, starts[1:], strict=False)]  # fmt: skip
    epochs: dict[int, list[int]] = {}
    for epoch, _, d in deltas:
        epochs.setdefault(epoch, []).append(d)
    last = max(epochs)
    kinds: dict[str, list[int]] = {"plain": [], "averaging": []}
    for epoch, step, d in [x for x in deltas if x[0] == last][1:-1]:
        # Lookahead averages after the optimizer step that makes global_step a multiple of
        # every_n_steps.
        averaging = bool(every) and epoch >= start_epoch and (step + 1) % every == 0
        kinds["averaging" if averaging else "plain"].append(d)
    return {
        "per_epoch": {e: sum(ds) / len(ds) for e, ds in epochs.items()},
        "median_step_last_epoch": {k: statistics.median(v) for k, v in kinds.items() if v},
    }


def run(
    experiment: str, overrides: Sequence[str], epochs: int, count_batch: int, test: bool = False
) -> dict[str, Any]:
    """Train `epochs` epochs of the recipe under the counter, then (`test`) test it as train.py
    does; the counts."""
    extra = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
             f"trainer.max_epochs={epochs}", "trainer.max_steps=-1",
             "test=false"]  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_config(experiment, [*extra, *overrides], Path(tmp) / "run") as cfg,
    ):
        if str(cfg.optimizer._target_).startswith("torch.optim."):
            with open_dict(cfg.optimizer):
                cfg.optimizer.foreach = True  # CUDA's default (the project's Muon: its own)
        if count_batch:
            # The recipe's steps per epoch on its full training split, at a batch of count_batch.
            steps = (50_000 - int(cfg.data.val_size)) // int(cfg.data.batch_size)
            cfg.data.batch_size = count_batch
            cfg.data.train_size = count_batch * steps
        seed = L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, module = build(cfg, seed)
        module.run_config = {}
        callbacks, _, _ = build_callbacks(cfg, datamodule)
        with counting() as (count, steps):
            trainer = make_trainer(cfg.trainer, cfg.logger, [*callbacks, steps], Path(tmp) / "run")
            trainer.fit(module, datamodule=datamodule)
            fit_ops = count.total
            if test:
                trainer.test(module, datamodule=datamodule)
        look = cfg.callbacks.get("lookahead") or {}
        counts = per_step(steps, fit_ops, look.get("every_n_steps", 0), look.get("start_epoch", 0))
        return {
            "steps_per_epoch": trainer.num_training_batches,
            "batch_size": int(cfg.data.batch_size),
            "log_every_n_steps": trainer.log_every_n_steps,
            **counts,
            "top_ops": dict(count.ops.most_common(25)),
            "host_reads": count.reads,
        }


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    last = max(r["per_epoch"])
    device_reads = [x for x in r["host_reads"] if not x["host_resident"] and "step" in x]
    off_point = [x for x in device_reads if not x["logging_point"]]
    evaluating = [x for x in r["host_reads"] if not x["host_resident"] and "stage" in x]
    return {
        "ops_per_step_last_epoch": r["per_epoch"][last],
        "target": TARGET,
        "device_reads": len(device_reads),
        "device_reads_outside_logging_points": len(off_point),
        "evaluation_device_reads_in_batches": sum(not x["logging_point"] for x in evaluating),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/op_count.json")
    p.add_argument("--epochs", type=int, default=4, help="epochs to train (fast94: Lookahead "
                   "starts in the fourth)")  # fmt: skip
    p.add_argument(
        "--count-batch",
        type=int,
        default=8,
        help="batch size to count at, keeping the recipe's steps per epoch on its full "
        "training split (0: the recipe's own batches and data)",
    )
    p.add_argument("--test", action="store_true",
                   help="also count the test after the fit, as train.py runs it")  # fmt: skip
    args = parse(p, argv)
    r = run(args.experiment, args.overrides, args.epochs, args.count_batch, args.test)
    s = summarise(r)
    print(f"{args.experiment}: {r['steps_per_epoch']} steps per epoch (batch {r['batch_size']}), "
          f"fp32, foreach SGD, logging every {r['log_every_n_steps']} steps")  # fmt: skip
    for epoch, n in r["per_epoch"].items():
        print(f"  epoch {epoch}: {n:.1f} ops per step")
    print(f"  last epoch, median step by kind: {r['median_step_last_epoch']}")
    print(f"ops per step (last epoch) {s['ops_per_step_last_epoch']:.1f}, target <= {TARGET}; "
          f"device reads {s['device_reads']}, outside logging points "
          f"{s['device_reads_outside_logging_points']}; in evaluation batches "
          f"{s['evaluation_device_reads_in_batches']}")  # fmt: skip
    for x in r["host_reads"]:
        if not x["host_resident"] and not x.get("logging_point", True):
            where = x.get("stage") or f"epoch {x['epoch']}"
            print(f"  read {x['op']} at {where} batch {x['batch']}: "
                  f"{' <- '.join(reversed(x['stack'][-5:]))}")  # fmt: skip
    # The JSON keeps every read outside a logging point and a tally of the others by caller.
    tally = Counter(
        f"{x['op']} {'host-resident' if x['host_resident'] else 'device'} "
        f"{'at a logging point' if x.get('logging_point') else 'outside steps'} "
        f"{x['by']}"
        for x in r["host_reads"]
        if x["host_resident"] or x.get("logging_point", True)
    )
    off = [x for x in r["host_reads"] if not x["host_resident"] and not x.get("logging_point", 1)]
    kept = {**r, "host_reads": off, "host_reads_tally": dict(tally.most_common())}
    return save({**vars(args), **kept, **s}, args.out)


if __name__ == "__main__":
    main()
