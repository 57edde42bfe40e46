"""One data folder, one answer: with the cache present, a run accepts or refuses a changed data
folder exactly as a read of it without the cache does, with the same data or the same error."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning.data import filetable, sources
from cifar_lightning.errors import DataError
from tests.synthetic import write_folder_layout, write_torchvision_layout


def outcome(root: Path) -> tuple:
    """("data", fingerprint, sizes) or ("error", its message with the root's path taken out)."""
    try:
        sources.prepare_cache(root, allow_download=False)
    except DataError as err:
        return "error", str(err).replace(str(root), "ROOT")
    s = sources.load_splits(root)
    return "data", s.fingerprint, len(s.train_y), len(s.test_y)


def check(got: tuple, before: tuple, expected: str) -> None:
    """`got` is what `expected` says: "same" data as `before`, "new" data, or an error whose
    message matches the regular expression `expected`."""
    if expected == "same":
        assert got == before
    elif expected == "new":
        assert got[0] == "data" and got[1] != before[1]
    else:
        assert got[0] == "error" and re.search(expected, got[1]), got


def same_size_png(path: Path, value: int) -> None:
    """Overwrite an image with a flat one, keeping its file size and mtime: the `cached` root's
    PNGs are uncompressed, so all have one size and only a read of the contents tells them
    apart."""
    st = path.stat()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path, compress_level=0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def settle(root: Path) -> None:
    """Wait until the file system's clock has passed every file's mtime and ctime under `root`
    (a few ms): a table written after that trusts them all (see filetable's racy rule)."""
    latest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in root.rglob("*"))
    while filetable.fs_now(root) <= latest:
        pass


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose contents the source check reads, in order."""
    seen: list[str] = []
    digest = filetable.file_digest
    monkeypatch.setattr(filetable, "file_digest", lambda path: seen.append(path) or digest(path))
    return seen


# Each change, made in one split (train/ or test/), and what a read without the cache says:
# a regular expression of its error, "same" (the data as before) or "new" (other data).
Change = Callable[[Path], None]
CHANGES: dict[str, tuple[Change, str]] = {
    "unknown class folder added": (
        lambda s: shutil.copytree(s / "cat", s / "kitten"), "unknown class folder.*kitten"),
    "class folder removed": (lambda s: shutil.rmtree(s / "frog"), "missing class folder.*frog"),
    "class folder renamed": (
        lambda s: (s / "cat").rename(s / "kitten"), "unknown class folder.*kitten"),
    "class folder emptied": (
        lambda s: [p.unlink() for p in (s / "dog").iterdir()], "new"),
    "split folder removed": (lambda s: shutil.rmtree(s), "missing split folder"),
    "image added": (lambda s: shutil.copy(first(s / "cat"), s / "cat" / "zz.png"), "new"),
    "image removed": (lambda s: first(s / "cat").unlink(), "new"),
    "image renamed": (  # moves to the end of its class: the order changes
        lambda s: first(s / "cat").rename(s / "cat" / "zz.png"), "new"),
    "image moved to another class": (
        lambda s: first(s / "cat").rename(s / "dog" / "from-cat.png"), "new"),
    "image replaced, other size": (  # compressed: smaller than the uncompressed original
        lambda s: Image.open(first(s / "ship")).save(first(s / "cat")), "new"),
    "image replaced, same size and mtime": (lambda s: same_size_png(first(s / "cat"), 7), "new"),
    "image touched": (lambda s: os.utime(first(s / "cat"), ns=(1, 1)), "same"),
    "image replaced by an unreadable file": (
        lambda s: first(s / "cat").write_bytes(b"not a png"), "cannot read image"),
    "image replaced by a 40x40 one": (
        lambda s: Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(first(s / "cat")),
        "is 40x40.*32x32"),
    "folder named like an image": (
        lambda s: (s / "cat" / "odd.png").mkdir(), "cannot read image.*odd.png"),
    "dangling link named like an image": (
        lambda s: (s / "cat" / "gone.png").symlink_to(s / "nowhere.png"), "cannot read image"),
    "non-image file in a class folder": (
        lambda s: (s / "cat" / "notes.txt").write_text("x"), "same"),
    "hidden image in a class folder": (
        lambda s: shutil.copy(first(s / "cat"), s / "cat" / ".hidden.png"), "same"),
    "stray text file at split level": (lambda s: (s / "README.txt").write_text("x"), "same"),
    "stray image at split level": (
        lambda s: shutil.copy(first(s / "cat"), s / "stray.png"), "same"),
    "hidden folder at split level": (
        lambda s: shutil.copytree(s / "cat", s / ".ipynb_checkpoints"), "same"),
}  # fmt: skip


def uncompressed_layout(root: Path) -> Path:
    """A tiny folder layout (20 train, 20 test images) of uncompressed PNGs (see same_size_png)."""
    write_folder_layout(root, n_train=2, n_test=2)
    for path in root.glob("*/*/*.png"):
        Image.open(path).save(path, compress_level=0)
    return root


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    """A tiny folder-layout root of uncompressed PNGs with its cache built, and the outcome of
    reading it."""
    root = uncompressed_layout(tmp_path_factory.mktemp("cached"))
    return root, outcome(root)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", list(CHANGES))
def test_a_change_gets_the_answer_a_read_without_the_cache_gives(cached, tmp_path, name, split):
    original, before = cached
    change, expected = CHANGES[name]
    with_cache, fresh = tmp_path / "with_cache", tmp_path / "fresh"
    shutil.copytree(original, with_cache, symlinks=True)  # the cache travels with it
    settle(with_cache)
    assert outcome(with_cache) == before  # new inodes: every file read once, the table updated
    change(with_cache / split)  # on files the table now vouches for by their stat keys
    shutil.copytree(with_cache, fresh, symlinks=True, ignore=shutil.ignore_patterns("*.pt"))
    assert not (fresh / sources.CACHE_NAME).exists()

    got = outcome(with_cache)
    assert got == outcome(fresh)
    check(got, before, expected)


def test_a_copied_or_touched_source_keeps_its_cache(cached, tmp_path, caplog, monkeypatch,
                                                    reads):  # fmt: skip
    # Staged elsewhere with its cache (new inodes, mtimes) and touched: the same bytes, the
    # same data: no rebuild. Each file is read once, and the new stat keys recorded.
    original, before = cached
    root = tmp_path / "staged"
    shutil.copytree(original, root, copy_function=shutil.copy)  # no mtimes kept
    for p in (root / "test" / "dog").iterdir():
        os.utime(p)
    settle(root)
    monkeypatch.setattr(sources, "read_folder", lambda root: pytest.fail("decoded again"))
    assert outcome(root) == before
    assert "rebuilding" not in caplog.text
    assert len(reads) == len(list(root.glob("*/*/*.png")))
    reads.clear()
    assert outcome(root) == before
    assert reads == []


def test_an_unchanged_source_is_checked_without_reading_a_file(tmp_path, reads):
    root = uncompressed_layout(tmp_path / "d")
    settle(root)
    before = outcome(root)
    reads.clear()
    assert outcome(root) == before
    assert reads == []
    # One image edited in place, size and mtime kept: only it is read again (its ctime changed).
    image = first(root / "train" / "cat")
    same_size_png(image, 7)
    check(outcome(root), before, "new")
    assert reads == [str(image)]


def test_files_not_older_than_the_table_are_read_at_every_check(tmp_path, monkeypatch, reads):
    # git's racy-timestamp rule: a file changed within the clock tick the table was written in
    # may change again in that tick without its stat key changing. Such a file gets no trusted
    # key: every check reads it until the clock has moved on. Simulated by a file system clock
    # stuck in the tick of one image's last change.
    root = uncompressed_layout(tmp_path / "d")
    settle(root)
    racy = first(root / "test" / "ship")
    same_size_png(racy, 9)
    tick = racy.stat().st_ctime_ns
    clock = filetable.fs_now
    monkeypatch.setattr(filetable, "fs_now", lambda root: tick)
    sources.prepare_cache(root, allow_download=False)
    for _ in range(2):
        reads.clear()
        sources.prepare_cache(root, allow_download=False)
        assert reads == [str(racy)]
    monkeypatch.setattr(filetable, "fs_now", clock)  # the clock moves on
    for expected in ([str(racy)], []):  # read once more, then trusted by its key
        reads.clear()
        sources.prepare_cache(root, allow_download=False)
        assert reads == expected


def test_an_old_cache_without_a_table_is_updated_in_place(tmp_path, monkeypatch, reads):
    # A format-3 cache (signature only): every file read once, the table and the image
    # digests added, nothing decoded again; then checks read nothing.
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    settle(root)
    cache = sources.prepare_cache(root, allow_download=False)
    current = torch.load(cache, weights_only=True)
    old = {k: v for k, v in current.items() if k not in ("files", "train_digests", "test_digests")}
    torch.save({**old, "format": 3}, cache)
    assert sources.load_splits(root).train_digests.shape == (20, 16)  # readable as it is
    monkeypatch.setattr(sources, "read_folder", lambda root: pytest.fail("decoded again"))
    reads.clear()
    sources.prepare_cache(root, allow_download=False)
    assert len(reads) == 30
    updated = torch.load(cache, weights_only=True)
    assert updated["format"] == sources.CACHE_FORMAT
    for split in ("train", "test"):
        want = sources.image_digests(current[f"{split}_x"])
        assert torch.equal(updated[f"{split}_digests"], want)
    reads.clear()
    sources.prepare_cache(root, allow_download=False)
    assert reads == []


def test_a_cache_replaced_while_it_is_read_is_not_rewritten(tmp_path, monkeypatch):
    # torch.load(mmap=True) maps the tensors by name after reading the records: a cache
    # replaced in between (another run's rewrite) must not be written back as a mix of both.
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    settle(root)
    cache = sources.prepare_cache(root, allow_download=False)
    current = torch.load(cache, weights_only=True)
    old = {k: v for k, v in current.items() if k not in ("files", "train_digests", "test_digests")}
    torch.save({**old, "format": 3}, cache)  # a cache the next check rewrites in place
    load = torch.load

    def replaced_meanwhile(f, *args, **kwargs):
        got = load(f, *args, **kwargs)
        if Path(f) == cache:  # another run's copy of it takes its place
            shutil.copy(cache, tmp_path / "other")
            os.replace(tmp_path / "other", cache)
        return got

    monkeypatch.setattr(torch, "load", replaced_meanwhile)
    sources.prepare_cache(root, allow_download=False)
    assert torch.load(cache, weights_only=True)["format"] == 3  # checked, not rewritten
    monkeypatch.setattr(torch, "load", load)
    sources.prepare_cache(root, allow_download=False)  # undisturbed: brought up to date
    assert torch.load(cache, weights_only=True)["format"] == sources.CACHE_FORMAT


def test_the_cache_is_mapped_by_a_str_name_as_older_torch_requires(tmp_path, monkeypatch):
    # torch 2.2's torch.load(mmap=True) raises on a Path; the check caught that error and took
    # the cache for unreadable, so a changed source went unnoticed.
    load = torch.load

    def strict_load(f, *args, **kwargs):
        if kwargs.get("mmap") and not isinstance(f, str):
            raise ValueError("f must be a string filename in order to use mmap argument")
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", strict_load)
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    sources.prepare_cache(root, allow_download=False)
    built = sources.cache_fingerprint(root)
    assert built == sources.load_splits(root).fingerprint
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(first(first(root / "test")))
    sources.prepare_cache(root, allow_download=False)
    assert sources.cache_fingerprint(root) not in (built, None)  # the change was seen


def test_rehash_all_reads_every_file_and_writes_nothing(tmp_path, reads):
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    cache = sources.prepare_cache(root, allow_download=False)
    built = cache.stat().st_mtime_ns
    reads.clear()
    sources.prepare_cache(root, allow_download=False, rehash_all=True)
    assert len(reads) == 30 and cache.stat().st_mtime_ns == built


def test_an_older_cache_is_rebuilt_and_says_why(cached, tmp_path, caplog):
    root = tmp_path / "old"
    shutil.copytree(cached[0], root)
    cache = root / sources.CACHE_NAME
    torch.save({**torch.load(cache, weights_only=True), "format": 2}, cache)
    assert outcome(root) == cached[1]
    assert "rebuilding the data cache" in caplog.text and "older version" in caplog.text


@pytest.fixture(scope="module")
def cached_torchvision(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    root = write_torchvision_layout(tmp_path_factory.mktemp("cached_tv"), n_train=2, n_test=1)
    return root, outcome(root)


def flip_a_byte(path: Path) -> None:
    """Edit a batch file in place, keeping its size and mtime: one pixel byte of its pickle."""
    st, data = path.stat(), bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


TORCHVISION_CHANGES: dict[str, tuple[Change, str]] = {
    "batch file removed": (lambda b: (b / "data_batch_3").unlink(), "missing CIFAR-10 batch"),
    "batch file damaged": (lambda b: (b / "test_batch").write_bytes(b"x"), "cannot read CIFAR"),
    "batch file edited, same size and mtime": (lambda b: flip_a_byte(b / "data_batch_2"), "new"),
    "batch file touched": (lambda b: os.utime(b / "data_batch_1", ns=(1, 1)), "same"),
    "other file added": (lambda b: (b / "readme.html").write_text("x"), "same"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TORCHVISION_CHANGES))
def test_a_torchvision_change_gets_the_answer_a_fresh_read_gives(cached_torchvision, tmp_path,
                                                                  name):  # fmt: skip
    original, before = cached_torchvision
    change, expected = TORCHVISION_CHANGES[name]
    with_cache, fresh = tmp_path / "with_cache", tmp_path / "fresh"
    shutil.copytree(original, with_cache)
    change(with_cache / sources.BATCHES_DIR)
    shutil.copytree(with_cache, fresh, ignore=shutil.ignore_patterns("*.pt"))

    got = outcome(with_cache)
    assert got == outcome(fresh)
    check(got, before, expected)


def test_the_data_check_benchmark_runs(tmp_path):
    # benchmarks/data_check.py's code path at a tiny size (its figures need the real data set).
    from benchmarks import data_check

    root = uncompressed_layout(tmp_path / "d")
    settle(root)
    out = tmp_path / "data_check.json"
    result = data_check.main(["--data-root", str(root), "--rounds", "2", "--out", str(out)])
    assert result["files"] == 40 and result["files_read_by_new"] == 0
    assert len(result["rounds"]) == 2 and result["ratio"]["median"] > 0 and out.is_file()
    assert result["cold"] is False


def test_the_cold_data_check_drops_the_caches_before_each_timed_call(tmp_path, monkeypatch):
    # --cold writes "3" to /proc/sys/vm/drop_caches before each timed call; here a stand-in
    # file counts the writes (the real one would slow the rest of the suite down).
    from benchmarks import data_check

    root = uncompressed_layout(tmp_path / "d")
    settle(root)
    writes = []

    class DropCaches:  # records what data_check writes to the kernel's file
        def write_text(self, text: str) -> None:
            writes.append(text)

    monkeypatch.setattr(data_check, "DROP_CACHES", DropCaches())
    args = ["--data-root", str(root), "--rounds", "2", "--cold", "--out", str(tmp_path / "c.json")]
    result = data_check.main(args)
    # once up front, then 2 rounds x 2 calls in each of the check, overlap and data-ready parts
    assert result["cold"] is True and writes == ["3\n"] * (1 + 3 * 2 * 2)


def test_the_cold_data_check_says_what_it_needs_where_it_cannot_drop_the_caches(
    tmp_path, monkeypatch
):
    from benchmarks import data_check

    root = uncompressed_layout(tmp_path / "d")
    monkeypatch.setattr(data_check, "DROP_CACHES", tmp_path / "missing" / "drop_caches")
    with pytest.raises(SystemExit, match="needs Linux and root"):
        data_check.main(["--data-root", str(root), "--cold", "--out", str(tmp_path / "c.json")])
    assert not (tmp_path / "c.json").exists()


def test_the_load_made_during_the_check_is_used_only_if_the_check_kept_the_cache(tmp_path):
    """CIFAR10DataModule.prepare_data loads the cache on a thread while it checks it: after a
    rebuild (a source image changed) that load holds the old data and must not be used."""
    from cifar_lightning.data import CIFAR10DataModule

    def ready() -> CIFAR10DataModule:
        dm = CIFAR10DataModule(root=str(root), download=False, val_size=0, num_workers=0)
        dm.prepare_data()
        return dm

    root = write_folder_layout(tmp_path / "data")
    settle(root)  # the table trusts every file: the next check rewrites nothing
    ready().setup()  # builds the cache (nothing to load ahead: there was none)
    kept = ready()
    assert kept._ahead is not None  # unchanged: the load made during the check is setup's
    kept.setup()
    image = first(first(root / "test"))
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(image)  # a new test image
    rebuilt = ready()
    assert rebuilt._ahead is None  # loaded from the old cache: dropped
    rebuilt.setup()
    changed = (rebuilt.test_set.x != kept.test_set.x).flatten(1).any(1)
    assert changed.sum() == 1 and (rebuilt.test_set.x[changed] == 7).all()
    assert torch.equal(rebuilt.train_set.x, kept.train_set.x)


def test_the_early_load_is_skipped_or_cut_again_when_setup_would_not_match_it(
    tmp_path, monkeypatch
):
    """No early load once the data are loaded (setup() before the first check); one cut with
    other options than setup()'s is cut again; a failed check is reported without waiting for
    the load."""
    import threading

    from cifar_lightning.data import CIFAR10DataModule
    from cifar_lightning.data import datamodule as datamodule_module

    root = write_folder_layout(tmp_path / "data")
    settle(root)
    sources.prepare_cache(root, allow_download=False)

    def fresh() -> CIFAR10DataModule:
        return CIFAR10DataModule(root=str(root), download=False, val_size=0, num_workers=0)

    dm = fresh()
    dm.setup()
    dm.prepare_data()
    assert dm._ahead is None  # nothing loaded twice
    dm = fresh()
    dm.prepare_data()
    dm.val_size = 4  # reconfigured after the early load (val_size=0)
    dm.setup()
    assert dm.sizes["val"] == 4 and dm._ahead is None
    # The check fails while the load still runs: its error comes first.
    release, finished = threading.Event(), []

    def slow_load() -> dict:
        release.wait(20)
        finished.append(True)
        raise RuntimeError("the load")

    def failing_check(root, allow_download):
        raise DataError("the check")

    dm = fresh()
    monkeypatch.setattr(dm, "_load", slow_load)
    monkeypatch.setattr(datamodule_module, "prepare_cache", failing_check)
    with pytest.raises(DataError, match="the check"):
        dm.prepare_data()
    assert not finished  # raised before the load ended
    release.set()


def test_a_damaged_cache_says_whether_it_can_be_rebuilt_there(tmp_path):
    # The message used to promise a rebuild from the data under the root when there was none,
    # and gave the reason as a bare number (a text file's KeyError: '101').
    root = write_folder_layout(tmp_path / "d", n_train=2, n_test=1)
    cache = sources.prepare_cache(root, allow_download=False)
    cache.write_text("hello\nnot a cache\n")
    with pytest.raises(DataError, match=r"unusable \(KeyError: .*Delete it; the next run rebuilds"):
        sources.load_splits(root)  # the source is there (prepare_cache would have rebuilt it)
    shutil.rmtree(root / "train")
    shutil.rmtree(root / "test")
    sources.prepare_cache(root, allow_download=False)  # without its source, the cache is the data
    with pytest.raises(DataError) as err:
        sources.load_splits(root)
    msg = str(err.value)
    assert "unusable (KeyError: " in msg and "rebuilds it from" not in msg
    assert f"{root} holds no CIFAR-10 source to rebuild it from" in msg
    assert "data.download=true" in msg and "data.root=FOLDER" in msg


@pytest.mark.parametrize("allow_download", [True, False])
def test_a_root_that_is_a_file_is_named(tmp_path, monkeypatch, allow_download):
    # It used to be taken for an empty folder: a download into it failed with "File exists".
    monkeypatch.setattr(sources, "download", lambda root: pytest.fail("download attempted"))
    file = tmp_path / "data.txt"
    file.write_text("x")
    for root in (file, file / "cifar"):
        with pytest.raises(DataError, match=rf"{file} is a file, not a folder.*data.root=FOLDER"):
            sources.prepare_cache(root, allow_download=allow_download)
    assert file.read_text() == "x"


def test_a_failed_download_leaves_no_folder_it_created(tmp_path, monkeypatch):
    # torchvision creates the root (and the folders above it) before it fetches anything: a
    # mistyped data.root used to stay behind as an empty folder after the download failed.
    def failing_download(root: Path, leave: str | None = None) -> None:
        os.makedirs(root, exist_ok=True)
        if leave:
            (root / leave).write_bytes(b"part")
        raise DataError(f"CIFAR-10 is not under {root} and the download failed")

    monkeypatch.setattr(sources, "download", failing_download)
    typo = tmp_path / "dta" / "cifar"
    with pytest.raises(DataError, match="download failed"):
        sources.prepare_cache(typo, allow_download=True)
    assert not (tmp_path / "dta").exists()
    existing = tmp_path / "empty"  # not created by the run: kept
    existing.mkdir()
    with pytest.raises(DataError, match="download failed"):
        sources.prepare_cache(existing, allow_download=True)
    assert existing.is_dir()
    # A folder the download wrote into is not removed, nor the folders above it.
    monkeypatch.setattr(sources, "download", lambda root: failing_download(root, "part.tar.gz"))
    with pytest.raises(DataError, match="download failed"):
        sources.prepare_cache(typo, allow_download=True)
    assert (typo / "part.tar.gz").is_file()
    # Interrupted (Ctrl-C) before it wrote anything: removed too.
    shutil.rmtree(tmp_path / "dta")

    def interrupted(root: Path) -> None:
        os.makedirs(root, exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sources.prepare_cache(typo, allow_download=True)
    assert not (tmp_path / "dta").exists()


def test_a_download_into_a_new_folder_is_cached_there(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "download", lambda root: write_torchvision_layout(root, 2, 1))
    root = tmp_path / "new" / "data"
    sources.prepare_cache(root, allow_download=True)
    assert len(sources.load_splits(root).train_y) == 20
