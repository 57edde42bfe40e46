"""train.py and eval.py end to end, as subprocesses, on small learnable synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_lightning.results import CORRECT_NAME
from tests.conftest import FAST, run_cli

pytestmark = pytest.mark.slow

RESULT_KEYS = {
    "test_acc",
    "per_class_acc",
    "train_acc",
    "train_loss",
    "best_val_acc",
    "epochs",
    "fit_seconds",
    "seed",
    "overrides",
}


def test_training_learns_and_writes_the_outputs_contract(trained_run: Path, folder_root: Path):
    results = json.loads((trained_run / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    assert results["test_acc"] > 0.5, results  # chance is 0.1
    assert set(results["per_class_acc"]) == {
        "plane",
        "car",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    }
    assert all(0 <= v <= 1 for v in results["per_class_acc"].values())
    tested = len(list((folder_root / "test").rglob("*.png")))  # the whole test split
    assert results["test_images"] == tested
    assert 0 <= results["best_val_acc"] <= 1 and results["epochs"] == 4 and results["seed"] == 0
    assert results["checkpoint"].endswith("best.ckpt")
    for name in (
        ".hydra/config.yaml",
        "metrics.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "confusion_matrix.png",
    ):
        assert (trained_run / name).is_file(), name
    console = (trained_run / "console.txt").read_text()
    assert "epoch 4/4 | train loss" in console
    assert "Total Accuracy:" in console and "Accuracy for class plane is:" in console


def test_eval_reproduces_the_training_test_accuracy(trained_run: Path, tmp_path: Path):
    proc = run_cli(
        "eval.py", f"ckpt_path={trained_run / 'checkpoints/best.ckpt'}", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads((trained_run / "results.json").read_text())
    evaluated = json.loads((tmp_path / "results.json").read_text())
    assert RESULT_KEYS <= set(evaluated)
    assert evaluated["test_acc"] == trained["test_acc"]
    assert evaluated["per_class_acc"] == trained["per_class_acc"]
    assert evaluated["best_val_acc"] == trained["best_val_acc"]
    assert (tmp_path / "confusion_matrix.png").is_file()
    flags = [np.load(d / CORRECT_NAME) for d in (trained_run, tmp_path)]  # image by image
    assert np.array_equal(*flags) and flags[0].sum() == round(trained["test_acc"] * len(flags[0]))


def test_eval_of_a_missing_checkpoint_is_one_clear_error(tmp_path: Path):
    proc = run_cli("eval.py", f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr


def test_multirun_gives_each_job_its_folder_and_survives_a_failing_job(
    folder_root: Path, tmp_path: Path
):
    # Two healthy jobs and one whose val_size is impossible.
    proc = run_cli(
        "train.py",
        "-m",
        f"data.root={folder_root}",
        *FAST[:2],
        "augment=none",
        "trainer.max_epochs=1",
        "optimizer=adam,sgd",
        "data.val_size=50,100000",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode != 0, "a failed job must fail the sweep"
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and "optimizer=" in p.name)
    assert len(jobs) == 4  # folders named by the overrides, data.root left out
    ok = sorted(p.parent.name for p in tmp_path.glob("*/results.json"))
    assert len(ok) == 2 and all("data.val_size=50," in name for name in ok)
    assert {name.split("optimizer=")[1].split(",")[0] for name in ok} == {"adam", "sgd"}
    assert "data.val_size=100000 must be between" in proc.stdout + proc.stderr


def test_fast_cpu_recipe_learns_and_eval_repeats_its_bf16_tta_test(folder_root: Path, tmp_path):
    # fast_cpu tests in bf16-mixed with TTA: eval.py must take the run's precision and TTA and
    # print the very same figures, and the results carry the after-fit figures.
    run = tmp_path / "train"
    proc = run_cli(
        "train.py",
        "experiment=fast_cpu",
        f"data.root={folder_root}",
        "data.batch_size=64",
        "data.val_size=50",
        "trainer.max_epochs=4",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["test_acc"] > 0.3, results  # chance is 0.1
    assert results["best_val_acc"] is None and results["checkpoint"].endswith("last.ckpt")
    assert results["tta_level"] == 2 and results["provenance"]["precision"] == "bf16-mixed"
    assert 0.3 < results["val_acc"] <= 1 and 0.3 < results["train_acc_clean"] <= 1
    assert results["provenance"]["data"] == {
        "fingerprint": results["provenance"]["data"]["fingerprint"], "train": 350, "val": 50,
        "test": 100,
    }  # fmt: skip
    evaluated = tmp_path / "eval"
    again = run_cli("eval.py", f"ckpt_path={results['checkpoint']}", f"data.root={folder_root}",
                    f"hydra.run.dir={evaluated}")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]

    def report(out: str) -> list[str]:
        keep = ("Total Accuracy:", "Accuracy for class")
        return [
            line.split(" - ", 1)[1]
            for line in out.splitlines()
            if line.split(" - ")[-1].startswith(keep)
        ]

    lines = report(proc.stdout + proc.stderr)
    assert len(lines) == 11 and lines == report(again.stdout + again.stderr)
    repeated = json.loads((evaluated / "results.json").read_text())
    for key in ("test_acc", "per_class_acc", "test_acc_plain", "val_acc", "train_acc_clean"):
        assert repeated[key] == results[key], key


def test_eval_takes_the_data_folder_as_train_py_does(trained_run: Path, tmp_path: Path):
    proc = run_cli("eval.py", f"ckpt_path={trained_run / 'checkpoints/last.ckpt'}",
                   "data_root=elsewhere", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "data.root=PATH" in proc.stderr


def test_a_run_without_test_still_writes_its_results(folder_root: Path, tmp_path: Path):
    proc = run_cli("train.py", f"data.root={folder_root}", *FAST, "trainer.max_epochs=1",
                   "test=false", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_acc"] is None and results["per_class_acc"] is None
    assert "test_acc_plain" not in results and results["best_val_acc"] is not None
    assert results["train_acc_clean"] is not None and results["val_acc"] is not None
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_ddp_on_two_cpu_processes_counts_every_test_image_once(tmp_path: Path):
    from tests.synthetic import write_folder_layout

    # 109 test images: an odd count, which DistributedSampler would pad with a repeat.
    root = write_folder_layout(tmp_path / "data", n_train=30, n_test=11)
    next((root / "test" / "cat").iterdir()).unlink()
    run = tmp_path / "ddp"
    proc = run_cli("train.py", f"data.root={root}", *FAST[:2], "data.val_size=50",
                   "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.max_epochs=2", f"hydra.run.dir={run}")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("Total Accuracy:") == 1 and out.count("results: ") == 1  # rank 0 only
    ddp = single_process_eval_matches(run, tmp_path / "single")
    # Every one of the 109 images counted once: accuracies are multiples of 1/109.
    assert abs(ddp["test_acc"] * 109 - round(ddp["test_acc"] * 109)) < 1e-4


def single_process_eval_matches(run: Path, single: Path, probes: tuple[str, ...] = ()) -> dict:
    """eval.py of a DDP run's checkpoint in one process gives the run's test accuracy, per-class
    accuracy and test loss (the loss to float rounding: the ranks' sums are added in another
    order). Returns the run's results. probes: callbacks of tests/probes.py the run had, taken
    out of a copy of the checkpoint's config first (eval.py rightly refuses foreign code)."""
    ddp = json.loads((run / "results.json").read_text())
    ckpt = ddp["checkpoint"]
    if probes:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        for name in probes:
            del saved["run_config"]["callbacks"][name]
        ckpt = str(single.parent / "without_probes.ckpt")
        torch.save(saved, ckpt)
    # Quoted: a sweep job's folder name holds '=', ',' and brackets (Hydra's override grammar).
    proc = run_cli("eval.py", f"ckpt_path='{ckpt}'", "trainer.accelerator=cpu",
                   "trainer.devices=1", "trainer.strategy=auto", "trainer.num_nodes=1",
                   f"hydra.run.dir={single}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((single / "results.json").read_text())
    assert one["test_acc"] == pytest.approx(ddp["test_acc"], abs=1e-6)
    assert one["per_class_acc"] == pytest.approx(ddp["per_class_acc"], abs=1e-6)
    assert one["test_loss"] == pytest.approx(ddp["test_loss"], rel=1e-5)
    # The ranks' per-image flags, interleaved back into the test split's order, are one
    # process's: each image once, in its place.
    flags = [np.load(d / CORRECT_NAME) for d in (run, single)]
    assert len(flags[0]) == ddp["test_images"] and np.array_equal(*flags)
    return ddp
