"""The local engine: a frozen column over a dataset, streamed into a feature cache.

One pass, fixed order, resumable: the steps that touch the cache are the run protocol shared
with the Ray engine (``_run.py``); this module schedules decoding (DataLoader workers) and the
column (this process) on one machine.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from .._device import resolve_device, resolve_precision
from ._datasets import Dataset
from ._embedder import Embedder
from ._openvino import backend_of, check_backend
from ._run import (
    ExtractResult,
    Items,
    begin,
    cache_path,
    check_args,
    check_out,
    describe,
    finish,
    write_batch,
)
from ._tuner import ThreadTuner


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
    backend: str = "auto",
    threads: int | None = None,
    decode: str = "auto",
    compile: bool = False,
) -> ExtractResult:
    """Run ``column`` over ``data`` and stream the vectors into a cache; resume if it exists.

    Args:
        column: registered column name (see ``colhead columns``), ``tv/NAME`` or ``timm/NAME``.
        data: dataset spec (``folder:PATH``, ``csv:FILE``, ``elpv``, ``digits``, ...) or Dataset.
        split: dataset split, where the dataset has them.
        out: the cache file (HDF5). Default: a file per configuration under ``cache_dir``.
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
        backend: "auto" | "torch" | "openvino" (CPU). auto = OpenVINO on the CPU where it is
            installed and converts the column, else torch; resuming a cache made by one
            backend, auto keeps to that backend.
        threads: the column's CPU threads (default: OpenVINO all cores, its threads sharing
            them with the decode workers; torch the cores the workers leave, and the thread
            tuner may take all cores when that measures faster).
        decode: "auto" | "cpu" | "gpu": auto decodes JPEG batches on the column's device when it
            is CUDA (workers then only read bytes), never on the CPU; other images and JPEGs the
            device cannot take go to the CPU decoder, with the same skip reasons.
        compile: torch.compile the column (long GPU runs); recorded in provenance, not identity.

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
    backend = check_backend(backend, dev) if backend != "auto" else backend
    check_out(out, cache_dir)

    import torch

    from ..cache import CacheWriter

    t0 = time.perf_counter()
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    n_workers, auto_threads = workers_and_threads(workers, dev)
    fixed = threads is not None
    threads = threads or auto_threads
    emb = Embedder(
        spec.name,
        device=device,
        precision=prec,
        weights=weights,
        draft=draft,
        backend=_backend_of_cache(out) if backend == "auto" else backend,
        # OpenVINO's threads: all cores unless the caller fixed them. Beside 2 decode workers on
        # 2 cores, 2 OpenVINO threads ran 3-10% faster than 1 on quiet cores and within noise
        # under load (bench/roofline.py, 60 and 400 camera JPEGs); its idle threads yield, unlike
        # torch's OpenMP ones, which the thread tuner keeps to the cores the workers leave.
        threads=threads if fixed else None,
        decode=decode,
        compile=compile,
    )
    identity, metadata = describe(
        spec,
        ds,
        emb.identity,
        dim=emb.dim,
        weights_file=emb.weights_file,
        store_dtype=store_dtype,
        run={
            "engine": "local",
            "backend": emb.backend,
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "batch_size": batch_size,
            "decode": "device" if emb.gpu_decode else "cpu",
            "compile": emb.compiled,
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
        cores = (n_workers, threads, fixed)
        return _run(writer, emb, ds, batch_size, cores, progress, retry_skipped, t0)
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


# On the CPU a batch is loaded (and committed) in parts of this many images, grouped by absolute
# position (item i in part i // 16): the column still sees the same slices of 8, but decoding and
# the column overlap from the first 16 images on instead of after a whole batch of 64 per worker,
# which left a run of 120 images mostly serial (bench/roofline.py, camera JPEGs).
CPU_LOAD_BATCH = 16


def load_batches(batches: list[list[int]], batch_size: int, device) -> list[list[int]]:
    """The plan's batches as the loader reads them: whole on CUDA, in parts on the CPU."""
    part = CPU_LOAD_BATCH
    if device.type != "cpu" or batch_size <= part or batch_size % part:
        return batches
    out = []
    for b in batches:
        groups: dict[int, list[int]] = {}
        for i in b:
            groups.setdefault(i // part, []).append(i)
        out += groups.values()
    return out


def _collate(samples):
    import torch

    good = [s for s in samples if s[1] is not None]
    bad = [s for s in samples if s[1] is None]
    if any(isinstance(s[1], bytes) for s in good):  # raw items: decoded by decode_on
        x = [s[1] for s in good]
    else:
        x = torch.from_numpy(np.stack([s[1] for s in good])) if good else None
    return good and [s[0] for s in good], x, [s[2] for s in good], [s[3] for s in good], bad


def decode_on(emb: Embedder, datas, idx, hashes, stats, bad):
    """Decode a batch of raw items with ``emb.decode_batch``; failures join ``bad`` (position,
    None, hash, stat, reason) exactly as a decode worker would have reported them."""
    x, reasons = emb.decode_batch(datas)
    keep = [k for k, r in enumerate(reasons) if r is None]
    bad = bad + [(idx[k], None, hashes[k], stats[k], r) for k, r in enumerate(reasons) if r]
    return x, [idx[k] for k in keep], [hashes[k] for k in keep], [stats[k] for k in keep], bad


def _backend_of_cache(out) -> str:
    """auto, resuming an existing cache: the backend that made it (its vectors must not mix)."""
    if out is None or not Path(out).is_file():
        return "auto"
    from ..cache import CacheError, open_cache

    try:
        return backend_of(open_cache(out).identity.get("precision", ""))
    except (CacheError, OSError, ValueError):
        return "auto"  # not a readable cache: the writer says what is wrong with it


def _run(writer, emb: Embedder, ds, batch_size, cores, progress, retry_skipped, t0):
    import torch
    from tqdm.auto import tqdm

    p = begin(writer, ds, batch_size, retry_skipped=retry_skipped)
    n_workers, threads, fixed = cores
    loader = torch.utils.data.DataLoader(
        Items(ds, emb.spec.preprocess, emb.draft, raw=emb.gpu_decode),
        batch_sampler=load_batches(p.batches, batch_size, emb.device),
        num_workers=n_workers,
        collate_fn=_collate,
        pin_memory=emb.device.type == "cuda",
        prefetch_factor=4 if n_workers else None,
    )
    read_s = column_s = write_s = 0.0
    written = skipped_now = 0
    bar = tqdm(total=p.pending, unit="img", disable=not progress, desc=emb.spec.name, smoothing=0.1)
    if emb.backend == "torch" and threads is not None and threads < torch.get_num_threads():
        # shared cores: let the column measure which thread count runs faster (never more
        # threads than the caller allowed); a fixed count is one option only
        emb.tuner = ThreadTuner((threads,) if fixed else (threads, torch.get_num_threads()))
    tick = time.perf_counter()
    try:
        for idx, x, hashes, stats, bad in loader:
            t1 = time.perf_counter()
            if isinstance(x, list):  # bytes: decoded in this process, on the column's device
                x, idx, hashes, stats, bad = decode_on(emb, x, idx, hashes, stats, bad)
                t1 = time.perf_counter()  # device decoding counts as reading
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
        chosen = emb.threads
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
        backend=emb.backend,
        threads=chosen if chosen is not None else threads,
        workers=n_workers,
    )


__all__ = ["extract", "workers_and_threads"]
