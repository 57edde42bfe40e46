"""Wall time of a whole `python train.py ...`: from the process's start to its exit, as a user
waits for it (interpreter start-up, imports, Hydra, data, training, test, after-fit figures,
results.json), with the test accuracy its results.json reports.

The arguments after `--` go to train.py unchanged, except that the run folder is a temporary
one unless they set hydra.run.dir. train.py's output shows as it runs.

    python benchmarks/wall_time.py -- experiment=fast_cpu data.root=data/cifar10-jpeg
    python benchmarks/wall_time.py --threads 2 --out benchmarks/results/wall_time.json -- \\
        experiment=fast_cpu data.root=data/cifar10-jpeg
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(__doc__, "benchmarks/results/wall_time.json", experiment=False)
    p.usage = "wall_time.py [--threads N] [--out FILE] -- TRAIN_PY_ARGS..."
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
    result = save(result, args.out)
    if returncode:
        raise SystemExit(returncode)
    return result


if __name__ == "__main__":
    main()
