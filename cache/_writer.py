"""Append-only, crash-safe, single-writer access to a feature cache."""

from __future__ import annotations

import glob
import os
import re
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


@dataclass
class Existing:
    """What a cache already holds about its live items: id -> (row, hash, (size, mtime_ns))."""

    rows: dict[str, tuple[int, str, tuple[int, int]]]
    skipped: dict[str, tuple[int, str, tuple[int, int]]]


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
        self._lock = WriterLock(self.path).acquire()
        try:
            self._open(identity, metadata, dim, store_dtype)
        except BaseException:
            self._lock.release()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _open(self, identity: dict, metadata: dict, dim: int, store_dtype: str) -> None:
        self._remove_dead_temps()
        if not self.path.exists():
            _h5.create(
                self.path,
                identity=identity,
                metadata={**_without(metadata, "run"), "created_at": _now(), "runs": []},
                dim=dim,
                store_dtype=store_dtype,
            )
        # Check and stamp in one short non-SWMR session, closed at once: a file open for
        # writing without SWMR is marked so that nobody can open it, readers included, and a
        # kill -9 would leave that mark behind (see _flags). Everything after runs in SWMR mode.
        f = self._open_plain()
        try:
            self._check_and_stamp(f, identity, metadata, dim, store_dtype)
        finally:
            f.close()
        try:
            f = _open_swmr_write(self.path)
        except OSError as e:
            raise CacheError(
                f"{self.path} cannot be opened for writing ({_h5._reason(e)})."
            ) from None
        self._f = f
        try:
            self._commit = _h5.read_commit(f, self.path)
            self.existing = self._load_existing()
            n_classes = int(self._commit[C_CLASSES])
            self.classes = [str(c) for c in f["classes"].asstr()[:n_classes]]
        except BaseException:
            self._f = None
            f.close()
            raise

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

    def _open_plain(self) -> h5py.File:
        """Open read-write without SWMR, first recovering the file of a writer that died."""
        try:
            return h5py.File(self.path, "r+", libver="latest", locking=False)
        except OSError as e:
            if "already open for write" not in str(e):
                raise CacheError(
                    f"{self.path} cannot be opened for writing ({_h5._reason(e)}). If it is "
                    "corrupt, run `colhead cache verify` on it, or write to another file."
                ) from None
        # We hold the writer lock, so the 'in use' mark was left by a writer that died. A mark
        # without SWMR (it died while opening) only needs clearing; a SWMR writer's file is
        # rewritten with exactly its committed content, as SWMR leaves its mark for good.
        flags = _flags.write_flags(self.path)
        if flags is not None and not flags & _flags.SWMR_WRITE_ACCESS:
            _flags.clear_write_flags(self.path)
        with _h5.open_read(self.path) as src:
            _h5.copy_committed(src, self.path, self.path)
        return h5py.File(self.path, "r+", libver="latest", locking=False)

    def _check_and_stamp(self, f, identity, metadata, dim, store_dtype) -> None:
        _h5.check_header(f, self.path)
        stored, old_meta = _h5.read_attrs(f)
        diff = identity_diff(stored, identity)
        if diff:
            raise CacheMismatchError(
                f"The cache {self.path} was made with another column configuration or dataset, "
                "and colhead never mixes two in one file:\n  "
                + "\n  ".join(diff)
                + "\nUse another --out file, or --cache-dir to get one file per configuration."
            )
        if f["features"].shape[1] != dim or f["features"].dtype != np.dtype(store_dtype):
            raise CacheMismatchError(
                f"The cache {self.path} stores {f['features'].dtype} vectors of dim "
                f"{f['features'].shape[1]}, not {store_dtype} of dim {dim}."
            )
        runs = list(old_meta.get("runs", []))[-(MAX_RUNS_KEPT - 1) :]
        runs.append({"started_at": _now(), **metadata.get("run", {})})
        merged = {**old_meta, **_without(metadata, "run"), "runs": runs}
        f.attrs["metadata"] = dump_attr(merged)
        self.metadata = merged

    def _load_existing(self) -> Existing:
        f, c = self._f, self._commit
        n, m = int(c[C_ROWS]), int(c[C_SKIPPED])
        return Existing(
            rows=_index(f["ids"], f["hashes"], f["stats"], f["live"], n),
            skipped=_index(
                f["skipped"]["ids"],
                f["skipped"]["hashes"],
                f["skipped"]["stats"],
                f["skipped"]["live"],
                m,
            ),
        )

    # -- writing -----------------------------------------------------------------------------
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

    def finish(self) -> None:
        """Mark the cache complete for its dataset (the completeness marker, written last)."""
        self._commit[C_COMPLETE] = 1
        self._commit[C_FINISHED] = time.time()
        self._write_commit()

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
        if getattr(self, "_f", None) is not None:
            try:
                self._f.close()
            finally:
                self._f = None
                self._lock.release()

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
