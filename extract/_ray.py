"""The Ray engine: the local extractor's plan and cache, with the work spread over a Ray cluster.

``extract_ray`` has the signature and result of :func:`colhead.extract`; only the scheduling
differs. What runs where::

    driver        checks, plan (the local engine's ``begin`` on the same CacheWriter, lock held)
                  one Arrow block per batch of pending positions ──┐
    CPU tasks     map_batches(_decode): read, hash, decode, resize/crop -> uint8 images
    actor pool    map_batches(_Column): the column (num_gpus=1 each when the cluster has GPUs,
                  CPU actors otherwise), normalised on the device -> float32 vectors
    driver        iter_batches: ``write_batch`` commits each batch, ``finish`` marks it complete

Why stream to one writer instead of per-worker shards merged at the end: the single writer is
the local engine's writer, so the cache key, the lock, provenance, incremental updates and
resume are the same code, not a re-implementation; each batch is committed (two-phase, SWMR)
as it arrives, so a run killed at any moment keeps every batch written and a rerun extracts only
what is missing, whereas shards would keep nothing until the merge and need their own resume
bookkeeping; and the writer is never the bottleneck: appending a batch of vectors to HDF5 costs
well under a millisecond per image while the column costs milliseconds per image, so one driver
keeps up with many GPUs. Shards remain possible for clusters that cannot see one file system:
extract on each, then ``colhead cache merge``.

Ordering: results arrive in completion order (``preserve_order`` stays off, so a slow batch never
stalls the others), so rows are written in arrival order, not dataset order. Every row's id,
label, hash and vector travel together, so ids and vectors always match, and each batch holds
exactly the items of the local engine's batch (item ``i`` in batch ``i // batch_size``): the
vectors equal the local engine's within the precision's tolerance (bit-equal on the same
hardware and kernels). Readers that want dataset order sort by id or use the dataset's order.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time

if importlib.util.find_spec("ray") is None:  # cheap: Ray itself is imported when a run starts
    raise ImportError("the Ray engine needs Ray: pip install 'colhead[ray]'")

from .._device import PRECISIONS
from ._openvino import BACKENDS
from ._ray_tasks import _drain, _pipeline, _probe
from ._run import (
    ExtractResult,
    Items,
    begin,
    cache_path,
    check_args,
    check_out,
    describe,
    finish,
)


def extract_ray(
    column: str = "efficientnet_lite0",
    data="elpv",
    *,
    ray_address: str | None = None,
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
) -> ExtractResult:
    """Like :func:`colhead.extract`, with decoding and the column running on a Ray cluster.

    Args:
        ray_address: the cluster: ``auto`` (a ``ray start`` cluster on this machine),
            ``HOST:PORT``, ``ray://HOST:10001`` (Ray Client). Default: ``$RAY_ADDRESS`` when set,
            else a private local Ray with this machine's CPUs (and GPUs).
        workers: column actors (default: one per GPU of the cluster; on a CPU-only cluster
            half its CPUs, so decoding keeps the other half).
        device: "auto" (GPUs when the cluster has them) | "cpu" | "cuda".
        backend: "auto" | "torch" | "openvino", resolved once where the actors run (the probe),
            then used by every actor.

    Every other argument means what it means for :func:`colhead.extract`. File datasets must be
    readable at the same paths on every node (a shared file system), and the cache is written
    by this process only.
    """
    spec, ds = check_args(
        column,
        data,
        split=split,
        batch_size=batch_size,
        store_dtype=store_dtype,
        weights=weights,
        allow_absolute=allow_absolute,
    )
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 needs a CUDA device; on the CPU use bf16 (or fp32).")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if workers is not None and workers < 1:
        raise ValueError(f"workers (column actors) must be >= 1, got {workers}.")
    check_out(out, cache_dir)

    from ..cache import CacheWriter

    t0 = time.perf_counter()
    ray = _connect(ray_address)
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    use_gpu = device != "cpu" and gpus > 0
    if device.startswith("cuda") and not gpus:
        raise RuntimeError(f"--device {device} was asked for, but the Ray cluster has no GPUs.")
    if precision == "fp16" and not use_gpu:
        raise ValueError("fp16 needs a CUDA device; the Ray cluster has none. Use bf16 or fp32.")
    actors = workers or (gpus if use_gpu else max(1, cpus // 2))
    dev = "cuda" if use_gpu else "cpu"
    # CPU reservations that can always all be met: decoding keeps at least half the CPUs (or
    # one), so more CPU actors than CPUs share them instead of starving the decode tasks.
    cpu = {"decode": min(1.0, cpus / 2), "actor": 1.0 if use_gpu else min(1.0, cpus / 2 / actors)}

    # Resolve precision and build the column once where the actors will run: "auto" depends on
    # their hardware, and a column that cannot load there fails here, before the cache opens.
    probe = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=1)(_probe)
    col_identity, dim, wfile, dev_name, backend = ray.get(
        probe.remote(spec.name, dev, precision, weights, backend)
    )
    identity, metadata = describe(
        spec,
        ds,
        col_identity,
        dim=dim,
        weights_file=wfile,
        store_dtype=store_dtype,
        run={
            "engine": "ray",
            "backend": backend,
            "ray": ray.__version__,
            "device": f"{actors} x {dev_name}",
            "batch_size": batch_size,
            "host": socket.gethostname(),
        },
    )
    prec = identity["precision"].rsplit("-", 1)[-1]  # the plain precision; identity names both
    writer = CacheWriter(
        cache_path(identity, out, cache_dir),
        identity=identity,
        metadata=metadata,
        dim=dim,
        store_dtype=store_dtype,
    )
    try:
        p = begin(writer, ds, batch_size, retry_skipped=retry_skipped)
        counts, times = (0, 0), (0.0, 0.0, 0.0)
        if p.batches:
            pipe = _pipeline(
                ray,
                p.batches,
                Items(ds, spec.preprocess, draft),
                column=spec.name,
                device=dev,
                precision=prec,
                weights=weights,
                weights_sha256=identity["weights_sha256"],
                backend=backend,
                actors=actors,
                use_gpu=use_gpu,
                cpu=cpu,
            )
            counts, times = _drain(pipe, writer, ds, p, progress=progress, desc=spec.name)
        return finish(
            writer,
            p,
            written=counts[0],
            skipped_now=counts[1],
            t0=t0,
            times=times,
            device=f"ray:{actors}x{dev}",
            precision=prec,
            backend=backend,
        )
    finally:
        writer.close()


def _connect(address: str | None):
    """Join (or start) Ray once per process, quietly; a Ray on this machine stays on loopback."""
    target = address or os.environ.get("RAY_ADDRESS")
    if target in (None, "", "local") or _is_loopback(target):
        _keep_loopback()
    import ray
    import ray.data

    if not ray.is_initialized():
        kw = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True)
        if address:
            ray.init(address=address, **kw)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**kw)  # Ray's own convention: the environment names the cluster
        else:
            # A private Ray: its GCS, raylet and workers listen on 127.0.0.1 only.
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                _node_ip_address="127.0.0.1",
                **kw,
            )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # colhead shows one bar of its own, on the driver
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray


def _is_loopback(address: str) -> bool:
    """True for ``127.0.0.1:6379``, ``localhost:6379``, ``[::1]:6379``: this machine's loopback."""
    import ipaddress

    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keep_loopback() -> None:
    """Stop Ray from swapping 127.0.0.1 for this machine's network address, in this process.

    On Linux Ray replaces a loopback node or cluster address by the interface address (so that
    other machines could join): a private Ray would then listen on the network, and
    ``--ray-address 127.0.0.1:PORT`` would dial an address where a loopback cluster does not
    listen. Ray's single-machine switch, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, keeps loopback
    as it is; Ray reads it once, at import, so set it before, or on Ray's constant when Ray is
    already imported. A value the user set is left alone. See docs/scaling.md (one machine).
    """
    import sys

    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") != "0":
        return
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        constants.ENABLE_RAY_CLUSTER = False


__all__ = ["extract_ray"]
