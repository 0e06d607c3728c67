"""Freeze a complete cache: its features in one contiguous block that readers memory-map.

A cache is written in chunks, so that rows can be appended (and, per chunk, checked). Reading
chunks costs a copy per chunk: at best ~0.85x ``np.load`` of the same array, ~0.45x with
Fletcher-32 checksums (bench/cache.py). Once a run completes the cache, ``CacheWriter.close``
rewrites it aside with ``/features`` contiguous and renames it over the old file; readers then
map the features (``_reader._mapped``) instead of copying them, faster than ``np.load`` (issue
14). The other datasets are copied as they are (``H5Ocopy``: layout, chunks and filters kept).

The contiguous features are protected by a CRC-32 per block of rows, in ``/features_crc32``
(``cache verify`` checks them), since a contiguous HDF5 dataset cannot carry a filter.

A writer that appends to a frozen cache first thaws it (``thaw``: rewrites it chunked, aside,
then renames), so the bytes of a frozen file's features never change: a reader's mapping of
them stays valid, and one made before a rename keeps the old file.

The format is the same (schema version 1): HDF5 hides a dataset's layout from its readers, so
an older colhead reads a frozen cache, and ignores ``/features_crc32``.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import h5py
import numpy as np

from . import _files, _h5, _layout
from ._format import C_CLASSES, C_COMPLETE, C_ROWS, C_SKIPPED, CacheError

CRC = "features_crc32"
BLOCK_BYTES = 4 << 20  # bytes of features per copy block and per CRC-32


def is_frozen(f: h5py.File) -> bool:
    return f["features"].chunks is None


def freeze(path: str | os.PathLike) -> bool:
    """Rewrite a complete, cleanly closed cache with contiguous features; False if left as is.

    The caller holds the writer lock and has closed the file. Nothing is changed unless the
    cache is complete, chunked, non-empty and every dataset holds exactly its committed
    entries; a failure (a full disk) leaves the chunked file, which reads as before.
    """
    path = Path(path)
    tmp = _files.temp_path(path, "copy")  # a name the writer and `cache gc` recognise
    try:
        with _h5.open_read(path) as src:
            if not _freezable(src, path):
                return False
            with h5py.File(tmp, "w", libver="latest", locking=False) as dst:
                _copy_frozen(src, dst)
        _files.replace_durably(tmp, path)
        return True
    except (*_h5.READ_ERRORS, CacheError):
        return False  # an optimisation only: the chunked file stays, and reads the same
    finally:
        tmp.unlink(missing_ok=True)


def thaw(path: str | os.PathLike) -> None:
    """Rewrite a frozen cache chunked (aside, then rename), so a writer can append to it."""
    path = Path(path)
    with _h5.open_read(path) as src:
        _layout.copy_committed(src, path, path)


def check(f: h5py.File, path) -> list[str]:
    """Problems with a frozen cache's features: blocks whose CRC-32 does not match."""
    if not is_frozen(f):
        return []
    if CRC not in f:
        return [f"{path}: /features is contiguous but /{CRC} is missing"]
    ds, crc = f["features"], f[CRC]
    rows = int(crc.attrs.get("rows_per_block", 0))
    want = crc[:]
    if rows < 1 or len(want) != -(-ds.shape[0] // rows):
        return [f"{path}: /{CRC} does not describe /features ({len(want)} blocks of {rows})"]
    bad = [k for k, got in enumerate(_crcs(ds, rows)) if got != want[k]]
    if not bad:
        return []
    return [
        f"{len(bad)} block(s) of {rows} vectors changed since they were written (CRC-32 "
        f"mismatch, first at row {bad[0] * rows}): the file is damaged; extract it again"
    ]


def _freezable(src: h5py.File, path) -> bool:
    commit = _h5.read_commit(src, path)
    n, m, nc = int(commit[C_ROWS]), int(commit[C_SKIPPED]), int(commit[C_CLASSES])
    if not commit[C_COMPLETE] or n == 0 or is_frozen(src):
        return False
    want = {name: n for name in _h5.ROW_FIELDS}
    want.update({f"skipped/{name}": m for name in _h5.SKIP_FIELDS}, classes=nc)
    return all(src[name].shape[0] == count for name, count in want.items())


def _copy_frozen(src: h5py.File, dst: h5py.File) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name in src:
        if name not in ("features", CRC):
            src.copy(src[name], dst, name=name)  # as stored: layout, chunks, filters
    feats = src["features"]
    n, dim = feats.shape
    out = dst.create_dataset("features", (n, dim), feats.dtype)  # contiguous
    rows = max(1, BLOCK_BYTES // (dim * feats.dtype.itemsize))
    crcs = []
    buf = np.empty((rows, dim), feats.dtype)
    for i in range(0, n, rows):
        j = min(n, i + rows)
        block = buf[: j - i]
        feats.read_direct(block, np.s_[i:j], np.s_[: j - i])
        out.write_direct(block, np.s_[: j - i], np.s_[i:j])
        crcs.append(zlib.crc32(block))
    crc = dst.create_dataset(CRC, data=np.array(crcs, dtype=np.uint32))
    crc.attrs["rows_per_block"] = rows


def _crcs(ds: h5py.Dataset, rows: int):
    """CRC-32 of each block of ``rows`` rows, read in place (zlib: a well-kept C checksum)."""
    n, dim = ds.shape
    buf = np.empty((rows, dim), ds.dtype)
    for i in range(0, n, rows):
        j = min(n, i + rows)
        ds.read_direct(buf, np.s_[i:j], np.s_[: j - i])
        yield zlib.crc32(buf[: j - i])
