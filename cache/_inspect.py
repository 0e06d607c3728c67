"""Look inside caches: provenance summary and a thorough integrity check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import _freeze, _h5
from ._format import C_CLASSES, C_COMPLETE, C_ROWS, C_SKIPPED, CacheError, config_key
from ._layout import string_crcs
from ._lock import writer_active
from ._structure import row_bytes


def cache_info(path: str | os.PathLike) -> dict:
    """Summary of a cache: identity, provenance, counts, skipped items, size on disk."""
    path = Path(path)
    try:
        return _h5.swmr_retry(lambda: _info(path))
    except _h5.READ_ERRORS as e:
        if isinstance(e, (CacheError, FileNotFoundError)):
            raise
        raise _h5.corrupt(path, e) from None


def _info(path: Path) -> dict:
    with _h5.open_read(path) as f:
        try:
            return _summary(f, path)
        except (OSError, ValueError) as e:  # raced a writer's append (see _h5.TornRead)
            raise _h5.TornRead(f"{path}: reading its arrays failed ({_h5.reason(e)}).") from None


def _summary(f, path: Path) -> dict:
    commit = _h5.read_commit(f, path)
    identity, metadata = _h5.read_attrs(f)
    n, m = int(commit[C_ROWS]), int(commit[C_SKIPPED])
    live = int(f["live"][:n].sum())
    s_live = f["skipped"]["live"][:m].astype(bool)
    skipped = [
        (str(i), str(r))
        for i, r, lv in zip(
            f["skipped"]["ids"].asstr()[:m], f["skipped"]["reasons"].asstr()[:m], s_live
        )
        if lv
    ]
    feats = f["features"]
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "identity": identity,
        "config_key": config_key(identity),
        "metadata": metadata,
        "rows": live,
        "stale_rows": n - live,
        "dim": int(feats.shape[1]),
        "store_dtype": str(feats.dtype),
        "classes": [str(c) for c in f["classes"].asstr()[: int(commit[C_CLASSES])]],
        "skipped": skipped,
        "complete": bool(commit[C_COMPLETE]),
        "writer": writer_active(path),
        "checksums": not unchecked(f),
    }


def verify_cache(path: str | os.PathLike, *, notes: list[str] | None = None) -> list[str]:
    """Check a cache thoroughly; return the problems found (empty list = healthy).

    Reads every committed entry of every dataset, so that HDF5 checks each chunk's Fletcher-32
    checksum, and compares the strings with their CRC-32s. Caches made before checksums were
    written cannot show damage inside their values; with ``notes`` (a list), that is said there.
    """
    path = Path(path)
    try:
        return _verify(path, notes if notes is not None else [])
    except _h5.READ_ERRORS as e:  # damage in a place the checks below do not expect
        if isinstance(e, CacheError):
            return [str(e)]
        return [str(_h5.corrupt(path, e))]


def _verify(path: Path, notes: list[str]) -> list[str]:
    try:
        f = _h5.open_read(path)
    except (CacheError, FileNotFoundError) as e:
        return [str(e)]
    with f:
        try:
            commit = _h5.read_commit(f, path)
            identity, _ = _h5.read_attrs(f)
        except CacheError as e:
            return [str(e)]
        problems: list[str] = []
        if f.attrs.get("config_key") != config_key(identity):
            problems.append("the stored config_key does not match the identity attribute")
        problems += damage(f, path, commit)
        if problems:
            return problems  # the checks below would only repeat the damage
        notes += unchecked(f)
        try:
            problems += _check_values(f, commit)
        except (OSError, ValueError) as e:
            return problems + [f"reading the arrays failed ({_h5.reason(e)}): corrupt data"]
    return problems


def damage(f, path, commit) -> list[str]:
    """Committed entries that no longer read as written: every chunk is read (HDF5 checks its
    Fletcher-32), strings are compared with their CRC-32s, frozen vectors with theirs."""
    counts = _h5.committed_counts(f, commit)
    problems = [d for d in (_read_all(f, n, c) for n, c in counts.items()) if d]
    if problems:
        return problems
    try:
        return _check_strings(f, counts) + _freeze.check(f, path)
    except (OSError, ValueError) as e:
        return [f"reading the arrays failed ({_h5.reason(e)}): corrupt data"]


def _read_all(f, name: str, count: int, block_bytes: int = 16 << 20) -> str | None:
    """Read the first ``count`` entries of ``/name`` in blocks; what went wrong, or None."""
    ds = f[name]
    rows = max(1, block_bytes // max(1, row_bytes(ds)))
    try:
        for i in range(0, count, rows):
            ds[i : min(count, i + rows)]
    except (OSError, ValueError) as e:
        why = "a checksum does not match" if "filter" in str(e).lower() else _h5.reason(e)
        return f"/{name} is damaged near entry {i} ({why}): extract it again"
    return None


def unchecked(f) -> list[str]:
    """What in ``f`` no checksum guards (made before colhead wrote them), in a sentence."""
    chunked = [n for n in ("features", "labels", "hashes", "stats", "live") if f[n].chunks]
    plain = [n for n in chunked if not f[n].fletcher32]
    if "checksums" in f and not plain:
        return []
    return [
        "this cache was made before colhead stored checksums, so damage inside its values "
        "cannot be detected; `colhead cache merge FILE -o NEW` copies it into one that has them"
    ]


def _check_values(f, commit) -> list[str]:
    problems = []
    n, m, nc = int(commit[C_ROWS]), int(commit[C_SKIPPED]), int(commit[C_CLASSES])
    ids = f["ids"].asstr()[:n]
    live = f["live"][:n].astype(bool)
    labels = f["labels"][:n]
    hashes = f["hashes"][:n]
    bad_rows = 0
    for i in range(0, n, 8192):  # blocks: a 100k x 1280 cache need not fit twice
        block = f["features"][i : min(n, i + 8192)]
        bad_rows += int((~np.isfinite(block.astype(np.float32))).any(axis=1).sum())
    s_ids = f["skipped"]["ids"].asstr()[:m]
    s_live = f["skipped"]["live"][:m].astype(bool)
    if bad_rows:
        problems.append(f"{bad_rows} rows hold NaN or infinite values")
    live_ids = [i for i, lv in zip(ids, live) if lv]
    if len(set(live_ids)) != len(live_ids):
        problems.append(f"{len(live_ids) - len(set(live_ids))} duplicate live ids")
    if any(not i for i in ids):
        problems.append("some rows have an empty id")
    if n and (labels.min() < -1 or labels.max() >= nc):
        problems.append(f"labels outside 0..{nc - 1}")
    if any(len(h) != 64 for h in hashes):
        problems.append("some content hashes are not sha256 hex")
    both = set(live_ids) & {i for i, lv in zip(s_ids, s_live) if lv}
    if both:
        problems.append(f"{len(both)} ids are both rows and skipped")
    if not commit[C_COMPLETE]:
        problems.append(
            f"incomplete: {int(live.sum())} rows so far; rerun the extraction to finish it"
        )
    return problems


def _check_strings(f, counts: dict) -> list[str]:
    """Strings whose CRC-32 differs from the one stored when they were written."""
    problems = []
    for table, name in _h5.STRING_CHECKSUMS.items():
        if name not in f:
            continue
        k = counts[table]
        bad = np.flatnonzero(string_crcs(f[table].asstr()[:k]) != f[name][:k])
        if len(bad):
            problems.append(
                f"{len(bad)} entries of /{table} changed since they were written (CRC-32 "
                f"mismatch, first at entry {bad[0]}): the file is damaged; extract it again"
            )
    return problems
