"""Start-up: a run imports only what it uses. Optional packages (trackers, sweepers, export,
SLURM) and kornia (only the perspective and rotation warps need it) stay out of a fast94 run,
checked in a fresh interpreter, since this one has imported whatever other tests needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# The top-level packages a fast94 run must not import: they cost start-up time (kornia's import
# alone took 0.7 s on a GPU machine) and a run that uses none of them should not need them.
UNUSED = ("kornia", "mlflow", "wandb", "optuna", "onnx", "onnxruntime", "onnxscript", "submitit")

# Built as train.py builds a run (pipeline.build, build_callbacks, make_trainer), then the data
# set up and the first training batch drawn and augmented: everything before trainer.fit.
BUILD_FAST94 = """
import json, sys
from pathlib import Path
import pytorch_lightning as L
from cifar_lightning import pipeline
from tests.conftest import task_config

root, out = sys.argv[1], Path(sys.argv[2])
overrides = ["experiment=fast94", "trainer.accelerator=cpu", f"data.root={root}",
             "data.batch_size=50", "data.eval_batch_size=50"]
with task_config("train", overrides, out) as cfg:
    datamodule, module = pipeline.build(cfg, L.seed_everything(0, verbose=False))
    callbacks, _, _ = pipeline.build_callbacks(cfg, datamodule)
    trainer = pipeline.make_trainer(cfg.trainer, cfg.logger, callbacks, out)
    datamodule.prepare_data()
    datamodule.setup("fit")
    x, y = next(iter(datamodule.train_dataloader()))
print(json.dumps({"modules": sorted(sys.modules), "batch": list(x.shape),
                  "loader": datamodule.loader}))
"""


def test_a_fast94_run_leaves_optional_packages_unimported(folder_root: Path, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_FAST94, str(folder_root), str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # The run was really built: Lightning, the device loader and its augmentation are loaded.
    assert found["loader"] == "device" and found["batch"] == [50, 3, 32, 32]
    assert {"pytorch_lightning", "cifar_lightning.data.warp"} <= set(found["modules"])
    imported = sorted({m.split(".")[0] for m in found["modules"]} & set(UNUSED))
    assert imported == [], f"a fast94 run imported {imported}"
