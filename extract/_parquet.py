"""``parquet:FILE_OR_GLOB`` and ``hf:PATH``: images stored as bytes in columnar files.

Both read with pyarrow (an optional dependency: ``pip install 'colhead[parquet]'``):
- parquet files, as Hugging Face ``datasets`` exports them (an image column that is a struct of
  ``bytes`` and ``path``) or with a plain binary column; read one row group of the image column
  at a time, so memory holds one row group, never the file;
- ``hf:PATH``, a data set saved with ``datasets.save_to_disk`` (arrow stream files, memory
  mapped as ``datasets`` itself maps them; ``dataset_dict.json`` names the splits), or a folder
  of parquet files such as a Hugging Face hub snapshot (``data/train-00000-of-00001.parquet``,
  splits from the file names). No ``datasets`` package and no network needed.

Labels come from ``--label-col`` or a column named ``label``; integer labels take their names from
the ``ClassLabel`` feature the files carry, when they do. Ids are ``FILE/ROW``.
"""

from __future__ import annotations

import errno
import glob
import json
import os
from pathlib import Path

import numpy as np

from ._source import Dataset, is_split_name, pick_split, refuse_split, safe_id, with_query
from ._wds import MAX_MEMBER_BYTES, expand_braces


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError(
            "Reading parquet: and hf: data needs pyarrow, which is not installed: "
            "pip install 'colhead[parquet]' (or pip install pyarrow)."
        ) from None
    return pyarrow


class ColumnStore:
    """Image bytes in parquet row groups or arrow files: (file, part, row) per item."""

    def __init__(self, files: list[str], kind: str, column: str, index, reasons: dict[int, str]):
        self.files, self.kind, self.column, self.reasons = files, kind, column, reasons
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
        self.mtimes = [_stat(f) for f in files]
        self._part = None  # (file, part) -> pyarrow array; per process, never pickled

    def __getstate__(self):
        return {**self.__dict__, "_part": None}

    def read(self, i: int) -> bytes:
        if i in self.reasons:
            raise OSError(errno.ENOENT, self.reasons[i])
        f, part, row = (int(v) for v in self.index[i])
        try:
            arr = self._load(f, part)
            value = arr[row].as_py()
        except OSError:
            raise
        except Exception as e:  # pyarrow raises its own errors on damaged pages
            raise OSError(errno.EIO, f"cannot read {self.kind} data: {str(e)[:160]}") from None
        if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
            if value.get("bytes") is None:
                where = f" (only a path: {value.get('path')!r})" if value.get("path") else ""
                raise OSError(errno.ENOENT, f"the image has no bytes{where}")
            value = value["bytes"]
        if value is None:
            raise OSError(errno.ENOENT, "the image is empty (null)")
        if len(value) > MAX_MEMBER_BYTES:
            raise OSError(errno.EFBIG, f"{len(value)} bytes, over the {MAX_MEMBER_BYTES} limit")
        return bytes(value)

    def _load(self, f: int, part: int):
        if self._part is None or self._part[0] != (f, part):
            pa = _pyarrow()
            if self.kind == "parquet":
                pf = pa.parquet.ParquetFile(self.files[f])
                arr = pf.read_row_group(part, columns=[self.column]).column(0)
            else:  # arrow stream file, memory mapped: reading a row touches only its pages
                # as datasets maps them; the table's buffers keep the mapping alive
                mm = pa.memory_map(self.files[f])
                arr = pa.ipc.open_stream(mm).read_all().column(self.column)
            self._part = ((f, part), arr)
        return self._part[1]

    def stat(self, i: int) -> tuple[int, int]:
        return self.mtimes[int(self.index[i][0])]


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return (int(st.st_size), int(st.st_mtime_ns))
    except OSError:
        return (-1, -1)


def _image_column(schema, image_col: str | None, where: str) -> str:
    pa = _pyarrow()

    def is_image(t) -> bool:
        if pa.types.is_struct(t):
            names = [t.field(k).name for k in range(t.num_fields)]
            return "bytes" in names and is_image(t.field("bytes").type)
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    if image_col is not None:
        if image_col not in schema.names:
            raise ValueError(f"{where} has no column {image_col!r}; its columns: {schema.names}.")
        if not is_image(schema.field(image_col).type):
            raise ValueError(
                f"Column {image_col!r} of {where} is {schema.field(image_col).type}, not image "
                "bytes (binary, or a struct with a 'bytes' field)."
            )
        return image_col
    found = [f.name for f in schema if is_image(f.type)]
    if len(found) != 1:
        what = f"several ({', '.join(found)})" if found else f"none (columns: {schema.names})"
        raise ValueError(f"{where}: which column holds the images? Found {what}; --image-col NAME.")
    return found[0]


def _class_names(schema, label_col: str) -> list[str] | None:
    """Names of a Hugging Face ClassLabel column, from the metadata the files carry."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        feat = json.loads(meta)["info"]["features"][label_col]
        return [str(n) for n in feat["names"]] if feat.get("_type") == "ClassLabel" else None
    except (TypeError, KeyError, ValueError):
        return None


def _build(where, spec, files, parts, kind, image_col, label_col, info) -> Dataset:
    """parts: per file, [(part, rows)] or an error string; labels read column-wise here."""
    ids, labels, index, reasons, column, names = [], [], [], {}, None, None
    for f, (_, rel) in enumerate(files):
        entry = parts[f]
        if isinstance(entry, str):
            reasons[len(ids)] = entry
            ids.append(f"{rel}/#damaged")
            labels.append(None)
            index.append((f, 0, 0))
            continue
        schema, chunks, label_values = entry
        column = column or _image_column(schema, image_col, where)
        names = names or (label_values is not None and _class_names(schema, label_col)) or None
        row = 0
        for part, n in chunks:
            for j in range(n):
                ids.append(f"{rel}/{row}")
                index.append((f, part, j))
                row += 1
        labels += label_values if label_values is not None else [None] * row
    if column is None:
        raise ValueError(f"No readable {kind} file in {where}: {next(iter(reasons.values()))}.")
    has_labels = any(lab is not None for lab in labels)
    if has_labels:
        named = [
            names[v] if names and isinstance(v, int) and 0 <= v < len(names) else v for v in labels
        ]
        labels = [None if v is None else str(v) for v in named]
        present = {lab for lab in labels if lab is not None}
        classes = [n for n in names if n in present] if names else sorted(present, key=_order)
        for i, lab in enumerate(labels):
            if lab is None:
                reasons.setdefault(i, f"no label in column {label_col!r}")
                labels[i] = classes[0]  # placeholder: an item that fails to read is never a row
    store = ColumnStore([f for f, _ in files], kind, column, index, reasons)
    info = {**info, "image_column": column}
    return Dataset(
        spec,
        ids,
        labels if has_labels else None,
        classes if has_labels else [],
        store=store,
        info=info,
    )


def _order(c: str):
    return (0, int(c), "") if c.lstrip("-").isdigit() else (1, 0, c)


def _label_values(table_or_file, label_col, schema, kind):
    if label_col not in schema.names:
        return None
    col = (
        table_or_file.column(label_col)
        if kind == "arrow"
        else table_or_file.read(columns=[label_col]).column(0)
    )
    return col.to_pylist()


def _scan_parquet(path: str, label_col: str):
    pa = _pyarrow()
    try:
        pf = pa.parquet.ParquetFile(path)
        schema = pf.schema_arrow
        chunks = [(k, pf.metadata.row_group(k).num_rows) for k in range(pf.metadata.num_row_groups)]
        return schema, chunks, _label_values(pf, label_col, schema, "parquet")
    except Exception as e:  # ArrowInvalid and friends: a damaged file is a skipped item
        return f"not a readable parquet file: {str(e)[:160]}"


def _scan_arrow(path: str, label_col: str):
    pa = _pyarrow()
    try:
        table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
        labels = _label_values(table, label_col, table.schema, "arrow")
        return table.schema, [(0, table.num_rows)], labels
    except Exception as e:
        return f"not a readable arrow file: {str(e)[:160]}"


def parquet(arg: str, split: str | None, *, image_col=None, label_col=None) -> Dataset:
    """``parquet:FILE_OR_GLOB`` (braces and ``*`` allowed; a folder means its *.parquet)."""
    _pyarrow()
    if not arg:
        raise ValueError("parquet: needs a file or pattern, e.g. parquet:/data/train-*.parquet.")
    pattern = str(Path(arg).expanduser().absolute())
    where = f"parquet:{pattern}"
    refuse_split(where, split, "the file pattern chooses the rows")
    if os.path.isdir(pattern):
        found = sorted(glob.glob(os.path.join(pattern, "**", "*.parquet"), recursive=True))
        base = pattern
    else:
        found = sorted({f for p in expand_braces(pattern) for f in glob.glob(p)})
        base = os.path.dirname(pattern.split("{", 1)[0].split("*", 1)[0])
    if not found:
        raise FileNotFoundError(f"No parquet file matches {where}.")
    spec = with_query(where, {"image_col": image_col, "label_col": label_col})
    return _from_files(where, spec, found, base, image_col, label_col)


def _from_files(where, spec, found, base, image_col, label_col, kind="parquet") -> Dataset:
    scan = _scan_parquet if kind == "parquet" else _scan_arrow
    label = label_col or "label"
    parts = [scan(f, label) for f in found]
    files = [(f, safe_id(os.path.relpath(f, base))) for f in found]
    if label_col is not None:
        for p in parts:
            if not isinstance(p, str) and label_col not in p[0].names:
                raise ValueError(f"{where} has no column {label_col!r}; its columns: {p[0].names}.")
    info = {"source": f"{kind} files", "files": len(found)}
    return _build(where, spec, files, parts, kind, image_col, label, info)


def hf(arg: str, split: str | None, *, image_col=None, label_col=None) -> Dataset:
    """``hf:PATH``: a ``save_to_disk`` folder (one data set or a dict of splits), or a folder
    of parquet files with split names (a hub snapshot)."""
    _pyarrow()
    if not arg:
        raise ValueError("hf: needs a folder, e.g. hf:/data/my_dataset (from save_to_disk).")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"No folder at {root} (from --data hf:{arg}).")
    where = f"hf:{root}"
    if (root / "snapshots").is_dir():  # a hub cache entry: its newest snapshot
        snaps = sorted((root / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime)
        root = snaps[-1] if snaps else root
    if (root / "dataset_dict.json").is_file():
        names = json.loads((root / "dataset_dict.json").read_text())["splits"]
        chosen = pick_split(where, split, names)
        files = [
            f for s in (names if chosen == "all" else [chosen]) for f in _arrow_files(root / s)
        ]
        kind = "arrow"
    elif (root / "state.json").is_file():
        refuse_split(where, split, "a single saved data set, not a dict of splits")
        files, chosen, kind = _arrow_files(root), None, "arrow"
    else:
        found = sorted(glob.glob(str(root / "**" / "*.parquet"), recursive=True))
        if not found:
            raise FileNotFoundError(
                f"{root} holds no save_to_disk data (dataset_dict.json or state.json) and no "
                "parquet files."
            )
        by_split: dict[str, list[str]] = {}
        for f in found:
            rel = Path(f).relative_to(root)
            words = [*rel.parts[:-1], rel.name.split("-", 1)[0].split(".", 1)[0]]
            by_split.setdefault(next((w for w in words if is_split_name(w)), ""), []).append(f)
        if "" in by_split:
            refuse_split(where, split, "its parquet files have no split names")
            files, chosen = found, None
        else:
            chosen = pick_split(where, split, sorted(by_split))
            files = found if chosen == "all" else by_split[chosen]
        kind = "parquet"
    spec = with_query(where, {"image_col": image_col, "label_col": label_col, "split": chosen})
    return _from_files(where, spec, files, str(root), image_col, label_col, kind)


def _arrow_files(folder: Path) -> list[str]:
    try:
        state = json.loads((folder / "state.json").read_text())
        return [str(folder / d["filename"]) for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder} is not a readable save_to_disk folder ({e}).") from None
