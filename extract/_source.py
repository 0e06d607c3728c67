"""The item model every data source produces: ``Dataset``, and the guarded file reader.

A ``Dataset`` is an ordered list of items with stable ids, read by position (``read(i)``): the
extractor resumes by id and schedules by position, so every source offers random access. Files
and in-memory arrays are held directly (``paths`` / ``arrays``); a source whose items live inside
bigger files (tar shards, parquet or arrow files) gives a ``Store``: an index built by one pass
over the file headers, whose ``read(i)`` seeks to the item.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlencode

import numpy as np

# No image colhead decodes is larger: the pixel limit (_images.MAX_PIXELS, ~89 MP) at 16-bit
# RGBA uncompressed is ~720 MB. Reading a bigger file whole would only exhaust memory.
MAX_FILE_BYTES = 1 << 30


def read_image_file(path: str | os.PathLike, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a file that should hold one image, refusing what would hang or exhaust memory.

    A named pipe (which would wait forever for a writer), a socket or a device (``/dev/zero``
    never ends) is refused, and so is a file over ``max_bytes``. The data set reader and
    ``predict`` use this same check.

    Raises:
        OSError: missing or unreadable file (``strerror`` says why), not a regular file
            (``EINVAL``), larger than ``max_bytes`` (``EFBIG``).
    """
    # O_NONBLOCK: opening a named pipe must not wait for a writer that never comes; the check
    # below then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)")
        if st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, more than any decodable image")
        data = f.read(max_bytes + 1)  # bounded: the file may grow after the fstat
        if len(data) > max_bytes:
            raise OSError(
                errno.EFBIG, f"more than {max_bytes} bytes, more than any decodable image"
            )
        return data


def file_stat(path: str | os.PathLike) -> tuple[int, int]:
    """(size, mtime_ns) of a file; (-1, -1) when it cannot be read."""
    try:
        st = os.stat(path)
        return (int(st.st_size), int(st.st_mtime_ns))
    except OSError:
        return (-1, -1)


class Store(Protocol):
    """Items stored inside bigger files: random access over an index made at parse time.

    Must pickle small (DataLoader workers and Ray tasks receive it): open files lazily.
    """

    def read(self, i: int) -> bytes:
        """The image bytes of item ``i``; OSError (with ``strerror``) when it cannot be read."""

    def stat(self, i: int) -> tuple[int, int]:
        """(size, mtime_ns) of item ``i`` for cheap change detection; (-1, -1) if unknown."""


@dataclass
class Dataset:
    """An ordered list of items. Exactly one of ``paths``, ``arrays``, ``store`` holds them.

    Attributes:
        spec: normalised spec string, part of the cache identity.
        ids: stable item ids.
        labels: class name per item, or None for unlabelled data.
        classes: all class names, in order.
        paths: file per item (file datasets).
        arrays: image per item (in-memory datasets), uint8 or any numeric dtype.
        info: provenance written into the cache's metadata.
        store: items inside bigger files (tar shards, parquet, arrow).
    """

    spec: str
    ids: list[str]
    labels: list[str] | None
    classes: list[str]
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    store: Store | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def stat(self, i: int) -> tuple[int, int]:
        """(size, mtime_ns) of a file item; (0, 0) for in-memory items. Cheap change detection."""
        if self.paths is not None:
            return file_stat(self.paths[i])
        if self.store is not None:
            return self.store.stat(i)
        return (0, 0)

    def read(self, i: int):
        """Raw content: bytes of the image, or the array. Raises OSError for unreadable items."""
        if self.paths is not None:
            return read_image_file(self.paths[i])
        if self.store is not None:
            return self.store.read(i)
        return self.arrays[i]

    def content_hash(self, content) -> str:
        if isinstance(content, (bytes, bytearray)):
            return hashlib.sha256(content).hexdigest()
        a = np.ascontiguousarray(content)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()


def safe_id(rel: str) -> str:
    """A printable UTF-8 id for a relative path.

    Non-UTF-8 file names come back from os.walk with surrogate escapes; HDF5 stores UTF-8, so ids
    spell undecodable bytes as \\xNN while the real path is kept for reading.
    """
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


# Names that mark split folders, as Hugging Face's imagefolder and most data sets ship them.
SPLIT_ALIASES = (("train", "training"), ("val", "valid", "validation"), ("test", "testing"))


def is_split_name(name: str) -> bool:
    return any(name.lower() in group for group in SPLIT_ALIASES)


class SplitRequired(ValueError):
    """A source with splits was asked for without one; ``splits`` names them."""

    def __init__(self, message: str, splits: list[str]):
        super().__init__(message)
        self.splits = list(splits)


def pick_split(where: str, split: str | None, names: list[str]) -> str:
    """The split of ``names`` that ``split`` asks for (``val`` finds ``validation``), or "all".

    A source with splits needs ``--split``: mixing train and test rows in one cache silently is
    the mistake this prevents.
    """
    listed = ", ".join(names)
    if split is None:
        raise SplitRequired(
            f"{where} has splits {listed}; choose one with --split (e.g. --split {names[0]}), "
            "or --split all for every split.",
            names,
        )
    if split == "all" or split in names:
        return split
    group = next((g for g in SPLIT_ALIASES if split.lower() in g), (split.lower(),))
    found = [n for n in names if n.lower() in group]
    if len(found) == 1:
        return found[0]
    raise ValueError(f"{where} has no split {split!r}; its splits are {listed} (or all).")


def refuse_split(where: str, split: str | None, how: str) -> None:
    """``--split`` on a source without splits is an error, never ignored."""
    if split is not None:
        raise ValueError(
            f"{where} has no splits ({how}), so --split {split!r} cannot apply; drop --split."
        )


def split_query(arg: str, known: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``PATH?k=v&...`` -> (PATH, {k: v}) when every key is known and PATH is not a real file."""
    base, sep, query = arg.rpartition("?")
    if not sep or Path(arg).expanduser().exists():
        return arg, {}
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs or any(k not in known for k, _ in pairs):
        return arg, {}
    return base, dict(pairs)


def with_query(spec: str, options: dict[str, str | None]) -> str:
    """The normalised spec: ``spec`` plus its non-default options as a query."""
    set_ = {k: v for k, v in options.items() if v is not None}
    return f"{spec}?{urlencode(set_)}" if set_ else spec
