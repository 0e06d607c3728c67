"""The batch extractor: a frozen column over a dataset, streamed into a feature cache.

One pass, fixed order, resumable. Items are grouped into batches by their absolute position
in the dataset (item ``i`` is always in batch ``i // batch_size``), so a resumed run feeds the
model exactly the batches an uninterrupted run would, and its vectors come out identical.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._device import resolve_device, resolve_precision
from ._columns import ColumnSpec, get_column
from ._datasets import Dataset, parse_dataset
from ._embedder import Embedder, ThreadTuner
from ._images import BadImage, decode, from_array

NO_HASH = "0" * 64  # an unreadable file has no content to hash


@dataclass
class ExtractResult:
    """What one extraction run did."""

    path: str
    rows: int  # live rows in the cache after this run
    written: int
    reused: int
    skipped: int  # items skipped in total (this run and earlier ones)
    skipped_now: int
    retired: int  # rows dropped because their file changed or disappeared
    seconds: float
    read_s: float
    column_s: float
    write_s: float
    device: str
    precision: str

    @property
    def images_per_s(self) -> float:
        return (self.written + self.skipped_now) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.path}: {self.written} rows written, {self.reused} reused, {self.skipped_now} "
            f"skipped now ({self.skipped} in all), {self.retired} retired; {self.rows} rows in "
            f"the cache. {self.seconds:.1f} s ({self.images_per_s:.1f} img/s on {self.device}, "
            f"{self.precision}): reading {self.read_s:.1f} s, column {self.column_s:.1f} s, "
            f"writing {self.write_s:.1f} s."
        )


def default_cache_dir() -> Path:
    env = os.environ.get("COLHEAD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "colhead"


def cache_file_name(identity: dict) -> str:
    from ..cache import config_key

    ds = identity["dataset"].split(":", 1)
    slug = ds[0] + ("-" + Path(ds[1]).name if len(ds) > 1 and "/" in ds[1] else "")
    slug += "-" + ds[1].rsplit(":", 1)[-1] if len(ds) > 1 and "/" not in ds[1] else ""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)[:60]
    col = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity["column"])
    key = config_key(identity)[:10]
    return f"{safe}.{col}.{identity['precision']}.{identity['store_dtype']}.{key}.h5"


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
    probe = parent / f".colhead-probe-{os.getpid()}"
    try:  # os.access says yes to root everywhere; only a real create tells the truth
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"Cannot write to {parent}: {e.strerror}. Choose another --out or --cache-dir."
        ) from None


def versions() -> dict:
    import h5py
    import PIL
    import timm
    import torch
    import torchvision

    from .._version import __version__

    return {
        "colhead": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


class _Items:
    """Map-style torch dataset over item positions; runs in DataLoader workers."""

    def __init__(self, ds: Dataset, pre, draft: bool):
        self.ds, self.pre, self.draft = ds, pre, draft

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        ds = self.ds
        st = ds.stat(i)
        try:
            content = ds.read(i)
        except OSError as e:
            return i, None, NO_HASH, st, f"cannot read: {e.strerror or type(e).__name__}"
        h = ds.content_hash(content)
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


def _collate(samples):
    import torch

    good = [s for s in samples if s[1] is not None]
    bad = [s for s in samples if s[1] is None]
    x = torch.from_numpy(np.stack([s[1] for s in good])) if good else None
    return good and [s[0] for s in good], x, [s[2] for s in good], [s[3] for s in good], bad


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


def extract(
    column: str = "efficientnet_lite0",
    data: str | Dataset = "elpv",
    *,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    store_dtype: str = "float32",
    weights: str | os.PathLike | None = None,
    draft: bool = True,
    progress: bool = True,
    allow_absolute: bool = False,
    retry_skipped: bool = False,
) -> ExtractResult:
    """Run ``column`` over ``data`` and stream the vectors into a cache; resume if it exists.

    Args:
        column: registered column name (see ``colhead columns``), ``tv/NAME`` or ``timm/NAME``.
        data: dataset spec (``folder:PATH``, ``csv:FILE``, ``elpv``, ``digits``, ...) or Dataset.
        split: dataset split, where the dataset has them.
        out: the cache file. Default: a file per configuration under ``cache_dir``.
        cache_dir: default ``$COLHEAD_CACHE`` or the user's cache folder.
        batch_size: images per forward pass.
        workers: DataLoader decode workers (default: 2 on the CPU, which then gives the column the
            remaining cores; on CUDA all cores but one, up to 16; 0 = decode in this process).
        device: "auto" | "cpu" | "cuda".
        precision: "auto" | "fp32" | "bf16" | "fp16"; auto = bf16 where the hardware has it.
        store_dtype: "float32" or "float16" for the stored vectors.
        weights: a local weights file for the column (offline use of tv/ and timm/ columns).
        draft: let JPEG decoding downscale in the DCT domain when the image is large.
        progress: show a progress bar.
        allow_absolute: let a CSV list files outside its folder.
        retry_skipped: try items skipped by earlier runs again, even if unchanged.

    Returns:
        ExtractResult with counts and the time split.
    """
    # Cheap validation first: names, paths, options — before any model or GPU is touched.
    spec, ds = check_args(
        column,
        data,
        split=split,
        batch_size=batch_size,
        store_dtype=store_dtype,
        weights=weights,
        allow_absolute=allow_absolute,
    )
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    check_out(out, cache_dir)

    import torch

    from ..cache import CacheWriter

    t0 = time.perf_counter()
    emb = Embedder(spec.name, device=device, precision=prec, weights=weights, draft=draft)
    identity, metadata = describe(
        spec,
        ds,
        emb.identity,
        dim=emb.dim,
        weights_file=emb.weights_file,
        store_dtype=store_dtype,
        run={
            "engine": "local",
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "batch_size": batch_size,
            "host": socket.gethostname(),
        },
    )
    writer = CacheWriter(
        cache_path(identity, out, cache_dir),
        identity=identity,
        metadata=metadata,
        dim=emb.dim,
        store_dtype=store_dtype,
    )
    try:
        return _run(writer, emb, ds, batch_size, workers, progress, retry_skipped, t0)
    finally:
        writer.close()


def workers_and_threads(workers: int | None, device) -> tuple[int, int | None]:
    """Decode workers and the column's torch threads for a run; None = leave threads as they are.

    On the CPU decoding and the column share the cores, so the column gets the cores the workers
    leave (at least one). An OpenMP forward whose threads a decode worker preempts stalls at every
    layer's barrier: on 2 cores, 1 thread + 2 workers ran 1.6-1.9x faster than 2 threads + 2
    workers, on elpv PNGs and on large JPEGs alike (bench/extract.py, docs/performance.md). On
    CUDA the column needs no CPU threads and decoding is what limits, so most cores decode.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if device.type == "cuda":
        return (max(2, min(cores - 1, 16)) if workers is None else workers), None
    n = min(2, cores) if workers is None else workers
    return n, max(1, cores - n)


def _run(writer, emb: Embedder, ds, batch_size, workers, progress, retry_skipped, t0):
    import torch
    from tqdm.auto import tqdm

    p = begin(writer, ds, batch_size, retry_skipped=retry_skipped)
    n_workers, threads = workers_and_threads(workers, emb.device)
    loader = torch.utils.data.DataLoader(
        _Items(ds, emb.spec.preprocess, emb.draft),
        batch_sampler=p.batches,
        num_workers=n_workers,
        collate_fn=_collate,
        pin_memory=emb.device.type == "cuda",
        prefetch_factor=4 if n_workers else None,
    )
    read_s = column_s = write_s = 0.0
    written = skipped_now = 0
    bar = tqdm(total=p.pending, unit="img", disable=not progress, desc=emb.spec.name, smoothing=0.1)
    if threads is not None and threads < torch.get_num_threads():
        # shared cores: let the column measure which thread count runs faster (never more
        # threads than the caller allowed)
        emb.tuner = ThreadTuner((threads, torch.get_num_threads()))
    tick = time.perf_counter()
    try:
        for idx, x, hashes, stats, bad in loader:
            t1 = time.perf_counter()
            read_s += t1 - tick
            feats = emb.forward(x) if idx else None
            t2 = time.perf_counter()
            column_s += t2 - t1
            write_batch(writer, ds, p.label_of, idx, hashes, stats, feats, bad)
            tick = time.perf_counter()
            write_s += tick - t2
            written += len(idx or [])
            skipped_now += len(bad)
            bar.update(len(idx or []) + len(bad))
            bar.set_postfix(skipped=skipped_now, refresh=False)
    finally:
        bar.close()
        emb.tuner = None
    return finish(
        writer,
        p,
        written=written,
        skipped_now=skipped_now,
        t0=t0,
        times=(read_s, column_s, write_s),
        device=str(emb.device),
        precision=emb.precision,
    )


# -- pieces shared with the Ray engine (extract/_ray.py): one behaviour, two schedulers -------
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
        _check_writable(Path(out))
    else:
        _check_writable(Path(cache_dir or default_cache_dir()) / "probe.h5")


def cache_path(identity: dict, out, cache_dir) -> Path:
    """``out`` when given, else one file per configuration under the cache folder."""
    if out is not None:
        return Path(out)
    return Path(cache_dir or default_cache_dir()) / cache_file_name(identity)


def describe(
    spec: ColumnSpec, ds: Dataset, column_identity: dict, *, dim, weights_file, store_dtype, run
) -> tuple[dict, dict]:
    """The cache identity (what must match to share a file) and the provenance metadata.

    ``column_identity`` is ``Embedder.identity``: column, weights hash, preprocessing, precision.
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


@dataclass
class Plan:
    """What a run will do, once the cache has been brought up to date with the dataset."""

    batches: list[list[int]]  # pending positions, grouped as an uninterrupted run groups them
    pending: int
    retired: int
    reused: int
    label_of: np.ndarray | None  # the cache's class index of each dataset position


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


def finish(writer, p: Plan, *, written, skipped_now, t0, times, device, precision) -> ExtractResult:
    """Mark the cache complete and say what the run did; ``times`` = (read, column, write) s."""
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
    )


__all__ = ["ExtractResult", "default_cache_dir", "extract"]
