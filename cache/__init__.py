"""The feature cache: one self-describing HDF5 format, its writer, reader and tools.

Only this package touches h5py.
"""

from ._export import export_cache
from ._files import probe_path
from ._folder import gc_caches, list_caches
from ._format import CacheError, CacheMismatchError, column_key, config_key
from ._h5 import storage_versions
from ._inspect import cache_info, verify_cache
from ._lock import CacheLockedError
from ._merge import merge_caches
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
    "export_cache",
    "gc_caches",
    "list_caches",
    "merge_caches",
    "open_cache",
    "probe_path",
    "storage_versions",
    "verify_cache",
]
