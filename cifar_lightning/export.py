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
                       the file, which can run any code: load only .pt2 files you made or trust
                       (ONNX holds no code).

The file is written under a temporary name in the run folder, checked (the file's probabilities
against the eager model's on random images), and only then renamed to model.onnx / model.pt2:
a failed check or exporter leaves no model file behind. Then, written atomically beside it,
`<model file>.json`: class names, input and output spec, normalisation, TTA level, the
checkpoint's provenance (its SHA-256, epoch, and the run's results.json provenance when it is
beside the checkpoint's folder), the model file's SHA-256 and the check's result.

load_exported (predict.py model_path=FILE) takes the format from the file's suffix, never from
the sidecar (which is refused when it disagrees), loads a .pt2 only when trusted
(trust_model=true), refuses a sidecar with a missing or malformed field and a file whose
SHA-256 differs from the sidecar's (changed since export: a check against accidents, not
against whoever wrote both), and runs the model once to check it gives one probability per
class name.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cifar_lightning import provenance
from cifar_lightning.config_checks import check_switches
from cifar_lightning.errors import UserError
from cifar_lightning.fileio import write_json
from cifar_lightning.images import SIZE
from cifar_lightning.pipeline import load_trained, output_dir
from cifar_lightning.tta import tta_logits

log = logging.getLogger("cifar_lightning")

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}
FORMAT_OF = {suffix: fmt for fmt, suffix in FORMATS.items()}  # how a model file is loaded
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

    Normalised with the float32 constants data.photometric.normalize uses (x * (1/255/std)
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
        raise UserError(f"the exported model's probabilities differ from the checkpoint's by "
                        f"{diff:.3g} (shape {got.shape}, tolerance {CHECK_TOLERANCE:g}) on random "
                        f"images: no model file is kept. Try tta=false or the other "
                        f"format.")  # fmt: skip
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
    check_switches(cfg, ("tta",))
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
    # Written and checked under a hidden name with the same suffix (torch.export.save needs .pt2)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        _write_model(model, cfg.format, tmp)
        check = _check(model, _runner(cfg.format, tmp), len(module.class_names))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())  # on disk before its name says it is complete
        digest = sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sidecar = {
        "format": cfg.format,
        "model_file": path.name,
        "sha256": digest,
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
    try:
        write_json(sidecar_path(path), sidecar)
    except BaseException:
        path.unlink(missing_ok=True)  # a model file without its sidecar is no export
        raise
    log.info("exported %s (TTA level %d, fp32; the run tested in %s): %s", cfg.format,
             tta_level, sidecar["run_precision"], path)  # fmt: skip
    log.info("checked on %d random images: largest probability difference %.2g from the "
             "checkpoint; sidecar %s", CHECK_IMAGES, check["max_prob_diff"],
             sidecar_path(path))  # fmt: skip
    return path


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _sidecar_problems(meta: Any) -> list[str]:
    """What is missing or malformed in a sidecar, of the fields predict.py relies on."""
    if not isinstance(meta, dict):
        return ["it is not a JSON object"]
    problems = []
    if meta.get("format") not in FORMATS:
        problems.append(f"format {meta.get('format')!r} is not one of {', '.join(FORMATS)}")
    if not (isinstance(meta.get("sha256"), str) and re.fullmatch("[0-9a-f]{64}", meta["sha256"])):
        problems.append("sha256 is not a SHA-256 (64 hex digits)")
    names = meta.get("class_names")
    if names is None:
        problems.append("class_names is missing")
    elif not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        problems.append("class_names is not a list of names (strings)")
    elif len(set(names)) != len(names):
        problems.append("class_names has a name twice")
    else:
        output = meta.get("output")
        shape = output.get("shape") if isinstance(output, dict) else None
        if shape != ["N", len(names)]:
            problems.append(f"output.shape {shape!r} is not ['N', {len(names)}] (one probability "
                            f"for each of the {len(names)} class_names)")  # fmt: skip
    if not _whole(meta.get("tta_level"), 0):
        problems.append(f"tta_level {meta.get('tta_level')!r} is not a whole number >= 0")
    if not _whole(meta.get("eval_batch_size"), 1):
        problems.append(f"eval_batch_size {meta.get('eval_batch_size')!r} is not a whole "
                        f"number >= 1")  # fmt: skip
    return problems


def _load_checked(fmt: str, path: Path, classes: int) -> Runner:
    """The file's runner, after running it on two images: one UserError if it cannot be
    loaded, does not run on the input spec's images or gives other than `classes` values."""
    x = np.zeros((2, SIZE, SIZE, 3), dtype=np.uint8)
    try:
        run = _runner(fmt, path)
        got = np.asarray(run(x))
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's and torch's errors vary
        raise UserError(f"model_path: {path} cannot be loaded as {fmt} or does not run on uint8 "
                        f"images (N, 32, 32, 3) ({type(err).__name__}: {err}). Export the "
                        f"model again.") from err  # fmt: skip
    if got.shape != (2, classes):
        width = got.shape[1] if got.ndim == 2 else f"shape {got.shape[1:]} of"
        raise UserError(f"model_path: {path} gives {width} probabilities per image, where its "
                        f"sidecar has {classes} class_names. Export the model "
                        f"again.")  # fmt: skip
    return run


def load_exported(path: str | Path, trust: bool = False) -> tuple[Runner, dict[str, Any]]:
    """A model export.py wrote, after checking it against its sidecar (module doc): (its
    runner, the sidecar). ONNX runs in ONNX Runtime, .pt2 (only with `trust`: it is unpickled)
    through torch.export.load, both on the CPU. The format is the file's suffix's."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise UserError(f"model_path: {path} does not exist. Pass a file export.py wrote.")
    fmt = FORMAT_OF.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"model_path: {path} is neither .onnx nor .pt2: pass a model file "
                        f"export.py wrote (its suffix says how it is loaded).")  # fmt: skip
    if fmt == "torch_export" and not trust:
        raise UserError(f"model_path: {path} is a .pt2, which is unpickled when loaded: it can "
                        f"run any code it holds. Pass trust_model=true only for a file you made "
                        f"or trust, or use a model.onnx (export.py format=onnx).")  # fmt: skip
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"model_path: cannot read the sidecar {side} ({err}); export.py writes "
                        f"it beside the model. Export the model again.") from err  # fmt: skip
    problems = _sidecar_problems(meta)
    if problems:
        raise UserError(f"model_path: {side} is not a sidecar export.py wrote: "
                        f"{'; '.join(problems)}. Export the model again.")  # fmt: skip
    if meta["format"] != fmt:
        raise UserError(f"model_path: {side.name} says format {meta['format']!r}, but "
                        f"{path.name} is loaded as {fmt} (its suffix): the sidecar is not this "
                        f"file's. Pass a model file export.py wrote, by its own name.")  # fmt: skip
    if sha256(path) != meta["sha256"]:
        raise UserError(f"model_path: {path} is not the file its sidecar {side.name} describes "
                        f"(SHA-256 differs): it was changed after export.py wrote it. Export "
                        f"the model again.")  # fmt: skip
    require(fmt, ["onnxruntime"] if fmt == "onnx" else [])
    return _load_checked(fmt, path, len(meta["class_names"])), meta
