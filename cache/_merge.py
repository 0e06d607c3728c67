"""Merge caches of one configuration, made elsewhere (shards, other machines), into one file.

The result is built aside and renamed into place under ``out``'s writer lock, so a reader of
``out`` sees the old file or the whole merged one, never a part (see ``_lock``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np

from . import _files, _h5, _layout
from ._format import (
    C_CLASSES,
    C_COMPLETE,
    C_FINISHED,
    C_ROWS,
    C_SKIPPED,
    COMMIT_LEN,
    IDENTITY_FIELDS,
    MAX_RUNS_KEPT,
    CacheError,
    CacheMismatchError,
    config_key,
    dump_attr,
    short,
)
from ._lock import CacheLockedError, WriterLock, writer_active

BLOCK = 8192  # rows read at once while merging


def merge_caches(inputs, out: str | os.PathLike) -> dict:
    """Merge caches of one configuration into ``out``: every live row once, then verify.

    The inputs must share the cache identity (column, weights, preprocessing, precision, storage
    dtype, dataset). An id found in several inputs is kept once when its content hash agrees and
    is an error when it does not. Skipped entries are kept unless another input has a row for
    the id. The result is complete when an input was, or when its rows and skipped entries cover
    the dataset's recorded item count. It is built beside ``out`` and renamed into place, under
    ``out``'s writer lock; ``out`` may be one of the inputs, but no other existing file.

    Returns:
        A summary: path, rows, skipped, duplicates (ids found in more than one input), complete.

    Raises:
        CacheMismatchError: the inputs differ in identity (the message names the fields) or dim.
        ValueError: conflicting duplicate ids, too few inputs, or ``out`` exists already.
        CacheLockedError: an input or ``out`` is being written.
    """
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if not paths:
        raise ValueError("merge needs at least one input cache.")
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise ValueError("The same input cache is given twice; give each cache once.")
    if out.exists() and out.resolve() not in resolved:
        raise ValueError(
            f"{out} exists and is not one of the inputs; merge never overwrites another file. "
            "Choose another -o, or delete it first."
        )
    for p in paths:
        w = writer_active(p)
        if w:
            raise CacheLockedError(
                f"The cache {p} is being written by pid {w.get('pid')} on host {w.get('host')}; "
                "merge it once that writer has finished."
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(out):
        files = [_h5.open_read(p) for p in paths]
        try:
            return _merge(files, paths, out)
        finally:
            for f in files:
                f.close()


def _merge(files, paths: list[Path], out: Path) -> dict:
    commits = [_h5.read_commit(f, p) for f, p in zip(files, paths)]
    attrs = [_h5.read_attrs(f) for f in files]
    ident0 = attrs[0][0]
    for p, (ident, _), f in zip(paths[1:], attrs[1:], files[1:]):
        diff = [
            f"{k}: {paths[0].name} has {short(ident0.get(k))}, {p.name} has {short(ident.get(k))}"
            for k in IDENTITY_FIELDS
            if ident0.get(k) != ident.get(k)
        ]
        if diff:
            raise CacheMismatchError(
                f"Cannot merge {p} into {paths[0]}: they were made with another column "
                "configuration or dataset, and colhead never mixes two in one file:\n  "
                + "\n  ".join(diff)
            )
        if f["features"].shape[1] != files[0]["features"].shape[1]:
            raise CacheMismatchError(
                f"Cannot merge {p}: its vectors have dim {f['features'].shape[1]}, "
                f"{paths[0]}'s have {files[0]['features'].shape[1]}."
            )

    # Pass 1, small arrays only: which row of which input each id comes from, and the classes.
    take: list[np.ndarray] = []
    seen: dict[str, tuple[str, int]] = {}  # id -> (hash, input index)
    duplicates = 0
    classes: list[str] = []
    class_maps = []
    for k, (f, p, c) in enumerate(zip(files, paths, commits)):
        n, nc = int(c[C_ROWS]), int(c[C_CLASSES])
        names = [str(x) for x in f["classes"].asstr()[:nc]]
        for name in names:
            if name not in classes:
                classes.append(name)
        class_maps.append(np.array([classes.index(x) for x in names], np.int64))
        ids = f["ids"].asstr()[:n]
        hashes = f["hashes"][:n]
        rows = []
        for i in np.flatnonzero(f["live"][:n]):
            id_, h = str(ids[i]), hashes[i].decode()
            if id_ in seen:
                if seen[id_][0] != h:
                    raise ValueError(
                        f"The id {id_!r} is in {paths[seen[id_][1]]} and in {p} with different "
                        "content hashes (the item changed between the two extractions). Re-extract "
                        "it in one of them, or merge only caches made from the same files."
                    )
                duplicates += 1
                continue
            seen[id_] = (h, k)
            rows.append(i)
        take.append(np.asarray(rows, np.int64))
    skip_take: list[np.ndarray] = []
    skip_seen: set[str] = set()
    for f, c in zip(files, commits):
        m = int(c[C_SKIPPED])
        g = f["skipped"]
        ids = g["ids"].asstr()[:m]
        rows = []
        for i in np.flatnonzero(g["live"][:m]):
            id_ = str(ids[i])
            if id_ not in seen and id_ not in skip_seen:
                skip_seen.add(id_)
                rows.append(i)
        skip_take.append(np.asarray(rows, np.int64))

    n_rows, n_skip = len(seen), len(skip_seen)
    items = max(int(a[1].get("dataset", {}).get("items", -1) or -1) for a in attrs)
    complete = any(bool(c[C_COMPLETE]) for c in commits) or (
        items >= 0 and n_rows + n_skip >= items
    )
    runs = [r for _, meta in attrs for r in meta.get("runs", [])][-MAX_RUNS_KEPT:]
    metadata = {
        **attrs[0][1],
        "runs": runs,
        "merged_from": [
            {"path": str(p), "rows": len(t), "skipped": len(s)}
            for p, t, s in zip(paths, take, skip_take)
        ][:64],
        "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    # Pass 2: stream the chosen rows into a file beside `out`, commit, verify, rename.
    feats0 = files[0]["features"]
    tmp = _files.temp_path(out, "copy")
    try:
        with h5py.File(tmp, "w", libver="latest", locking=False) as g:
            _layout.layout(
                g, identity=ident0, metadata={}, dim=feats0.shape[1], store_dtype=feats0.dtype.str
            )
            g.attrs["metadata"] = dump_attr(metadata)
            for f, rows, cmap, c in zip(files, take, class_maps, commits):
                n = int(c[C_ROWS])
                for lo in range(0, n, BLOCK):  # bounded memory: one block of rows at a time
                    hi = min(n, lo + BLOCK)
                    a, b = np.searchsorted(rows, [lo, hi])
                    _append_rows(g, f, lo, hi, rows[a:b] - lo, cmap)
            for f, rows in zip(files, skip_take):
                _append_skipped(g, f, rows)
            g["classes"].resize((len(classes),))
            if classes:
                g["classes"][:] = np.array(classes, dtype=object)
                _layout.extend_checksums(g, "classes", 0, classes)
            commit = np.zeros(COMMIT_LEN, np.float64)
            commit[C_ROWS], commit[C_SKIPPED], commit[C_CLASSES] = n_rows, n_skip, len(classes)
            commit[C_COMPLETE] = float(complete)
            commit[C_FINISHED] = max(float(c[C_FINISHED]) for c in commits) or time.time()
            g.flush()
            g["commit"][:] = commit  # written last: only now does the content count
        from ._inspect import verify_cache

        problems = [x for x in verify_cache(tmp) if not x.startswith("incomplete")]
        if problems:
            raise CacheError(f"The merged cache failed verification: {'; '.join(problems)}.")
        _files.replace_durably(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "path": str(out),
        "rows": n_rows,
        "skipped": n_skip,
        "duplicates": duplicates,
        "complete": complete,
        "config_key": config_key(ident0),
    }


def _append_rows(g, f, lo: int, hi: int, sel: np.ndarray, cmap: np.ndarray) -> None:
    if not len(sel):
        return
    labels = f["labels"][lo:hi][sel]
    labels = np.where(labels >= 0, cmap[np.clip(labels, 0, None)] if len(cmap) else -1, -1)
    _extend(g["features"], f["features"][lo:hi][sel])
    _extend(g["labels"], labels.astype(np.int64))
    ids = np.array(f["ids"].asstr()[lo:hi], dtype=object)[sel]
    _extend(g["ids"], ids)
    _extend_crc(g, f, "ids", ids, lambda ds: ds[lo:hi][sel])
    _extend(g["hashes"], f["hashes"][lo:hi][sel])
    _extend(g["stats"], f["stats"][lo:hi][sel])
    _extend(g["live"], np.ones(len(sel), np.uint8))


def _append_skipped(g, f, rows: np.ndarray) -> None:
    if not len(rows):
        return
    s, d = f["skipped"], g["skipped"]
    hi = int(rows[-1]) + 1
    ids = np.array(s["ids"].asstr()[:hi], dtype=object)[rows]
    _extend(d["ids"], ids)
    _extend_crc(g, f, "skipped/ids", ids, lambda ds: ds[:hi][rows])
    _extend(d["hashes"], s["hashes"][:hi][rows])
    _extend(d["stats"], s["stats"][:hi][rows])
    reasons = np.array(s["reasons"].asstr()[:hi], dtype=object)[rows]
    _extend(d["reasons"], reasons)
    _extend_crc(g, f, "skipped/reasons", reasons, lambda ds: ds[:hi][rows])
    _extend(d["live"], np.ones(len(rows), np.uint8))


def _extend(ds, values: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize((n + len(values),) + ds.shape[1:])
    ds[n:] = values


def _extend_crc(g, f, table: str, values, pick) -> None:
    """The strings' CRC-32s: the input's own where it has them (so damage in it fails the
    merged file's verification instead of being blessed), else computed."""
    name = _h5.STRING_CHECKSUMS[table]
    _extend(g[name], pick(f[name]) if name in f else _layout.string_crcs(values))
