"""Read a feature cache into numpy arrays, at the speed of ``np.load`` or better.

Three things make a read fast (issue 14; ``python bench/cache.py`` measures them):

* Features land in one preallocated array (``read_direct``), read with HDF5's chunk cache
  off: a 256 KiB chunk read through the 1 MiB default cache is copied twice.
* A complete cache whose writer froze it (``_freeze``) keeps its features in one contiguous
  block: they are memory-mapped (copy-on-write, so the array behaves as one in memory), and
  pages are read from the page cache when first touched, without a copy.
* Ids and hashes are read in one pass as bytes and decoded to ``str`` when first used; for a
  frozen cache they are even read when first used, from the file that was opened (its ids
  and hashes never change: see ``_Later``).

Reads stay safe while a writer appends (SWMR): only the rows counted in ``/commit`` are read,
and a torn read of the ids' heap is retried (``_h5.swmr_retry``).
"""

from __future__ import annotations

import hashlib
import mmap as _mmap
import os
import weakref
from pathlib import Path

import h5py
import numpy as np

from . import _h5
from ._format import (
    C_CLASSES,
    C_COMPLETE,
    C_FINISHED,
    C_ROWS,
    C_SKIPPED,
    CacheError,
    column_key,
    config_key,
)


class FeatureCache:
    """The live content of a cache, as numpy arrays.

    Attributes:
        path: the file.
        features: (N, D) vectors (float32 unless ``dtype=None`` asked for the stored dtype); a
            copy-on-write memory map for a frozen complete cache (writable like any array,
            writes never reach the file).
        labels: (N,) int64 indices into ``classes``; -1 where the item has no label.
        ids: (N,) stable item ids (str, object array; decoded when first used, and for a
            frozen cache read then, from the file that was opened).
        hashes: (N,) sha256 hex of each item's content (str, object array; as ``ids``).
        classes: class names; ``labels`` index into it.
        identity: column config and dataset spec the vectors were made with.
        metadata: provenance (versions, device, runs, ...).
        skipped: (id, reason) of items that could not be read.
        complete: True once a run covered the whole dataset.
        config_key: key of ``identity``; column_key: key of column + weights + preprocessing.
    """

    def __init__(
        self,
        path: Path,
        features: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        hashes: np.ndarray,
        classes: list[str],
        identity: dict,
        metadata: dict,
        skipped: list[tuple[str, str]] | None = None,
        complete: bool = False,
        finished_at: float = 0.0,
        config_key: str = "",
        column_key: str = "",
    ):
        self.path = path
        self.features = features
        self.labels = labels
        self._ids = ids  # bytes or str; decoded once, on first use
        self._hashes = hashes
        self._later: _Later | None = None  # reads ids and hashes when first asked for
        self.classes = classes
        self.identity = identity
        self.metadata = metadata
        self.skipped = [] if skipped is None else skipped
        self.complete = complete
        self.finished_at = finished_at
        self.config_key = config_key
        self.column_key = column_key

    @property
    def ids(self) -> np.ndarray:
        self._load()
        self._ids = _decoded(self._ids)
        return self._ids

    @ids.setter
    def ids(self, value) -> None:
        self._ids = value

    @property
    def hashes(self) -> np.ndarray:
        self._load()
        self._hashes = _decoded(self._hashes)
        return self._hashes

    @hashes.setter
    def hashes(self, value) -> None:
        self._hashes = value

    def _load(self) -> None:
        if self._later is not None:
            self._ids, self._hashes = self._later.read()
            self._later = None

    def __getstate__(self) -> dict:  # pickle, copy: ids and hashes travel, not a descriptor
        self._load()
        return self.__dict__

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, {len(self)} x {self.dim} {self.features.dtype}, "
            f"{len(self.classes)} classes, {'complete' if self.complete else 'INCOMPLETE'})"
        )

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def fingerprint(self) -> str:
        """Identity of this exact content: config key + every live (id, content hash)."""
        h = hashlib.sha256(self.config_key.encode())
        for i, c in zip(self.ids, self.hashes):
            h.update(f"{i}\0{c}\n".encode())
        return h.hexdigest()

    def to_pandas(self, *, vectors: str = "column"):
        """The rows as a pandas DataFrame: ``id``, ``label``, ``class``, ``hash`` and the vectors.

        Args:
            vectors: ``"column"`` puts each row's vector in one ``vector`` column (a float
                array per cell); ``"wide"`` spreads them over columns ``f0 .. f{D-1}``.

        Raises:
            ImportError: pandas is not installed.
        """
        from ._export import to_pandas

        return to_pandas(self, vectors=vectors)


def _decoded(a: np.ndarray) -> np.ndarray:
    """An object array of str, from one of bytes (as h5py reads text) or of str."""
    if a.dtype == object and (len(a) == 0 or not isinstance(a[0], bytes)):
        return a
    if a.dtype.kind == "S":  # fixed-length ASCII (the hashes): one vectorised pass
        return a.astype(f"U{max(1, a.dtype.itemsize)}").astype(object)
    return np.array([b.decode() for b in a], dtype=object)


def open_cache(
    path: str | os.PathLike,
    *,
    dtype=np.float32,
    require_complete: bool = False,
    include_stale: bool = False,
    mmap: bool = True,
) -> FeatureCache:
    """Read a cache's committed, live rows into memory.

    Safe while a writer appends: only rows counted in ``/commit`` are read.

    Args:
        path: the cache file.
        dtype: dtype of the returned features (None keeps the stored dtype).
        require_complete: raise unless a run finished the whole dataset.
        include_stale: also return rows of items that changed or disappeared since.
        mmap: memory-map the features when the file keeps them in one contiguous block (a
            frozen complete cache) and no conversion is asked for; False reads them into memory.

    Raises:
        FileNotFoundError: no file at ``path``.
        CacheError: the file is not a readable colhead cache (or incomplete when required).
            A frozen cache's ids and hashes are read when first used: damage there raises
            this CacheError from ``.ids`` / ``.hashes`` (``colhead cache verify`` checks all).
    """
    path = Path(path)
    try:
        return _h5.swmr_retry(lambda: _read(path, dtype, require_complete, include_stale, mmap))
    except _h5.READ_ERRORS as e:
        if isinstance(e, (CacheError, FileNotFoundError)):
            raise
        raise _h5.corrupt(path, e) from None


def _read(path: Path, dtype, require_complete: bool, include_stale: bool, mmap: bool):
    with _h5.open_read(path) as f:
        commit = _h5.read_commit(f, path)
        identity, metadata = _h5.read_attrs(f)
        n, m, nc = int(commit[C_ROWS]), int(commit[C_SKIPPED]), int(commit[C_CLASSES])
        complete = bool(commit[C_COMPLETE])
        if require_complete and not complete:
            raise CacheError(
                f"{path} is incomplete ({n} rows so far): its extraction was interrupted or is "
                "still running. Rerun the same `colhead extract` command to finish it."
            )
        try:
            sel = None if include_stale else np.flatnonzero(f["live"][:n])
            if sel is not None and len(sel) == n:
                sel = None  # every row live: no selection, no copy
            features, mapped = _features(f, path, n, sel, dtype, mmap)
            labels = _rows(f["labels"], n, sel)
            later = _Later(path, f.id.get_vfd_handle(), n, sel) if mapped else None
            ids = None if later else _rows(f["ids"], n, sel)  # bytes; decoded when first used
            hashes = None if later else _rows(f["hashes"], n, sel)
            classes = [str(c) for c in f["classes"].asstr()[:nc]]
            skipped = _skipped(f["skipped"], m) if m else []
        except (OSError, ValueError) as e:
            raise _h5.TornRead(  # retried; raised as the CacheError it is if it persists
                f"{path}: reading its arrays failed ({_h5.reason(e)}); the file is corrupt. "
                "Run `colhead cache verify` on it."
            ) from None
    if len(labels) and (labels.max() >= len(classes) or labels.min() < -1):
        raise CacheError(f"{path}: labels fall outside its {len(classes)} classes; corrupt.")
    c = FeatureCache(
        path=path,
        features=features,
        labels=labels,
        ids=ids,
        hashes=hashes,
        classes=classes,
        identity=identity,
        metadata=metadata,
        skipped=skipped,
        complete=complete,
        finished_at=float(commit[C_FINISHED]),
        config_key=config_key(identity),
        column_key=column_key(identity),
    )
    c._later = later
    return c


def _skipped(g: h5py.Group, m: int) -> list[tuple[str, str]]:
    live, ids, reasons = g["live"][:m], g["ids"].asstr()[:m], g["reasons"].asstr()[:m]
    return [(str(i), str(r)) for i, r, lv in zip(ids, reasons, live) if lv]


class _Later:
    """Reads a frozen cache's ids and hashes when they are first asked for.

    From a duplicate of the descriptor the cache was opened with (h5py reads a Python file
    object), so from that very file even if another was renamed over its path since. Its ids
    and hashes never change: rows are only ever added to a frozen cache after it was rewritten
    aside and renamed (``_freeze.thaw``). Most readers (heads) never ask for them at all.
    """

    def __init__(self, path: Path, fd: int, n: int, sel: np.ndarray | None):
        self.path, self.n, self.sel = path, n, sel
        self.fd = os.dup(fd)
        self._close = weakref.finalize(self, os.close, self.fd)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            with os.fdopen(os.dup(self.fd), "rb") as fo:
                try:
                    f = h5py.File(fo, "r", locking=False)
                except OSError:  # an HDF5 that refuses a file a writer has open, unless SWMR
                    f = self._swmr()
                with f:
                    return _rows(f["ids"], self.n, self.sel), _rows(f["hashes"], self.n, self.sel)
        except (*_h5.READ_ERRORS, CacheError) as e:
            raise CacheError(
                f"{self.path}: reading its ids failed ({_h5.reason(e)}); the file is corrupt. "
                "Run `colhead cache verify` on it."
            ) from None
        finally:
            self._close()

    def _swmr(self) -> h5py.File:
        """The same file through its path, SWMR-aware, if no other was renamed over it."""
        st, now = os.fstat(self.fd), os.stat(self.path)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            raise CacheError(f"{self.path} was replaced and the ids of the file read are gone")
        return _h5.open_read(self.path)


def _rows(ds: h5py.Dataset, n: int, sel: np.ndarray | None) -> np.ndarray:
    a = ds[:n] if n else np.zeros((0,) + ds.shape[1:], ds.dtype)
    return a if sel is None else a[sel]


def _features(f: h5py.File, path: Path, n: int, sel, dtype, mmap: bool):
    """Rows ``[:n]`` (then ``sel``) of /features as ``dtype``, and whether they are mapped."""
    ds = _uncached(f, "features")
    stored = ds.dtype
    want = stored if dtype is None else np.dtype(dtype)
    if mmap and want == stored:
        mapped = _mapped(f, path, ds, n)
        if mapped is not None:
            return (mapped if sel is None else mapped[sel]), True
    out = np.empty((n, ds.shape[1]), stored)
    if n:
        ds.read_direct(out, np.s_[:n], np.s_[:n])
    if sel is not None:
        out = out[sel]
    return (out if want == stored else out.astype(want)), False


def _uncached(f: h5py.File, name: str) -> h5py.Dataset:
    """Open a dataset without a chunk cache, so whole chunks go straight to the caller's array.

    A chunk that fits HDF5's cache (1 MiB by default) is read into it and then copied; with
    no cache an unfiltered chunk is read in place (bench/cache.py: 0.70x -> 0.84x np.load).
    Filtered chunks (Fletcher-32) still pass through a one-chunk buffer to be checked.
    """
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(0, 0, 1.0)
    return h5py.Dataset(h5py.h5d.open(f.id, name.encode(), dapl=dapl))


def _mapped(f: h5py.File, path: Path, ds: h5py.Dataset, n: int) -> np.ndarray | None:
    """A copy-on-write memory map of rows ``[:n]``, when the file keeps them contiguous.

    Only for a contiguous, allocated, native-order dataset: its bytes never change, even
    while a writer has the file open (a writer that appends first rewrites the file aside
    and renames it, see ``_freeze.thaw``; a mapping keeps the old file). The map is made
    from HDF5's own descriptor, so it is the very file whose header was just checked, even
    if another one was renamed over the path meanwhile.
    """
    if n == 0 or ds.chunks is not None or ds.dtype.byteorder == ">":
        return None
    offset = ds.id.get_offset()
    fd = f.id.get_vfd_handle()
    if offset is None or not isinstance(fd, int):
        return None  # not allocated, or not the default (sec2) file driver
    nbytes = n * ds.shape[1] * ds.dtype.itemsize
    if offset + nbytes > os.fstat(fd).st_size:
        return None  # shorter than its header says: let HDF5 say what is wrong
    start = offset - offset % _mmap.ALLOCATIONGRANULARITY
    mm = _mmap.mmap(fd, offset - start + nbytes, access=_mmap.ACCESS_COPY, offset=start)
    # mmap keeps its own duplicate of the descriptor: closing the HDF5 file leaves it valid
    arr = np.frombuffer(mm, ds.dtype, n * ds.shape[1], offset - start)
    return arr.reshape(n, ds.shape[1])
