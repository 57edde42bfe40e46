"""The done-when checks of predict.py and export.py on a trained checkpoint and a test folder:
predict.py's accuracy line beside eval.py's (the run's TTA, precision, batch size; the same
threads), and the ONNX and torch.export models' probabilities against the checkpoint's in fp32
(argmax identical count, largest probability difference) and in the run's own precision
(disagreements counted).

    python benchmarks/predict_export_check.py \\
        --ckpt outputs/runs/<run>/checkpoints/last.ckpt --data data/cifar10-jpeg [--threads 2]

Every step is the command a user would type, run as a subprocess; their run folders go under
--out-dir, with summary.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, env: dict[str, str], log: Path) -> str:
    """`python script args...` from the repository root; its console, which also goes to log."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    out = proc.stdout + proc.stderr
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(out)
    print(f"  {script} {' '.join(args)}: exit {proc.returncode}, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"{script} failed (exit {proc.returncode}); its console: {log}\n{out[-3000:]}")
    return out


def line(out: str, pattern: str) -> str:
    """The message of the last console line matching `pattern` (Hydra's log prefix left out)."""
    found = [m.split(" - ", 1)[-1] for m in out.splitlines() if re.search(pattern, m)]
    return found[-1] if found else f"(no line matching {pattern!r})"


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    same = int((a.argmax(1) == b.argmax(1)).sum())
    return {"images": len(a), "argmax_identical": same, "disagreements": len(a) - same,
            "max_prob_diff": float(np.abs(a - b).max())}  # fmt: skip


def main() -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint train.py wrote")
    p.add_argument("--data", default="data/cifar10-jpeg", help="holds test/<class>/ images")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every step (default: unset)")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    p.add_argument("--out-dir", default=f"outputs/predict_export_check/{stamp}")
    args = p.parse_args()
    out = (REPO / args.out_dir).resolve()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    data = Path(args.data).resolve()
    ckpt, test = f"ckpt_path={Path(args.ckpt).resolve()}", f"input={data / 'test'}"

    def step(name: str, script: str, *extra: str) -> str:
        return run(script, *extra, f"hydra.run.dir={out / name}", env=env, log=out / f"{name}.txt")

    print(f"checks of {args.ckpt} on {args.data}/test, in {out}")
    evaluated = step("eval", "eval.py", ckpt, f"data.root={data}")
    predicted = step("predict_run", "predict.py", ckpt, test)  # the run's precision and TTA
    # fp32 on the CPU, where the exported models run (a GPU's fp32 convolutions may be TF32).
    step("predict_fp32", "predict.py", ckpt, test, "precision=32-true", "trainer.accelerator=cpu")
    step("export_onnx", "export.py", ckpt, "format=onnx")
    step("export_torch", "export.py", ckpt, "format=torch_export")
    step("predict_onnx", "predict.py", f"model_path={out / 'export_onnx' / 'model.onnx'}", test)
    step("predict_torch", "predict.py", f"model_path={out / 'export_torch' / 'model.pt2'}", test)

    probs = {n: np.load(out / f"predict_{n}" / "probabilities.npy")
             for n in ("run", "fp32", "onnx", "torch")}  # fmt: skip
    summary = {
        "checkpoint": args.ckpt,
        "eval_line": line(evaluated, r"Total Accuracy:"),
        "predict_line": line(predicted, r"\] - accuracy:"),
        "fp32_vs_run_precision": compare(probs["fp32"], probs["run"]),
        **{f"{n}_vs_fp32": compare(probs[n], probs["fp32"]) for n in ("onnx", "torch")},
        **{f"{n}_vs_run_precision": compare(probs[n], probs["run"]) for n in ("onnx", "torch")},
    }
    print(f"eval.py:    {summary['eval_line']}")
    print(f"predict.py: {summary['predict_line']}")
    for key, c in summary.items():
        if isinstance(c, dict):
            print(f"{key:<26} argmax identical {c['argmax_identical']}/{c['images']} "
                  f"({c['disagreements']} disagree), largest probability difference "
                  f"{c['max_prob_diff']:.2g}")  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
