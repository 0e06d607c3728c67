"""Vectors out: a cache as npz, parquet or csv, and as a pandas DataFrame (issue 11).

Every export reads the cache once with ``open_cache`` (a frozen cache's features are memory-
mapped, others are read into memory once) and writes the vectors block by block, so they
never sit in memory twice: a parquet row group, a slice of the npz's ``features.npy`` or a few
thousand csv lines at a time. Vectors are float32, exactly ``open_cache(path).features``
(optionally scaled to unit L2 norm). Files are written aside and renamed, so ``out`` is never
half-written.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ._reader import FeatureCache, open_cache

FORMATS = ("npz", "parquet", "csv")
SUFFIXES = {".npz": "npz", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
# Vectors per block written (and per parquet row group): ~64 MB of float32, so the writer's
# buffers for one row group stay small next to the cache (13,107 rows of 1280-d vectors).
BLOCK_BYTES = 64 << 20
CSV_MAX_VALUES = 20_000_000  # ~200 MB of text; beyond, csv is the wrong format for vectors


def export_cache(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    normalize: bool = False,
    overwrite: bool = False,
    block_rows: int | None = None,
) -> dict:
    """Write a cache's live rows to ``out`` as npz, parquet or csv.

    * npz: arrays ``features`` (N, D) float32, ``ids``, ``hashes``, ``classes`` (unicode),
      ``labels`` (int64, -1 = unlabelled); ``np.load(out, allow_pickle=False)`` reads it.
    * parquet: columns ``id``, ``label``, ``class`` (null when unlabelled), ``hash``, ``vector``
      (fixed-size list of float32), one row group per ``block_rows`` rows; the cache's
      identity and keys in the schema metadata (``colhead``).
    * csv: ``id,label,class,hash,f0..f{D-1}``, floats printed with 9 significant digits (exact
      for float32); refused above ``CSV_MAX_VALUES`` values.

    Args:
        cache: the cache file.
        out: the file to write.
        format: "npz", "parquet" or "csv"; None takes it from ``out``'s suffix.
        normalize: scale every vector to unit L2 norm (zero vectors stay zero).
        overwrite: replace ``out`` if it exists (refused otherwise).
        block_rows: rows per block (and per parquet row group); None: ~64 MB of vectors.

    Returns:
        {"path", "format", "rows", "dim", "bytes", "normalized", "complete"}: an incomplete
        cache (a run interrupted or still going) exports the rows it has so far.

    Raises:
        ValueError: unknown format, or a cache too large for csv.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ImportError: parquet without pyarrow.
    """
    out = Path(out)
    fmt = _format_of(out, format)
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}.")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name, e.g. {out}/x.{fmt}.")
    if out.exists() and Path(cache).exists() and os.path.samefile(out, cache):
        raise ValueError(f"--out {out} is the cache itself; give another file to export to.")
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; choose another --out, or pass --force (overwrite=True) to "
            "replace it."
        )
    if not out.parent.is_dir():
        raise FileNotFoundError(f"The folder of --out {out} does not exist; create it first.")
    if fmt == "parquet":
        _pyarrow()  # before reading anything
    c = open_cache(cache, dtype=None)  # float16 stays float16 until each block is converted
    if fmt == "csv" and len(c) * c.dim > CSV_MAX_VALUES:
        raise ValueError(
            f"{cache} holds {len(c)} x {c.dim} = {len(c) * c.dim:,} values, too many for csv "
            f"(the limit is {CSV_MAX_VALUES:,}): use --format parquet or npz."
        )
    if block_rows is None:
        block_rows = max(1, BLOCK_BYTES // (4 * max(1, c.dim)))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        {"npz": _npz, "parquet": _parquet, "csv": _csv}[fmt](c, tmp, normalize, block_rows)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(out),
        "format": fmt,
        "rows": len(c),
        "dim": c.dim,
        "bytes": out.stat().st_size,
        "normalized": normalize,
        "complete": c.complete,
    }


def _format_of(out: Path, format: str | None) -> str:
    if format is None:
        fmt = SUFFIXES.get(out.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"Cannot tell the export format from --out {out.name!r}: give --format "
                f"({', '.join(FORMATS)}) or a file ending in .npz, .parquet or .csv."
            )
        return fmt
    fmt = format.lower().lstrip(".")
    if fmt not in FORMATS:
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown export format {format!r}; choose one of {FORMATS}.{hint}")
    return fmt


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError(
            "Exporting to parquet needs pyarrow, which is not installed: "
            "pip install 'colhead[parquet]' (or pip install pyarrow)."
        ) from None
    return pyarrow


def _blocks(c: FeatureCache, normalize: bool, rows: int):
    """(start, stop, float32 vectors) of ``rows`` rows at a time."""
    for i in range(0, len(c), rows):
        j = min(len(c), i + rows)
        v = np.asarray(c.features[i:j], dtype=np.float32)
        yield i, j, unit_rows(v) if normalize else v


def unit_rows(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (norms in float64); zero rows stay zero."""
    norm = np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _text(values) -> np.ndarray:
    """Unicode array that ``np.load(allow_pickle=False)`` reads (never an object array)."""
    return np.array([str(v) for v in values], dtype=str) if len(values) else np.array([], "U1")


# -- npz -----------------------------------------------------------------------------------------
def _npz(c: FeatureCache, tmp: Path, normalize: bool, rows: int) -> None:
    # The features member is streamed block by block (np.savez would need them normalized
    # whole first); its header comes from numpy's own format module, so np.load reads it.
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("features.npy", "w", force_zip64=True) as fp:
            header = {"descr": "<f4", "fortran_order": False, "shape": (len(c), c.dim)}
            np.lib.format.write_array_header_2_0(fp, header)
            for _, _, v in _blocks(c, normalize, rows):
                fp.write(np.ascontiguousarray(v, dtype="<f4").data)
        for name, arr in (
            ("ids", _text(c.ids)),
            ("labels", np.asarray(c.labels, dtype=np.int64)),
            ("classes", _text(c.classes)),
            ("hashes", _text(c.hashes)),
        ):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array(fp, arr, allow_pickle=False)


# -- parquet -------------------------------------------------------------------------------------
def _parquet(c: FeatureCache, tmp: Path, normalize: bool, rows: int) -> None:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    schema = parquet_schema(c.dim).with_metadata(
        {
            "colhead": json.dumps(
                {
                    "identity": c.identity,
                    "config_key": c.config_key,
                    "column_key": c.column_key,
                    "classes": c.classes,
                    "normalized": normalize,
                }
            )
        }
    )
    # Dictionaries only for the class names, statistics not for the vectors: both cost a third
    # of the time on float vectors and give nothing there (bench/export.py).
    opts = {"use_dictionary": ["class"], "write_statistics": ["id", "label", "class", "hash"]}
    with pq.ParquetWriter(tmp, schema, **opts) as w:
        for i, j, v in _blocks(c, normalize, rows):
            labels = np.ascontiguousarray(c.labels[i:j], dtype=np.int64)
            known = labels >= 0  # label -1: class is null
            table = pa.Table.from_arrays(
                [
                    _strings(pa, c.ids[i:j]),
                    _numbers(pa, pa.int64(), labels),
                    _strings(pa, [c.classes[k] if k >= 0 else "" for k in labels], known),
                    _strings(pa, c.hashes[i:j]),
                    pa.FixedSizeListArray.from_arrays(_numbers(pa, pa.float32(), v), c.dim),
                ],
                schema=schema,
            )
            w.write_table(table, row_group_size=rows)


# Arrow arrays are built from their buffers: ``pa.array`` imports pandas when it is installed
# (1-2 s of every export's start-up) and copies what a buffer shares.
def _numbers(pa, dtype, a: np.ndarray):
    a = np.ascontiguousarray(a).reshape(-1)
    return pa.Array.from_buffers(dtype, len(a), [None, pa.py_buffer(a)])


def _strings(pa, values, valid: np.ndarray | None = None):
    data = [str(x).encode() for x in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    mask = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = 0 if valid is None else int(len(valid) - valid.sum())
    bufs = [mask, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    return pa.Array.from_buffers(pa.string(), len(data), bufs, null_count=nulls)


def parquet_schema(dim: int):
    """The schema of an exported cache: id, label, class, hash, vector (float32 x dim)."""
    pa = _pyarrow()
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("label", pa.int64(), nullable=False),
            pa.field("class", pa.string()),
            pa.field("hash", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


# -- csv -----------------------------------------------------------------------------------------
def _csv(c: FeatureCache, tmp: Path, normalize: bool, rows: int) -> None:
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "class", "hash"] + [f"f{k}" for k in range(c.dim)])
        head = io.StringIO()  # the text columns, quoted by csv (an id may hold a comma)
        hw = csv.writer(head, lineterminator="")
        for i, _, v in _blocks(c, normalize, min(rows, 4096)):
            buf = io.StringIO()
            np.savetxt(buf, v, fmt="%.9g", delimiter=",")  # 9 digits: exact for float32
            for k, line in enumerate(buf.getvalue().splitlines()):
                lab = int(c.labels[i + k])
                head.seek(0)
                head.truncate()
                hw.writerow(
                    [c.ids[i + k], lab, c.classes[lab] if lab >= 0 else "", c.hashes[i + k]]
                )
                fh.write(f"{head.getvalue()},{line}\n")


# -- pandas --------------------------------------------------------------------------------------
def to_pandas(c: FeatureCache, *, vectors: str = "column"):
    """See ``FeatureCache.to_pandas``."""
    if vectors not in ("column", "wide"):
        raise ValueError(f"vectors must be 'column' or 'wide', got {vectors!r}.")
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "FeatureCache.to_pandas() needs pandas, which is not installed: pip install pandas."
        ) from None
    labels = np.asarray(c.labels)
    classes = np.array(list(c.classes) + [None], dtype=object)
    df = pd.DataFrame({"id": c.ids, "label": labels, "class": classes[labels], "hash": c.hashes})
    if vectors == "wide":
        wide = pd.DataFrame(c.features, columns=[f"f{k}" for k in range(c.dim)])
        return pd.concat([df, wide], axis=1)
    df["vector"] = list(c.features)  # one row view per cell: no copy of the vectors
    return df
