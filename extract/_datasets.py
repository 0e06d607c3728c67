"""The dataset registry: one table of spec kinds, read by ``parse_dataset`` and every message.

Spec strings (``--data``) are ``KIND`` or ``KIND:ARG``; the table below lists them with their
help. A source's column options (``--path-col`` ...) may also be written in the spec as a query,
``csv:list.csv?path=file&label=class``, which is how the normalised spec records them.

Every item has a stable id: the relative path for files, ``shard/key`` in tar shards,
``dataset:split:index`` otherwise. Items come in a fixed order (sorted paths, shard order, row
order), which is what makes resume exact.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlencode

from . import _sources_builtin as builtin
from . import _sources_files as files
from ._source import Dataset

__all__ = ["DATASETS", "Dataset", "DatasetKind", "parse_dataset"]


@dataclass(frozen=True)
class DatasetKind:
    """One kind of spec: how to build it and how to explain it.

    ``build(arg, split, **options)`` returns a Dataset; ``options`` names the keyword options it
    takes (``allow_absolute`` and the column options of ``parse_dataset``).
    """

    name: str
    build: Callable[..., Dataset]
    usage: str
    help: str
    options: tuple[str, ...] = ()


COLUMN_OPTIONS = {"path_col": "path", "label_col": "label", "split_col": "split"}

DATASETS: dict[str, DatasetKind] = {
    k.name: k
    for k in (
        DatasetKind(
            "folder",
            files.folder,
            "folder:PATH",
            "one sub-folder per class, or a flat folder (no labels)",
        ),
        DatasetKind(
            "csv",
            files.csv_list,
            "csv:FILE",
            "columns path[,label]; relative paths resolve against FILE's folder",
            ("allow_absolute",),
        ),
        DatasetKind(
            "digits", builtin.digits, "digits", "scikit-learn's 8x8 digits (train, test, all)"
        ),
        DatasetKind(
            "elpv",
            builtin.elpv,
            "elpv[:defect|binary|type]",
            "solar cells from the elpv-dataset package (train, test: seeded 75/25; all)",
        ),
        DatasetKind(
            "fashion-mnist",
            builtin.fashion_mnist,
            "fashion-mnist",
            "Debian's /usr/share/datasets/fashion-mnist, else torchvision (train, test)",
        ),
        DatasetKind(
            "flowers102",
            builtin.flowers102,
            "flowers102[:ROOT]",
            "torchvision's Oxford Flowers-102 layout (train, val, test)",
        ),
    )
}


def parse_dataset(spec: str, *, split: str | None = None, allow_absolute: bool = False) -> Dataset:
    """Build a Dataset from a spec string. Cheap checks only: no model, no decoding.

    Raises:
        ValueError: unknown dataset kind, bad split or malformed list.
        FileNotFoundError: a folder or file that does not exist.
    """
    name, _, arg = spec.partition(":")
    kind = DATASETS.get(name)
    if kind is None:
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        usages = ", ".join(k.usage for k in DATASETS.values())
        raise ValueError(f"Unknown dataset {spec!r}.{hint} Use one of: {usages}.")
    options = {"allow_absolute": allow_absolute}
    return kind.build(arg, split, **{k: v for k, v in options.items() if k in kind.options})


def split_query(arg: str, known: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``PATH?k=v&...`` -> (PATH, {k: v}) when every key is known and PATH is not a real file."""
    base, sep, query = arg.rpartition("?")
    if not sep or Path(arg).expanduser().exists():
        return arg, {}
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs or any(k not in known for k, _ in pairs):
        return arg, {}
    return base, dict(pairs)


def with_query(spec: str, options: dict[str, str | None]) -> str:
    """The normalised spec: ``spec`` plus its non-default options as a query."""
    set_ = {k: v for k, v in options.items() if v is not None}
    return f"{spec}?{urlencode(set_)}" if set_ else spec


def describe_datasets() -> str:
    """One line per kind: usage and help (for ``--data``'s help and error messages)."""
    return "\n".join(f"{k.usage:<28}{k.help}" for k in DATASETS.values())
