"""Safe checkpoint loading, atomic files and checkpoints, and clear errors for unwritable
outputs."""

from __future__ import annotations

import errno
import io
import multiprocessing as mp
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from cifar_lightning import checkpoint, cli
from cifar_lightning.cli import check_cli
from cifar_lightning.data import sources
from cifar_lightning.errors import UserError
from cifar_lightning.models.seed_cnn import SeedCNN
from tests.conftest import run_cli
from tests.synthetic import write_folder_layout

MARKER = "pwned-by-pickle"


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __reduce__(self):
        import os

        return (os.system, (f"echo {MARKER} > {Payload.target}",))


def test_a_checkpoint_with_a_pickle_payload_is_refused(tmp_path):
    Payload.target = tmp_path / "owned"
    ckpt = {"state_dict": {}, "evil": Payload()}
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as f:
        pickle.dump(ckpt, f)  # a plain pickle, as torch.load would accept without weights_only
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint.load(path)
    assert not Payload.target.exists(), "the payload must never run"
    torch.save(ckpt, tmp_path / "evil2.ckpt")  # the same through torch's zip format
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint.load(tmp_path / "evil2.ckpt")
    assert not Payload.target.exists()


def test_a_checkpoint_of_another_model_is_an_error_not_an_untrained_model(tmp_path):
    net = SeedCNN()
    ckpt = {"state_dict": {k: v for k, v in net.state_dict().items() if "head" not in k}}
    with pytest.raises(UserError, match="missing keys"):
        checkpoint.restore_weights(SeedCNN(), ckpt, "x.ckpt")
    ckpt = {"state_dict": {**net.state_dict(), "extra.weight": torch.zeros(1)}}
    with pytest.raises(UserError, match="unexpected keys"):
        checkpoint.restore_weights(SeedCNN(), ckpt, "x.ckpt")
    wide = SeedCNN(widths=[[32, 64], [64, 128], [128, 120]]).state_dict()
    with pytest.raises(UserError, match="does not fit the model"):
        checkpoint.restore_weights(SeedCNN(), {"state_dict": wide}, "x.ckpt")


def test_a_checkpoint_of_another_model_is_named_briefly(tmp_path):
    # resnet18's weights into the seed CNN: hundreds of keys, at most three named with counts.
    from cifar_lightning.models.resnet import ResNet18

    ckpt = {"state_dict": ResNet18().state_dict()}
    with pytest.raises(UserError) as err:
        checkpoint.restore_weights(SeedCNN(), ckpt, "x.ckpt")
    message = str(err.value)
    assert len(message) < 600 and "\n" not in message
    n_missing, n_unexpected = len(SeedCNN().state_dict()), len(ckpt["state_dict"])
    assert "missing keys: " in message and f"({n_missing} in all)" in message
    assert f"({n_unexpected} in all)" in message and "another model=" in message


def _prepare(root: str) -> None:
    sources.prepare_cache(root, allow_download=False)


def test_two_processes_building_the_same_cache_neither_crash_nor_corrupt(tmp_path):
    root = write_folder_layout(tmp_path / "d", n_train=30, n_test=5)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_prepare, args=(str(root),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    splits = sources.load_splits(root)
    assert len(splits.train_y) == 300 and len(splits.test_y) == 50
    assert not list(root.glob(".*.tmp"))


def test_an_unwritable_output_folder_is_refused_before_anything_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write run outputs.*hydra.run.dir=PATH"):
        check_cli([f"hydra.run.dir={blocker / 'run'}"])
    with pytest.raises(UserError, match="hydra.sweep.dir=PATH"):
        check_cli(["-m", f"hydra.sweep.dir={blocker / 'sweep'}"])
    check_cli([f"hydra.run.dir={tmp_path / 'fine'}"])


def test_the_output_folder_check_makes_no_stray_folders(tmp_path, monkeypatch):
    # Lightning's DDP relaunch quotes the run dir; an interpolation is resolved only by Hydra.
    monkeypatch.chdir(tmp_path)
    check_cli([f'hydra.run.dir="{tmp_path / "quoted"}"'])
    check_cli(["hydra.run.dir=outs/${now:%H-%M-%S}"])
    check_cli([r"hydra.run.dir='it\'s'"])
    check_cli(['hydra.run.dir=bad/"quote"'])  # no folder: Hydra rejects the value itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["it's", "outs", "quoted"]
    assert not list((tmp_path / "outs").iterdir())


@pytest.mark.slow
def test_cli_unwritable_output_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("train.py", f"hydra.run.dir={blocker / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot write run outputs")


def test_a_missing_plugin_is_named_with_its_install_command(monkeypatch):
    monkeypatch.setattr(cli, "_installed", lambda module: False)
    with pytest.raises(UserError, match=r"pip install -e '\.\[sweep\]'"):
        check_cli(["-m", "hydra/launcher=joblib"])
    with pytest.raises(UserError, match=r"\.\[slurm\]"):
        check_cli(["-m", "hydra/launcher=slurm"])


def _interrupted_torch_save(obj, f, *args, **kwargs) -> None:  # noqa: ANN001
    """torch.save that dies after writing part of the file (a kill's stand-in)."""
    buffer = io.BytesIO()
    _TORCH_SAVE(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[:1000])
    raise KeyboardInterrupt("killed mid-write")


_TORCH_SAVE = torch.save
GOOD, NEW = {"state_dict": {"w": torch.zeros(1000)}}, {"state_dict": {"w": torch.ones(1000)}}


def test_an_interrupted_checkpoint_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    checkpoint.AtomicCheckpointIO().save_checkpoint(GOOD, path)
    monkeypatch.setattr(torch, "save", _interrupted_torch_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.AtomicCheckpointIO().save_checkpoint(NEW, path)
    assert torch.equal(checkpoint.load(path)["state_dict"]["w"], GOOD["state_dict"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left
    # Lightning's own IO survives this one too: it serialises into memory before writing.
    with pytest.raises(KeyboardInterrupt):
        TorchCheckpointIO().save_checkpoint(NEW, path)
    assert torch.equal(checkpoint.load(path)["state_dict"]["w"], GOOD["state_dict"]["w"])


class _FullDisk(io.RawIOBase):
    """A file on a disk that fills up after its first 1,000 bytes."""

    def __init__(self, f) -> None:  # noqa: ANN001
        self.f, self.written = f, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001
        if self.written + len(b) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(b)
        return self.f.write(b)


def test_a_full_disk_is_one_clear_error_and_leaves_the_previous_file(tmp_path, monkeypatch):
    # torch.save reports a full disk as "RuntimeError: ... unexpected pos 704 vs 598", raised
    # while handling the OSError: the error names the disk and the file instead.
    path = tmp_path / "last.ckpt"
    checkpoint.AtomicCheckpointIO().save_checkpoint(GOOD, path)
    monkeypatch.setattr(torch, "save", lambda obj, f: _TORCH_SAVE(obj, _FullDisk(f)))
    with pytest.raises(UserError, match=r"no space left to write .*last\.ckpt.*free some space"):
        checkpoint.AtomicCheckpointIO().save_checkpoint(NEW, path)
    assert torch.equal(checkpoint.load(path)["state_dict"]["w"], GOOD["state_dict"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left
    # A plain OSError (results.json and the other files written the same way)...
    from cifar_lightning.fileio import atomic_write

    with pytest.raises(UserError, match="no space left to write"):
        atomic_write(tmp_path / "results.json", lambda f: _FullDisk(f).write(b"x" * 2000))
    assert not (tmp_path / "results.json").exists()
    # ...but any other failure keeps its own error.
    with pytest.raises(OSError, match="Input/output"):
        atomic_write(
            path, lambda f: (_ for _ in ()).throw(OSError(errno.EIO, os.strerror(errno.EIO)))
        )


def test_lightnings_checkpoint_io_truncates_the_previous_one_across_filesystems(
    tmp_path, monkeypatch
):
    # Why AtomicCheckpointIO stays: Lightning's writer (fsspec's transaction) puts its temporary
    # file in $TMPDIR and moves it over the checkpoint. When $TMPDIR is another filesystem, the
    # rename fails with EXDEV and shutil.move copies onto the checkpoint in place: a kill during
    # that copy leaves a truncated checkpoint. Simulated: rename refuses, the copy dies midway.
    path = tmp_path / "last.ckpt"
    TorchCheckpointIO().save_checkpoint(GOOD, path)

    def cross_device(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def dying_copy(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read()[:1000])
        raise KeyboardInterrupt("killed mid-copy")

    monkeypatch.setattr(os, "rename", cross_device)
    monkeypatch.setattr(shutil, "copyfile", dying_copy)
    with pytest.raises(KeyboardInterrupt):
        TorchCheckpointIO().save_checkpoint(NEW, path)
    assert path.stat().st_size == 1000  # the previous checkpoint is gone
    with pytest.raises(UserError, match="cannot read checkpoint"):
        checkpoint.load(path)

    # Ours writes its temporary file beside the checkpoint and never copies.
    monkeypatch.undo()
    checkpoint.AtomicCheckpointIO().save_checkpoint(GOOD, path)
    monkeypatch.setattr(os, "rename", cross_device)
    monkeypatch.setattr(shutil, "copyfile", dying_copy)
    checkpoint.AtomicCheckpointIO().save_checkpoint(NEW, path)
    assert torch.equal(checkpoint.load(path)["state_dict"]["w"], NEW["state_dict"]["w"])


def test_damaged_results_never_replace_good_ones(tmp_path):
    from cifar_lightning.fileio import write_json

    write_json(tmp_path / "results.json", {"test_acc": 0.5})

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json(tmp_path / "results.json", {"test_acc": Boom()})
    assert (tmp_path / "results.json").read_text().strip().endswith("}")
    assert not list(Path(tmp_path).glob(".*.tmp"))


def test_ckpt_path_last_finds_the_newest_run_with_the_same_overrides(tmp_path):
    import os

    def make_run(name: str, overrides: list[str], mtime: int, with_ckpt: bool = True) -> Path:
        run = tmp_path / "runs" / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if with_ckpt:
            ckpt = run / "checkpoints" / "last.ckpt"
            ckpt.parent.mkdir()
            ckpt.write_bytes(b"x")
            os.utime(ckpt, (mtime, mtime))
        return run

    same = ["optimizer=sgd", "seed=1"]
    make_run("a", same, 100)
    newest = make_run("b", [*same, "ckpt_path=x"], 200)
    make_run("c", ["optimizer=adam", "seed=1"], 300)  # other config
    make_run("d", same, 400, with_ckpt=False)  # nothing to resume from
    current = make_run("e", [*same, "ckpt_path=last"], 500)  # this run itself
    found = checkpoint.find_last([*same, "ckpt_path=last"], [tmp_path / "runs"], exclude=current)
    assert found == (newest / "checkpoints" / "last.ckpt").resolve()
    with pytest.raises(UserError, match="ckpt_path=last: no earlier run"):
        checkpoint.find_last(["optimizer=adamw"], [tmp_path / "runs"], exclude=current)
