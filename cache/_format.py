"""The one on-disk format of a colhead feature cache (HDF5), shared by writer and reader.

Layout (schema version 1)::

    /features          (N, D) float32 | float16, chunked by rows, resizable
    /labels            (N,)   int64, index into /classes, -1 = unlabelled
    /ids               (N,)   utf-8 strings: the item's stable id
    /hashes            (N,)   sha256 hex of the item's content
    /stats             (N, 2) int64: file size and mtime_ns (0, 0 for in-memory items)
    /live              (N,)   uint8: 1 = current, 0 = superseded (content changed) or gone
    /classes           (C,)   utf-8 strings
    /skipped/{ids,hashes,stats,reasons,live}   items that could not be read, and why
    /commit            (5,)   float64: rows, skipped, complete, classes, finished_at
    attrs: format, schema_version, identity (JSON), metadata (JSON), config_key

Crash safety: the writer appends in HDF5's SWMR mode, whose ordered metadata writes keep the
file readable whatever moment the process dies, and commits in two phases (data, flush, then
the counts in ``/commit``, flush). Readers trust ``/commit`` only, so they never see a
half-written row. Everything here is plain arrays, strings and JSON: no pickles, ever.
"""

from __future__ import annotations

import hashlib
import json

FORMAT = "colhead-feature-cache"
SCHEMA_VERSION = 1
MAX_ATTR_BYTES = 64 * 1024  # metadata beyond this belongs in datasets, not attributes
MAX_RUNS_KEPT = 20  # provenance of the last runs; older ones drop so the attribute stays small

# /commit slots
C_ROWS, C_SKIPPED, C_COMPLETE, C_CLASSES, C_FINISHED = range(5)
COMMIT_LEN = 5

# Fields of the identity that must match for two runs to share a cache file.
IDENTITY_FIELDS = ("column", "weights_sha256", "preprocess", "precision", "store_dtype", "dataset")
# Fields that define what a vector means; a head trained on one column key only fits that key.
COLUMN_FIELDS = ("column", "weights_sha256", "preprocess")


class CacheError(RuntimeError):
    """A cache file is missing, corrupt, incomplete or of another kind."""


class CacheMismatchError(ValueError):
    """A cache was made with another column configuration or dataset than the one asked for."""


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_of(obj) -> str:
    """A stable sha256 hex key of a JSON-able object."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def column_key(identity: dict) -> str:
    """Key of what the vectors mean: column, weights and preprocessing."""
    return key_of({k: identity.get(k) for k in COLUMN_FIELDS})


def config_key(identity: dict) -> str:
    """Key of the whole cache identity (column config + precision + dtype + dataset)."""
    return key_of({k: identity.get(k) for k in IDENTITY_FIELDS})


def identity_diff(stored: dict, wanted: dict) -> list[str]:
    """Human-readable differences between two identities, field by field."""
    out = []
    for k in IDENTITY_FIELDS:
        if stored.get(k) != wanted.get(k):
            out.append(f"{k}: cache has {short(stored.get(k))}, asked for {short(wanted.get(k))}")
    return out


def short(v) -> str:
    s = canonical_json(v) if not isinstance(v, str) else v
    return s if len(s) <= 120 else s[:117] + "..."


def dump_attr(obj) -> str:
    text = canonical_json(obj)
    if len(text.encode()) > MAX_ATTR_BYTES:
        raise ValueError(
            f"Cache metadata is {len(text.encode())} bytes, over the {MAX_ATTR_BYTES}-byte limit "
            "for HDF5 attributes; keep large lists in datasets."
        )
    return text


def load_attr(value, what: str) -> dict:
    """Parse a JSON attribute defensively: bounded size, must be an object."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise CacheError(f"The cache attribute '{what}' is not a JSON string.")
    if len(value) > MAX_ATTR_BYTES:
        raise CacheError(f"The cache attribute '{what}' is larger than {MAX_ATTR_BYTES} bytes.")
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError) as e:  # RecursionError: nested thousands deep
        raise CacheError(f"The cache attribute '{what}' is not valid JSON: {e}.") from None
    if not isinstance(obj, dict):
        raise CacheError(f"The cache attribute '{what}' is not a JSON object.")
    return obj


def feature_chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per HDF5 chunk: about 256 KiB per chunk (STYLE: 64 KiB-1 MiB), at least 1 row."""
    return max(1, min(4096, (256 * 1024) // max(1, dim * itemsize)))
