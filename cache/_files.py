"""colhead's own files beside a cache: temporary names, the write probe, durable renames.

One module names every file colhead leaves in a cache folder besides the caches and their
locks, so ``cache gc`` can tell them from a user's files, and the extractor does not invent a
name of its own:

* ``.NAME.colhead-PID.init`` / ``.NAME.colhead-PID.copy``: a cache being created, or rewritten
  (recovered, merged, frozen) aside before it is renamed over ``NAME``. Older colheads wrote
  ``.NAME.PID.init`` / ``.copy``; such a file counts as ours only when it holds HDF5, so a
  user's ``.notes.2023.copy`` is never taken for one (issue 13).
* ``.colhead-probe-PID``: the extractor's check that the folder is writable.

A rename replaces a good file with a new one only when the new one is on disk: the data is
fsynced before ``os.replace``, and the folder after it, or a power loss could leave an empty
file (or the old name) where a good cache was (issue 13).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_PID = 2**31 - 1  # no process id is larger (os.kill raises OverflowError past 2**63)
_TEMP = re.compile(r"^\.(?P<name>.+)\.colhead-(?P<pid>\d{1,10})\.(?:init|copy)$")
_OLD_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d{1,10})\.(?:init|copy)$")
_PROBE = re.compile(r"^\.colhead-probe-(?P<pid>\d{1,10})$")


def temp_path(target: str | os.PathLike, kind: str) -> Path:
    """Where this process builds ``target`` aside: ``kind`` is "init" (create) or "copy"."""
    if kind not in ("init", "copy"):
        raise ValueError(f"kind must be 'init' or 'copy', got {kind!r}.")
    target = Path(target)
    return target.with_name(f".{target.name}.colhead-{os.getpid()}.{kind}")


def probe_path(folder: str | os.PathLike) -> Path:
    """The file the extractor creates and removes to prove ``folder`` is writable.

    Public (``colhead.cache.probe_path``): only the cache package names colhead's files, so
    ``cache gc`` recognises one a killed extractor left.
    """
    return Path(folder) / f".colhead-probe-{os.getpid()}"


def temp_owner(path: Path, *, cache_name: str | None = None) -> int | None:
    """The pid that made ``path`` if it is one of colhead's temporary files, else None.

    With ``cache_name``, only the temporary files of that cache count.
    """
    name = path.name
    m = _TEMP.match(name) or _PROBE.match(name)
    if m is None:
        m = _OLD_TEMP.match(name)
        if m is None or not _is_hdf5(path):
            return None
    if cache_name is not None and m.groupdict().get("name") != cache_name:
        return None
    pid = int(m.group("pid"))
    return pid if 0 < pid <= _MAX_PID else None


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder: the rename is as durable as it gets
        pass
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)`` that a power loss cannot turn into an empty or missing ``dst``."""
    fsync_file(src)
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
