"""Read a feature cache into numpy arrays."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class FeatureCache:
    """The live content of a cache, as numpy arrays.

    Attributes:
        path: the file.
        features: (N, D) vectors (float32 unless ``dtype=None`` asked for the stored dtype).
        labels: (N,) int64 indices into ``classes``; -1 where the item has no label.
        ids: (N,) stable item ids (str).
        hashes: (N,) sha256 of each item's content.
        classes: class names; ``labels`` index into it.
        identity: column config and dataset spec the vectors were made with.
        metadata: provenance (versions, device, runs, ...).
        skipped: (id, reason) of items that could not be read.
        complete: True once a run covered the whole dataset.
        config_key: key of ``identity``; column_key: key of column + weights + preprocessing.
    """

    path: Path
    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    hashes: np.ndarray
    classes: list[str]
    identity: dict
    metadata: dict
    skipped: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False
    finished_at: float = 0.0
    config_key: str = ""
    column_key: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def fingerprint(self) -> str:
        """Identity of this exact content: config key + every live (id, content hash)."""
        import hashlib

        h = hashlib.sha256(self.config_key.encode())
        for i, c in zip(self.ids, self.hashes):
            h.update(f"{i}\0{c}\n".encode())
        return h.hexdigest()


def open_cache(
    path: str | os.PathLike,
    *,
    dtype=np.float32,
    require_complete: bool = False,
    include_stale: bool = False,
) -> FeatureCache:
    """Read a cache's committed, live rows into memory.

    Safe while a writer appends: only rows counted in ``/commit`` are read.

    Args:
        path: the cache file.
        dtype: dtype of the returned features (None keeps the stored dtype).
        require_complete: raise unless a run finished the whole dataset.
        include_stale: also return rows of items that changed or disappeared since.

    Raises:
        FileNotFoundError: no file at ``path``.
        CacheError: the file is not a readable colhead cache (or incomplete when required).
    """
    path = Path(path)
    try:
        return _h5.swmr_retry(lambda: _read(path, dtype, require_complete, include_stale))
    except _h5.READ_ERRORS as e:
        if isinstance(e, (CacheError, FileNotFoundError)):
            raise
        raise _h5.corrupt(path, e) from None


def _read(path: Path, dtype, require_complete: bool, include_stale: bool) -> FeatureCache:
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
            live = f["live"][:n].astype(bool) if not include_stale else np.ones(n, bool)
            sel = np.flatnonzero(live)
            feats = f["features"][:n] if n else np.zeros((0, f["features"].shape[1]), "f4")
            features = feats[sel] if len(sel) != n else feats
            labels = f["labels"][:n][sel]
            ids = np.array(f["ids"].asstr()[:n], dtype=object)[sel]
            hashes = np.array([h.decode() for h in f["hashes"][:n][sel]], dtype=object)
            classes = [str(c) for c in f["classes"].asstr()[:nc]]
            g = f["skipped"]
            s_live = g["live"][:m].astype(bool)
            s_ids = g["ids"].asstr()[:m]
            s_reasons = g["reasons"].asstr()[:m]
        except (OSError, ValueError) as e:
            raise _h5.TornRead(  # retried; raised as the CacheError it is if it persists
                f"{path}: reading its arrays failed ({_h5._reason(e)}); the file is corrupt. "
                "Run `colhead cache verify` on it."
            ) from None
    if dtype is not None:
        features = features.astype(dtype, copy=False)
    if len(labels) and (labels.max() >= len(classes) or labels.min() < -1):
        raise CacheError(f"{path}: labels fall outside its {len(classes)} classes; corrupt.")
    return FeatureCache(
        path=path,
        features=features,
        labels=labels,
        ids=ids,
        hashes=hashes,
        classes=classes,
        identity=identity,
        metadata=metadata,
        skipped=[(str(i), str(r)) for i, r, lv in zip(s_ids, s_reasons, s_live) if lv],
        complete=complete,
        finished_at=float(commit[C_FINISHED]),
        config_key=config_key(identity),
        column_key=column_key(identity),
    )
