"""Columns (registry + builders), datasets and the batch extractor.

``colhead.extract`` is both this package and a function: ``colhead.extract(column, data, ...)``
calls :func:`extract`, so the library mirrors ``colhead extract`` on the command line.

Rooms: ``_registry`` (the column table) <- ``_columns``/``_external`` (builders that register
themselves); ``_images`` and ``_datasets`` (decoding, sources); ``_embedder`` (a column in memory,
with ``_tuner``); ``_run`` (the run protocol both engines share) <- ``_extractor`` (local engine)
and ``_ray`` (Ray engine, optional: ``extract_ray`` is imported on first use).
"""

import sys
import types

from .._device import resolve_device, resolve_precision
from . import _columns, _external, _stages  # noqa: F401  (they register their columns)
from ._datasets import Dataset, dataset_splits, parse_dataset
from ._embedder import Embedder
from ._extractor import extract
from ._images import BadImage, decode, from_array
from ._registry import (
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
from ._run import ExtractResult, default_cache_dir
from ._source import read_image_file

__all__ = [
    "DEFAULT_COLUMN",
    "BadImage",
    "ColumnSpec",
    "ColumnUnavailableError",
    "Dataset",
    "Embedder",
    "ExtractResult",
    "Preprocess",
    "dataset_splits",
    "decode",
    "describe_columns",
    "default_cache_dir",
    "extract",
    "extract_ray",
    "from_array",
    "get_column",
    "list_columns",
    "offline_columns",
    "parse_dataset",
    "read_image_file",
    "register_column",
    "resolve_device",
    "resolve_precision",
]


def __getattr__(name: str):
    # Ray is optional and heavy: `extract_ray` is imported when first asked for, and raises
    # ImportError (with the pip command) where Ray is not installed.
    if name == "extract_ray":
        from ._ray import extract_ray

        return extract_ray
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
