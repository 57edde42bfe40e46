"""What the benchmarks share: their options, the recipe's config as train.py gets it, the
conditions of a measurement, summaries of repeated timings, and saving."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from cifar_lightning import quiet
from cifar_lightning.fileio import write_json

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def parser(doc: str, out: str, experiment: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark has, described by the first paragraph of `doc`; with
    `experiment`, also --experiment and Hydra overrides (key=value, ~key) of train.py's config,
    which may stand anywhere among them."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if experiment:
        p.add_argument(
            "--experiment",
            default="fast_cpu",
            help="conf/experiment/<name>.yaml; none: train.py's defaults",
        )
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=PATH")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=out, help=f"the JSON file (default {out})")
    return p


def b_overrides(p: argparse.ArgumentParser, example: str) -> None:
    """--b KEY=VALUE, repeatable: the train.py overrides that make an A/B benchmark's B."""
    p.add_argument("--b", action="append", required=True, metavar="KEY=VALUE",
                   help=f"one of B's overrides, joined by '=' (--b={example}); "
                        "repeat it for more")  # fmt: skip


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse argv; set the thread count and quiet Lightning's noise for the whole process.

    `--seeds 0 1 2 data.root=PATH` would hand the override to --seeds as a fourth value: the
    overrides (key=value, ~key) are taken out first. An option's own value with "=" in it must
    be joined to the option: `--out=a=b.json`, not `--out a=b.json`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if ("=" in a and not a.startswith("-")) or a[:1] == "~"]
    args = p.parse_args([a for a in argv if a not in overrides])
    if overrides and "overrides" not in vars(args):
        p.error(f"unrecognized arguments: {' '.join(overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet.install()
    return args


@contextlib.contextmanager
def run_config(experiment: str, overrides: Sequence[str], out: Path) -> Iterator[DictConfig]:
    """train.py's config for `experiment=<experiment>` plus `overrides`, as Hydra hands it to a
    run whose output folder is `out`: the run folder of its checkpoints and logs, and
    HydraConfig set (pipeline.train reads it) until the block ends."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        chosen = [] if experiment == "none" else [f"experiment={experiment}"]
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=[*chosen, *overrides])  # fmt: skip
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]  # a Hydra task sees its config without it
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


def logging_point(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether Lightning logs at this training batch, asked before it runs (on_train_batch_start):
    after the step whose count of stepped batches reaches a multiple of log_every_n_steps, and
    at the epoch's last batch."""
    stepped = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
    last = batch_idx + 1 >= trainer.num_training_batches
    return stepped % trainer.log_every_n_steps == 0 or last


def now() -> float:
    """time.perf_counter() once the GPU's queued work is done, so that the clock counts it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, least and greatest of repeated measurements, and the values in order."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": list(values)}  # fmt: skip


def machine() -> dict[str, Any]:
    """The conditions of a measurement: library, threads, cores and the load while it ran."""
    return {
        "torch": torch.__version__,
        "pytorch_lightning": L.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def save(result: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write `result` and the conditions of its measurement to `out`; return what was written."""
    result = {**result, **machine()}
    write_json(out, result)
    print(f"wrote {out}")
    return result
