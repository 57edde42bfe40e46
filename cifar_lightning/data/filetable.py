"""Whether a data source changed since its cache was built, without reading every file each run.

A source is summarised by its signature: a digest over every record a read of it judges, in the
order the read lists them (a folder by name, a file by name and the digest of its contents).
The cache stores the signature and a table of what the check saw: per file its stat key (size,
mtime_ns, ctime_ns, inode, device) and content digest. A later check stats every file and reads
again only those whose key differs from the table's. A file's contents cannot change without
its ctime changing (an edit that restores size and mtime sets ctime; ctime cannot be set back),
except within one tick of the file system's clock: git's "racy timestamp" case. So, as git does
for its index, a file whose mtime or ctime is not strictly older than the table is never trusted
by key: the table stores no key for it, and every check reads it again. The table's time is the
file system's own clock (a file created in the root), read before the first stat: a file
changed after its stat gets a ctime at least that late.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import NamedTuple

import torch

# Stand-ins for a file's 16-byte digest: a folder, a split folder that is absent, and a file
# the read will fail on (a folder named like an image, a dangling link, no read permission).
FOLDER, ABSENT, UNREADABLE = b"/" * 16, b"-" * 16, b"?" * 16

_KEY = struct.Struct("<QqqQQ")  # size, mtime_ns, ctime_ns, inode, device
_U64 = (1 << 64) - 1
NO_KEY = bytes(_KEY.size)  # not a trusted key: a stand-in, or a file to read at every check


class Group(NamedTuple):
    """Consecutive records of a listing: a stand-in record (rel, digest) first, if any, then
    the files `names` in `folder`, recorded as `prefix + name`."""

    standin: tuple[str, bytes] | None
    folder: str | None
    prefix: str
    names: list[str]


@dataclass
class Table:
    """What a check saw, record by record in listing order: name, trusted key (NO_KEY where
    there is none) and digest; and the signature they make."""

    names: list[str]
    keys: bytes  # _KEY.size bytes per record
    digests: bytes  # 16 bytes per record
    signature: str

    def to_payload(self) -> dict:
        # One string and two byte tensors: 60,000 records load in milliseconds (a list of
        # 60,000 tuples would take far longer through torch.load's weights_only unpickler).
        return {
            "names": "\0".join(self.names),  # no path holds a NUL
            "keys": bytes_tensor(self.keys),
            "digests": bytes_tensor(self.digests),
        }

    @classmethod
    def from_payload(cls, d: dict, signature: str) -> Table:
        names = d["names"].split("\0") if d["names"] else []
        keys, digests = d["keys"].numpy().tobytes(), d["digests"].numpy().tobytes()
        if len(keys) != _KEY.size * len(names) or len(digests) != 16 * len(names):
            raise ValueError("the file table's columns differ in length")
        return cls(names, keys, digests, signature)

    def lookup(self) -> dict[str, tuple[bytes, bytes]]:
        """name -> (trusted key, digest)."""
        k = _KEY.size
        return {
            name: (self.keys[k * i : k * i + k], self.digests[16 * i : 16 * i + 16])
            for i, name in enumerate(self.names)
        }


@dataclass
class Check:
    signature: str
    table: Table  # the table a cache written now would store
    read: int  # files whose contents this check read
    newly_trusted: int  # of them, files that a table written now would trust by key


def bytes_tensor(data: bytes) -> torch.Tensor:
    """`data` as a uint8 tensor (torch.frombuffer refuses an empty buffer)."""
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def fs_now(root: os.PathLike | str) -> int | None:
    """The file system's clock under `root`, in ns (the mtime of a file created there), or None
    where nothing can be created (a read-only root)."""
    try:
        fd, path = tempfile.mkstemp(dir=root, prefix=".cifar10-clock.", suffix=".tmp")
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(path)


def file_digest(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).digest()
    except OSError:
        return UNREADABLE


def _stat_keys(folder: str, names: list[str]) -> list[bytes]:
    """The key of each file; NO_KEY for what is not a regular file or cannot be stat'ed.
    Relative to the folder's descriptor: a third faster than full paths."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return [NO_KEY] * len(names)
    out: list[bytes] = []
    append, pack, isreg, stat_at = out.append, _KEY.pack, stat.S_ISREG, os.stat
    try:
        for name in names:
            try:
                st = stat_at(name, dir_fd=fd)
            except OSError:
                append(NO_KEY)
                continue
            if isreg(st.st_mode):  # inode and device numbers may use all 64 bits
                append(pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino & _U64,
                            st.st_dev & _U64))  # fmt: skip
            else:
                append(NO_KEY)
    finally:
        os.close(fd)
    return out


def _latest(key: bytes) -> int:
    """The later of a key's mtime and ctime."""
    _, mtime, ctime, _, _ = _KEY.unpack(key)
    return max(mtime, ctime)


def signature_of(names: list[str], digests: bytes) -> str:
    # fsencode: a file name need not be valid UTF-8. A name holds no NUL and a digest is 16
    # bytes: the records cannot run into one another.
    h = hashlib.blake2b(digest_size=16)
    for i, name in enumerate(names):
        h.update(os.fsencode(name) + b"\0" + digests[16 * i : 16 * i + 16])
    return h.hexdigest()


def check(
    groups: list[Group], stored: Table | None, now: int | None, rehash_all: bool = False
) -> Check:
    """The signature of the listing `groups`, reading only the files `stored` cannot vouch for.

    `now` (fs_now, taken before this call) decides which keys the returned table trusts; None
    trusts none. `rehash_all` reads every file and stats none: the check as it was before the
    table (benchmarks/data_check.py compares the two)."""
    names: list[str] = []
    keys: list[bytes] = []
    standins = 0
    for g in groups:
        if g.standin is not None:
            names.append(g.standin[0])
            keys.append(NO_KEY)
            standins += 1
        if g.names:
            names += [g.prefix + n for n in g.names]
            keys += [NO_KEY] * len(g.names) if rehash_all else _stat_keys(g.folder, g.names)
    joined = b"".join(keys)
    if (
        stored is not None
        and joined == stored.keys
        and names == stored.names
        and keys.count(NO_KEY) == standins
    ):  # unchanged: the same records, every file vouched for by the key the table trusts
        return Check(stored.signature, stored, 0, 0)

    known = stored.lookup() if stored is not None else {}
    digests: list[bytes] = []
    read = newly = i = 0
    for g in groups:
        if g.standin is not None:
            digests.append(g.standin[1])
            i += 1
        for name in g.names:
            key, old = keys[i], known.get(names[i])
            if key != NO_KEY and old is not None and old[0] == key:
                digests.append(old[1])
            else:
                digest = file_digest(os.path.join(g.folder, name))
                digests.append(digest)
                read += 1
                keyed = key != NO_KEY and digest != UNREADABLE
                if keyed and now is not None and _latest(key) < now:
                    newly += 1
                else:
                    keys[i] = NO_KEY  # racy, unreadable or not a file: read at every check
            i += 1
    if now is None:
        keys = [NO_KEY] * len(keys)
    joined_digests = b"".join(digests)
    table = Table(names, b"".join(keys), joined_digests, signature_of(names, joined_digests))
    return Check(table.signature, table, read, newly)
