"""Crash and full-disk recovery: what a writer does about the file a dead or failed one left.

Three moments, all under the cache's writer lock (see ``_lock``):

* before writing: refuse a (nearly) full disk (``check_room``), and remove the temporary files
  a killed writer of this cache left (``remove_dead_temps``);
* on opening: a file still marked 'open for writing' was left by a writer that died; it is
  repaired from its committed content (``recover_if_dead``);
* when a write fails (a full disk, a quota, a file-size limit): nothing more of this writer
  reaches the disk, and the error says what is kept (``write_failed``).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from . import _files, _flags, _h5, _layout
from ._format import CacheError

MIN_ROOM = 256 * 1024  # bytes a writer wants free before it starts: a first batch's chunks


def check_room(path: Path) -> None:
    """Refuse to start on a (nearly) full disk, before anything is written.

    A write that fails half-way is survived (see ``write_failed``), but not touching the file
    at all is cleaner, and it makes a failure while creating or recovering the file, whose
    partial writes h5py can only print, not raise, unlikely.
    """
    size = path.stat().st_size if path.exists() else 0
    st = os.statvfs(path.parent)
    room = st.f_bavail * st.f_frsize
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:  # a new file (create, recovery) may grow to `soft`
        room = min(room, soft - size)
    # A dead writer's file is rewritten aside before it is renamed back: a full copy.
    recovering = size and _flags.write_flags(path)
    need = MIN_ROOM + (size if recovering else 0)
    if room < need:
        raise CacheError(
            f"Only {room / 1e6:.2f} MB can be written beside {path} (free disk space, "
            f"or this process's file-size limit); colhead needs {need / 1e6:.2f} MB to "
            + ("recover it and go on" if recovering else "start writing it")
            + ". Make room and rerun the same command; nothing was changed."
        )


def remove_dead_temps(path: Path) -> None:
    """Remove what a killed writer of this cache left while creating or recovering it.

    Its temporary files (``_files.temp_path``) are only made under this cache's writer lock,
    which the caller holds, so their makers are gone; each is as large as the cache.
    """
    for p in path.parent.glob(f".{_glob_escape(path.name)}.*"):
        pid = _files.temp_owner(p, cache_name=path.name)
        if pid is not None and pid != os.getpid():
            p.unlink(missing_ok=True)


def _glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def recover_if_dead(path: Path) -> None:
    """Repair the file of a writer that died, from its committed content.

    The caller holds the writer lock, so an 'open for writing' mark was left by a writer that
    died (killed, or its disk filled up: then the file may also end short of its last
    allocation). A mark without SWMR (it died while stamping) only needs clearing; a SWMR
    writer's file is rewritten with exactly its committed content, as SWMR leaves its mark
    for good.
    """
    flags = _flags.write_flags(path)
    if not flags:
        return
    if not flags & _flags.SWMR_WRITE_ACCESS:
        _flags.clear_write_flags(path)
        return
    _flags.extend_eoa(path)
    with _h5.open_read(path, settled=True) as src:  # its writer is dead: no retries
        try:
            _layout.copy_committed(src, path, path)
        except _h5.READ_ERRORS as e:
            if isinstance(e, CacheError) or not _reading_failed(e):
                raise  # writing the copy failed: a full disk, said as such by the writer
            raise CacheError(
                f"{path} was left by a writer that died, and its committed rows "
                f"cannot be read back ({_h5.reason(e)}): it is damaged beyond what "
                "colhead repairs. Keep it aside (or delete it) and extract again."
            ) from None


def _reading_failed(e: BaseException) -> bool:
    """Whether an h5py error came from reading (damage) rather than writing (no room)."""
    text = str(e).lower()
    return not any(w in text for w in ("write", "flush", "space", "too large", "extend"))


def write_failed(path: Path, e: BaseException, what: str, kept: int | None, f) -> CacheError:
    """The error for a write the file system refused: a full disk, a quota, a size limit.

    From here on nothing of the writer reaches the disk (see ``detach``): what it had
    committed stays as it is, and the next writer recovers exactly that.
    """
    detach(f)
    try:  # readers can then read every committed row, as after a kill (see _flags)
        _flags.extend_eoa(path)
    except OSError:
        pass
    rows = (
        "Every row committed before is"
        if kept is None
        else (f"The {kept} rows committed before are")
    )
    return CacheError(
        f"Writing {what} to {path} failed ({_h5.reason(e)}). Is the disk full, or a "
        f"quota or file-size limit reached? {rows} kept: make room and rerun the same "
        "command to finish."
    )


def detach(f) -> None:
    """Point an HDF5 file's descriptor at /dev/null once a write to it failed.

    HDF5 retries a failed flush whenever the file or one of its datasets is closed, at exit at
    last, and a retry that gets further than the first try can leave a file whose header says
    it was closed cleanly while its tail is missing. After this the file's state on disk is
    the one of the failure: marked open by a SWMR writer, which the next writer recovers.
    """
    try:
        fd = f.id.get_vfd_handle() if f is not None and f.id.valid else None
    except Exception:  # not the default (sec2) driver: nothing to detach
        fd = None
    if isinstance(fd, int):
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


def close_quietly(f) -> None:
    """Close an HDF5 file whose writes already failed; the failure was reported."""
    try:
        f.close()
    except (OSError, RuntimeError):
        pass
