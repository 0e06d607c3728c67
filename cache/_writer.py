"""Append-only, crash-safe, single-writer access to a feature cache."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import h5py
import numpy as np

from . import _freeze, _h5, _layout, _recover, _resume, _swmr
from ._format import (
    C_CLASSES,
    C_COMPLETE,
    C_FINISHED,
    C_ROWS,
    C_SKIPPED,
    MAX_RUNS_KEPT,
    CacheError,
    dump_attr,
)
from ._lock import WriterLock


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


class CacheWriter:
    """Open (or create) a cache for appending; the only way colhead writes features.

    Holds the writer lock for its lifetime. If the last writer died mid-run, the committed rows
    are recovered first (see ``_recover``); rows it had not committed are dropped and will
    simply be extracted again.

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
        _recover.remove_dead_temps(self.path)
        _recover.check_room(self.path)
        if not self.path.exists():
            _layout.create(
                self.path,
                identity=identity,
                metadata={**_without(metadata, "run"), "created_at": _now(), "runs": []},
                dim=dim,
                store_dtype=store_dtype,
            )
        _recover.recover_if_dead(self.path)
        # Three sessions. 1: read what the file holds, read-only and without SWMR, so damage
        # fails at once (a SWMR handle retries a bad checksum for minutes) and readers are
        # not disturbed. 2: stamp this run into the metadata, in a short non-SWMR write session
        # closed at once (such a session marks the file so that nobody, readers included, can
        # open it, and a kill -9 would leave the mark: see _flags). 3: append in SWMR mode.
        self._commit, self.existing, self.classes, old_meta = _resume.read_for_resume(
            self.path, identity, dim, store_dtype
        )
        self._stamp(old_meta, metadata)
        try:
            f = _swmr.open_swmr_write(self.path)
        except OSError as e:
            raise CacheError(
                f"{self.path} cannot be opened for writing ({_h5.reason(e)})."
            ) from None
        # Hold every dataset open while writing: HDF5 flushes a dataset's chunk cache when its
        # last handle closes, and a flush that fails there (a full disk) could only be printed
        # by h5py, not raised; this way it fails in f.flush(), as a CacheError.
        self._open_datasets = _datasets(f)
        self._f = f

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
                f"{self.path} cannot be opened for writing ({_h5.reason(e)}). If it is "
                "corrupt, run `colhead cache verify` on it, or write to another file."
            ) from None
        try:
            f.attrs["metadata"] = text
            f.close()
        except BaseException:
            _recover.detach(f)  # a failed write: keep the file as it was (see detach)
            _recover.close_quietly(f)
            raise
        self.metadata = merged

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
            _layout.extend_checksums(self._f, "classes", k, new)
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
        if self._f["features"].chunks is None:
            self._thaw()
        n = int(self._commit[C_ROWS])
        f = self._f
        _extend(f["features"], n, features.astype(f["features"].dtype, copy=False))
        _extend(f["labels"], n, np.asarray(labels, dtype=np.int64))
        _extend(f["ids"], n, np.array(ids, dtype=object))
        _layout.extend_checksums(f, "ids", n, ids)
        _extend(f["hashes"], n, np.array(hashes, dtype="S64"))
        _extend(f["stats"], n, np.asarray(stats, dtype=np.int64).reshape(k, 2))
        _extend(f["live"], n, np.ones(k, np.uint8))
        self._commit[C_ROWS] = n + k
        self._write_commit()  # the data on disk first, then the count that makes it count
        for i, (id_, h, st) in enumerate(zip(ids, hashes, stats)):
            self.existing.rows[id_] = (n + i, h, (int(st[0]), int(st[1])))

    def _thaw(self) -> None:
        """Rewrite a frozen cache chunked before appending rows to it (see _freeze)."""
        self._open_datasets = []
        self._f.close()
        _freeze.thaw(self.path)
        f = self._f = _swmr.open_swmr_write(self.path)
        self._open_datasets = _datasets(f)

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
        _layout.extend_checksums(self._f, "skipped/ids", m, ids)
        _layout.extend_checksums(self._f, "skipped/reasons", m, [r[:500] for r in reasons])
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
        self._sync()  # the marker itself durable: a finished run is not redone after a crash

    @_writes("the incompleteness marker")
    def mark_incomplete(self) -> None:
        if self._commit[C_COMPLETE]:
            self._commit[C_COMPLETE] = 0
            self._write_commit()

    def _write_commit(self) -> None:
        """Commit in two phases: the data on disk (flushed and fsynced), then the counts.

        HDF5 never fsyncs; without it a power loss could keep a commit whose rows the disk
        never got, which read back as zeros (issue 13; bench/cache_durability.py: its cost).
        """
        self._sync()
        self._f["commit"][:] = self._commit
        self._f.flush()

    def _sync(self) -> None:
        self._f.flush()
        fd = self._f.id.get_vfd_handle()
        if isinstance(fd, int):  # the default (sec2) driver: the file's own descriptor
            os.fsync(fd)

    @property
    def n_rows(self) -> int:
        return int(self._commit[C_ROWS])

    def close(self) -> None:
        f, self._f = getattr(self, "_f", None), None
        if f is None:
            return
        try:
            f.close()
            if self._commit[C_COMPLETE] and not self._failed:
                _freeze.freeze(self.path)  # contiguous features, memory-mapped by readers
        except (OSError, RuntimeError) as e:
            if not self._failed:
                error = self._write_failed(e, "its last changes", self.n_rows, f)
                _recover.close_quietly(f)
                raise error from None
            _recover.close_quietly(f)
        finally:
            self._lock.release()

    def _write_failed(self, e, what: str, kept: int | None, f=None) -> CacheError:
        """Stop writing for good after a refused write; the error says what is kept."""
        self._failed = True
        f = f if f is not None else getattr(self, "_f", None)
        return _recover.write_failed(self.path, e, what, kept, f)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _datasets(f) -> list:
    """Every dataset the writer writes (held open while writing: see ``_open``)."""
    names = _h5.ROW_FIELDS + ("classes", "commit")
    names += tuple(f"skipped/{n}" for n in _h5.SKIP_FIELDS)
    return [f[n] for n in names] + [f[n] for n in _h5.STRING_CHECKSUMS.values() if n in f]


def _extend(ds, n: int, values: np.ndarray) -> None:
    ds.resize((n + len(values),) + ds.shape[1:])
    ds[n : n + len(values)] = values


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}
