"""The README's recipes that run on a CPU, each once, on tiny synthetic data.

Run elsewhere, not repeated here: the default run and eval.py on its checkpoint, a plain
multirun, experiment=fast_cpu on the device loader and DDP on 2 CPU processes
(tests/test_e2e.py); tune_lr=true and hparams_search=optuna_lr with 2 trials, and the report of
a sweep (tests/test_study.py); `python -m cifar_lightning.report` (tests/test_report_stats.py);
ckpt_path=PATH after a SIGKILL (tests/test_resume.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import SequentialSampler

from cifar_lightning import quiet
from cifar_lightning.data.loaders import EpochSampler, ImageTensorDataset, ResumableLoader
from cifar_lightning.data.order import EpochOrder
from tests.conftest import REPO, run_cli
from tests.test_readme import outputs_tree, results_keys

# folder_root has 400 training images: 350 after the validation split, 11 batches of 32.
SMALL = ["data.batch_size=32", "data.val_size=50"]


def run_train(*args: str) -> subprocess.CompletedProcess:
    """train.py with Python's default warning filters (run_cli ignores all warnings): what a
    user's console shows."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**env, "HYDRA_FULL_ERROR": "0"})  # fmt: skip


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the runs below go; ckpt_path=last searches a run's sibling folders."""
    return tmp_path_factory.mktemp("recipes")


def limit_args(root: Path) -> list[str]:
    return ["debug=limit", f"data.root={root}", *SMALL]


@pytest.fixture(scope="module")
def limit_run(folder_root: Path, recipe_runs: Path) -> tuple[Path, str]:
    """`python train.py debug=limit` with the default data settings (2 workers): the run folder
    and its console."""
    run = recipe_runs / "limit"
    proc = run_train(*limit_args(folder_root), f"hydra.run.dir={run}")
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    return run, console


@pytest.mark.slow
def test_debug_limit_trains_a_few_batches_for_two_epochs(limit_run):
    run, console = limit_run
    assert step_of(run / "checkpoints" / "last.ckpt") == 2 * 10  # limit_train_batches: 10 of 11
    assert "epoch 2/2 |" in console and "epoch 3/" not in console
    # The progress bar counts epochs as the epoch lines do (Lightning's own says "Epoch 1/1").
    assert "Epoch 2/2" in console and "Epoch 0/" not in console and "Epoch 1/1" not in console
    assert json.loads((run / "results.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_the_console_is_quiet(limit_run):
    """Lightning's adverts and notices nobody can act on are gone (cifar_lightning/quiet.py,
    installed by train.py); the epoch lines and the report are there."""
    _, console = limit_run
    for noise in ("💡 Tip", "litlogger", "LeafSpec", "`weights_only` was not set",
                  "TPU available: False", "was configured so 100%",
                  "to estimate number of stepping batches", "exists and is not empty"):  # fmt: skip
        assert noise not in console, noise
    assert "epoch 1/2 | train loss" in console and "Total Accuracy:" in console
    assert "GPU available:" in console  # whether the GPU is used still shows


@pytest.mark.slow
def test_the_readme_outputs_tree_is_what_a_run_leaves(limit_run):
    run, _ = limit_run
    tree = outputs_tree()
    named = {p.rstrip("/") for p in tree}
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "results.json"} <= named
    for path in named:
        assert (run / path).exists(), path
    left = {f"checkpoints/{p.name}" for p in (run / "checkpoints").iterdir()}
    assert left == {p for p in named if p.startswith("checkpoints/")}
    for name in re.findall(r"\w+\.yaml", tree[".hydra/"]):
        assert (run / ".hydra" / name).is_file(), name
    keys = results_keys()
    assert len(keys) >= 10, keys
    assert sorted(keys - set(json.loads((run / "results.json").read_text()))) == []


@pytest.mark.slow
def test_ckpt_path_last_resumes_the_run_with_the_same_overrides(
    limit_run, folder_root, recipe_runs
):
    run, _ = limit_run
    resumed = recipe_runs / "resumed"
    proc = run_cli("train.py", *limit_args(folder_root), "ckpt_path=last",
                   f"hydra.run.dir={resumed}")  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    assert f"ckpt_path=last: resuming from {(run / 'checkpoints/last.ckpt').resolve()}" in console
    assert not re.search(r"epoch \d+/\d+ \|", console)  # both epochs were done: none trained
    # The best checkpoint came along and tests as it did in the run resumed.
    before = json.loads((run / "results.json").read_text())
    after = json.loads((resumed / "results.json").read_text())
    assert after["checkpoint"] == str(resumed / "checkpoints" / "best.ckpt")
    assert after["test_acc"] == before["test_acc"] and after["epochs"] == 2


@pytest.mark.slow
def test_debug_fdr_runs_one_batch_of_each_stage(folder_root, recipe_runs):
    run = recipe_runs / "fdr"
    proc = run_cli("train.py", "debug=fdr", f"data.root={folder_root}", *SMALL,
                   f"hydra.run.dir={run}")  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    assert "testing the weights in memory" in console and "Total Accuracy:" in console
    assert json.loads((run / "results.json").read_text())["checkpoint"] is None


@pytest.mark.slow
def test_debug_overfit_memorises_the_same_batches(folder_root, recipe_runs):
    run = recipe_runs / "overfit"
    proc = run_cli("train.py", "debug=overfit", "trainer.max_epochs=2", "test=false",
                   f"data.root={folder_root}", "data.val_size=50",
                   f"hydra.run.dir={run}")  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * 4  # overfit_batches: 4
    # A plain loader: no resume position is saved, and none is needed for 4 fixed batches.
    assert ckpt["loops"]["fit_loop"]["state_dict"].get("combined_loader") in (None, [], [{}])
    assert "epoch 2/2 |" in console


def test_a_resumable_loader_rebuilt_around_lightnings_sampler_has_no_position():
    # What Lightning does to a training loader under trainer.overfit_batches (and what it could
    # do with use_distributed_sampler): a new loader of the same class with its own sampler.
    data = ImageTensorDataset(torch.zeros(10, 3, 32, 32, dtype=torch.uint8),
                              torch.arange(10), lambda x: x.float(), seed=0)  # fmt: skip
    order = EpochOrder(10, shuffle=True, batch_size=4)
    loader = ResumableLoader(data, batch_size=4, sampler=EpochSampler(order))
    rebuilt = _update_dataloader(loader, SequentialSampler(data), mode=RunningStage.TRAINING)
    assert type(rebuilt) is ResumableLoader and isinstance(rebuilt.sampler, SequentialSampler)
    assert [y.tolist() for _, y in rebuilt] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert rebuilt.state_dict() == {}
    rebuilt.load_state_dict({"epoch": 1, "position": 2})  # a position from elsewhere: ignored
    assert [len(y) for _, y in rebuilt] == [4, 4, 2]
    assert loader.state_dict() == {"epoch": 0, "position": 0}  # the original keeps its own


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_with_dataloader_workers(folder_root, recipe_runs):
    # Inside joblib's (loky) workers the DataLoader's 2 default workers used to fail to start.
    sweep = recipe_runs / "joblib"
    proc = run_cli("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "optimizer=adam,sgd", f"data.root={folder_root}", *SMALL,
                   "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                   f"hydra.sweep.dir={sweep}")  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in console
    done = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert len(done) == 2 and {d.split("optimizer=")[1].split(",")[0] for d in done} == {
        "adam",
        "sgd",
    }


def test_quiet_drops_only_the_listed_messages():
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    lightning.addHandler(handler)
    leafspec = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
    try:
        with warnings.catch_warnings(record=True) as caught:  # restores the filters after
            warnings.simplefilter("always")
            quiet.install()
            quiet.install()  # twice: still one filter
            for module in ("pytorch_lightning.utilities._pytree", "my_code"):
                warnings.warn_explicit(leafspec, FutureWarning, "f.py", 1, module=module)
            warnings.warn_explicit(
                "Total length of `list` across ranks is zero.",
                UserWarning,
                "f.py",
                2,
                module="pytorch_lightning.utilities.data",
            )
            for message in (
                "💡 Tip: try installing [litlogger]",
                "GPU available: False, used: False",
                "TPU available: False, using: 0 TPU cores",
                "`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches",
                "`Trainer(limit_val_batches=1)` was configured so 1 batch will be used.",
            ):
                lightning.info(message)
        assert [str(w.message) for w in caught] == [leafspec]  # from my_code: it still shows
        assert lines == [
            "GPU available: False, used: False",
            "`Trainer(limit_val_batches=1)` was configured so 1 batch will be used.",
        ]
        assert sum(isinstance(f, quiet.DropMessages) for f in lightning.filters) == 1
    finally:
        lightning.removeHandler(handler)
        for name in quiet.LOG_LINES:
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, quiet.DropMessages)]:
                logger.removeFilter(f)


def test_switching_the_progress_bar_off_drops_the_configs_bar(folder_root: Path, tmp_path: Path):
    from cifar_lightning.callbacks import ProgressBar
    from cifar_lightning.pipeline import build, build_callbacks, make_trainer
    from tests.conftest import task_config

    for shown in (True, False):
        overrides = [f"data.root={folder_root}", f"trainer.enable_progress_bar={shown}"]
        with task_config("train", overrides, tmp_path / str(shown)) as cfg:
            datamodule, _ = build(cfg, 0)
            callbacks, _, _ = build_callbacks(cfg, datamodule)
            assert any(isinstance(c, ProgressBar) for c in callbacks) == shown
            make_trainer(cfg.trainer, None, callbacks, tmp_path)  # Lightning accepts it
