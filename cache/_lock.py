"""One writer per cache, enforced by colhead's own lock file.

HDF5's built-in file locking fails on many NFS mounts (and colhead opens every file with
``locking=False`` for that reason), so the cache relies on a sibling ``<cache>.lock`` file:

* it is created with ``O_CREAT | O_EXCL``, which is atomic on local file systems and on NFSv3+,
  so two writers on two hosts cannot both create it;
* it records the owner's host, pid and start time, so a refused writer can say who holds it;
* the owner also holds an ``flock`` on it where the file system supports one. A lock file whose
  owner died (``kill -9``) is recognised as stale when it was made on this host and nobody holds
  its ``flock`` — the kernel drops that lock when a process dies, even if the pid is reused.

A lock made on another host is never broken automatically: we cannot see that host's processes.
The error says how to remove it by hand once you are sure its writer is gone.

What users of shared caches (NFS and other network file systems) need to know:

* ``HDF5_USE_FILE_LOCKING`` does not matter: colhead passes ``locking=False`` to every
  ``h5py.File``, so HDF5's own locks (which fail or hang on many NFS mounts) are never taken,
  and this lock file is the one rule. Any process that writes a cache without colhead's
  ``CacheWriter`` bypasses it; don't.
* NFSv3 or later (``O_EXCL`` is not atomic on NFSv2). Stale-lock detection works for writers
  that ran on the same host as the new writer; a writer killed on another host leaves a lock
  that must be removed by hand (``rm CACHE.h5.lock``, or ``colhead cache gc --yes`` run on that
  host) once you are sure it is gone. Hosts should agree on their clocks within a minute.
* Readers take no lock: they open with SWMR and trust only the committed counts, so any number
  of them can read while one writer appends.

Linux emulates ``flock`` on NFS with POSIX locks, which belong to a process, not to a file
descriptor: probing the lock from the owning process would succeed and, on close, drop the
owner's lock. So a lock owned by this very process is never probed (see ``is_stale``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

EMPTY_LOCK_S = 60  # an empty lock file younger than this may be a lock being created right now


class CacheLockedError(RuntimeError):
    """Another process is writing this cache."""


def lock_path_for(cache_path: str | os.PathLike) -> Path:
    """Where the writer lock of ``cache_path`` lives."""
    p = Path(cache_path)
    return p.with_name(p.name + ".lock")


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _read_owner(path: Path) -> dict:
    try:
        return _parse_owner(path.read_bytes()[:4096])
    except OSError:
        return {}


def _parse_owner(raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _pid_gone(pid) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    if not 0 < pid < 2**31:  # no process has it (and os.kill raises OverflowError past 2**63)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _dead(owner: dict, mtime: float, flock_free: bool | None) -> bool:
    """Whether a lock with this owner record, age and flock state provably has no writer."""
    if not owner:
        # Half-written by a writer that died between create and write, or still being
        # written this very moment: a young empty file gets the benefit of the doubt.
        return flock_free is not False and time.time() - mtime > EMPTY_LOCK_S
    if owner.get("host") != socket.gethostname():
        return False  # we cannot see another host's processes
    if flock_free is not None:
        return flock_free
    return _pid_gone(owner.get("pid"))


def _flock_free(path: Path) -> bool | None:
    """True if nobody holds an flock on ``path``; None where flock is unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK and friends on some network file systems
        return None
    finally:
        os.close(fd)


class WriterLock:
    """Exclusive writer lock of one cache file; use as a context manager."""

    def __init__(self, cache_path: str | os.PathLike):
        self.cache_path = Path(cache_path)
        self.path = lock_path_for(cache_path)
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                if self.is_stale():
                    self._break_stale()  # only a lock we can prove is dead; then race again
                    continue
                raise CacheLockedError(self._held_message()) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # no flock here (some NFS mounts): the O_EXCL file alone still excludes
            os.write(fd, json.dumps(_owner()).encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise CacheLockedError(self._held_message())

    def is_stale(self) -> bool:
        """Whether the lock file exists but provably has no live writer (see ``_dead``)."""
        owner = _read_owner(self.path)
        if owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid():
            return False  # ours, alive; and probing our own flock could drop it on NFS
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return _dead(owner, mtime, _flock_free(self.path))

    def _break_stale(self) -> None:
        """Remove the lock file judged stale, and never a live one that replaced it meanwhile.

        Two processes can judge one dead lock stale at once; if the first removes it and takes
        a new lock before the second unlinks, a plain unlink would delete the first one's live
        lock. So the breaker holds the file's flock (a live owner holds it, so that fails),
        checks again under it, and unlinks only if the path still names that very file.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
            except BlockingIOError:
                return  # a live owner (or another breaker) holds it
            except OSError:
                free = None  # no flock here: the pid and the inode check must do
            st = os.fstat(fd)
            if not _dead(_parse_owner(os.pread(fd, 4096, 0)), st.st_mtime, free):
                return
            try:
                if os.stat(self.path).st_ino != st.st_ino:
                    return  # replaced by a new lock since we looked
            except FileNotFoundError:
                return
            os.unlink(self.path)
        finally:
            os.close(fd)  # drops our flock on the now nameless file

    def _held_message(self) -> str:
        owner = _read_owner(self.path)
        who = (
            f"pid {owner.get('pid')} on host {owner.get('host')}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('started', 0)))}"
            if owner
            else "an unknown process"
        )
        return (
            f"The cache {self.cache_path} is being written by {who}. Only one writer at a time "
            f"is allowed: wait for it to finish, or write to another file. If you are sure that "
            f"writer is gone (e.g. it ran on another host), delete {self.path}."
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # unlink before close: the name goes while we still hold the flock (see above)
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def writer_active(cache_path: str | os.PathLike) -> dict | None:
    """The owner record of a live writer of ``cache_path``, or None."""
    lock = WriterLock(cache_path)
    if not lock.path.exists() or lock.is_stale():
        return None
    return _read_owner(lock.path) or {"pid": None}
