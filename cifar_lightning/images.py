"""The images predict.py is given: finding the files, reading each as 8-bit RGB, sizing it to
32x32, and saying why a file could not be read.

Finding (find_inputs): files, folders (searched recursively, by name) and globs (`**` for any
depth). Symbolic links are followed, each folder is walked once (a link loop ends there) and
each file gives one row, whatever the number of names it is reached by. A folder reached again
through a link is reported (Inputs.revisits); one the inputs name twice (`p/**` matches p and
each folder under it, input=[p, p/a]) is not. Hidden entries are left out; in folders, so are
files not named as images (IMAGE_SUFFIXES). Labels (class_lookup, label_of): a folder named
after one of the model's classes.

Reading (to_rgb): EXIF orientation applied; single-channel images of more than 8 bits (Pillow
modes I;16*, I, F: 16-bit PNG and TIFF) scaled from 0..65535 to 0..255, where Pillow's own
convert("RGB") clips them (most of a 16-bit photo turns white); 16-bit RGB(A) PNGs Pillow reads
as 8 bits itself; transparency (alpha, a palette's or a tRNS colour) composited on `background`;
palette, grayscale, bilevel and CMYK expanded to RGB.

Sizing (to_32, RESIZE): "crop" (default) scales the short side to 32 and cuts the centre 32x32;
"stretch" scales both sides to 32, ignoring the aspect ratio; "pad" scales the long side to 32
and fills the rest with `background`. Bicubic, antialiased when shrinking (Pillow's resize).
Images already 32x32 are used as they are, so a CIFAR-10 test folder goes through unchanged.
"""

from __future__ import annotations

import glob
import os
import stat
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from cifar_lightning import CLASSES, DISPLAY_NAMES
from cifar_lightning.errors import UserError

SIZE = 32
RESIZE = ("crop", "stretch", "pad")
# Row statuses of predictions.csv.
OK, UNREADABLE, NOT_AN_IMAGE, TOO_LARGE = "ok", "unreadable", "not_an_image", "too_large"
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# In folders only files named like images are read (a folder of photos often holds a notes.txt
# or .DS_Store); files named on the command line or matched by a glob are always tried.
IMAGE_SUFFIXES = frozenset(Image.registered_extensions())


class BadImage(Exception):
    """A file that cannot be predicted: its status (UNREADABLE, NOT_AN_IMAGE, TOO_LARGE) and why."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Inputs:
    """The files to predict, in order, each once; what the search left out, for the summary."""

    files: list[Path] = field(default_factory=list)
    ignored: int = 0  # files in folders without an image suffix
    revisits: list[str] = field(default_factory=list)  # folders reached again through a link
    seen_files: set[str] = field(default_factory=set)
    # (st_dev, st_ino) of each folder walked -> whether it was reached through a link
    seen_dirs: dict[tuple[int, int], bool] = field(default_factory=dict)

    def add(self, path: Path) -> None:
        # Two names of one file (a link, an entry given twice) give one row, the first name's.
        real = os.path.realpath(path)
        if real not in self.seen_files:
            self.seen_files.add(real)
            self.files.append(path)


def parse_background(value: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(str(value))[:3]
    except ValueError as err:
        raise UserError(f"background={value!r} is not a colour: use a name (white, black) "
                        f"or #rrggbb") from err  # fmt: skip


def _walk(folder: Path, found: Inputs, link: bool | None = None) -> None:
    """Every file under `folder`, by name at each level, links followed; a folder reached a
    second time (a link loop, or two links to one folder) is not walked again. Links come after
    the real entries of their folder: a file reached both ways keeps its own folder's name (and
    the label that name gives). `link`: whether `folder` is reached through a link; None for a
    folder the inputs name, whose second time is the inputs overlapping, not reported."""
    try:
        st = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))
    except OSError:
        found.add(folder)  # a folder that cannot be listed gets a row saying so
        return
    key = (st.st_dev, st.st_ino)
    if key in found.seen_dirs:
        # Without a link on either way to it, a folder is reached twice only when the inputs
        # name it and a folder above it (input=[p/a, p]): not a revisit through links.
        if link is not None and (link or found.seen_dirs[key]):
            found.revisits.append(str(folder))
        return
    link = folder.is_symlink() if link is None else link
    found.seen_dirs[key] = link
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue  # hidden files and folders (.DS_Store, .ipynb_checkpoints)
        if entry.is_dir():
            _walk(path, found, link or entry.is_symlink())
        elif entry.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.add(path)
        elif entry.is_symlink() and not entry.is_file():
            found.add(path)  # a broken link: its row says so
        else:
            found.ignored += 1  # other files, and sockets or pipes (reading one would block)


def _folders(base: Path, seen: set[tuple[int, int]]) -> list[Path]:
    """`base` and the folders under it, links followed, each folder once; hidden ones left
    out, as glob's `**` leaves them."""
    try:
        st = base.stat()
        entries = sorted(os.scandir(base), key=lambda e: (e.is_symlink(), e.name))
    except OSError:
        return []
    if (st.st_dev, st.st_ino) in seen:
        return []
    seen.add((st.st_dev, st.st_ino))
    found = [base]
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith("."):
            found += _folders(Path(entry.path), seen)
    return found


def _glob(pattern: str) -> list[str]:
    """glob.glob's matches, sorted, with `**` (any depth, none included) searched in each
    folder once: glob's own `**` follows links around a loop until the path is too long, a
    number of paths that grows exponentially with the links in it."""
    parts = Path(pattern).parts
    if "**" not in parts:
        return sorted(glob.glob(pattern))
    cut = parts.index("**")
    head, rest = os.path.join(*parts[:cut]) if cut else ".", parts[cut + 1 :]
    matches, seen = [], set()
    for base in _glob(head) if glob.has_magic(head) else [head]:
        for folder in _folders(Path(base), seen):
            tail = os.path.join(glob.escape(str(folder)), *rest)
            matches += _glob(tail) if rest else [tail]  # `rest` may hold another `**`
    return [str(Path(m)) for m in matches]  # without the "./" of a pattern starting at `**`


def find_inputs(inputs: str | Sequence[str]) -> Inputs:
    """The files that `inputs` names: image files, folders (searched recursively) and globs
    (`**` for any depth), in the order given. A name that matches nothing is a UserError."""
    names = [inputs] if isinstance(inputs, str) else [str(name) for name in inputs]
    if not names:
        raise UserError("input=[] names no files: pass input=PATH (a file, a folder or a glob).")
    found = Inputs()
    for name in names:
        path = Path(os.path.expanduser(name))
        if path.is_dir():
            _walk(path, found)
        elif path.exists():
            found.add(path)
        elif glob.has_magic(name):
            matches = _glob(os.path.expanduser(name))
            if not matches:
                raise UserError(f"input: no file matches {name!r}.")
            for match in map(Path, matches):
                if match.is_dir():
                    _walk(match, found)
                else:
                    found.add(match)
        else:
            broken = " (a broken symbolic link)" if path.is_symlink() else ""
            raise UserError(f"input: {name} does not exist{broken}.")
    if not found.files:
        raise UserError(f"input: no image files in {', '.join(names)} ({found.ignored} other "
                        f"files; images are read by suffix: .png, .jpg, ...).")  # fmt: skip
    return found


def class_lookup(class_names: Sequence[str]) -> dict[str, int]:
    """Folder name (lower case) -> index into the model's `class_names`: each of its names, and
    when its classes are CIFAR-10's (in any order, either spelling), the other spelling too
    (automobile and car, airplane and plane)."""
    names = [str(name).lower() for name in class_names]
    lookup: dict[str, int] = {}
    for k, name in enumerate(names):
        lookup.setdefault(name, k)
    cifar = [CLASSES.index(n) if n in CLASSES else DISPLAY_NAMES.index(n) if n in DISPLAY_NAMES
             else None for n in names]  # fmt: skip
    if None not in cifar and sorted(cifar) == list(range(len(CLASSES))):
        for k, c in enumerate(cifar):
            lookup.setdefault(CLASSES[c], k)
            lookup.setdefault(DISPLAY_NAMES[c], k)
    return lookup


def label_of(path: Path, lookup: Mapping[str, int]) -> int | None:
    """The class of an image in a folder named after one (class_lookup's names, any case): its
    index into the model's class names, else None."""
    return lookup.get(path.parent.name.lower())


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """An opened image as 8-bit RGB, upright, transparency on `background` (the module doc)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_DEPTH_MODES:
        # 0..65535 to 0..255 with rounding; I and F (32-bit) are read as 16-bit sources are.
        values = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
        img = Image.fromarray(np.rint(values * (255 / 65535)).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")  # a palette's or tRNS transparency becomes alpha here
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba)
    return img.convert("RGB")


def to_32(img: Image.Image, resize: str, background: tuple[int, int, int]) -> Image.Image:
    """An RGB image as 32x32 by the `resize` method (the module doc); 32x32 ones unchanged."""
    if img.size == (SIZE, SIZE):
        return img
    cubic = Image.Resampling.BICUBIC
    if resize == "crop":
        return ImageOps.fit(img, (SIZE, SIZE), cubic)  # centre crop to square, then scale
    if resize == "stretch":
        return img.resize((SIZE, SIZE), cubic)
    if resize == "pad":
        return ImageOps.pad(img, (SIZE, SIZE), cubic, color=background)
    raise UserError(f"resize={resize!r} is not a method: use one of {', '.join(RESIZE)}.")


def read_image(path: Path, resize: str, background: tuple[int, int, int]) -> np.ndarray:
    """The file as a (32, 32, 3) uint8 array, or BadImage saying why it cannot be one."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise BadImage(UNREADABLE, "a folder that cannot be listed (permissions?)")
        if not stat.S_ISREG(st.st_mode):  # a pipe or device named on the command line
            raise BadImage(UNREADABLE, "not a regular file")
        if st.st_size == 0:
            raise BadImage(NOT_AN_IMAGE, "empty file (0 bytes)")
        # Pillow warns above MAX_IMAGE_PIXELS and refuses twice that: both are "too large".
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: a damaged file fails here, not later
                rgb = to_rgb(img, background)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(TOO_LARGE, f"{err} (Pillow's decompression-bomb limit)") from err
    except UnidentifiedImageError as err:
        raise BadImage(NOT_AN_IMAGE, "not in an image format Pillow reads") from err
    except FileNotFoundError as err:
        raise BadImage(UNREADABLE, "no such file (a broken symbolic link?)") from err
    except OSError as err:  # permissions, I/O, and Pillow's "image file is truncated"
        raise BadImage(UNREADABLE, str(err) or type(err).__name__) from err
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise SyntaxError, ValueError,
        # struct.error, EOFError ... for damaged data: each is an unreadable file, not a crash.
        raise BadImage(UNREADABLE, f"damaged image data ({type(err).__name__}: {err})") from err
    return np.asarray(to_32(rgb, resize, background), dtype=np.uint8)
