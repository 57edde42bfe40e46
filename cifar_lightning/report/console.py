"""The console report of a test, in the seed experiment's words and units."""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger("cifar_lightning")


def print_report(test_acc: float, per_class_acc: Mapping[str, float | None]) -> None:
    """The seed's report, in percent: `Total Accuracy` and one line per class; a class without
    test images (a limited test) has no accuracy, and its line says so."""
    log.info("Total Accuracy: %.2f %%", 100 * test_acc)
    for name, acc in per_class_acc.items():
        if acc is None:
            log.info("Class %s has no test images: no accuracy", name)
        else:
            log.info("Accuracy for class %s is: %.1f %%", name, 100 * acc)
