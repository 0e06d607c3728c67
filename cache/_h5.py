"""Low-level HDF5 helpers shared by the cache modules: open, check, create, copy."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import h5py
import numpy as np

from . import _files, _flags, _structure, _swmr
from ._format import (
    C_CLASSES,
    C_FINISHED,
    C_ROWS,
    C_SKIPPED,
    COMMIT_LEN,
    FORMAT,
    SCHEMA_VERSION,
    CacheError,
    load_attr,
)
from ._lock import writer_active

STR = h5py.string_dtype("utf-8")
ROW_FIELDS = ("features", "labels", "ids", "hashes", "stats", "live")
SKIP_FIELDS = ("ids", "hashes", "stats", "reasons", "live")
# HDF5 filters no variable-length data, so Fletcher-32 cannot guard the string tables: a
# CRC-32 of each string's UTF-8 bytes, in a uint32 dataset that Fletcher-32 guards, does.
# (Caches made before these have no /checksums group; they open as before.)
STRING_CHECKSUMS = {
    "ids": "checksums/ids",
    "classes": "checksums/classes",
    "skipped/ids": "checksums/skipped_ids",
    "skipped/reasons": "checksums/skipped_reasons",
}
OPTIONAL_FIELDS = tuple(STRING_CHECKSUMS.values()) + ("features_crc32",)  # see _freeze


class TornRead(CacheError):
    """A read raced a writer's append and must be retried.

    SWMR protects fixed-size data and the file's metadata, but not HDF5's global heap that
    holds variable-length strings (the ids): a reader that opened the file just before an
    append can find the new ids' heap beyond the end of file it saw ("len exceeds EOA").
    Committed content never changes, so reopening and reading again is exact.
    """


def swmr_retry(read, attempts: int = 8):
    """Return ``read()``, which opens the file itself, retrying after a TornRead (< 1 s)."""
    for k in range(attempts - 1):
        try:
            return read()
        except TornRead:
            time.sleep(0.005 * 2**k)
    return read()


# What h5py raises on a damaged file, depending on where the damage is: callers turn these
# into CacheError (see ``corrupt``), so a bad file is a message, never a traceback.
READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)


def open_read(path: str | os.PathLike, *, settled: bool | None = None) -> h5py.File:
    """Open a cache for reading, safely even while a writer appends (SWMR).

    A file that a SWMR writer has open (or had, when it died) is opened in SWMR mode; any other
    file is opened plainly, which checks its length and metadata checksums at once: a SWMR
    reader retries a bad checksum or a read past the end of file for minutes, taking damage
    for a writer's append in flight. A SWMR file whose writer is gone (``settled``; by default
    when no live writer holds its lock) is opened without those retries, and its committed
    chunks must lie inside it (see ``_swmr``).

    Raises CacheError with a readable message for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No cache file at {path}.")
    if path.is_dir():
        raise CacheError(f"{path} is a directory, not a cache file.")
    _check_signature(path)
    short = _flags.truncation(path)
    if short:
        raise CacheError(
            f"{path} is truncated: it has {short[0]} bytes, its header says {short[1]} (an "
            "interrupted copy or download?). Copy it again, or delete it and re-extract."
        )
    for attempt in range(20):
        flags = _flags.write_flags(path)
        try:
            if flags and flags & _flags.SWMR_WRITE_ACCESS:
                if settled is None:
                    settled = writer_active(path) is None
                f = _swmr.open_swmr_read(path, settled=settled)
            else:
                f = h5py.File(path, "r", locking=False)
            break
        except OSError as e:
            now = _flags.write_flags(path)
            if now and now != flags:
                continue  # a writer opened or switched to SWMR meanwhile: open it that way
            if not now:
                raise CacheError(
                    f"{path} cannot be read as HDF5 ({reason(e)}); it is truncated, corrupt or "
                    "not a colhead cache. Run `colhead cache verify` on it; to start over, "
                    "delete it."
                ) from None
            if now & _flags.SWMR_WRITE_ACCESS:
                raise corrupt(path, e) from None
            # Marked open by a writer without SWMR: a writer checks and stamps the file that
            # way for a few milliseconds before it switches to SWMR (see CacheWriter._open).
            if attempt == 19:
                raise CacheError(
                    f"{path} is marked as open by a writer that has not switched to SWMR mode: "
                    "one is opening it right now, or one was killed while opening it. Rerun the "
                    "same `colhead extract` command: it recovers the file and keeps every "
                    "committed row."
                ) from None
            time.sleep(0.05)
    try:
        check_header(f, path)
        if f.swmr_mode and settled:  # a dead writer's file: did a copy cut its tail off?
            _structure.check_extent(f, path, committed_counts(f, read_commit(f, path)))
    except BaseException as e:
        f.close()
        if isinstance(e, READ_ERRORS) and not isinstance(e, CacheError):
            raise corrupt(path, e) from None
        raise
    return f


def _check_signature(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise CacheError(f"Cannot read {path}: {e.strerror}.") from None
    if head != _files.HDF5_SIGNATURE:
        raise CacheError(
            f"{path} is not a colhead cache: it is not an HDF5 file at all (it starts with "
            f"{head[:8]!r}; if it was a cache, its first bytes are damaged). Give the .h5 "
            "file that `colhead extract` wrote."
        )


def corrupt(path, e: BaseException) -> CacheError:
    """The CacheError for a file that h5py could open but not read."""
    if isinstance(e, MemoryError):
        return CacheError(
            f"{path}: reading it needs more memory than this process can get. If the cache "
            "is really that large, read it on a larger machine; else it is corrupt."
        )
    return CacheError(
        f"{path} is corrupt: reading it failed ({reason(e)}). Run `colhead cache verify` on "
        "it; to start over, delete it and extract again."
    )


def reason(e: BaseException) -> str:
    """HDF5's message, short: its summary and the detail in its parentheses (or the errno's)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    head, _, detail = text.partition("(")
    head = head.strip() or type(e).__name__
    errno_msg = re.search(r"error message = '([^']*)'", detail)
    detail = errno_msg.group(1) if errno_msg else detail.rsplit(")", 1)[0].strip()
    return (f"{head}: {detail}" if detail else head)[:200]


def check_header(f: h5py.File, path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise CacheError(f"{path} is an HDF5 file but not a colhead feature cache.")
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"{path} has cache schema version {version}; this colhead reads version "
            f"{SCHEMA_VERSION}. Re-extract it with this version, or use the colhead that made it."
        )
    names = ROW_FIELDS + ("classes", "commit") + tuple(f"skipped/{n}" for n in SKIP_FIELDS)
    _structure.check_links(f, path, names, optional=OPTIONAL_FIELDS)


def read_commit(f: h5py.File, path) -> np.ndarray:
    """The committed counts, checked against the datasets' lengths."""
    try:
        return _read_commit(f, path)
    except READ_ERRORS as e:
        if isinstance(e, CacheError):
            raise
        raise CacheError(
            f"{path}: cannot read /commit ({reason(e)}); the file is corrupt."
        ) from None


def _read_commit(f: h5py.File, path) -> np.ndarray:
    _structure.check_dataset(f["commit"], path, "commit")
    if f["commit"].shape != (COMMIT_LEN,):
        raise CacheError(f"{path}: /commit has shape {f['commit'].shape}, which is not valid.")
    commit = np.asarray(f["commit"][:], dtype=np.float64)
    if (
        commit.shape != (COMMIT_LEN,)
        or not np.all(np.isfinite(commit))
        or np.any(commit < 0)
        or np.any(commit[:C_FINISHED] != np.round(commit[:C_FINISHED]))  # counts and a flag
    ):
        raise CacheError(f"{path}: /commit holds {commit.tolist()}, which is not valid.")
    # Only now look at the datasets, in this order: a writer extends them before it commits,
    # so read after the commit they are at least as long as it says; a dataset opened before
    # the commit was read (even for a type check) could show a SWMR reader its older length.
    need = committed_counts(f, commit)
    for name, count in need.items():
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise CacheError(f"{path} has no dataset /{name}: it is corrupt.")
        _structure.check_dataset(ds, path, name)  # no external data, allowed filters only
        # Plain numbers and strings only: an opaque, compound or reference type in a colhead
        # cache is damage or a planted payload, and no reader should go near it.
        dt = ds.dtype
        if h5py.check_string_dtype(dt) is None and (dt.kind not in "biuf" or dt.fields):
            raise CacheError(f"{path}: /{name} holds {dt}, not numbers or text; it is corrupt.")
        if ds.shape[0] < count:
            raise CacheError(
                f"{path}: /commit says {count} entries but /{name} holds {ds.shape[0]}; corrupt."
            )
    _structure.check_sizes(f, path, need)
    for name in OPTIONAL_FIELDS:  # read by verify (and /features_crc32 by _freeze)
        if name not in need and name in f:
            _structure.check_dataset(f[name], path, name)
            _structure.check_sizes(f, path, {name: f[name].shape[0]})
    return commit


def committed_counts(f: h5py.File, commit: np.ndarray) -> dict:
    """Committed entries of each dataset colhead reads (string checksums when present)."""
    n, m, nc = int(commit[C_ROWS]), int(commit[C_SKIPPED]), int(commit[C_CLASSES])
    need = {name: n for name in ROW_FIELDS}
    need.update({f"skipped/{name}": m for name in SKIP_FIELDS}, classes=nc)
    if "checksums" in f:
        need.update({crc: need[table] for table, crc in STRING_CHECKSUMS.items()})
    return need


def read_attrs(f: h5py.File) -> tuple[dict, dict]:
    return load_attr(f.attrs.get("identity"), "identity"), load_attr(
        f.attrs.get("metadata"), "metadata"
    )


def storage_versions() -> dict:
    """The versions of the HDF5 stack, for provenance (callers outside cache/ never see h5py)."""
    return {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}
