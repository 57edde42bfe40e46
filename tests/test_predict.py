"""predict.py: images of any size and mode read as documented, bad files reported row by row,
and the tiny trained run's checkpoint predicting as its own test ran (precision, TTA,
normalisation). In this process, but for one run of the script itself."""

from __future__ import annotations

import csv
import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning import DISPLAY_NAMES, cli, images
from cifar_lightning.errors import EXIT_BAD_IMAGES, UserError
from cifar_lightning.pipeline import load_trained, make_trainer
from cifar_lightning.prediction import COLUMNS, predict
from tests.conftest import run_cli, task_config

WHITE = (255, 255, 255)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models and images: one thread does them fastest, above all on a busy machine."""
    before = torch.get_num_threads()
    yield torch.set_num_threads(1)
    torch.set_num_threads(before)


def cifar_label(path: Path) -> int | None:
    """The label predict.py gives a file for the tiny run's model (CIFAR-10's classes)."""
    return images.label_of(path, images.class_lookup(DISPLAY_NAMES))


def read(path: Path, resize: str = "crop", background=WHITE) -> np.ndarray:
    return images.read_image(path, resize, background)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file of each kind predict.py cannot read -> the status its row must have."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image, whatever its name says\n")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    (folder / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "bomb.png").write_bytes(png_header(100_000, 100_000))
    return {"empty.png": "not_an_image", "notes.jpg": "not_an_image", "cut.png": "unreadable",
            "bomb.png": "too_large"}  # fmt: skip


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    got = read(tmp_path / "deep.png")
    assert got.shape == (32, 32, 3) and (got[..., 0] == got[..., 2]).all()
    expected = np.rint(ramp * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(got[..., 0], expected)  # where convert("RGB") makes most of it 255
    assert np.mean(got == 255) < 0.01


def test_transparency_is_composited_on_the_background(tmp_path: Path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere: opaque on the left, half on the right, none at the top
    rgba[:, :16, 3], rgba[:, 16:, 3], rgba[:4, :, 3] = 255, 128, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    got = read(tmp_path / "alpha.png")
    assert tuple(got[10, 0]) == RED and tuple(got[0, 0]) == WHITE
    assert tuple(got[10, 20]) == (255, 127, 127)  # half red on white
    assert tuple(read(tmp_path / "alpha.png", background=(0, 0, 0))[0, 0]) == (0, 0, 0)
    # A palette image with a transparent entry.
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([*BLUE, *GREEN] + [0] * 762)
    pal.paste(0, (0, 0, 32, 8))
    pal.save(tmp_path / "palette.png", transparency=0)
    got = read(tmp_path / "palette.png")
    assert tuple(got[0, 0]) == WHITE and tuple(got[20, 20]) == GREEN


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str):
    img = Image.new("RGB", (40, 24), (200, 200, 200)).convert(mode)
    path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    got = read(path)
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - got[..., :1]).max() <= 3  # still gray


def test_exif_orientation_is_applied(tmp_path: Path):
    # Stored 40 wide, 20 high: red left half, blue right; EXIF 6 says "turn 90 degrees
    # clockwise to view", which puts red on top, in a 20 x 40 picture.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20], stored[:, 20:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "turned.jpg") as img:
        upright = images.to_rgb(img, WHITE)
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[2, 10], np.asarray(upright)[-3, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_resize_methods_crop_stretch_and_pad(tmp_path: Path):
    thirds = np.zeros((32, 96, 3), dtype=np.uint8)
    thirds[:, :32], thirds[:, 32:64], thirds[:, 64:] = RED, GREEN, BLUE
    Image.fromarray(thirds).save(tmp_path / "wide.png")
    crop = read(tmp_path / "wide.png", "crop")
    assert (np.abs(crop.astype(int) - GREEN) < 8).all()  # the centre third only
    stretch = read(tmp_path / "wide.png", "stretch")
    assert tuple(stretch[16, 2]) == RED and tuple(stretch[16, 16]) == GREEN
    assert tuple(stretch[16, 29]) == BLUE
    pad = read(tmp_path / "wide.png", "pad")
    assert tuple(pad[0, 16]) == WHITE and tuple(pad[16, 16]) == GREEN and tuple(pad[16, 1]) == RED


def test_32x32_rgb_is_used_as_is(tmp_path: Path):
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cifar.png")
    assert np.array_equal(read(tmp_path / "cifar.png"), pixels)


def test_each_bad_file_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, status in write_bad_files(tmp_path).items():
        with pytest.raises(images.BadImage) as bad:
            read(tmp_path / name)
        assert bad.value.status == status, (name, bad.value.reason)
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(images.BadImage, match="broken symbolic link"):
        read(tmp_path / "gone.png")
    # Pillow's limit, lowered in this process: a warning above it, an error above twice it; both
    # are too_large, never an image read anyway.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for side in (12, 20):
        Image.new("RGB", (side, side)).save(tmp_path / f"big{side}.png")
        with pytest.raises(images.BadImage) as bad:
            read(tmp_path / f"big{side}.png")
        assert bad.value.status == "too_large" and "decompression-bomb" in bad.value.reason


def test_folders_are_searched_once_through_links_and_loops(tmp_path: Path):
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(root / "b.JPG")
    (root / "notes.txt").write_text("ignored in a folder")
    (root / ".hidden.png").write_bytes(b"")
    (root / "cat" / "loop").symlink_to(root)  # a loop back to the top
    (root / "again").symlink_to(root / "cat")  # a second way into one folder
    found = images.find_inputs(str(root))
    assert found.files == [root / "b.JPG", root / "cat" / "a.png"]
    assert found.ignored == 1 and len(found.revisits) == 2
    # Globs and lists, a file named twice giving one row; a named text file is tried.
    names = [root / "*.JPG", root / "cat" / "a.png", root / "again" / "a.png", root / "notes.txt"]
    listed = images.find_inputs([str(name) for name in names])
    assert listed.files == [root / "b.JPG", root / "cat" / "a.png", root / "notes.txt"]
    assert images.find_inputs(str(tmp_path / "**" / "a.png")).files == [root / "cat" / "a.png"]
    assert [cifar_label(p) for p in found.files] == [None, 3]
    assert cifar_label(Path("x/Automobile/1.png")) == 1
    assert cifar_label(Path("x/car/1.png")) == 1


def test_a_glob_reports_revisits_only_through_links(tmp_path: Path):
    """`p/**` matches p, p/a and p/a/b, each walked once without a word: no link is in it."""
    root = tmp_path / "p"
    (root / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a" / "b" / "x.png")
    Image.new("RGB", (8, 8)).save(root / "y.png")
    for inputs in (str(root / "**"), [str(root / "a"), str(root)], [str(root), str(root / "a")]):
        found = images.find_inputs(inputs)
        assert found.revisits == [], inputs
        assert sorted(found.files) == [root / "a" / "b" / "x.png", root / "y.png"]
    # A link from one folder into another reaches that folder a second time: reported, once.
    (root / "z").mkdir()
    (root / "a" / "to_z").symlink_to(root / "z")
    assert images.find_inputs(str(root / "**")).revisits == [str(root / "z")]
    assert images.find_inputs(str(root)).revisits == [str(root / "z")]


def test_folder_labels_are_the_model_class_names():
    """A folder is matched against the model's own classes; CIFAR-10's other spelling counts
    only for a model whose classes are CIFAR-10's (in any order)."""
    other = images.class_lookup(["Cat", "Dog", "Fox"])
    assert images.label_of(Path("x/fox/1.png"), other) == 2
    assert images.label_of(Path("x/cat/1.png"), other) == 0
    assert images.label_of(Path("x/automobile/1.png"), other) is None
    reordered = images.class_lookup(list(reversed(DISPLAY_NAMES)))
    assert images.label_of(Path("x/cat/1.png"), reordered) == 6
    assert images.label_of(Path("x/automobile/1.png"), reordered) == 8
    official = images.class_lookup(images.CLASSES)
    assert images.label_of(Path("x/plane/1.png"), official) == 0


@pytest.mark.parametrize(
    ("inputs", "message"),
    [("nowhere.png", "does not exist"), ("*.nothing", "no file matches"), ([], "names no files"),
     ("empty_dir", "no image files")],
)  # fmt: skip
def test_missing_input_is_a_user_error(tmp_path: Path, monkeypatch, inputs, message: str):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match=message):
        images.find_inputs(inputs)


def test_hydra_takes_lists_globs_and_quoted_names(tmp_path: Path):
    overrides = {
        "input=[a.jpg,b.png]": ["a.jpg", "b.png"],
        "input=photos/*.jpg": "photos/*.jpg",
        "input=my photos/x.jpg": "my photos/x.jpg",
        "input='a,b.jpg'": "a,b.jpg",
        "input='photos/[ab]*.jpg'": "photos/[ab]*.jpg",
        "input=[photos/**/*.png,'x, y.png']": ["photos/**/*.png", "x, y.png"],
    }
    for override, value in overrides.items():
        with task_config("predict", ["ckpt_path=x.ckpt", override], tmp_path) as cfg:
            got = cfg.input if isinstance(cfg.input, str) else list(cfg.input)
            assert got == value, override


def run_predict(overrides: list[str], out: Path) -> int:
    with task_config("predict", overrides, out) as cfg:
        return predict(cfg)


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open() as f:
        return list(csv.DictReader(f))


def variant(trained_run: Path, out: Path, **changes) -> Path:
    """The run's best checkpoint with other run settings ("module.tta_level": 2, ...)."""
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    for key, value in changes.items():
        group, name = key.split(".")
        ckpt["run_config"][group][name] = value
    torch.save(ckpt, out)
    return out


def test_predict_repeats_the_run_test(trained_run: Path, folder_root: Path, tmp_path: Path):
    """The test folder through predict.py gives the test's accuracy and loss: the same inputs,
    normalisation and model, here in fp32 without TTA (the tiny run's settings)."""
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert run_predict([f"ckpt_path={ckpt}", f"input={folder_root / 'test'}"], tmp_path) == 0
    results = json.loads((trained_run / "results.json").read_text())
    table = rows(tmp_path)
    assert list(table[0]) == list(COLUMNS) and len(table) == 100
    assert all(r["status"] == "ok" and r["label"] for r in table)
    accuracy = np.mean([r["pred"] == r["label"] for r in table])
    assert accuracy == pytest.approx(results["test_acc"], abs=1e-6)
    probs = np.load(tmp_path / "probabilities.npy")
    labels = [cifar_label(Path(r["file"])) for r in table]
    loss = -np.log(probs[np.arange(100), labels]).mean()
    assert loss == pytest.approx(results["test_loss"], abs=1e-5)
    assert table[0]["top3"].startswith(f"{table[0]['pred']}:{table[0]['prob']} ")


def test_predict_takes_the_run_precision_tta_and_loader(
    trained_run: Path, folder_root: Path, tmp_path: Path
):
    """A bf16 run with TTA and data.loader=device: predict.py's loss is its test's (trainer.test
    on the same checkpoint), not the fp32 one."""
    ckpt = variant(trained_run, tmp_path / "bf16.ckpt", **{"module.tta_level": 2,
                   "trainer.precision": "bf16-mixed", "data.loader": "device"})  # fmt: skip
    _, run_cfg, datamodule, module = load_trained(ckpt)
    trainer = make_trainer(run_cfg.trainer, None, [], tmp_path / "test")
    datamodule.setup("test")
    [tested] = trainer.test(module, datamodule=datamodule, verbose=False)
    losses = {}
    for precision in ("null", "32-true"):
        out = tmp_path / precision
        argv = [f"ckpt_path={ckpt}", f"input={folder_root / 'test'}", f"precision={precision}"]
        assert run_predict(argv, out) == 0
        probs = np.load(out / "probabilities.npy")
        labels = [cifar_label(Path(r["file"])) for r in rows(out)]
        losses[precision] = -np.log(probs[np.arange(100), labels]).mean()
    assert losses["null"] == pytest.approx(tested["test/loss"], abs=1e-5)
    assert abs(losses["32-true"] - tested["test/loss"]) > 1e-4  # bf16 is not fp32


def test_bad_files_get_their_rows_and_exit_status_3(
    trained_run: Path, folder_root: Path, tmp_path: Path, caplog, capsys
):
    photos = tmp_path / "photos"
    statuses = write_bad_files(photos / "dog")
    wide = np.array(Image.open(next((folder_root / "test" / "dog").iterdir())).resize((96, 64)))
    Image.fromarray(wide).save(photos / "dog" / "wide.png")
    Image.fromarray(wide).convert("RGBA").save(photos / "any.png")
    argv = [f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}", f"input={photos}",
            "figure=true"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="cifar_lightning"):
        assert run_predict(argv, tmp_path / "report") == EXIT_BAD_IMAGES
    table = {Path(r["file"]).name: r for r in rows(tmp_path / "report")}
    assert {name: table[name]["status"] for name in statuses} == statuses
    assert all(table[name]["reason"] and not table[name]["pred"] for name in statuses)
    assert table["wide.png"]["status"] == "ok" and table["wide.png"]["label"] == "dog"
    assert table["any.png"]["label"] == "" and table["any.png"]["pred"]
    probs = np.load(tmp_path / "report" / "probabilities.npy")
    predicted = ~np.isnan(probs).all(1)
    assert predicted.sum() == 2 and np.allclose(probs[predicted].sum(1), 1)
    assert "predicted 2 of 6 files (1 unreadable, 2 not_an_image, 1 too_large)" in caplog.text
    assert "accuracy:" in caplog.text and "(1 of 1 images" in caplog.text
    printed = capsys.readouterr().out
    assert "not_an_image: empty file (0 bytes)" in printed and "wide.png" in printed
    assert (tmp_path / "report" / "contact_sheet.png").stat().st_size > 1000
    assert run_predict([*argv, "on_bad_image=skip", "figure=false"], tmp_path / "skip") == 0
    assert len(rows(tmp_path / "skip")) == 6


def in_process_cli(
    overrides: list[str], out: Path, capsys, monkeypatch, config: str = "predict", task=predict
) -> tuple[int, str]:
    """predict.py's (or `config`'s `task`'s) path through cli.run_main and cli_guard, in this
    process."""
    monkeypatch.setenv(cli.FULL_ERROR, "0")
    monkeypatch.setenv(cli.TRACEBACKS, "0")  # as a user without HYDRA_FULL_ERROR=1

    def hydra_main() -> None:
        with task_config(config, overrides, out) as cfg:
            cli.cli_guard(task, cfg)

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(hydra_main, [f"hydra.run.dir={out}"])
    return exit_info.value.code, capsys.readouterr().err


def test_user_errors_are_one_line_and_exit_status_2(
    trained_run: Path, tmp_path: Path, capsys, monkeypatch
):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    untrusted = variant(trained_run, tmp_path / "untrusted.ckpt",
                        **{"model._target_": "builtins.open"})  # fmt: skip
    cases = {
        "no input": ([f"ckpt_path={ckpt}"], "input has no value"),
        "missing input": ([f"ckpt_path={ckpt}", "input=nowhere/*.png"], "no file matches"),
        "no model": ([f"input={ckpt}"], "pass one of ckpt_path="),
        "untrusted": ([f"ckpt_path={untrusted}", f"input={ckpt}"], "is not trusted"),
        "resize": ([f"ckpt_path={ckpt}", f"input={ckpt}", "resize=zoom"], "not a method"),
        "trust": ([f"ckpt_path={ckpt}", f"input={ckpt}", "trust_model=yes"], "is not a switch"),
    }
    for name, (overrides, message) in cases.items():
        code, err = in_process_cli(overrides, tmp_path / name, capsys, monkeypatch)
        assert code == 2 and "Traceback" not in err, (name, err)
        assert err.strip().splitlines()[-1].startswith("error: ") and message in err, name


def test_predict_py_prints_a_table_and_exits_3(trained_run: Path, folder_root: Path, tmp_path):
    photos = tmp_path / "photos"
    write_bad_files(photos)
    for name in ("cat", "ship"):
        source = next((folder_root / "test" / name).iterdir())
        (photos / name).mkdir()
        Image.open(source).resize((200, 120)).save(photos / name / "photo.jpg")
    proc = run_cli("predict.py", f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}",
                   f"input={photos}", f"hydra.run.dir={tmp_path / 'out'}")  # fmt: skip
    assert proc.returncode == EXIT_BAD_IMAGES and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("file "))
    assert header.split() == ["file", "pred", "prob", "top3", "label"]
    assert any("too_large: Image size (10000000000 pixels)" in line for line in lines)
    out = proc.stdout + proc.stderr
    assert "accuracy: " in out and "predicted 2 of 6 files" in out
    (tmp_path / "console.txt").write_text(out)
