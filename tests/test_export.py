"""export.py: the tiny trained run's checkpoint as ONNX and torch.export models that give the
checkpoint's fp32 probabilities (TTA inside), with a sidecar predict.py checks. In process."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_lightning import DISPLAY_NAMES
from cifar_lightning import export as export_module
from cifar_lightning.data import DeviceBatches
from cifar_lightning.errors import UserError
from cifar_lightning.export import ImageClassifier, export, sha256
from cifar_lightning.pipeline import load_trained
from tests.conftest import task_config
from tests.test_predict import in_process_cli, rows, run_predict, variant

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    trust = ["trust_model=true"] if fmt == "torch_export" else []  # we wrote this .pt2
    assert run_predict([f"model_path={exported[fmt]}", test, *trust], tmp_path / fmt) == 0
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


def copy_model(model: Path, folder: Path, name: str, **sidecar) -> Path:
    """`model` and its sidecar as `folder/name` (+ .json), the sidecar's fields changed by
    `sidecar` (None: the field removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / name
    shutil.copy(model, copy)
    meta = json.loads(model.with_name(model.name + ".json").read_text())
    meta.update(sidecar)
    meta = {key: value for key, value in meta.items() if value is not None}
    copy.with_name(name + ".json").write_text(json.dumps(meta))
    return copy


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("torch.export.load ran: it unpickles the file")

    monkeypatch.setattr(torch.export, "load", load)


def test_a_pt2_is_loaded_only_with_trust_model(
    exported, folder_root: Path, tmp_path: Path, capsys, monkeypatch, no_unpickling
):
    test = f"input={folder_root / 'test' / 'cat'}"
    code, err = in_process_cli([f"model_path={exported['torch_export']}", test],
                               tmp_path / "untrusted", capsys, monkeypatch)  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "trust_model=true" in err


def test_the_file_suffix_not_the_sidecar_chooses_the_loader(
    exported, folder_root: Path, tmp_path: Path, no_unpickling
):
    """A .pt2 named model.onnx, its sidecar saying torch_export (and its SHA-256 right): not
    unpickled; nor is an ONNX file named model.pt2 whose sidecar says onnx, trusted or not."""
    test = f"input={folder_root / 'test' / 'cat'}"
    disguised = copy_model(exported["torch_export"], tmp_path / "disguised", "model.onnx")
    for trust in ([], ["trust_model=true"]):
        with pytest.raises(UserError, match="says format 'torch_export'.*model.onnx"):
            run_predict([f"model_path={disguised}", test, *trust], tmp_path / f"a{len(trust)}")
    onnx_pt2 = copy_model(exported["onnx"], tmp_path / "renamed", "model.pt2",
                          sha256=sha256(exported["onnx"]))  # fmt: skip
    with pytest.raises(UserError, match="says format 'onnx'"):
        run_predict([f"model_path={onnx_pt2}", test, "trust_model=true"], tmp_path / "b")
    other = copy_model(exported["onnx"], tmp_path / "other", "model.bin")
    with pytest.raises(UserError, match=r"neither \.onnx nor \.pt2"):
        run_predict([f"model_path={other}", test], tmp_path / "c")


@pytest.mark.parametrize(
    ("change", "message"),
    [({"class_names": None}, "class_names is missing"),
     ({"class_names": list(range(10))}, "class_names is not a list of names"),
     ({"class_names": ["cat"] * 10}, "class_names has a name twice"),
     ({"class_names": list(DISPLAY_NAMES[:9])}, r"output.shape \['N', 10\] .*9 class_names"),
     ({"class_names": [*DISPLAY_NAMES, "fox"], "output": {"shape": ["N", 11]}},
      r"gives 10 probabilities per image.*11 class_names"),
     ({"tta_level": "two"}, "tta_level"),
     ({"eval_batch_size": 0}, "eval_batch_size")],
)  # fmt: skip
def test_a_sidecar_with_bad_fields_is_one_error(
    exported, folder_root: Path, tmp_path: Path, capsys, monkeypatch, change, message
):
    model = copy_model(exported["onnx"], tmp_path, "model.onnx", **change)
    test = f"input={folder_root / 'test' / 'cat'}"
    code, err = in_process_cli([f"model_path={model}", test], tmp_path / "out", capsys,
                               monkeypatch)  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert re.search(message, err), err


def test_folder_labels_are_the_model_class_names(exported, folder_root: Path, tmp_path: Path):
    """Folders are matched against the model's own class names (CIFAR-10's other spelling only
    for a model of CIFAR-10's classes), not against CIFAR-10's and indexed into the model's."""
    photos = tmp_path / "photos"
    for folder, source in (("cat", "cat"), ("automobile", "automobile"), ("c3", "cat")):
        (photos / folder).mkdir(parents=True)
        shutil.copy(next((folder_root / "test" / source).iterdir()), photos / folder / "x.png")
    for names, want in (
        (list(reversed(DISPLAY_NAMES)), {"cat": "cat", "automobile": "car", "c3": ""}),
        ([f"c{k}" for k in range(10)], {"cat": "", "automobile": "", "c3": "c3"}),
    ):
        model = copy_model(exported["onnx"], tmp_path / names[0], "model.onnx", class_names=names)
        assert run_predict([f"model_path={model}", f"input={photos}"], tmp_path / names[1]) == 0
        got = {Path(r["file"]).parent.name: r["label"] for r in rows(tmp_path / names[1])}
        assert got == want


def test_a_failed_check_is_one_error_and_leaves_no_file(
    tta_ckpt: Path, tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.setattr(export_module, "CHECK_TOLERANCE", -1.0)  # no file passes it
    out = tmp_path / "out"
    code, err = in_process_cli([f"ckpt_path={tta_ckpt}", "format=torch_export"], out, capsys,
                               monkeypatch, config="export", task=export)  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "differ" in err
    assert [p.name for p in out.iterdir() if "model" in p.name] == []


def test_an_exporter_failing_part_way_leaves_no_file(tta_ckpt: Path, tmp_path: Path, monkeypatch):
    def save(ep, f, **kwargs):
        Path(f).write_bytes(b"the first bytes of a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch.export, "save", save)
    out = tmp_path / "out"
    with task_config("export", [f"ckpt_path={tta_ckpt}", "format=torch_export"], out) as cfg:
        with pytest.raises(OSError, match="No space left"):
            export(cfg)
    assert [p.name for p in out.iterdir() if "model" in p.name] == []
