"""Append-only, crash-safe, single-writer access to a feature cache."""

from __future__ import annotations

import functools
import glob
import os
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import _flags, _h5
from ._format import (
    C_CLASSES,
    C_COMPLETE,
    C_FINISHED,
    C_ROWS,
    C_SKIPPED,
    CacheError,
    CacheMismatchError,
    dump_attr,
    identity_diff,
)
from ._lock import WriterLock

MAX_RUNS_KEPT = 20  # provenance of the last runs; older ones drop so the attribute stays small
MIN_ROOM = 256 * 1024  # bytes a writer wants free before it starts: a first batch's chunks


@dataclass
class Existing:
    """What a cache already holds about its live items: id -> (row, hash, (size, mtime_ns))."""

    rows: dict[str, tuple[int, str, tuple[int, int]]]
    skipped: dict[str, tuple[int, str, tuple[int, int]]]


def _writes(what: str):
    """Turn an HDF5 write failure into a CacheError that says what is kept and what to do."""

    def wrap(method):
        @functools.wraps(method)
        def writing(self, *args, **kwargs):
            if self._failed:
                raise CacheError(
                    f"{self.path}: an earlier write failed; open a new CacheWriter to go on."
                )
            committed = self.n_rows
            try:
                return method(self, *args, **kwargs)
            except CacheError:
                raise
            except (OSError, RuntimeError) as e:
                raise self._write_failed(e, what, committed) from None

        return writing

    return wrap


def _detach(f) -> None:
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


def _load_existing(f, commit) -> Existing:
    n, m = int(commit[C_ROWS]), int(commit[C_SKIPPED])
    g = f["skipped"]
    return Existing(
        rows=_index(f["ids"], f["hashes"], f["stats"], f["live"], n),
        skipped=_index(g["ids"], g["hashes"], g["stats"], g["live"], m),
    )


def _reading_failed(e: BaseException) -> bool:
    """Whether an h5py error came from reading (damage) rather than writing (no room)."""
    text = str(e).lower()
    return not any(w in text for w in ("write", "flush", "space", "too large", "extend"))


def _close_quietly(f) -> None:
    try:
        f.close()
    except (OSError, RuntimeError):
        pass


class CacheWriter:
    """Open (or create) a cache for appending; the only way colhead writes features.

    Holds the writer lock for its lifetime. If the last writer died mid-run, the committed rows
    are recovered first (see ``_h5.copy_committed``); rows it had not committed are dropped and
    will simply be extracted again.

    Args:
        path: the cache file.
        identity: column config + dataset spec; must equal the stored one when the file exists.
        metadata: provenance recorded in the file (versions, device, ...); the new run is added
            to ``metadata["runs"]``.
        dim: feature dimension.
        store_dtype: "float32" or "float16".
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        identity: dict,
        metadata: dict,
        dim: int,
        store_dtype: str = "float32",
    ):
        if store_dtype not in ("float32", "float16"):
            raise ValueError(f"store_dtype must be 'float32' or 'float16', got {store_dtype!r}.")
        self.path = Path(path)
        self._failed = False
        self._lock = WriterLock(self.path).acquire()
        try:
            self._open(identity, metadata, dim, store_dtype)
        except BaseException as e:
            self._lock.release()
            if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, CacheError):
                raise self._write_failed(e, "the header", None) from None
            raise

    # -- opening -----------------------------------------------------------------------------
    def _open(self, identity: dict, metadata: dict, dim: int, store_dtype: str) -> None:
        self._remove_dead_temps()
        self._check_room()
        if not self.path.exists():
            _h5.create(
                self.path,
                identity=identity,
                metadata={**_without(metadata, "run"), "created_at": _now(), "runs": []},
                dim=dim,
                store_dtype=store_dtype,
            )
        self._recover_if_dead()
        # Three sessions. 1: read what the file holds, read-only and without SWMR, so damage
        # fails at once (a SWMR handle retries a bad checksum for minutes) and readers are
        # not disturbed. 2: stamp this run into the metadata, in a short non-SWMR write session
        # closed at once (such a session marks the file so that nobody, readers included, can
        # open it, and a kill -9 would leave the mark: see _flags). 3: append in SWMR mode.
        old_meta = self._read(identity, dim, store_dtype)
        self._stamp(old_meta, metadata)
        try:
            f = _open_swmr_write(self.path)
        except OSError as e:
            raise CacheError(
                f"{self.path} cannot be opened for writing ({_h5._reason(e)})."
            ) from None
        # Hold every dataset open while writing: HDF5 flushes a dataset's chunk cache when its
        # last handle closes, and a flush that fails there (a full disk) could only be printed
        # by h5py, not raised; this way it fails in f.flush(), as a CacheError.
        self._open_datasets = [f[n] for n in _h5.ROW_FIELDS + ("classes", "commit")] + [
            f["skipped"][n] for n in _h5.SKIP_FIELDS
        ]
        self._f = f

    def _read(self, identity: dict, dim: int, store_dtype: str) -> dict:
        """Check the file against this run and load its committed index; the old metadata."""
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                _h5.check_header(f, self.path)
                stored, old_meta = _h5.read_attrs(f)
                stored_dim, stored_dtype = f["features"].shape[1], f["features"].dtype
                self._check(stored, stored_dim, stored_dtype, identity, dim, store_dtype)
                self._commit = _h5.read_commit(f, self.path)
                self.existing = _load_existing(f, self._commit)
                n_classes = int(self._commit[C_CLASSES])
                self.classes = [str(c) for c in f["classes"].asstr()[:n_classes]]
        except _h5.READ_ERRORS as e:
            if isinstance(e, (CacheError, CacheMismatchError)):
                raise
            raise _h5.corrupt(self.path, e) from None
        return old_meta

    def _check(self, stored, stored_dim, stored_dtype, identity, dim, store_dtype) -> None:
        diff = identity_diff(stored, identity)
        if diff:
            raise CacheMismatchError(
                f"The cache {self.path} was made with another column configuration or dataset, "
                "and colhead never mixes two in one file:\n  "
                + "\n  ".join(diff)
                + "\nUse another --out file, or --cache-dir to get one file per configuration."
            )
        if stored_dim != dim or stored_dtype != np.dtype(store_dtype):
            raise CacheMismatchError(
                f"The cache {self.path} stores {stored_dtype} vectors of dim "
                f"{stored_dim}, not {store_dtype} of dim {dim}."
            )

    def _stamp(self, old_meta: dict, metadata: dict) -> None:
        """Record this run in the metadata attribute (non-SWMR: keep it short, see _open)."""
        runs = list(old_meta.get("runs", []))[-(MAX_RUNS_KEPT - 1) :]
        runs.append({"started_at": _now(), **metadata.get("run", {})})
        merged = {**old_meta, **_without(metadata, "run"), "runs": runs}
        text = dump_attr(merged)
        try:
            f = h5py.File(self.path, "r+", libver="latest", locking=False)
        except OSError as e:
            raise CacheError(
                f"{self.path} cannot be opened for writing ({_h5._reason(e)}). If it is "
                "corrupt, run `colhead cache verify` on it, or write to another file."
            ) from None
        try:
            f.attrs["metadata"] = text
            f.close()
        except BaseException:
            _detach(f)  # a failed write: keep the file as it was (see _detach)
            _close_quietly(f)
            raise
        self.metadata = merged

    def _check_room(self) -> None:
        """Refuse to start on a (nearly) full disk, before anything is written.

        A write that fails half-way is survived (see ``_write_failed``), but not touching the
        file at all is cleaner, and it makes a failure while creating or recovering the file,
        whose partial writes h5py can only print, not raise, unlikely.
        """
        size = self.path.stat().st_size if self.path.exists() else 0
        st = os.statvfs(self.path.parent)
        room = st.f_bavail * st.f_frsize
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:  # a new file (create, recovery) may grow to `soft`
            room = min(room, soft - size)
        # A dead writer's file is rewritten aside before it is renamed back: a full copy.
        recovering = size and _flags.write_flags(self.path)
        need = MIN_ROOM + (size if recovering else 0)
        if room < need:
            raise CacheError(
                f"Only {room / 1e6:.2f} MB can be written beside {self.path} (free disk space, "
                f"or this process's file-size limit); colhead needs {need / 1e6:.2f} MB to "
                + ("recover it and go on" if recovering else "start writing it")
                + ". Make room and rerun the same command; nothing was changed."
            )

    def _remove_dead_temps(self) -> None:
        """Remove what a killed writer of this cache left while creating or recovering it.

        ``.NAME.PID.init`` and ``.NAME.PID.copy`` are only made under this cache's writer lock,
        which we hold, so their makers are gone; each is as large as the cache.
        """
        pattern = re.compile(rf"\.{re.escape(self.path.name)}\.(\d+)\.(?:init|copy)")
        for p in self.path.parent.glob(f".{glob.escape(self.path.name)}.*"):
            m = pattern.fullmatch(p.name)
            if m and int(m.group(1)) != os.getpid():
                p.unlink(missing_ok=True)

    def _recover_if_dead(self) -> None:
        """Repair the file of a writer that died, from its committed content.

        We hold the writer lock, so an 'open for writing' mark was left by a writer that died
        (killed, or its disk filled up: then the file may also end short of its last
        allocation). A mark without SWMR (it died while stamping) only needs clearing; a SWMR
        writer's file is rewritten with exactly its committed content, as SWMR leaves its mark
        for good.
        """
        flags = _flags.write_flags(self.path)
        if not flags:
            return
        if not flags & _flags.SWMR_WRITE_ACCESS:
            _flags.clear_write_flags(self.path)
            return
        _flags.extend_eoa(self.path)
        with _h5.open_read(self.path) as src:
            try:
                _h5.copy_committed(src, self.path, self.path)
            except _h5.READ_ERRORS as e:
                if isinstance(e, CacheError) or not _reading_failed(e):
                    raise  # writing the copy failed: a full disk, said as such by __init__
                raise CacheError(
                    f"{self.path} was left by a writer that died, and its committed rows "
                    f"cannot be read back ({_h5._reason(e)}): it is damaged beyond what "
                    "colhead repairs. Keep it aside (or delete it) and extract again."
                ) from None

    # -- writing -----------------------------------------------------------------------------
    @_writes("new class names")
    def class_indices(self, names) -> np.ndarray:
        """Indices of class names in this cache, adding new names at the end.

        Indices are the cache's own: a class added to a folder later never renumbers old rows.
        """
        pos = {c: i for i, c in enumerate(self.classes)}
        new = [str(n) for n in dict.fromkeys(names) if str(n) not in pos]
        if new:
            d = self._f["classes"]
            k = len(self.classes)
            d.resize((k + len(new),))
            d[k:] = np.array(new, dtype=object)
            self.classes.extend(new)
            pos.update({c: k + i for i, c in enumerate(new)})
            self._f.flush()
            self._commit[C_CLASSES] = len(self.classes)
            self._write_commit()
        return np.array([pos[str(n)] for n in names], dtype=np.int64)

    @_writes("retired rows")
    def retire(self, rows=(), skipped=()) -> None:
        """Mark rows (and skipped entries) as no longer current: changed or gone items."""
        for table, idx in ((self.existing.rows, rows), (self.existing.skipped, skipped)):
            gone = set(int(i) for i in idx)
            for id_ in [k for k, v in table.items() if v[0] in gone]:
                del table[id_]
        for ds, idx in ((self._f["live"], rows), (self._f["skipped"]["live"], skipped)):
            idx = np.unique(np.asarray(list(idx), dtype=np.int64))
            if len(idx):
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                live = ds[lo:hi]
                live[idx - lo] = 0
                ds[lo:hi] = live
        self._f.flush()

    @_writes("a batch of rows")
    def append(self, ids, hashes, stats, labels, features) -> None:
        """Append a batch of rows and commit it (data first, then the row count)."""
        k = len(ids)
        if k == 0:
            return
        features = np.asarray(features)
        if features.shape != (k, self._f["features"].shape[1]):
            raise ValueError(f"features has shape {features.shape}, expected ({k}, dim).")
        n = int(self._commit[C_ROWS])
        f = self._f
        _extend(f["features"], n, features.astype(f["features"].dtype, copy=False))
        _extend(f["labels"], n, np.asarray(labels, dtype=np.int64))
        _extend(f["ids"], n, np.array(ids, dtype=object))
        _extend(f["hashes"], n, np.array(hashes, dtype="S64"))
        _extend(f["stats"], n, np.asarray(stats, dtype=np.int64).reshape(k, 2))
        _extend(f["live"], n, np.ones(k, np.uint8))
        f.flush()  # phase 1: the data is on disk ...
        self._commit[C_ROWS] = n + k
        self._write_commit()  # ... phase 2: only now does it count
        for i, (id_, h, st) in enumerate(zip(ids, hashes, stats)):
            self.existing.rows[id_] = (n + i, h, (int(st[0]), int(st[1])))

    @_writes("skipped items")
    def skip(self, ids, hashes, stats, reasons) -> None:
        """Record items that could not be read, with the reason, and commit."""
        k = len(ids)
        if k == 0:
            return
        m = int(self._commit[C_SKIPPED])
        g = self._f["skipped"]
        _extend(g["ids"], m, np.array(ids, dtype=object))
        _extend(g["hashes"], m, np.array(hashes, dtype="S64"))
        _extend(g["stats"], m, np.asarray(stats, dtype=np.int64).reshape(k, 2))
        _extend(g["reasons"], m, np.array([r[:500] for r in reasons], dtype=object))
        _extend(g["live"], m, np.ones(k, np.uint8))
        self._f.flush()
        self._commit[C_SKIPPED] = m + k
        self._write_commit()
        for i, (id_, h, st) in enumerate(zip(ids, hashes, stats)):
            self.existing.skipped[id_] = (m + i, h, (int(st[0]), int(st[1])))

    @_writes("the completeness marker")
    def finish(self) -> None:
        """Mark the cache complete for its dataset (the completeness marker, written last)."""
        self._commit[C_COMPLETE] = 1
        self._commit[C_FINISHED] = time.time()
        self._write_commit()

    @_writes("the incompleteness marker")
    def mark_incomplete(self) -> None:
        if self._commit[C_COMPLETE]:
            self._commit[C_COMPLETE] = 0
            self._write_commit()

    def _write_commit(self) -> None:
        self._f["commit"][:] = self._commit
        self._f.flush()

    @property
    def n_rows(self) -> int:
        return int(self._commit[C_ROWS])

    def close(self) -> None:
        f, self._f = getattr(self, "_f", None), None
        if f is None:
            return
        try:
            f.close()
        except (OSError, RuntimeError) as e:
            if not self._failed:
                error = self._write_failed(e, "its last changes", self.n_rows, f)
                _close_quietly(f)
                raise error from None
            _close_quietly(f)
        finally:
            self._lock.release()

    def _write_failed(self, e, what: str, kept: int | None, f=None) -> CacheError:
        """The error for a write the file system refused: a full disk, a quota, a size limit.

        From here on nothing of this writer reaches the disk (see ``_detach``): what it had
        committed stays as it is, and the next writer recovers exactly that.
        """
        self._failed = True
        _detach(f if f is not None else getattr(self, "_f", None))
        try:  # readers can then read every committed row, as after a kill (see _flags)
            _flags.extend_eoa(self.path)
        except OSError:
            pass
        rows = (
            "Every row committed before is"
            if kept is None
            else f"The {kept} rows committed before are"
        )
        return CacheError(
            f"Writing {what} to {self.path} failed ({_h5._reason(e)}). Is the disk full, or a "
            f"quota or file-size limit reached? {rows} kept: make room and rerun the same "
            "command to finish."
        )

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_swmr_write(path: Path) -> h5py.File:
    """Open read-write straight in SWMR mode: the file is never marked as a plain writer's."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    if hasattr(fapl, "set_file_locking"):
        fapl.set_file_locking(False, False)  # as locking=False: our own lock file rules
    flags = h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))


def _extend(ds, n: int, values: np.ndarray) -> None:
    ds.resize((n + len(values),) + ds.shape[1:])
    ds[n : n + len(values)] = values


def _index(ids_ds, hashes_ds, stats_ds, live_ds, n: int) -> dict:
    if n == 0:
        return {}
    ids = ids_ds.asstr()[:n]
    hashes = hashes_ds[:n]
    stats = stats_ds[:n]
    live = live_ds[:n]
    out = {}
    for i in np.flatnonzero(live):
        out[str(ids[i])] = (int(i), hashes[i].decode(), (int(stats[i, 0]), int(stats[i, 1])))
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}
