"""A quiet console: drop the messages of Lightning and torch that a user of this project cannot
act on, by message, so that the progress bar, the epoch lines, health findings, the report and
errors stand out. Every other warning and log line, of these libraries too, still shows.

train.py and eval.py call install() first thing in the Hydra task (it runs again in every
process that runs the task: joblib workers, DDP ranks, SLURM jobs).
"""

from __future__ import annotations

import logging
import re
import warnings

# (category, message regex, module regex of the warning's origin, why it goes)
WARNINGS: list[tuple[type[Warning], str, str, str]] = [
    # torch deprecated LeafSpec; pytorch_lightning/utilities/_pytree.py still builds one per batch.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.",
     "Lightning's own use of a torch API"),
    # pytorch_lightning/utilities/data.py: val_dataloader() returns [] when data.val_size=0,
    # which is how this project says "no validation split" (fast_cpu, fast94).
    (UserWarning, r"Total length of `list` across ranks is zero", r"pytorch_lightning\.",
     "no validation split is intended"),
    # lightning_fabric/loggers/csv_logs.py: the CSV log shares the run folder with Hydra's files.
    (UserWarning, r"Experiment logs directory .* exists and is not empty", r"",
     "Hydra's .hydra/ and train.log are in the run folder by design"),
]  # fmt: skip

# logger name -> message regexes of its INFO lines that go
LOG_LINES: dict[str, list[str]] = {
    # rank_zero_info of pytorch_lightning/trainer/connectors/logger_connector/logger_connector.py
    # (litlogger) and callback_connector.py (litmodels): adverts printed by every Trainer.
    # trainer/setup.py: the TPU line on machines without one, and `Trainer(limit_*=1.0)`, which
    # the trainer configs spell out and which means "all batches", Lightning's default.
    # trainer/trainer.py (estimated_stepping_batches): the step-wise schedulers size themselves.
    "pytorch_lightning.utilities.rank_zero": [
        r"^💡 Tip: ",
        r"^TPU available: False, using: 0 TPU cores$",
        r"^`Trainer\(\w+=1\.0\)` was configured so ",
        r"^Loading `train_dataloader` to estimate number of stepping batches\.$",
    ],
    # trainer/connectors/checkpoint_connector.py, at every trainer.save_checkpoint(path) without
    # weights_only: this project's full checkpoints are the intended default.
    "pytorch_lightning.trainer.connectors.checkpoint_connector": [
        r"^`weights_only` was not set, defaulting to `False`\.$",
    ],
}


class DropMessages(logging.Filter):
    """Drops the records of one logger whose message matches one of `patterns`."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def install() -> None:
    """Add the filters above (once per process; calling again changes nothing)."""
    for category, message, module, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, patterns in LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(patterns))
