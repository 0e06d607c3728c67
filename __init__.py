"""colhead: reuse pretrained vision columns.

Extract a frozen pretrained column's features once into a self-describing HDF5 cache, then
train fast heads (logistic regression, MLP, k-NN) on the cached vectors and compare them with
a model trained from scratch.

Nothing heavy is imported here: ``import colhead`` must stay cheap, so torch and h5py load
only when a function that needs them is called.
"""

from ._version import __version__

__all__ = ["__version__", "extract", "get_column", "list_columns", "open_cache"]


def __getattr__(name: str):
    # ``colhead.extract`` is the extract subpackage, which is callable: importing it lazily
    # keeps ``import colhead`` free of torch while ``colhead.extract(...)`` still works.
    if name == "extract":
        import importlib

        return importlib.import_module(".extract", __name__)
    raise AttributeError(f"module 'colhead' has no attribute {name!r}")


def open_cache(*args, **kwargs):
    """Open a feature cache as numpy arrays. See :func:`colhead.cache.open_cache`."""
    from .cache import open_cache as _open_cache

    return _open_cache(*args, **kwargs)


def list_columns():
    """Names of the registered columns. See :func:`colhead.extract.list_columns`."""
    from .extract import list_columns as _list_columns

    return _list_columns()


def get_column(name: str):
    """The spec of a column by name. See :func:`colhead.extract.get_column`."""
    from .extract import get_column as _get_column

    return _get_column(name)
