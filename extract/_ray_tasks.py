"""The Ray engine's cluster side: the probe, the decode tasks, the column actors, the drain.

``_ray.py`` plans and owns the cache; these run where Ray puts them (see its module docstring
for the picture) and hand back one batch of vectors per local-engine batch.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from ._run import Items, write_batch


def _probe(column, device, precision, weights, backend):
    from ._embedder import Embedder

    emb = Embedder(column, device=device, precision=precision, weights=weights, backend=backend)
    if emb.device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(emb.device)
    else:
        name = "cpu"
    wfile = str(emb.weights_file) if emb.weights_file else None
    return emb.identity, emb.dim, wfile, name, emb.backend


def _pipeline(
    ray,
    batches,
    items,
    *,
    column,
    device,
    precision,
    weights,
    weights_sha256,
    backend,
    actors,
    use_gpu,
    cpu,
):
    import pyarrow as pa

    # One block per batch: Ray Data hands whole blocks to map_batches(batch_size=None), so each
    # forward pass sees exactly the local engine's batch.
    blocks = [pa.table({"pos": np.asarray(b, np.int64)}) for b in batches]
    return (
        ray.data.from_arrow(blocks)
        .map_batches(
            _decode,
            fn_kwargs={"items": items},
            batch_size=None,
            batch_format="numpy",
            num_cpus=cpu["decode"],
            # A memory hint (a batch of images, in and out, plus the interpreter) that also
            # keeps these tasks' arguments different from the actors', so Ray does not fuse
            # decoding into the column actors: decoding belongs on CPUs, beside the GPUs.
            memory=64 * 2**20 + 4 * max(map(len, batches)) * items.pre.crop**2 * 3,
        )
        .map_batches(
            _Column,
            fn_constructor_kwargs=dict(
                column=column,
                device=device,
                precision=precision,
                weights=weights,
                weights_sha256=weights_sha256,
                backend=backend,
            ),
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=None,
            batch_format="numpy",
            num_gpus=1 if use_gpu else 0,
            num_cpus=cpu["actor"],
        )
    )


def _decode(batch: dict, items: Items) -> dict:
    """CPU task: positions -> preprocessed uint8 images, content hashes, stats, reasons."""
    t = time.perf_counter()
    pos = batch["pos"]
    c = items.pre.crop
    k = len(pos)
    x = np.zeros((k, c, c, 3), np.uint8)
    ok = np.zeros(k, bool)
    hashes, reasons = [], []
    stats = np.zeros((k, 2), np.int64)
    for j, i in enumerate(pos):
        _, arr, h, st, reason = items[int(i)]
        if arr is not None:
            x[j], ok[j] = arr, True
        hashes.append(h)
        reasons.append(reason or "")
        stats[j] = st
    return {
        "pos": pos,
        "ok": ok,
        "x": x,
        "hash": np.array(hashes, dtype=object),
        "stat": stats,
        "reason": np.array(reasons, dtype=object),
        "read_s": np.full(k, (time.perf_counter() - t) / max(1, k)),
    }


class _Column:
    """Actor: the column, loaded once, on its GPU or CPU."""

    def __init__(self, column, device, precision, weights, weights_sha256, backend):
        from ._embedder import Embedder

        self.emb = Embedder(
            column, device=device, precision=precision, weights=weights, backend=backend
        )
        if self.emb.weights_sha256 != weights_sha256:
            raise RuntimeError(
                f"The column {column} on host {socket.gethostname()} has weights with sha256 "
                f"{self.emb.weights_sha256[:16]}…, not {weights_sha256[:16]}… as on the first "
                "worker: install the same weights on every node (or pass --weights on a shared "
                "file system)."
            )

    def __call__(self, batch: dict) -> dict:
        t = time.perf_counter()
        ok = batch["ok"]
        feats = np.zeros((len(ok), self.emb.dim), np.float32)
        if ok.any():
            feats[ok] = self.emb.forward(np.ascontiguousarray(batch["x"][ok]))
        out = {k: v for k, v in batch.items() if k != "x"}  # images stay here: only vectors go
        out["feat"] = feats
        out["column_s"] = np.full(len(ok), (time.perf_counter() - t) / max(1, len(ok)))
        return out


def _drain(pipe, writer, ds, p, *, progress: bool, desc: str):
    """Driver: commit batches as they arrive (any order), through the one writer."""
    from tqdm.auto import tqdm

    read_s = column_s = write_s = 0.0
    written = skipped_now = 0
    bar = tqdm(total=p.pending, unit="img", disable=not progress, desc=desc, smoothing=0.1)
    try:
        for b in pipe.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            t = time.perf_counter()
            ok = b["ok"].astype(bool)
            pos = [int(i) for i in b["pos"]]
            idx = [i for i, g in zip(pos, ok) if g]
            stats = [tuple(int(v) for v in s) for s in b["stat"]]
            bad = [
                (i, None, str(h), st, str(r))
                for i, g, h, st, r in zip(pos, ok, b["hash"], stats, b["reason"])
                if not g
            ]
            hashes = [str(h) for h, g in zip(b["hash"], ok) if g]
            good_stats = [s for s, g in zip(stats, ok) if g]
            feats = b["feat"][ok] if idx else None
            write_batch(writer, ds, p.label_of, idx, hashes, good_stats, feats, bad)
            write_s += time.perf_counter() - t
            read_s += float(b["read_s"].sum())
            column_s += float(b["column_s"].sum())
            written += len(idx)
            skipped_now += len(bad)
            bar.update(len(pos))
            bar.set_postfix(skipped=skipped_now, refresh=False)
    finally:
        bar.close()
    return (written, skipped_now), (read_s, column_s, write_s)
