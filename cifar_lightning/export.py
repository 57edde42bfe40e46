"""export.py: a trained checkpoint as one model file that runs without this project's code, and
predict.py's way back in (load_exported).

The model (ImageClassifier) takes what an image library hands over: uint8 RGB pixels, channels
last, (N, 32, 32, 3), values 0..255, any N. It normalises inside, with the run's mean and std,
runs the run's test-time augmentation inside unless tta=false, and returns fp32 class
probabilities (N, classes). It always computes in fp32, whatever precision the run tested in.

  format=onnx          model.onnx, by torch's exporter (torch.onnx.export, dynamo=True, which
                       needs onnxscript), checked with onnx.checker; runs in ONNX Runtime.
  format=torch_export  model.pt2, by torch.export (torch.export.save; load with
                       torch.export.load(path).module()). torch.export.load unpickles parts of
                       the file: load only .pt2 files you made or trust (ONNX holds no code).

Beside it, `<model file>.json`: class names, input and output spec, normalisation, TTA level,
the checkpoint's provenance (its SHA-256, epoch, and the run's results.json provenance when it
is beside the checkpoint's folder), the model file's SHA-256 and the export's own check (the
file's probabilities against the eager model's on random images). predict.py model_path=FILE
refuses a model file whose hash differs from its sidecar's.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cifar_lightning import provenance
from cifar_lightning.errors import UserError
from cifar_lightning.fileio import write_json
from cifar_lightning.images import SIZE
from cifar_lightning.pipeline import load_trained, output_dir
from cifar_lightning.tta import tta_logits

log = logging.getLogger("cifar_lightning")

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# What each format needs beyond torch: ONNX Runtime for the export's own check and for predict.
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torch_export": ()}
INPUT_SPEC = {
    "name": INPUT_NAME,
    "dtype": "uint8",
    "shape": ["N", SIZE, SIZE, 3],
    "layout": "NHWC (channels last, as PIL and numpy hold images)",
    "channels": "RGB",
    "values": "0..255, not normalised: the model normalises",
}
OUTPUT_SPEC = {"name": OUTPUT_NAME, "dtype": "float32"}
CHECK_IMAGES = 64  # random images the written file is checked on against the eager model
CHECK_TOLERANCE = 1e-4  # largest probability difference accepted (fp32 kernels differ)

Runner = Callable[[np.ndarray], np.ndarray]  # uint8 (N, 32, 32, 3) -> fp32 (N, classes)


class ImageClassifier(nn.Module):
    """uint8 RGB images (N, 32, 32, 3), channels last, -> fp32 class probabilities (N, C).

    Normalised with the float32 constants data.batch_augment.normalize uses (x * (1/255/std)
    - mean/std), so its inputs match data.loader=device's to the bit; TTA is tta.tta_logits."""

    def __init__(
        self, net: nn.Module, mean: Sequence[float], std: Sequence[float], tta_level: int
    ) -> None:
        super().__init__()
        self.net = net
        self.tta_level = int(tta_level)
        scale = torch.tensor([1.0 / 255 / s for s in std], dtype=torch.float32)
        shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32)
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return tta_logits(self.net, x, self.tta_level).float().softmax(1)


def require(fmt: str, modules: Sequence[str] | None = None) -> None:
    """The packages `fmt` needs (or `modules` of them) are installed, else one UserError."""
    missing = [m for m in (NEEDS[fmt] if modules is None else modules)
               if importlib.util.find_spec(m) is None]  # fmt: skip
    if missing:
        raise UserError(f"format={fmt} needs {', '.join(missing)}, which is not installed. "
                        f"Install it with: pip install -e '.[export]'")  # fmt: skip


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def _write_model(model: ImageClassifier, fmt: str, path: Path) -> None:
    # Two example images, not one: torch.export specialises a dimension of size 1.
    example = (torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8),)
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    if fmt == "onnx":
        import onnx

        # onnxscript's optimiser logs each pass at INFO, which Hydra's console shows.
        for name in ("onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # One file (weights inside, not in a .data file beside it): the sidecar hashes one file.
        torch.onnx.export(model, example, str(path), dynamo=True, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes=dynamic,
                          external_data=False, verbose=False)  # fmt: skip
        onnx.checker.check_model(str(path), full_check=True)
    else:
        torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), path)


def _runner(fmt: str, path: Path) -> Runner:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    module = torch.export.load(path).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def _check(model: ImageClassifier, run: Runner, classes: int) -> dict[str, Any]:
    """The written file against the eager model on random images (seeded)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (CHECK_IMAGES, SIZE, SIZE, 3), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        expected = model(x).numpy()
    got = run(x.numpy())
    diff = float(np.abs(got - expected).max())
    if got.shape != (CHECK_IMAGES, classes) or not diff <= CHECK_TOLERANCE:
        raise RuntimeError(f"the exported model's probabilities differ from the checkpoint's "
                           f"by {diff:.3g} (shape {got.shape}) on random images")  # fmt: skip
    agree = int((got.argmax(1) == expected.argmax(1)).sum())
    return {"random_images": CHECK_IMAGES, "max_prob_diff": diff, "argmax_equal": agree}


def _versions(fmt: str) -> dict[str, str]:
    names = ["torch", *NEEDS[fmt]]
    return {name: importlib.metadata.version(name) for name in names}


def _run_record(ckpt_path: Path) -> dict[str, Any] | None:
    """What the run's results.json says about where its test came from, when the checkpoint is
    still in its run folder (RUN/checkpoints/*.ckpt)."""
    results = ckpt_path.resolve().parent.parent / "results.json"
    try:
        summary = json.loads(results.read_text())
    except (OSError, ValueError):
        return None
    keep = ("test_acc", "tta_level", "checkpoint", "seed", "epochs", "provenance")
    return {"results": str(results), **{k: summary.get(k) for k in keep}}


def export(cfg: DictConfig) -> Path:
    """export.py's task: the model file and its sidecar in the run folder; returns the file."""
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format!r} is not a format: use format=onnx or "
                        f"format=torch_export.")  # fmt: skip
    require(cfg.format)
    ckpt_path = Path(cfg.ckpt_path)
    ckpt, run_cfg, datamodule, module = load_trained(ckpt_path)
    tta_level = int(module.tta_level) if cfg.tta else 0
    preset = datamodule.augment
    model = ImageClassifier(module.net, preset.mean, preset.std, tta_level).eval()
    path = output_dir() / f"model{FORMATS[cfg.format]}"
    path.parent.mkdir(parents=True, exist_ok=True)  # Hydra makes it, a task run in-process not
    _write_model(model, cfg.format, path)
    check = _check(model, _runner(cfg.format, path), len(module.class_names))
    sidecar = {
        "format": cfg.format,
        "model_file": path.name,
        "sha256": sha256(path),
        "class_names": list(module.class_names),
        "input": INPUT_SPEC,
        "output": {**OUTPUT_SPEC, "shape": ["N", len(module.class_names)]},
        "normalisation": {"mean": list(preset.mean), "std": list(preset.std)},
        "tta_level": tta_level,
        "precision": "32-true",
        "run_precision": str(run_cfg.trainer.get("precision")),
        "eval_batch_size": int(datamodule.eval_batch_size),
        "checkpoint": {
            "path": str(ckpt_path),
            "sha256": sha256(ckpt_path),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "run": _run_record(ckpt_path),
        },
        "exported": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "code": dict(zip(("commit", "dirty"), provenance.code_at_start(), strict=True)),
            "versions": _versions(cfg.format),
            "check": check,
        },
    }
    write_json(sidecar_path(path), sidecar)
    log.info("exported %s (TTA level %d, fp32; the run tested in %s): %s", cfg.format,
             tta_level, sidecar["run_precision"], path)  # fmt: skip
    log.info("checked on %d random images: largest probability difference %.2g from the "
             "checkpoint; sidecar %s", CHECK_IMAGES, check["max_prob_diff"],
             sidecar_path(path))  # fmt: skip
    return path


def load_exported(path: str | Path) -> tuple[Runner, dict[str, Any]]:
    """A model export.py wrote, after checking it against its sidecar: (its runner, the
    sidecar). ONNX runs in ONNX Runtime, .pt2 through torch.export.load, both on the CPU."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise UserError(f"model_path: {path} does not exist. Pass a file export.py wrote.")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"model_path: cannot read the sidecar {side} ({err}); export.py writes "
                        f"it beside the model. Export the model again.") from err  # fmt: skip
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt not in FORMATS:
        raise UserError(f"{side} is not an export.py sidecar (format {fmt!r}).")
    if sha256(path) != meta.get("sha256"):
        raise UserError(f"model_path: {path} is not the file its sidecar {side.name} describes "
                        f"(SHA-256 differs): it was changed after export.py wrote it. Export "
                        f"the model again.")  # fmt: skip
    require(fmt, ["onnxruntime"] if fmt == "onnx" else [])
    return _runner(fmt, path), meta
