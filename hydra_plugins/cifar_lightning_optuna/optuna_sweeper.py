"""The project's Optuna sweeper, hydra/sweeper=optuna_study (conf/hydra/sweeper/optuna_study.yaml).

Hydra takes sweepers only from the hydra_plugins package, and imports every module here at each
start of train.py and eval.py: so this is a thin class, and optuna is imported only when a search
runs (cifar_lightning/study.py does the work). It replaces hydra-optuna-sweeper, which requires
optuna<3, whose database storage fails beside SQLAlchemy 2 (the README says more).
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from cifar_lightning.errors import UserError


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.study: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        try:
            from cifar_lightning.study import StudySweep
        except ImportError as err:  # optuna missing, or an old one (FloatDistribution: 3.0)
            raise UserError(f"hydra/sweeper=optuna_study needs optuna>=3.1 ({err}). Install "
                            f"it with: pip install -e '.[sweep]'") from err  # fmt: skip
        self.study = StudySweep(**self.settings)
        self.study.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.study.sweep(arguments)
