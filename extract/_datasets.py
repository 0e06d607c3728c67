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
from typing import Callable

from . import _parquet as columnar
from . import _sources_builtin as builtin
from . import _sources_files as files
from . import _wds as wds
from ._source import Dataset, SplitRequired, split_query

__all__ = ["DATASETS", "Dataset", "DatasetKind", "dataset_splits", "parse_dataset"]


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
    query: tuple[str, ...] = ()  # keys the spec's ?query may set (options, and "split")
    splits: tuple[str, ...] = ()  # fixed splits of a built-in data set (others find theirs)


COLUMN_OPTIONS = ("path_col", "label_col", "split_col", "image_col")

DATASETS: dict[str, DatasetKind] = {
    k.name: k
    for k in (
        DatasetKind(
            "folder",
            files.folder,
            "folder:PATH",
            "class sub-folders, a flat folder, or split folders PATH/{train,val,test}/CLASS",
            query=("split",),
        ),
        DatasetKind(
            "csv",
            files.csv_list,
            "csv:FILE",
            "columns path[,label][,split] (--path-col ...); paths relative to FILE's folder",
            ("allow_absolute", "path_col", "label_col", "split_col"),
            ("path_col", "label_col", "split_col", "split"),
        ),
        DatasetKind(
            "wds",
            wds.webdataset,
            "wds:PATTERN",
            "webdataset tar shards, e.g. train-{000..099}.tar: KEY.jpg + optional KEY.cls",
        ),
        DatasetKind(
            "parquet",
            columnar.parquet,
            "parquet:FILE_OR_GLOB",
            "image bytes in parquet (HF exports), read by row group; --image-col, --label-col",
            ("image_col", "label_col"),
            ("image_col", "label_col"),
        ),
        DatasetKind(
            "hf",
            columnar.hf,
            "hf:PATH",
            "a datasets.save_to_disk folder or a hub snapshot on disk (splits); needs pyarrow",
            ("image_col", "label_col"),
            ("image_col", "label_col", "split"),
        ),
        DatasetKind(
            "digits",
            builtin.digits,
            "digits",
            "scikit-learn's 8x8 digits (train, test, all)",
            splits=("train", "test"),
        ),
        DatasetKind(
            "elpv",
            builtin.elpv,
            "elpv[:defect|binary|type]",
            "solar cells from the elpv-dataset package (train, test: seeded 75/25; all)",
            splits=("train", "test"),
        ),
        DatasetKind(
            "fashion-mnist",
            builtin.fashion_mnist,
            "fashion-mnist",
            "Debian's /usr/share/datasets/fashion-mnist, else torchvision (train, test)",
            splits=("train", "test"),
        ),
        DatasetKind(
            "flowers102",
            builtin.flowers102,
            "flowers102[:ROOT]",
            "torchvision's Oxford Flowers-102 layout (train, val, test)",
            splits=("train", "val", "test"),
        ),
    )
}


def parse_dataset(
    spec: str,
    *,
    split: str | None = None,
    allow_absolute: bool = False,
    path_col: str | None = None,
    label_col: str | None = None,
    split_col: str | None = None,
    image_col: str | None = None,
) -> Dataset:
    """Build a Dataset from a spec string. Cheap checks only: no model, no decoding.

    Args:
        spec: ``KIND[:ARG]``, see ``DATASETS`` (``colhead extract --help``).
        split: the split, for sources that have them; an error for sources that do not.
        allow_absolute: a CSV may list paths outside its folder.
        path_col, label_col, split_col: CSV column names (default ``path``, ``label``, none).
        image_col: the image column of parquet and arrow data (default: the only one).

    Raises:
        ValueError: unknown dataset kind, bad split or option, malformed list.
        FileNotFoundError: a folder or file that does not exist.
    """
    name, _, arg = spec.partition(":")
    kind = DATASETS.get(name)
    if kind is None:
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        usages = ", ".join(k.usage for k in DATASETS.values())
        raise ValueError(f"Unknown dataset {spec!r}.{hint} Use one of: {usages}.")
    given = {"path_col": path_col, "label_col": label_col, "split_col": split_col}
    given["image_col"] = image_col
    arg, query = split_query(arg, kind.query)
    if "split" in query:
        if split is not None and split != query["split"]:
            raise ValueError(f"{spec!r} names split {query['split']!r} but --split is {split!r}.")
        split = query.pop("split")
    for k, v in query.items():
        if given[k] is not None and given[k] != v:
            raise ValueError(
                f"{spec!r} sets {k}={v!r} but --{k.replace('_', '-')} is {given[k]!r}."
            )
        given[k] = v
    for k, v in given.items():
        if v is not None and k not in kind.options:
            takers = ", ".join(n for n, d in DATASETS.items() if k in d.options) or "none"
            raise ValueError(
                f"--{k.replace('_', '-')} does not apply to {name} data; it applies to: {takers}."
            )
    options = {"allow_absolute": allow_absolute, **given}
    return kind.build(arg, split, **{k: v for k, v in options.items() if k in kind.options})


def dataset_splits(spec: str, **options) -> list[str]:
    """The splits a spec offers (``[]`` when it has none), e.g. to compare on train and test.

    A folder with ``train/`` and ``test/`` gives ``["test", "train"]``; ``digits`` gives
    ``["train", "test"]``; a flat folder gives ``[]``. Options are those of ``parse_dataset``.
    """
    kind = DATASETS.get(spec.partition(":")[0])
    if kind is not None and kind.splits:
        return list(kind.splits)
    try:
        parse_dataset(spec, **options)
    except SplitRequired as e:
        return e.splits
    return []


def describe_datasets() -> str:
    """One line per kind: usage and help (for ``--data``'s help and error messages)."""
    return "\n".join(f"{k.usage:<28}{k.help}" for k in DATASETS.values())
