"""The feature cache: one self-describing HDF5 format, its writer, reader and tools.

Only this package touches h5py.
"""

from ._format import CacheError, CacheMismatchError, column_key, config_key
from ._h5 import storage_versions
from ._inspect import cache_info, verify_cache
from ._lock import CacheLockedError
from ._manage import gc_caches, list_caches, merge_caches
from ._reader import FeatureCache, open_cache
from ._writer import CacheWriter

__all__ = [
    "CacheError",
    "CacheLockedError",
    "CacheMismatchError",
    "CacheWriter",
    "FeatureCache",
    "cache_info",
    "column_key",
    "config_key",
    "gc_caches",
    "list_caches",
    "merge_caches",
    "open_cache",
    "storage_versions",
    "verify_cache",
]
