"""export.py: the tiny trained run's checkpoint as ONNX and torch.export models that give the
checkpoint's fp32 probabilities (TTA inside), with a sidecar predict.py checks. In process."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_lightning import export as export_module
from cifar_lightning.data import DeviceBatches
from cifar_lightning.errors import UserError
from cifar_lightning.export import ImageClassifier, export, sha256
from cifar_lightning.pipeline import load_trained
from tests.conftest import task_config
from tests.test_predict import run_predict, variant


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield torch.set_num_threads(1)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tta_ckpt(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's best checkpoint as a run with airbench's TTA (level 2) would write it."""
    return variant(trained_run, tmp_path_factory.mktemp("tta") / "tta.ckpt",
                   **{"module.tta_level": 2})  # fmt: skip


@pytest.fixture(scope="module")
def exported(tta_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX with the run's TTA, torch.export without (tta=false)."""
    out = tmp_path_factory.mktemp("export")
    models = {}
    for fmt, tta in (("onnx", "true"), ("torch_export", "false")):
        overrides = [f"ckpt_path={tta_ckpt}", f"format={fmt}", f"tta={tta}"]
        with task_config("export", overrides, out / fmt) as cfg:
            models[fmt] = export(cfg)
    return models


def test_the_wrapper_normalises_and_averages_as_the_test_does(tta_ckpt: Path):
    _, _, datamodule, module = load_trained(tta_ckpt)
    preset = datamodule.augment
    model = ImageClassifier(module.net, preset.mean, preset.std, 2).eval()
    module.eval()
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    # The test's own inputs: data.loader=device's evaluation batches of the same images.
    chw, y = x.permute(0, 3, 1, 2).contiguous(), torch.zeros(5, dtype=torch.int64)
    [(inputs, _)] = DeviceBatches(chw, y, 5, shuffle=False, mean=preset.mean, std=preset.std)
    with torch.no_grad():
        expected = module.eval_logits(inputs, 2).softmax(1)
        got = model(x)
    assert got.dtype == torch.float32 and got.shape == (5, 10)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(("fmt", "tta"), [("onnx", "true"), ("torch_export", "false")])
def test_exported_models_give_the_checkpoint_fp32_probabilities(
    exported: dict[str, Path], tta_ckpt: Path, folder_root: Path, tmp_path: Path, fmt, tta
):
    test = f"input={folder_root / 'test'}"
    # On the CPU, as the exported models run: fp32 there has no TF32 convolutions.
    ref = [
        f"ckpt_path={tta_ckpt}",
        test,
        "precision=32-true",
        f"tta={tta}",
        "trainer.accelerator=cpu",
    ]
    assert run_predict(ref, tmp_path / "ckpt") == 0
    assert run_predict([f"model_path={exported[fmt]}", test], tmp_path / fmt) == 0
    want, got = (np.load(tmp_path / d / "probabilities.npy") for d in ("ckpt", fmt))
    assert got.shape == want.shape == (100, 10)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 1e-5
    files_and_preds = [[line.split(",")[:2] for line in (tmp_path / d / "predictions.csv").open()]
                       for d in ("ckpt", fmt)]  # fmt: skip
    assert files_and_preds[0] == files_and_preds[1]


def test_the_sidecar_describes_the_model_and_its_checkpoint(exported, tta_ckpt: Path):
    onnx_side = json.loads(exported["onnx"].with_name("model.onnx.json").read_text())
    pt2_side = json.loads(exported["torch_export"].with_name("model.pt2.json").read_text())
    assert onnx_side["sha256"] == sha256(exported["onnx"]) and onnx_side["format"] == "onnx"
    assert onnx_side["class_names"][:2] == ["plane", "car"] and len(onnx_side["class_names"]) == 10
    assert onnx_side["input"]["dtype"] == "uint8" and onnx_side["input"]["shape"] == [
        "N", 32, 32, 3]  # fmt: skip
    assert onnx_side["output"] == {"name": "probabilities", "dtype": "float32", "shape": ["N", 10]}
    assert (onnx_side["tta_level"], pt2_side["tta_level"]) == (2, 0)
    assert onnx_side["checkpoint"]["sha256"] == sha256(tta_ckpt)
    assert onnx_side["checkpoint"]["run"] is None  # the variant lives outside its run folder
    assert onnx_side["exported"]["check"]["max_prob_diff"] < 1e-4
    assert set(onnx_side["exported"]["versions"]) == {"torch", "onnx", "onnxscript", "onnxruntime"}
    import onnx

    graph = onnx.load(str(exported["onnx"])).graph
    assert [i.name for i in graph.input] == ["images"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_the_run_provenance_goes_into_the_sidecar(trained_run: Path, tmp_path: Path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt_path={ckpt}", "format=torch_export"]
    with task_config("export", overrides, tmp_path) as cfg:
        path = export(cfg)
    run = json.loads(path.with_name("model.pt2.json").read_text())["checkpoint"]["run"]
    results = json.loads((trained_run / "results.json").read_text())
    assert run["provenance"] == results["provenance"] and run["test_acc"] == results["test_acc"]


def test_a_changed_or_unexplained_model_file_is_refused(
    exported, folder_root: Path, tmp_path: Path
):
    copy = tmp_path / "model.onnx"
    shutil.copy(exported["onnx"], copy)
    test = f"input={folder_root / 'test' / 'cat'}"
    with pytest.raises(UserError, match="cannot read the sidecar"):
        run_predict([f"model_path={copy}", test], tmp_path / "no_sidecar")
    shutil.copy(exported["onnx"].with_name("model.onnx.json"), tmp_path / "model.onnx.json")
    with copy.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="SHA-256 differs"):
        run_predict([f"model_path={copy}", test], tmp_path / "changed")
    with pytest.raises(UserError, match="TTA level 2 built in"):
        run_predict([f"model_path={exported['onnx']}", test, "tta=false"], tmp_path / "tta")


def test_export_names_the_extra_when_a_package_is_missing(monkeypatch, tmp_path: Path):
    real = importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == "onnxscript" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=r"needs onnxscript.*pip install -e '\.\[export\]'"):
        export_module.require("onnx")
    with task_config("export", ["ckpt_path=x.ckpt", "format=tflite"], tmp_path) as cfg:
        with pytest.raises(UserError, match="format=onnx or format=torch_export"):
            export(cfg)
