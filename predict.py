"""Class probabilities of a trained model for your own images (conf/predict.yaml).

python predict.py ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt input=photos/
python predict.py model_path=outputs/export/<date>/model.onnx input='[a.jpg,b.png]'

Exit status: 0 all predicted; 3 some files could not be read (their rows in predictions.csv say
why; on_bad_image=skip: 0); 2 a user error, nothing predicted (one `error:` line).
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning import quiet
from cifar_lightning.cli import cli_guard, run_main
from cifar_lightning.prediction import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    quiet.install()
    status = cli_guard(predict, cfg)
    if status:  # some files could not be read: the run's files are written, the rows say why
        sys.exit(status)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
