"""Which runs form a group, and the group's label in tables, summary.csv and plot legends.

By default a group is one setting of the swept overrides (those whose value differs between
runs; the seed, which a group averages over, and paths excluded), labelled `key=value, ...`
with the keys a run leaves at their defaults left out. With `--group-by KEY [KEY ...]` a group
is one value of the chosen keys, labelled by the values alone (`adam`, `sgd_nesterov`); a key a
run did not override is read from its saved config.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cifar_lightning.errors import UserError
from cifar_lightning.report.runs import Run

# Overrides that never define a group: the seed is what a group averages over; the rest are paths.
NOT_GROUPING = {"seed", "data.root", "data.num_workers", "ckpt_path"}
MISSING = "–"  # a --group-by key a run does not have (e.g. optimizer.sgd_lr of an Adam run)


@dataclass
class Grouping:
    keys: list[str]
    chosen: bool  # keys given with --group-by (labels are values) or found swept (key=value)
    groups: dict[str, list[Run]]  # label -> runs, in label order

    @property
    def column(self) -> str:
        """The header of the label column."""
        return " / ".join(self.keys) if self.chosen else "group"

    @property
    def description(self) -> str:
        return ", ".join(self.keys) if self.keys else "(nothing swept)"


def swept_keys(runs: list[Run]) -> list[str]:
    """The overrides whose value differs between runs (the seed and paths excluded)."""
    keys = {k for r in runs for k in r.overrides if k not in NOT_GROUPING}
    return sorted(k for k in keys if len({r.overrides.get(k) for r in runs}) > 1)


def label(run: Run, keys: list[str], chosen: bool) -> str:
    if chosen:
        return " / ".join(run.value(k) or MISSING for k in keys)
    pairs = [f"{k}={run.overrides[k]}" for k in keys if k in run.overrides]
    return ", ".join(pairs) or ("defaults" if keys else "all runs")


def split_keys(group_by: list[str] | None) -> list[str]:
    """--group-by's keys; `a,b` counts as `a b`."""
    return [k.strip() for item in group_by or [] for k in item.split(",") if k.strip()]


def group_runs(runs: list[Run], group_by: list[str] | None = None) -> Grouping:
    keys = split_keys(group_by)
    chosen = bool(keys)
    if chosen:
        unknown = [k for k in keys if all(r.value(k) is None for r in runs)]
        if unknown:
            seen = sorted({k for r in runs for k in r.overrides})
            raise UserError(
                f"--group-by {' '.join(unknown)}: no run has this key in its overrides or "
                f"saved config. Overridden keys: {', '.join(seen) or '(none)'}."
            )
    else:
        keys = swept_keys(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[label(run, keys, chosen)].append(run)
    return Grouping(keys, chosen, dict(sorted(groups.items())))
