"""The run protocol both engines share: check, describe, plan, write each batch, finish.

The local engine (``_extractor.py``) and the Ray engine (``_ray.py``) differ only in how they
schedule decoding and the column; every step that touches the cache is here, so the cache key,
provenance, incremental updates and resume are one piece of code. Items are grouped into batches
by their absolute position in the dataset (item ``i`` is always in batch ``i // batch_size``), so
a resumed run feeds the column exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._datasets import Dataset, parse_dataset
from ._images import BadImage, decode, from_array
from ._registry import ColumnSpec, get_column
from ._result import ExtractResult, default_cache_dir

NO_HASH = "0" * 64  # an unreadable file has no content to hash
# Suffixes that name another format: `--out x.npy` once quietly wrote HDF5 under that name.
_EXPORT_SUFFIXES = (".npy", ".npz", ".parquet", ".csv", ".tsv", ".json", ".pt", ".pkl", ".feather")


def check_args(
    column, data, *, split, batch_size, store_dtype, weights, allow_absolute
) -> tuple[ColumnSpec, Dataset]:
    """The cheap checks every engine runs first; returns the column spec and the dataset."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if store_dtype not in ("float32", "float16"):
        raise ValueError(f"store_dtype must be float32 or float16, got {store_dtype!r}.")
    spec: ColumnSpec = get_column(column)
    ds = (
        data
        if isinstance(data, Dataset)
        else parse_dataset(data, split=split, allow_absolute=allow_absolute)
    )
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"No weights file at {weights}.")
    return spec, ds


def check_out(out, cache_dir) -> None:
    """Fail early, before any model loads, when the cache cannot be written."""
    if out is not None:
        suffix = Path(out).suffix.lower()
        if suffix in _EXPORT_SUFFIXES:
            raise ValueError(
                f"--out {out} names a {suffix} file, but extract writes an HDF5 feature cache. "
                f"Give it a .h5 name, then convert it: colhead cache export CACHE.h5 --format "
                f"{suffix.lstrip('.')} --out {out}"
            )
        _check_writable(Path(out))
    else:
        _check_writable(Path(cache_dir or default_cache_dir()) / "probe.h5")


def _check_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"Cannot create the output folder {parent}: {e.strerror}.") from None
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give a file name, or use --cache-dir.")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"Cannot write {path}: no write permission. Choose another --out.")
    from ..cache import probe_path  # cache/ names colhead's files, so `cache gc` knows it

    probe = probe_path(parent)
    try:  # os.access says yes to root everywhere; only a real create tells the truth
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"Cannot write to {parent}: {e.strerror}. Choose another --out or --cache-dir."
        ) from None


def cache_path(identity: dict, out, cache_dir) -> Path:
    """``out`` when given, else one file per configuration under the cache folder."""
    if out is not None:
        return Path(out)
    return Path(cache_dir or default_cache_dir()) / cache_file_name(identity)


def cache_file_name(identity: dict) -> str:
    from ..cache import config_key

    ds = identity["dataset"].split(":", 1)
    slug = ds[0] + ("-" + Path(ds[1]).name if len(ds) > 1 and "/" in ds[1] else "")
    slug += "-" + ds[1].rsplit(":", 1)[-1] if len(ds) > 1 and "/" not in ds[1] else ""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)[:60]
    col = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity["column"])
    key = config_key(identity)[:10]
    return f"{safe}.{col}.{identity['precision']}.{identity['store_dtype']}.{key}.h5"


def versions() -> dict:
    """Library versions for provenance, read from package metadata: importing timm and
    torchvision only to ask their versions cost start-up (bench/extract.py, start-up)."""
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__
    from ..cache import storage_versions

    def v(name):
        if name in sys.modules:  # imported anyway: its own string (local tags like +cu130)
            return getattr(sys.modules[name], "__version__", None) or version(name)
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    out = {"colhead": __version__}
    out.update({k: v(k) for k in ("torch", "torchvision", "timm")})
    out.update(storage_versions())
    out.update(
        {"numpy": np.__version__, "pillow": v("pillow"), "python": platform.python_version()}
    )
    if v("openvino"):
        out["openvino"] = v("openvino")
    return out


def describe(
    spec: ColumnSpec, ds: Dataset, column_identity: dict, *, dim, weights_file, store_dtype, run
) -> tuple[dict, dict]:
    """The cache identity (what must match to share a file) and the provenance metadata.

    ``column_identity`` is ``Embedder.identity``: column, weights hash, preprocessing, precision
    (which names the backend too when it is not torch, so vectors of two engines never mix).
    """
    identity = {**column_identity, "store_dtype": store_dtype, "dataset": ds.spec}
    metadata = {
        "column": {
            "name": spec.name,
            "dim": dim,
            "source": spec.source,
            "licence": spec.licence,
            "weights_id": spec.weights_id,
            "weights_sha256": identity["weights_sha256"],
            "weights_file": str(weights_file) if weights_file else None,
            "description": spec.description,
        },
        "preprocess": spec.preprocess.to_dict(),
        "precision": identity["precision"],
        "dataset": {"spec": ds.spec, "items": len(ds), "classes": len(ds.classes), **ds.info},
        "versions": versions(),
        "run": run,
    }
    return identity, metadata


class Items:
    """Map-style dataset over item positions: read, hash, decode. Runs in decode workers.

    ``raw``: return an item's bytes undecoded (the column's device decodes the batch).
    """

    def __init__(self, ds: Dataset, pre, draft: bool, *, raw: bool = False):
        self.ds, self.pre, self.draft, self.raw = ds, pre, draft, raw

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        """(position, uint8 image or None, content hash, (size, mtime_ns), reason or None)."""
        ds = self.ds
        st = ds.stat(i)
        try:
            content = ds.read(i)
        except OSError as e:
            return i, None, NO_HASH, st, f"cannot read: {e.strerror or type(e).__name__}"
        h = ds.content_hash(content)
        if self.raw and isinstance(content, (bytes, bytearray)):
            return i, bytes(content), h, st, None
        try:
            if isinstance(content, (bytes, bytearray)):
                arr = decode(content, self.pre, draft=self.draft)
            else:
                arr = from_array(content, self.pre)
        except BadImage as e:
            return i, None, h, st, str(e)
        except Exception as e:  # a decoder bug must not kill a long job: record and go on
            return i, None, h, st, f"cannot decode: {type(e).__name__}: {str(e)[:160]}"
        return i, arr, h, st, None


@dataclass
class Plan:
    """What a run will do, once the cache has been brought up to date with the dataset."""

    batches: list[list[int]]  # pending positions, grouped as an uninterrupted run groups them
    pending: int
    retired: int
    reused: int
    label_of: np.ndarray | None  # the cache's class index of each dataset position


def plan(ds: Dataset, existing, *, retry_skipped: bool = False):
    """Decide what to do: (pending positions, rows to retire, skipped to retire, reused count).

    Unchanged size and mtime means unchanged, as git assumes; otherwise the content hash decides
    (a touched but identical file is kept, a changed one is re-extracted). Items that are gone
    are retired; so are skipped entries when ``retry_skipped`` asks to try them again.
    """
    pending, retire_rows, retire_skipped = [], [], []
    reused = 0
    for i, id_ in enumerate(ds.ids):
        is_row = id_ in existing.rows
        entry = existing.rows.get(id_) or existing.skipped.get(id_)
        if entry is None:
            pending.append(i)
            continue
        pos, h, st = entry
        if (is_row or not retry_skipped) and _unchanged(ds, i, h, st):
            reused += is_row
            continue
        (retire_rows if is_row else retire_skipped).append(pos)
        pending.append(i)
    seen = set(ds.ids)
    retire_rows += [r for id_, (r, _, _) in existing.rows.items() if id_ not in seen]
    retire_skipped += [r for id_, (r, _, _) in existing.skipped.items() if id_ not in seen]
    return pending, retire_rows, retire_skipped, reused


def _unchanged(ds: Dataset, i: int, h: str, st: tuple[int, int]) -> bool:
    if ds.paths is not None and st == ds.stat(i):
        return True
    try:
        return ds.content_hash(ds.read(i)) == h
    except OSError:
        return h == NO_HASH


def begin(writer, ds: Dataset, batch_size: int, *, retry_skipped: bool = False) -> Plan:
    """Plan against the cache, retire what changed or went, and group the pending items."""
    pending, retire_rows, retire_skipped, reused = plan(
        ds, writer.existing, retry_skipped=retry_skipped
    )
    writer.retire(retire_rows, retire_skipped)
    if pending:
        writer.mark_incomplete()
    # Batches by absolute position: exactly the batches of an uninterrupted run (see module doc).
    batches: dict[int, list[int]] = {}
    for i in pending:
        batches.setdefault(i // batch_size, []).append(i)
    label_of = writer.class_indices(ds.labels) if ds.labels is not None else None
    return Plan(list(batches.values()), len(pending), len(retire_rows), reused, label_of)


def write_batch(writer, ds: Dataset, label_of, idx, hashes, stats, feats, bad) -> None:
    """Commit one batch: unreadable items (position, _, hash, stat, reason), then the rows."""
    if bad:
        writer.skip(
            [ds.ids[b[0]] for b in bad],
            [b[2] for b in bad],
            [b[3] for b in bad],
            [b[4] for b in bad],
        )
    if idx:
        labels = label_of[idx] if label_of is not None else np.full(len(idx), -1)
        writer.append([ds.ids[i] for i in idx], hashes, stats, labels, feats)


def finish(
    writer, p: Plan, *, written, skipped_now, t0, times, device, precision, **how
) -> ExtractResult:
    """Mark the cache complete and say what the run did; ``times`` = (read, column, write) s.

    ``how``: ``backend``, ``threads``, ``workers`` as the engine ran them.
    """
    writer.finish()
    return ExtractResult(
        path=str(writer.path),
        rows=len(writer.existing.rows),
        written=written,
        reused=p.reused,
        skipped=len(writer.existing.skipped),
        skipped_now=skipped_now,
        retired=p.retired,
        seconds=time.perf_counter() - t0,
        read_s=times[0],
        column_s=times[1],
        write_s=times[2],
        device=device,
        precision=precision,
        **how,
    )
