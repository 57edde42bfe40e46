"""Re-test a checkpoint written by train.py, with the config it was trained with.

python eval.py ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt [data.root=PATH]
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning import quiet
from cifar_lightning.cli import cli_guard, run_main
from cifar_lightning.pipeline import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    quiet.install()  # in every process that runs the task (DDP ranks, joblib workers)
    return cli_guard(evaluate, cfg)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
