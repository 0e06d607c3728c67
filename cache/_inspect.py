"""Look inside caches: provenance summary and a thorough integrity check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import _freeze, _h5
from ._format import C_CLASSES, C_COMPLETE, C_ROWS, C_SKIPPED, CacheError, config_key
from ._lock import writer_active


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
            raise _h5.TornRead(f"{path}: reading its arrays failed ({_h5._reason(e)}).") from None


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
    }


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Check a cache thoroughly; return the problems found (empty list = healthy)."""
    path = Path(path)
    try:
        return _verify(path)
    except _h5.READ_ERRORS as e:  # damage in a place the checks below do not expect
        if isinstance(e, CacheError):
            return [str(e)]
        return [str(_h5.corrupt(path, e))]


def _verify(path: Path) -> list[str]:
    problems: list[str] = []
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
        if f.attrs.get("config_key") != config_key(identity):
            problems.append("the stored config_key does not match the identity attribute")
        n, m, nc = int(commit[C_ROWS]), int(commit[C_SKIPPED]), int(commit[C_CLASSES])
        try:
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
            f["classes"].asstr()[:nc]  # read as open_cache reads it: damage there fails both
            problems += _freeze.check(f, path)  # a frozen cache's CRC-32 of its vectors
        except (OSError, ValueError) as e:
            return problems + [f"reading the arrays failed ({_h5._reason(e)}): corrupt data"]
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
