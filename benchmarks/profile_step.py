"""Where a recipe's training step spends its time: torch.profiler over real training steps.

The recipe's steps run as train.py runs them (benchmarks/cpu_limit.py's real_steps: its Trainer,
callbacks, optimizer, data), at one input size per run (--sizes, default: the recipe's own).
After --warmup steps, torch.profiler records --steps steps (default: one epoch's). A callback
labels each step's forward (the training_step, loss included) and backward, and Muon's
Newton-Schulz iterations are labelled where the optimizer calls them. Every operator's own
(self) CPU time goes to one part, by the outermost operator or autograd node above it (a conv's
inner calls count as convolution, the zero-fill in max-pool's backward as pooling):

  convolution (forward and both gradients), batch norm, activation (GELU/SiLU), pooling
  (max-pool, the global max), linear head, loss, input resize (train_resolution's bilinear
  downscale), dtype casts (autocast's copies), other element-wise (metrics, argmax, ...),
  Python in the step (forward and backward time outside any operator), Muon Newton-Schulz
  (everything inside it), optimizer (the rest of torch's optimizer step: the SGD updates,
  momentum, filter renormalisation, Python), data and loop (the steps' time outside the
  optimizer step: batch slicing and augmentation, Lightning's loop, zero_grad, callbacks,
  logging).

Shares are of the profiled steps' wall time; the profiler's own overhead is in them (it is
reported: the steps' median with and without the profiler).

On a GPU (the recipe's trainer puts the model there, as fast94's does) the profiler records
the CUDA kernels too, and each kernel's time goes to the part of the operator that launched it,
as that operator's own CPU time does (the backward, which autograd runs on a thread of its own
there, counts as the backward range it ran for); kernels launched outside the optimizer steps
(augmentation, Lightning's loop, Lookahead) are data and loop. Kernel shares are of the
profiled steps' kernel time; "GPU busy" is that time over the steps' wall time (the window is
synchronised at both ends). This CUDA mode has not yet been run on a GPU.

    python benchmarks/profile_step.py data.root=data/cifar10-jpeg --threads 2
    python benchmarks/profile_step.py --experiment fast94 --warmup 5 data.root=data/cifar10-jpeg
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import now, parse, parser, run_config, save  # noqa: E402
from benchmarks.cpu_limit import real_steps, training_steps_per_epoch  # noqa: E402
from cifar_lightning import optim  # noqa: E402
from cifar_lightning.pipeline import build  # noqa: E402

FORWARD, BACKWARD, NEWTON_SCHULZ = "phase/forward", "phase/backward", "muon/newton_schulz"
OPTIMIZER = "Optimizer.step#"  # torch's own range around every optimizer step (the closure too)
CATEGORIES = (
    "convolution", "batch norm", "activation", "pooling", "linear head", "loss", "dtype casts",
    "input resize", "other element-wise", "Python in the step", "Muon Newton-Schulz",
    "optimizer", "data and loop",
)  # fmt: skip
# Parts of operator and autograd-node names (lower case, "_" dropped), matched from the
# outermost operator inwards, so that a conv's inner calls, or the zero-fill inside max-pool's
# backward, count with the layer that made them: the first match wins.
BY_NAME = (
    ("convolution", ("conv",)),
    ("batch norm", ("batchnorm",)),
    ("activation", ("gelu", "silu")),
    ("pooling", ("maxpool", "amax")),
    ("input resize", ("upsample", "interpolate")),  # before "linear": upsample_bilinear2d
    ("linear head", ("::mm", "addmm", "mmbackward", "linear", "matmul", "::bmm")),
    ("loss", ("crossentropy", "logsoftmax", "nllloss")),
    ("dtype casts", ("::to", "tocopy", "::copy")),
)


def category(chain: list[str]) -> str:
    """The part of the step an operator's own time belongs to, from the names of its
    enclosing events, outermost first, and its own name last."""
    if NEWTON_SCHULZ in chain:
        return "Muon Newton-Schulz"
    inside = [n for n in chain if n in (FORWARD, BACKWARD)]
    if not inside:
        return "optimizer"  # in the optimizer step, outside its closure's forward and backward
    for name in chain[chain.index(inside[-1]) + 1 :]:
        key = name.lower().replace("_", "")
        for label, parts in BY_NAME:
            if any(part in key for part in parts):
                return label
    return "other element-wise"


class Phases(L.Callback):
    """Labels each step's forward (the training_step, with the loss) and backward, and runs the
    profiler over the steps from `start` on (0-based) until `stop`. Both phases run inside
    torch's optimizer-step range (Lightning's closure), so the ranges nest."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop, self.step = start, stop, 0
        self.prof: Any = None
        self.window = 0.0
        self._backward: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        activities = [ProfilerActivity.CPU]
        if pl_module.device.type == "cuda":  # the kernels too
            activities.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=activities)
        plain = pl_module.training_step

        def labelled(*args: Any, **kwargs: Any) -> Any:
            with record_function(FORWARD):
                return plain(*args, **kwargs)

        pl_module.training_step = labelled  # the instance's, for this fit only

    def on_train_batch_start(self, *args: Any) -> None:
        if self.step == self.start:
            self.prof.start()
            self._t0 = now()  # on a GPU, after the warm-up's queued kernels

    def on_before_backward(self, *args: Any) -> None:
        self._backward = record_function(BACKWARD)
        self._backward.__enter__()

    def on_after_backward(self, *args: Any) -> None:
        self._backward.__exit__(None, None, None)

    def on_train_batch_end(self, *args: Any) -> None:
        self.step += 1
        if self.step == self.stop:
            self.window = now() - self._t0  # on a GPU, once the steps' kernels are done
            self.prof.stop()


OWN = {FORWARD: "Python in the step", BACKWARD: "Python in the step",
       NEWTON_SCHULZ: "Muon Newton-Schulz"}  # fmt: skip


class Backward:
    """The backward ranges of the steps. On a GPU, autograd runs the backward on a thread of
    its own: there its operators have no enclosing event, while the step's thread waits inside
    the BACKWARD range. Such an operator tree belongs to the range it started in. (On a CPU the
    backward runs on the step's thread, nested in the range: nothing to move.)"""

    def __init__(self, events: Any) -> None:
        ranges = [e for e in events if e.name == BACKWARD]
        self.thread = ranges[0].thread if ranges else None
        self.ranges = [(e.time_range.start, e.time_range.end) for e in ranges]

    def holds(self, root: Any) -> bool:
        """Whether `root`, an event without enclosing event, ran for a BACKWARD range."""
        start = root.time_range.start
        return root.thread != self.thread and any(a <= start < b for a, b in self.ranges)


def chain_of(event: Any, backward: Backward) -> list[str] | None:
    """The names of the event's enclosing events, outermost first, and its own last; an
    operator tree of autograd's own thread goes under the BACKWARD range that waited for it.
    None outside the optimizer steps."""
    chain, root = [event.name], event
    while root.cpu_parent is not None:
        root = root.cpu_parent
        chain.insert(0, root.name)
    if any(n.startswith(OPTIMIZER) for n in chain):
        return chain
    return [OPTIMIZER, BACKWARD, *chain] if backward.holds(root) else None


def part_of(chain: list[str]) -> str:
    """The part an event's own time (and its own kernels') belongs to, from its chain_of()."""
    if chain[-1].startswith(OPTIMIZER):
        return "optimizer"
    return OWN.get(chain[-1]) or category(chain)


def shares(prof: Any, window: float) -> dict[str, float]:
    """Seconds per category over the profiled steps (their wall time `window`): each event's
    own (self) time inside an optimizer step, by category(); the rest of the window is the
    data and the loop. Where autograd ran the backward on its own thread (a GPU), the step's
    thread was waiting in the BACKWARD range meanwhile: that wait is taken off the range's own
    time, which would otherwise count the backward twice."""
    events = prof.events()
    backward = Backward(events)
    seconds: dict[str, float] = defaultdict(float)
    in_steps = 0.0
    for event in events:
        if event.device_type != DeviceType.CPU:
            continue  # a GPU kernel: kernel_shares()
        chain = chain_of(event, backward)
        if chain is None:
            continue  # outside the optimizer steps: the data and the loop
        if event.name.startswith(OPTIMIZER):
            in_steps += event.cpu_time_total / 1e6
        seconds[part_of(chain)] += event.self_cpu_time_total / 1e6
        if event.cpu_parent is None and backward.holds(event):
            seconds[OWN[BACKWARD]] -= event.cpu_time_total / 1e6  # the wait for it
    seconds[OWN[BACKWARD]] = max(0.0, seconds[OWN[BACKWARD]])
    seconds["data and loop"] = max(0.0, window - in_steps)
    return {c: seconds.get(c, 0.0) for c in CATEGORIES}


def is_sync(name: str) -> bool:
    """A CUDA synchronisation wait that the profiler may record on the GPU's track ("Context
    Sync", "Stream Sync", "Event Sync", "Stream Wait Event"): waiting, not kernel work."""
    return name.endswith(" Sync") or name == "Stream Wait Event"


def kernel_shares(prof: Any) -> dict[str, float] | None:
    """GPU kernel seconds per category over the profiled steps, or None without any kernel (a
    CPU run). The profiler hangs each kernel on the operator that launched it (its `kernels`,
    not its children's); that operator's part, as for CPU time, gets the kernel's time. All
    kernels' time less the optimizer steps' is the data and the loop, as the window less the
    steps is for CPU time."""
    events = prof.events()
    backward = Backward(events)
    seconds: dict[str, float] = defaultdict(float)
    total = in_steps = 0.0
    for event in events:
        if event.is_async:
            continue
        if event.device_type != DeviceType.CPU:  # a kernel, memcpy or memset on the device
            if not is_sync(event.name):
                total += event.time_range.elapsed_us() / 1e6
            continue
        own = sum(k.duration for k in event.kernels if not is_sync(k.name)) / 1e6
        chain = chain_of(event, backward) if own else None
        if chain is not None:
            seconds[part_of(chain)] += own
            in_steps += own
    if not total:
        return None
    seconds["data and loop"] = max(0.0, total - in_steps)
    return {c: seconds.get(c, 0.0) for c in CATEGORIES}


@contextlib.contextmanager
def labelled_newton_schulz() -> Iterator[None]:
    """Label Muon's orthogonalisation calls in the profile (the optimizer calls the module's
    function by name) while the block runs."""
    plain = optim.orthogonalize

    def labelled(*args: Any, **kwargs: Any) -> torch.Tensor:
        with record_function(NEWTON_SCHULZ):
            return plain(*args, **kwargs)

    optim.orthogonalize = labelled
    try:
        yield
    finally:
        optim.orthogonalize = plain


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__, "benchmarks/results/profile_step.json")
    p.add_argument("--sizes", type=int, nargs="*", help="input sizes (default: the recipe's)")
    p.add_argument("--steps", type=int, help="steps profiled per size (default: one epoch's)")
    p.add_argument("--warmup", type=int, default=3, help="steps run before the profiled ones")
    args = parse(p, argv)
    rows = {}
    with (
        labelled_newton_schulz(),
        tempfile.TemporaryDirectory() as tmp,
        run_config(args.experiment, args.overrides, Path(tmp)) as cfg,
    ):
        sizes = args.sizes or sorted(set(cfg.module.train_resolution or [32]))
        steps = args.steps or _steps_per_epoch(cfg)
        for size in sizes:
            phases = Phases(args.warmup, args.warmup + steps)
            times = real_steps(cfg, size, args.warmup + steps, Path(tmp) / f"p{size}", [phases])
            plain = real_steps(cfg, size, args.warmup + steps, Path(tmp) / f"q{size}")
            parts = shares(phases.prof, phases.window)
            total = sum(parts.values())
            kernels = kernel_shares(phases.prof)  # None on a CPU
            kernel_total = sum(kernels.values()) if kernels else 0.0
            rows[size] = {
                "steps": steps,
                "profiled_step_s": statistics.median(times[args.warmup :]),
                "plain_step_s": statistics.median(plain[args.warmup :]),
                "seconds": parts,
                "share": {c: s / total for c, s in parts.items()},
                "kernel_seconds": kernels,
                "kernel_share": None
                if kernels is None
                else {c: s / kernel_total for c, s in kernels.items()},
                "gpu_busy": None if kernels is None else kernel_total / phases.window,
            }
    gpu = all(r["kernel_share"] for r in rows.values())
    heads = [f"{s}x{s} share" + (f" | {s}x{s} kernel share" if gpu else "") for s in rows]
    print("| part | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(rows) * (2 if gpu else 1))
    for c in CATEGORIES:
        cells = [f"{100 * r['share'][c]:.1f} %" + (f" | {100 * r['kernel_share'][c]:.1f} %"
                 if gpu else "") for r in rows.values()]  # fmt: skip
        print(f"| {c} | " + " | ".join(cells) + " |")
    for s, r in rows.items():
        print(f"{s}x{s}: {r['steps']} steps, median step {r['profiled_step_s']:.3f} s profiled, "
              f"{r['plain_step_s']:.3f} s without the profiler")  # fmt: skip
        if r["gpu_busy"] is not None:
            print(f"{s}x{s}: GPU busy {100 * r['gpu_busy']:.0f} % of the profiled steps' wall time")
    return save({"experiment": args.experiment, "overrides": args.overrides,
                 "precision": str(cfg.trainer.precision), "per_size": rows}, args.out)  # fmt: skip


def _steps_per_epoch(cfg: Any) -> int:
    """One epoch's training steps, counted as cpu_limit.py counts them (the data set up)."""
    datamodule, _ = build(cfg, L.seed_everything(cfg.seed, verbose=False))
    datamodule.prepare_data()
    datamodule.setup("fit")
    return training_steps_per_epoch(datamodule)


if __name__ == "__main__":
    main()
