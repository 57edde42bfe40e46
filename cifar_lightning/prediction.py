"""predict.py: a trained model's class probabilities for images of any size and mode.

The model is a checkpoint train.py wrote (ckpt_path, checked as eval.py checks it) or a model
export.py wrote (model_path, checked against its sidecar). A checkpoint runs as its run tested:
through Trainer.predict with the run's precision on one device, its normalisation (the same
DeviceBatches or per-image transform as its test loader), its batch size (data.eval_batch_size)
and its TTA unless tta=false; `precision=` and `batch_size=` may override.

Files are found and read as images.py says (8-bit RGB, 32x32). In the run folder:
predictions.csv, one row per file (COLUMNS; `label` filled when the file's folder is named
after one of the model's classes, images.class_lookup), probabilities.npy (each row's class
probabilities, NaN where the file was not predicted) and with figure=true contact_sheet.png.
Returns the exit status: 0, or EXIT_BAD_IMAGES when some files could not be read
(on_bad_image=skip: 0 all the same). An exported .pt2 is loaded only with trust_model=true
(export.load_exported)."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from cifar_lightning import contact_sheet, images
from cifar_lightning.config_checks import check_switches, switch_error
from cifar_lightning.data.augment import eval_transform
from cifar_lightning.data.device_loader import DeviceBatches
from cifar_lightning.data.loaders import ImageTensorDataset
from cifar_lightning.errors import EXIT_BAD_IMAGES, UserError
from cifar_lightning.export import load_exported
from cifar_lightning.fileio import atomic_write
from cifar_lightning.pipeline import load_trained, make_trainer, output_dir

log = logging.getLogger("cifar_lightning")

COLUMNS = ("file", "pred", "prob", "top3", "status", "reason", "label")
ON_BAD_IMAGE = ("report", "skip")
TABLE_MAX = 20  # inputs up to this many are also printed as a table
PROGRESS_MIN = 200  # files from which reading shows a progress bar

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 (N, 32, 32, 3) -> (N, classes)


@dataclass
class Row:
    file: str
    label: int | None
    status: str = images.OK
    reason: str = ""


def _checkpoint_model(cfg: DictConfig, n: int) -> tuple[Predict, list[str], str]:
    """The checkpoint's predict function as its run's test ran (module doc), class names and a
    description for the log."""
    _, run_cfg, datamodule, module = load_trained(cfg.ckpt_path)
    module.predict_probabilities = True
    module.predict_tta_level = int(module.tta_level) if cfg.tta else 0
    trainer_cfg = run_cfg.trainer
    # One device: predictions come back in input order, none counted twice.
    trainer_cfg.update(devices=1, num_nodes=1, strategy="auto", fast_dev_run=False,
                       limit_predict_batches=1.0)  # fmt: skip
    if cfg.trainer.accelerator is not None:
        trainer_cfg.accelerator = cfg.trainer.accelerator
    if cfg.precision is not None:
        trainer_cfg.precision = cfg.precision
    batch_size = int(cfg.batch_size or datamodule.eval_batch_size)
    # Lightning's bar for more than one batch, unless the run turned it off.
    shown = bool(trainer_cfg.get("enable_progress_bar", True))
    trainer_cfg.enable_progress_bar = shown and n > batch_size
    trainer = make_trainer(trainer_cfg, None, [], output_dir())
    preset = datamodule.augment

    def predict(x: np.ndarray) -> np.ndarray:
        # As the data set holds images: uint8 (N, 3, 32, 32); the labels are not used.
        chw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        y = torch.zeros(len(chw), dtype=torch.int64)
        if datamodule.loader == "device":
            device = trainer.strategy.root_device
            loader = DeviceBatches(chw.to(device), y.to(device), batch_size, shuffle=False,
                                   mean=preset.mean, std=preset.std)  # fmt: skip
        else:
            dataset = ImageTensorDataset(chw, y, eval_transform(preset))
            loader = DataLoader(dataset, batch_size=batch_size)
        out = trainer.predict(module, dataloaders=loader, return_predictions=True)
        return torch.cat(out).cpu().numpy()

    about = (f"checkpoint {cfg.ckpt_path} (TTA level {module.predict_tta_level}, precision "
             f"{trainer.precision}, batch size {batch_size})")  # fmt: skip
    return predict, list(module.class_names), about


def _exported_model(cfg: DictConfig, _n: int) -> tuple[Predict, list[str], str]:
    run, meta = load_exported(cfg.model_path, trust=cfg.trust_model)  # the sidecar is checked
    if not cfg.tta and meta["tta_level"]:
        raise UserError(f"{cfg.model_path} has TTA level {meta['tta_level']} built in: "
                        f"tta=false cannot remove it. Export with tta=false for a model "
                        f"without.")  # fmt: skip
    if cfg.precision is not None and str(cfg.precision) not in ("32", "32-true"):
        raise UserError(f"precision={cfg.precision}: an exported model computes in fp32 only.")
    batch_size = int(cfg.batch_size or meta["eval_batch_size"])

    def predict(x: np.ndarray) -> np.ndarray:
        starts = range(0, len(x), batch_size)
        bar = tqdm(starts, desc="predicting", unit="batch", disable=len(starts) < 2)
        return np.concatenate([run(np.ascontiguousarray(x[i : i + batch_size])) for i in bar])

    about = (f"{meta['format']} model {cfg.model_path} (TTA level {meta['tta_level']}, fp32, "
             f"batch size {batch_size})")  # fmt: skip
    return predict, list(meta["class_names"]), about


def _check_options(cfg: DictConfig) -> None:
    if (cfg.ckpt_path is None) == (cfg.model_path is None):
        raise UserError("pass one of ckpt_path=RUN/checkpoints/last.ckpt (a checkpoint train.py "
                        "wrote) and model_path=FILE (a model export.py wrote).")  # fmt: skip
    if cfg.resize not in images.RESIZE:
        raise UserError(f"resize={cfg.resize!r} is not a method: use one of "
                        f"{', '.join(images.RESIZE)}.")  # fmt: skip
    if cfg.on_bad_image not in ON_BAD_IMAGE:
        raise UserError(f"on_bad_image={cfg.on_bad_image!r}: use report (exit status 3 when a "
                        f"file cannot be read) or skip (exit status 0).")  # fmt: skip
    if cfg.batch_size is not None and (not isinstance(cfg.batch_size, int) or cfg.batch_size < 1):
        raise UserError(f"batch_size={cfg.batch_size!r} must be a whole number >= 1, or null.")
    if not isinstance(cfg.trust_model, bool):
        raise switch_error("trust_model", cfg.trust_model, " (true unpickles a .pt2 model_path: "
                           "only for files you made or trust)")  # fmt: skip
    check_switches(cfg, ("tta", "figure"))


def _read(
    files: Sequence[Path], resize: str, background: tuple, class_names: Sequence[str]
) -> tuple[list[Row], np.ndarray]:
    """A row per file (labelled by the model's class names), and the images that could be read,
    in the same order."""
    lookup = images.class_lookup(class_names)
    rows, arrays = [], []
    for path in tqdm(files, desc="reading", unit="file", disable=len(files) < PROGRESS_MIN):
        row = Row(str(path), images.label_of(path, lookup))
        try:
            arrays.append(images.read_image(path, resize, background))
        except images.BadImage as bad:
            row.status, row.reason = bad.status, bad.reason
        rows.append(row)
    empty = np.zeros((0, images.SIZE, images.SIZE, 3), dtype=np.uint8)
    return rows, np.stack(arrays) if arrays else empty


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _top3(p: np.ndarray, names: Sequence[str]) -> str:
    return " ".join(f"{names[k]}:{p[k]:.4f}" for k in np.argsort(-p, kind="stable")[:3])


def _fields(row: Row, p: np.ndarray, names: Sequence[str]) -> dict[str, str]:
    ok = row.status == images.OK
    return {
        "file": row.file,
        "pred": names[int(p.argmax())] if ok else "",
        "prob": f"{p.max():.4f}" if ok else "",
        "top3": _top3(p, names) if ok else "",
        "status": row.status,
        "reason": row.reason,
        "label": names[row.label] if row.label is not None else "",
    }


def _write_csv(path: Path, table: list[dict[str, str]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _print_table(table: list[dict[str, str]]) -> None:
    """The rows as aligned columns, files relative to the folder they share; a file that could
    not be read shows its status and reason in place of the prediction."""
    cols = ["file", "pred", "prob", "top3"] + (["label"] if any(r["label"] for r in table) else [])
    try:
        common = os.path.commonpath([os.path.dirname(r["file"]) for r in table])
    except ValueError:  # absolute and relative paths mixed
        common = ""
    files = [os.path.relpath(r["file"], common) if common else r["file"] for r in table]
    cells = [[f, *(r[c] for c in cols[1:])] for f, r in zip(files, table, strict=True)]
    widths = [max(len(col), *map(len, files)) if i == 0 else len(col) for i, col in enumerate(cols)]
    for line, r in zip(cells, table, strict=True):
        if r["status"] == images.OK:  # the reasons of the others do not widen the columns
            widths = [max(w, len(v)) for w, v in zip(widths, line, strict=True)]
        else:
            line[1:] = [f"{r['status']}: {r['reason']}"]
    if common:
        print(f"files in {common}{os.sep}")
    for line in [cols, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=False)).rstrip())


def predict(cfg: DictConfig) -> int:
    """predict.py's task (module doc); returns the exit status."""
    _check_options(cfg)
    background = images.parse_background(cfg.background)
    # input=a.jpg is a string, input='[a.jpg,b.png]' a list (and input=2024 a number).
    names = OmegaConf.to_container(cfg.input) if isinstance(cfg.input, ListConfig) else cfg.input
    found = images.find_inputs(names if isinstance(names, list) else str(names))
    make = _checkpoint_model if cfg.ckpt_path is not None else _exported_model
    run, class_names, about = make(cfg, len(found.files))
    rows, x = _read(found.files, cfg.resize, background, class_names)
    log.info("predicting %d images with %s", len(x), about)
    probs = run(x) if len(x) else np.zeros((0, len(class_names)), dtype=np.float32)

    out = output_dir()
    full = np.full((len(rows), len(class_names)), np.nan, dtype=np.float32)
    ok = [i for i, row in enumerate(rows) if row.status == images.OK]
    full[ok] = probs
    table = [_fields(row, p, class_names) for row, p in zip(rows, full, strict=True)]
    _write_csv(out / "predictions.csv", table)
    atomic_write(out / "probabilities.npy", lambda f: np.save(f, full))
    if len(rows) <= TABLE_MAX:
        _print_table(table)

    labelled = [(int(p.argmax()), rows[i].label) for i, p in zip(ok, probs, strict=True)
                if rows[i].label is not None]  # fmt: skip
    if labelled:
        right = sum(pred == label for pred, label in labelled)
        log.info("accuracy: %.2f %% (%d of %d images in folders named after a class)",
                 100 * right / len(labelled), right, len(labelled))  # fmt: skip
    bad = {s: sum(r.status == s for r in rows) for s in (images.UNREADABLE,
           images.NOT_AN_IMAGE, images.TOO_LARGE)}  # fmt: skip
    summary = f"predicted {len(ok)} of {len(rows)} files"
    if any(bad.values()):
        summary += f" ({', '.join(f'{n} {status}' for status, n in bad.items() if n)})"
    if found.ignored:
        summary += (
            f"; {_count(found.ignored, 'other file')} in the folders left out (not named as images)"
        )
    if found.revisits:
        summary += (
            f"; {_count(len(found.revisits), 'folder')} reached again through links, walked once"
        )
    log.info("%s: %s", summary, out / "predictions.csv")
    if cfg.figure and len(x):
        sheet = out / "contact_sheet.png"
        files, labels = [rows[i].file for i in ok], [rows[i].label for i in ok]
        shown = contact_sheet.draw(x, files, probs, class_names, labels, sheet)
        log.info("contact sheet of %d images: %s", shown, sheet)
    if any(bad.values()) and cfg.on_bad_image == "report":
        return EXIT_BAD_IMAGES
    return 0
