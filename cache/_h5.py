"""Low-level HDF5 helpers shared by the cache modules: open, check, create, copy."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import h5py
import numpy as np

from . import _files, _flags
from ._format import (
    C_CLASSES,
    C_FINISHED,
    C_ROWS,
    C_SKIPPED,
    COMMIT_LEN,
    FORMAT,
    SCHEMA_VERSION,
    CacheError,
    dump_attr,
    feature_chunk_rows,
    load_attr,
)

STR = h5py.string_dtype("utf-8")
ROW_FIELDS = ("features", "labels", "ids", "hashes", "stats", "live")
SKIP_FIELDS = ("ids", "hashes", "stats", "reasons", "live")


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


def open_read(path: str | os.PathLike) -> h5py.File:
    """Open a cache for reading, safely even while a writer appends (SWMR).

    A file that a SWMR writer has open (or had, when it died) is opened in SWMR mode; any other
    file is opened plainly, which checks its length and metadata checksums at once: a SWMR
    reader retries a bad checksum or a read past the end of file for minutes, taking damage
    for a writer's append in flight.

    Raises CacheError with a readable message for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No cache file at {path}.")
    if path.is_dir():
        raise CacheError(f"{path} is a directory, not a cache file.")
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
                f = h5py.File(path, "r", libver="latest", swmr=True, locking=False)
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
    except BaseException as e:
        f.close()
        if isinstance(e, READ_ERRORS) and not isinstance(e, CacheError):
            raise corrupt(path, e) from None
        raise
    return f


def open_swmr_write(path: Path) -> h5py.File:
    """Open read-write straight in SWMR mode: the file is never marked as a plain writer's."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    if hasattr(fapl, "set_file_locking"):
        fapl.set_file_locking(False, False)  # as locking=False: our own lock file rules
    flags = h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))


def corrupt(path, e: BaseException) -> CacheError:
    """The CacheError for a file that h5py could open but not read."""
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


_reason = reason  # the name _reader.py used before; cache modules call reason()


def check_header(f: h5py.File, path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise CacheError(f"{path} is an HDF5 file but not a colhead feature cache.")
    version = int(f.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"{path} has cache schema version {version}; this colhead reads version "
            f"{SCHEMA_VERSION}. Re-extract it with this version, or use the colhead that made it."
        )
    for name in ROW_FIELDS + ("classes", "commit"):
        if name not in f:
            raise CacheError(f"{path} is missing the dataset /{name}: it is corrupt.")


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
    commit = np.asarray(f["commit"][:], dtype=np.float64)
    if (
        commit.shape != (COMMIT_LEN,)
        or not np.all(np.isfinite(commit))
        or np.any(commit < 0)
        or np.any(commit[:C_FINISHED] != np.round(commit[:C_FINISHED]))  # counts and a flag
    ):
        raise CacheError(f"{path}: /commit holds {commit.tolist()}, which is not valid.")
    n, m, nc = int(commit[C_ROWS]), int(commit[C_SKIPPED]), int(commit[C_CLASSES])
    # Only now look at the datasets, in this order: a writer extends them before it commits,
    # so read after the commit they are at least as long as it says; a dataset opened before
    # the commit was read (even for a type check) could show a SWMR reader its older length.
    need = {name: n for name in ROW_FIELDS}
    need.update({f"skipped/{name}": m for name in SKIP_FIELDS}, classes=nc)
    for name, count in need.items():
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise CacheError(f"{path} has no dataset /{name}: it is corrupt.")
        # Plain numbers and strings only: an opaque, compound or reference type in a colhead
        # cache is damage or a planted payload, and no reader should go near it.
        dt = ds.dtype
        if h5py.check_string_dtype(dt) is None and (dt.kind not in "biuf" or dt.fields):
            raise CacheError(f"{path}: /{name} holds {dt}, not numbers or text; it is corrupt.")
        if ds.shape[0] < count:
            raise CacheError(
                f"{path}: /commit says {count} entries but /{name} holds {ds.shape[0]}; corrupt."
            )
    return commit


def read_attrs(f: h5py.File) -> tuple[dict, dict]:
    return load_attr(f.attrs.get("identity"), "identity"), load_attr(
        f.attrs.get("metadata"), "metadata"
    )


def create(path: Path, *, identity: dict, metadata: dict, dim: int, store_dtype: str) -> None:
    """Create an empty cache at ``path`` atomically (build aside, then rename)."""
    tmp = _files.temp_path(path, "init")
    try:
        with h5py.File(tmp, "w", libver="latest", locking=False) as f:
            layout(f, identity=identity, metadata=metadata, dim=dim, store_dtype=store_dtype)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def layout(f: h5py.File, *, identity: dict, metadata: dict, dim: int, store_dtype: str) -> None:
    from ._format import config_key

    dt = np.dtype(store_dtype)
    rows = feature_chunk_rows(dim, dt.itemsize)
    f.create_dataset("features", (0, dim), dt, maxshape=(None, dim), chunks=(rows, dim))
    f.create_dataset("labels", (0,), np.int64, maxshape=(None,), chunks=(4096,))
    f.create_dataset("ids", (0,), STR, maxshape=(None,), chunks=(1024,))
    f.create_dataset("hashes", (0,), "S64", maxshape=(None,), chunks=(1024,))
    f.create_dataset("stats", (0, 2), np.int64, maxshape=(None, 2), chunks=(2048, 2))
    f.create_dataset("live", (0,), np.uint8, maxshape=(None,), chunks=(8192,))
    f.create_dataset("classes", (0,), STR, maxshape=(None,), chunks=(256,))
    g = f.create_group("skipped")
    g.create_dataset("ids", (0,), STR, maxshape=(None,), chunks=(256,))
    g.create_dataset("hashes", (0,), "S64", maxshape=(None,), chunks=(256,))
    g.create_dataset("stats", (0, 2), np.int64, maxshape=(None, 2), chunks=(256, 2))
    g.create_dataset("reasons", (0,), STR, maxshape=(None,), chunks=(256,))
    g.create_dataset("live", (0,), np.uint8, maxshape=(None,), chunks=(1024,))
    f.create_dataset("commit", data=np.zeros(COMMIT_LEN, np.float64))
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["identity"] = dump_attr(identity)
    f.attrs["config_key"] = config_key(identity)
    f.attrs["metadata"] = dump_attr(metadata)


def copy_committed(src: h5py.File, src_path, dst: Path) -> None:
    """Write a fresh file at ``dst`` holding exactly the committed content of ``src``.

    Used to recover a file whose writer died (SWMR leaves a 'file in use' flag that only a
    rewrite clears) and by merge/compact. Builds aside and renames, so ``dst`` is never half made.
    """
    commit = read_commit(src, src_path)
    identity, metadata = read_attrs(src)
    n, m, nc = int(commit[C_ROWS]), int(commit[C_SKIPPED]), int(commit[C_CLASSES])
    tmp = _files.temp_path(dst, "copy")
    try:
        with h5py.File(tmp, "w", libver="latest", locking=False) as f:
            feats = src["features"]
            layout(
                f,
                identity=identity,
                metadata=metadata,
                dim=feats.shape[1],
                store_dtype=feats.dtype.str,
            )
            for name in ROW_FIELDS:
                _put(f[name], src[name], n)
            for name in SKIP_FIELDS:
                _put(f["skipped"][name], src["skipped"][name], m)
            _put(f["classes"], src["classes"], nc)
            f["commit"][:] = commit
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def _put(dst, src, n: int, block: int = 65536) -> None:
    dst.resize((n,) + dst.shape[1:])
    for i in range(0, n, block):
        j = min(n, i + block)
        dst[i:j] = src[i:j]


def storage_versions() -> dict:
    """The versions of the HDF5 stack, for provenance (callers outside cache/ never see h5py)."""
    return {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}
