"""Write a cache's structure: a new file's layout, and a fresh copy of committed content.

Both build the file aside under a temporary name (``_files.temp_path``) and rename it into
place durably, so the cache's name never shows a half-made file.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np

from . import _files
from ._format import (
    C_CLASSES,
    C_ROWS,
    C_SKIPPED,
    COMMIT_LEN,
    FORMAT,
    SCHEMA_VERSION,
    config_key,
    dump_attr,
    feature_chunk_rows,
)
from ._h5 import ROW_FIELDS, SKIP_FIELDS, STR, STRING_CHECKSUMS, read_attrs, read_commit


def create(path: Path, *, identity: dict, metadata: dict, dim: int, store_dtype: str) -> None:
    """Create an empty cache at ``path`` atomically (build aside, then rename)."""
    tmp = _files.temp_path(path, "init")
    try:
        with h5py.File(tmp, "w", libver="latest", locking=False) as f:
            layout(f, identity=identity, metadata=metadata, dim=dim, store_dtype=store_dtype)
        _files.replace_durably(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def layout(f: h5py.File, *, identity: dict, metadata: dict, dim: int, store_dtype: str) -> None:
    dt = np.dtype(store_dtype)
    rows = feature_chunk_rows(dim, dt.itemsize)
    # Fletcher-32 on every dataset HDF5 can filter (issue 13: rot inside committed vectors
    # read back as other numbers); the strings get their CRC-32s in /checksums instead.
    num = dict(fletcher32=True)
    f.create_dataset("features", (0, dim), dt, maxshape=(None, dim), chunks=(rows, dim), **num)
    f.create_dataset("labels", (0,), np.int64, maxshape=(None,), chunks=(4096,), **num)
    f.create_dataset("ids", (0,), STR, maxshape=(None,), chunks=(1024,))
    f.create_dataset("hashes", (0,), "S64", maxshape=(None,), chunks=(1024,), **num)
    f.create_dataset("stats", (0, 2), np.int64, maxshape=(None, 2), chunks=(2048, 2), **num)
    f.create_dataset("live", (0,), np.uint8, maxshape=(None,), chunks=(8192,), **num)
    f.create_dataset("classes", (0,), STR, maxshape=(None,), chunks=(256,))
    g = f.create_group("skipped")
    g.create_dataset("ids", (0,), STR, maxshape=(None,), chunks=(256,))
    g.create_dataset("hashes", (0,), "S64", maxshape=(None,), chunks=(256,), **num)
    g.create_dataset("stats", (0, 2), np.int64, maxshape=(None, 2), chunks=(256, 2), **num)
    g.create_dataset("reasons", (0,), STR, maxshape=(None,), chunks=(256,))
    g.create_dataset("live", (0,), np.uint8, maxshape=(None,), chunks=(1024,), **num)
    for table, name in STRING_CHECKSUMS.items():
        chunk = f[table].chunks
        f.create_dataset(name, (0,), np.uint32, maxshape=(None,), chunks=chunk, **num)
    f.create_dataset("commit", data=np.zeros(COMMIT_LEN, np.float64), chunks=(COMMIT_LEN,), **num)
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
            counts = {"ids": n, "classes": nc, "skipped/ids": m, "skipped/reasons": m}
            for table, crc in STRING_CHECKSUMS.items():  # kept, or made for an older cache
                if crc in src:
                    _put(f[crc], src[crc], counts[table])
                else:
                    extend_checksums(f, table, 0, src[table].asstr()[: counts[table]])
            f.flush()
            f["commit"][:] = commit
        _files.replace_durably(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def _put(dst, src, n: int, block: int = 65536) -> None:
    dst.resize((n,) + dst.shape[1:])
    for i in range(0, n, block):
        j = min(n, i + block)
        dst[i:j] = src[i:j]


def string_crcs(values) -> np.ndarray:
    """CRC-32 of each string's UTF-8 bytes (zlib's: a well-kept C checksum)."""
    return np.fromiter((zlib.crc32(str(v).encode()) for v in values), np.uint32, len(values))


def extend_checksums(f: h5py.File, table: str, n: int, values) -> None:
    """Write the CRC-32s of ``values``, stored at rows ``n...`` of ``table``, when the cache
    keeps string checksums (caches made before them do not)."""
    name = STRING_CHECKSUMS[table]
    if name not in f or not len(values):
        return
    ds = f[name]
    ds.resize((n + len(values),))
    ds[n:] = string_crcs(values)
