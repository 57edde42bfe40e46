"""Wall time of a whole `python train.py ...`: from the process's start to its exit, as a user
waits for it (interpreter start-up, imports, Hydra, data, training, test, after-fit figures,
results.json), with the test accuracy its results.json reports.

The arguments after `--` go to train.py unchanged, except that the run folder is a temporary
one unless they set hydra.run.dir. train.py's output shows as it runs.

With --budget-from FILE (time_to_accuracy.py's JSON of the same recipe, e.g. after its warm-up
run), the process is also set against what it cannot avoid (issue 28, item 4): the run's
on-clock time (that file's, the mean over its seeds) plus the time of `python -c "import
pytorch_lightning, hydra"` on this machine (timed once after an untimed one, which fills the
page cache as for train.py). The rest (interpreter start, Hydra, the project's own imports,
CUDA start-up and cuDNN's algorithm search, the work after the test, exit) has a target of
REST_TARGET_S.

    python benchmarks/wall_time.py -- experiment=fast_cpu data.root=data/cifar10-jpeg
    python benchmarks/wall_time.py --threads 2 --out benchmarks/results/wall_time.json -- \\
        experiment=fast_cpu data.root=data/cifar10-jpeg
    python benchmarks/wall_time.py --budget-from benchmarks/results/time_to_accuracy_fast94.json \\
        -- experiment=fast94 data.root=data/cifar10-jpeg
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from benchmarks.common import REPO, parse, parser, save  # noqa: E402

REST_TARGET_S = 3.0  # issue 28: process <= on-clock + import time + 3 s
IMPORTS = "import pytorch_lightning, hydra"


def recipe(train_args: Sequence[str]) -> str:
    """The experiment train.py runs with these arguments ("none": its defaults), as
    time_to_accuracy.py's --experiment names it."""
    chosen = [a.split("=", 1)[1] for a in train_args
              if a.split("=", 1)[0] in ("experiment", "+experiment", "++experiment")]  # fmt: skip
    return chosen[-1] if chosen else "none"


def on_clock_s(path: Path, experiment: str) -> float:
    """The on-clock seconds a time_to_accuracy.py JSON of `experiment` reports: the mean over
    its seeds."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"--budget-from {path}: not a readable JSON file ({err})") from None
    data = data if isinstance(data, dict) else {}
    found = data.get("mean_on_clock_s", data.get("on_clock_s"))
    if not isinstance(found, int | float):
        raise SystemExit(f"--budget-from {path}: no on_clock_s or mean_on_clock_s in it "
                         f"(time_to_accuracy.py's JSON?)")  # fmt: skip
    runs = data.get("runs") or [data]  # several seeds' runs, or one run
    timed = {r.get("experiment") for r in runs if isinstance(r, dict)}
    if timed != {experiment}:
        raise SystemExit(f"--budget-from {path}: it times experiment "
                         f"{', '.join(sorted(map(str, timed))) or 'unknown'}, this run is "
                         f"experiment={experiment}; time the same recipe with "
                         f"time_to_accuracy.py --experiment {experiment}")  # fmt: skip
    return float(found)


def import_s(env: dict[str, str]) -> float:
    """Seconds of `python -c "import pytorch_lightning, hydra"`, after one untimed run."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True)
        times.append(time.perf_counter() - start)
    return times[-1]


def budget(wall: float, clock: float, imports: float) -> dict[str, Any]:
    rest = wall - clock - imports
    print(f"process {wall:.2f} s = on the clock {clock:.2f} + `{IMPORTS}` {imports:.2f} + the "
          f"rest {rest:.2f} s (target <= {REST_TARGET_S:.0f} s: "
          f"{'met' if rest <= REST_TARGET_S else 'missed'})")  # fmt: skip
    return {"on_clock_s": clock, "import_s": imports, "rest_s": rest,
            "rest_target_s": REST_TARGET_S}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(__doc__, "benchmarks/results/wall_time.json", experiment=False)
    p.usage = "wall_time.py [--threads N] [--out FILE] [--budget-from FILE] -- TRAIN_PY_ARGS..."
    p.add_argument("--budget-from", type=Path, metavar="FILE",
                   help="time_to_accuracy.py's JSON of the same recipe: also time the imports "
                   "and report the rest against its target")  # fmt: skip
    if "--" not in argv and not {"-h", "--help"} & set(argv):
        p.error("put train.py's arguments after --")
    split = argv.index("--") if "--" in argv else len(argv)
    args = parse(p, argv[:split])
    train_args = argv[split + 1 :]
    if {"-m", "--multirun"} & set(train_args):
        p.error("one run at a time: leave out -m/--multirun")
    env = dict(os.environ)
    if args.threads:  # torch's thread count in train.py
        env["OMP_NUM_THREADS"] = str(args.threads)
    # A bad budget file stops the run before train.py starts.
    clock = on_clock_s(args.budget_from, recipe(train_args)) if args.budget_from else None
    imports = import_s(env) if args.budget_from else None
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = next((a.split("=", 1)[1] for a in train_args if a.startswith("hydra.run.dir=")),
                       None)  # fmt: skip
        if run_dir is None:
            run_dir = tmp
            train_args.append(f"hydra.run.dir={tmp}")
        command = [sys.executable, str(REPO / "train.py"), *train_args]
        start = time.perf_counter()
        returncode = subprocess.run(command, env=env).returncode
        wall_s = time.perf_counter() - start
        found = Path(run_dir) / "results.json"
        results = json.loads(found.read_text()) if found.is_file() else {}
    print(f"train.py: exit {returncode} after {wall_s:.1f} s (process start to exit); test "
          f"accuracy {results.get('test_acc')}; fit {results.get('fit_seconds')} s")  # fmt: skip
    result = {
        "command": ["python", "train.py", *train_args],
        "wall_s": wall_s,
        "returncode": returncode,
        "test_acc": results.get("test_acc"),
        "fit_seconds": results.get("fit_seconds"),
        "epochs": results.get("epochs"),
        "clock": "from the start of the train.py process to its exit, everything included",
    }
    if clock is not None and imports is not None:
        result["budget"] = {"from": str(args.budget_from), **budget(wall_s, clock, imports)}
    result = save(result, args.out)
    if returncode:
        raise SystemExit(returncode)
    return result


if __name__ == "__main__":
    main()
