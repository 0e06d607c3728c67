"""What a resuming writer reads first: is the file this run's, and which items does it hold.

Read-only and without SWMR, so damage fails at once (a SWMR handle retries a bad checksum for
minutes) and readers are not disturbed; see ``CacheWriter._open``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import _h5
from ._format import C_CLASSES, C_ROWS, C_SKIPPED, CacheError, CacheMismatchError, identity_diff
from ._inspect import damage


@dataclass
class Existing:
    """What a cache already holds about its live items: id -> (row, hash, (size, mtime_ns))."""

    rows: dict[str, tuple[int, str, tuple[int, int]]]
    skipped: dict[str, tuple[int, str, tuple[int, int]]]


def read_for_resume(path: Path, identity: dict, dim: int, store_dtype: str):
    """Check the file against this run; its commit, items, class names and metadata.

    Raises:
        CacheMismatchError: the file was made with another configuration, dim or dtype.
        CacheError: the file is damaged.
    """
    try:
        with h5py.File(path, "r", locking=False) as f:
            _h5.check_header(f, path)
            stored, old_meta = _h5.read_attrs(f)
            feats = f["features"]
            check_identity(path, stored, feats.shape[1], feats.dtype, identity, dim, store_dtype)
            commit = _h5.read_commit(f, path)
            damaged = damage(f, path, commit)  # adding to a damaged file would hide it
            if damaged:
                raise CacheError(
                    f"{path} is damaged, so colhead will not add to it: {damaged[0]}. Keep it "
                    "aside (or delete it) and extract again."
                )
            existing = load_existing(f, commit)
            classes = [str(c) for c in f["classes"].asstr()[: int(commit[C_CLASSES])]]
    except _h5.READ_ERRORS as e:
        if isinstance(e, (CacheError, CacheMismatchError)):
            raise
        raise _h5.corrupt(path, e) from None
    return commit, existing, classes, old_meta


def check_identity(path, stored, stored_dim, stored_dtype, identity, dim, store_dtype) -> None:
    """Raise CacheMismatchError unless the stored identity, dim and dtype are this run's."""
    diff = identity_diff(stored, identity)
    if diff:
        raise CacheMismatchError(
            f"The cache {path} was made with another column configuration or dataset, "
            "and colhead never mixes two in one file:\n  "
            + "\n  ".join(diff)
            + "\nUse another --out file, or --cache-dir to get one file per configuration."
        )
    if stored_dim != dim or stored_dtype != np.dtype(store_dtype):
        raise CacheMismatchError(
            f"The cache {path} stores {stored_dtype} vectors of dim "
            f"{stored_dim}, not {store_dtype} of dim {dim}."
        )


def load_existing(f, commit) -> Existing:
    n, m = int(commit[C_ROWS]), int(commit[C_SKIPPED])
    g = f["skipped"]
    return Existing(
        rows=_index(f["ids"], f["hashes"], f["stats"], f["live"], n),
        skipped=_index(g["ids"], g["hashes"], g["stats"], g["live"], m),
    )


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
