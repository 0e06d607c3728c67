"""A folder of caches: list what each file holds, and collect what interrupted runs left.

``gc`` removes a cache only while holding its writer lock, so it can never pull a file from
under a live writer (the lock is the one colhead writers take; see ``_lock``), and it removes
no file it cannot identify as colhead's.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

from . import _files, _h5
from ._format import C_COMPLETE, C_ROWS, C_SKIPPED, config_key
from ._lock import CacheLockedError, WriterLock, writer_active


def list_caches(directory: str | os.PathLike) -> list[dict]:
    """Every ``*.h5`` file in ``directory``: what it holds, or why it is not a cache.

    Each entry has ``path``, ``size_bytes`` and ``kind`` ("cache" or "not a cache"); a cache
    adds ``column``, ``dataset``, ``precision``, ``store_dtype``, ``rows`` (live), ``skipped``,
    ``complete``, ``config_key`` and ``writer`` (the live writer's pid/host, or None); anything
    else adds ``error``, the reason it could not be read.
    """
    d = _folder(directory)
    out = []
    for p in sorted(d.glob("*.h5")):
        if not p.is_file():
            continue
        entry: dict = {"path": str(p), "size_bytes": p.stat().st_size}
        try:
            entry.update(_h5.swmr_retry(partial(_summary, p)))
        except _h5.READ_ERRORS as e:  # CacheError included: damage of any kind
            entry.update(kind="not a cache", error=str(e))
            out.append(entry)
            continue
        entry["writer"] = writer_active(p)
        out.append(entry)
    return out


def _summary(p: Path) -> dict:
    with _h5.open_read(p) as f:
        c = _h5.read_commit(f, p)
        ident, _ = _h5.read_attrs(f)
        n, m = int(c[C_ROWS]), int(c[C_SKIPPED])
        try:
            rows, skipped = int(f["live"][:n].sum()), int(f["skipped"]["live"][:m].sum())
        except (OSError, ValueError) as e:  # raced a writer's append: retried
            raise _h5.TornRead(f"{p}: reading its arrays failed ({_h5.reason(e)}).") from None
    return dict(
        kind="cache",
        column=ident.get("column"),
        dataset=ident.get("dataset"),
        precision=ident.get("precision"),
        store_dtype=ident.get("store_dtype"),
        rows=rows,
        skipped=skipped,
        complete=bool(c[C_COMPLETE]),
        config_key=config_key(ident),
    )


def gc_caches(
    directory: str | os.PathLike, dry_run: bool = True, *, temp_age_s: float = 600.0
) -> list[tuple[str, str]]:
    """Remove what interrupted runs left in ``directory``; by default only say what would go.

    Removed: incomplete caches with no live writer (rerunning their extraction would have
    resumed them), lock files whose writer is dead, and colhead's temporary files
    (named by ``_files``: ``.NAME.colhead-PID.init``/``.copy``, ``.colhead-probe-PID``, and
    older colheads' ``.NAME.PID.init``/``.copy`` holding HDF5) whose process is gone here and that
    nobody touched for ``temp_age_s`` seconds. Never removed: a complete cache, a cache being
    written (a cache is deleted only while gc holds its writer lock), a lock whose writer may
    live (one made on another host is never judged dead), any file that is not colhead's.

    Returns:
        (path, reason) for each file removed, or that would be with ``dry_run``.
    """
    d = _folder(directory)
    done: list[tuple[str, str]] = []
    for p in sorted(d.glob("*.h5")):
        reason = _incomplete_idle(p)
        if reason is None:
            continue
        if dry_run:
            done.append((str(p), reason))
            continue
        try:
            lock = WriterLock(p).acquire()  # from now on no writer can start on it
        except CacheLockedError:
            continue
        try:
            reason = _incomplete_idle(p, locked=True)
            if reason is not None:
                p.unlink()
                done.append((str(p), reason))
        finally:
            lock.release()
    gone = {Path(x) for x, _ in done}
    for lk in sorted(d.glob("*.h5.lock")):
        cache = lk.with_name(lk.name[: -len(".lock")])
        if cache in gone and dry_run:
            continue  # the cache's removal takes its lock with it
        lock = WriterLock(cache)
        if not lk.exists() or not lock.is_stale():
            continue
        if dry_run:
            done.append((str(lk), "lock file of a writer that is no longer running"))
            continue
        try:
            lock.acquire()  # breaks the stale lock the safe way, then ours is released
        except CacheLockedError:
            continue
        lock.release()
        done.append((str(lk), "lock file of a writer that is no longer running"))
    now = time.time()
    for p in sorted(d.iterdir()):
        pid = _files.temp_owner(p)
        if pid is None or not p.is_file():
            continue
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        if _pid_alive(pid) or age < temp_age_s:
            continue
        if not dry_run:
            try:
                p.unlink()
            except FileNotFoundError:
                continue
        done.append((str(p), f"temporary file of a process that is gone (pid {pid})"))
    return done


def _incomplete_idle(p: Path, *, locked: bool = False) -> str | None:
    """Why ``p`` may go (an incomplete colhead cache nobody writes), or None to keep it."""
    try:
        s = _h5.swmr_retry(lambda: _summary(p))
    except _h5.READ_ERRORS:  # CacheError included
        return None  # not ours, or unreadable: gc never deletes what it cannot identify
    if s["complete"] or (not locked and writer_active(p)):
        return None
    return f"incomplete cache ({s['rows']} rows) with no writer running"


def _pid_alive(pid: int) -> bool:
    if not 0 < pid < 2**31:  # no process has it (os.kill raises OverflowError past 2**63)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _folder(directory) -> Path:
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"No folder at {d}.")
    return d
