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
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


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
        text = path.read_text()[:4096]
        data = json.loads(text)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


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
                if self._is_stale():
                    # Only remove a lock we can prove is dead, then race for it again.
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
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

    def _is_stale(self) -> bool:
        owner = _read_owner(self.path)
        if not owner:
            # Half-written by a writer that died between create and write, or still being
            # written this very moment: a young empty file gets the benefit of the doubt.
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except FileNotFoundError:
                return True
        if owner.get("host") != socket.gethostname():
            return False
        free = _flock_free(self.path)
        if free is not None:
            return free
        pid = owner.get("pid")
        if not isinstance(pid, int):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

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
        try:
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
    if not lock.path.exists() or lock._is_stale():
        return None
    return _read_owner(lock.path) or {"pid": None}
