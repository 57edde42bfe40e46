"""A trained checkpoint as one model file that runs without this project (conf/export.yaml):
uint8 RGB images (N, 32, 32, 3) in, fp32 class probabilities out, a JSON sidecar beside it.

python export.py ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt            # model.onnx
python export.py ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt format=torch_export tta=false
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning import quiet
from cifar_lightning.cli import cli_guard, run_main
from cifar_lightning.export import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    quiet.install()
    cli_guard(export, cfg)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
