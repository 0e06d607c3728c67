"""Columns (registry + builders), datasets and the batch extractor.

``colhead.extract`` is both this package and a function: ``colhead.extract(column, data, ...)``
calls :func:`extract`, so the library mirrors ``colhead extract`` on the command line.
"""

import sys
import types

from .._device import resolve_device, resolve_precision
from ._columns import (
    DEFAULT_COLUMN,
    ColumnSpec,
    ColumnUnavailableError,
    Preprocess,
    describe_columns,
    get_column,
    list_columns,
    offline_columns,
    register_column,
)
from ._datasets import Dataset, parse_dataset
from ._embedder import Embedder
from ._extractor import ExtractResult, default_cache_dir, extract
from ._images import BadImage, decode, from_array

__all__ = [
    "DEFAULT_COLUMN",
    "BadImage",
    "ColumnSpec",
    "ColumnUnavailableError",
    "Dataset",
    "Embedder",
    "ExtractResult",
    "Preprocess",
    "decode",
    "describe_columns",
    "default_cache_dir",
    "extract",
    "from_array",
    "get_column",
    "list_columns",
    "offline_columns",
    "parse_dataset",
    "register_column",
    "resolve_device",
    "resolve_precision",
]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
