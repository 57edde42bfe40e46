"""Train on CIFAR-10, then test the best checkpoint.

python train.py                                  # defaults: conf/train.yaml
python train.py optimizer=sgd_nesterov scheduler=onecycle trainer.max_epochs=20
python train.py -m optimizer=adam,sgd_nesterov seed=0,1,2
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning import quiet
from cifar_lightning.cli import cli_guard, run_main
from cifar_lightning.pipeline import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet.install()  # in every process that runs the task (DDP ranks, joblib workers)
    return cli_guard(train, cfg)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
