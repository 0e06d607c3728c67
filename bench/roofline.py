"""Where the extractor stands against this machine's ceilings: compute and decode.

- compute ceiling: torch.matmul of large square matrices at fp32 and bf16 (GFLOP/s), divided by
  the column's FLOPs per image (torch.utils.flop_counter; 1 multiply-add = 2 FLOPs);
- decode ceiling: images/s of ``colhead.extract._images.decode`` alone (decode + resize + crop),
  with and without JPEG draft mode, one process per core, on camera-like JPEGs (640x480,
  1600x1200, 4000x3000 mixed, as bench/extract.py);
- column ceiling: the column's forward alone (Embedder) for each backend (torch, OpenVINO) at 1
  thread and at all cores;
- achieved: colhead's extractor (model load excluded) for each backend and three splits of the
  cores between decode workers and column threads, as fractions of the decode ceiling and of the
  joint ceiling. On a CPU decode and the column share the cores, so the joint ceiling is
  1 / (1/decode + 1/column), per image.

    python bench/roofline.py           # ~2 minutes
    python bench/roofline.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def matmul_peak(n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of an n x n x n matmul at fp32 and bf16, interleaved, best of ``repeats``."""
    import torch

    mats = {
        dt: (torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt))
        for dt in (torch.float32, torch.bfloat16)
    }
    best = {dt: 0.0 for dt in mats}
    for a, b in mats.values():
        torch.matmul(a, b)  # warm-up: threads, oneDNN kernels
    for _ in range(repeats):
        for dt, (a, b) in mats.items():
            t = time.perf_counter()
            torch.matmul(a, b)
            best[dt] = max(best[dt], 2 * n**3 / (time.perf_counter() - t) / 1e9)
    # best, not median: a peak is what the hardware can do when nobody else is using it
    return {"fp32": best[torch.float32], "bf16": best[torch.bfloat16]}


def column_flops(column: str = "efficientnet_lite0") -> tuple[int, int]:
    """(FLOPs per image of the column at its input size, parameters)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from colhead.extract import get_column

    spec = get_column(column)
    model, _, _ = spec.build(None)
    x = torch.zeros(1, 3, spec.preprocess.crop, spec.preprocess.crop)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.eval()(x)
    return fc.get_total_flops(), sum(p.numel() for p in model.parameters())


BACKENDS = ("torch", "openvino")


def _decode_rate(args) -> float:
    blobs, draft, seconds = args
    from colhead.extract import get_column
    from colhead.extract._images import decode

    pre = get_column("efficientnet_lite0").preprocess
    n, t0 = 0, time.perf_counter()
    while True:
        for b in blobs:
            decode(b, pre, draft=draft)
        n += len(blobs)
        dt = time.perf_counter() - t0
        if dt > seconds:
            return n / dt


def decode_ceiling(blobs, draft: bool, procs: int, seconds: float) -> float:
    """Images/s of decode + resize + crop in ``procs`` processes at once (all cores busy)."""
    with ProcessPoolExecutor(procs) as ex:
        return sum(ex.map(_decode_rate, [(blobs, draft, seconds)] * procs))


def forward_rates(backend: str, batch: int = 64, repeats: int = 3) -> dict[int, float]:
    """The column's forward alone through colhead's Embedder (default precision, micro-batches
    of 8), at 1 thread and at all cores, interleaved: {threads: img/s}."""
    import torch

    from colhead.extract import Embedder

    cores = os.cpu_count() or 1
    x = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    options = sorted({1, cores})
    before = torch.get_num_threads()
    if backend == "openvino":  # threads are fixed when OpenVINO compiles: one column each
        embs = {t: Embedder(device="cpu", backend=backend, threads=t) for t in options}
    else:
        emb = Embedder(device="cpu", backend=backend)
        embs = {t: emb for t in options}
    times = {t: [] for t in options}
    try:
        for t in options:
            torch.set_num_threads(t)
            embs[t].forward(x)
        for _ in range(repeats):
            for t in options:
                torch.set_num_threads(t)
                s = time.perf_counter()
                embs[t].forward(x)
                times[t].append(time.perf_counter() - s)
    finally:
        torch.set_num_threads(before)
    return {t: batch / float(np.median(v)) for t, v in times.items()}


def extractor_rate(ds, out: Path, **kwargs) -> float:
    """colhead.extract's loop rate (read + column + write; model load excluded), img/s."""
    _, res = C.colhead_extract(ds, out, **kwargs)
    return len(ds) / (res.read_s + res.column_s + res.write_s)


# (decode workers, column threads) on the CPU: the default (2 workers, 1 thread: the column
# gets what the workers leave) and its two neighbours.
SPLITS = ((2, 1), (1, 1), (2, 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--images", type=int, default=None, help="camera JPEGs (60; quick 30)")
    args = p.parse_args(argv)
    q = args.quick
    cores = os.cpu_count() or 1
    import torch

    print(f"machine: {C.machine()}")
    peak = matmul_peak(2048 if q else 4096, 3 if q else 5)
    flops, params = column_flops()
    print(
        f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
        f"(bf16/fp32 {peak['bf16'] / peak['fp32']:.2f}x), {torch.get_num_threads()} threads\n"
        f"column efficientnet_lite0: {flops / 1e9:.3f} GFLOP per image, {params / 1e6:.2f} M "
        f"parameters\n"
        f"compute ceiling: fp32 {peak['fp32'] * 1e9 / flops:.0f} img/s, bf16 "
        f"{peak['bf16'] * 1e9 / flops:.0f} img/s"
    )
    print(C.load_average() + " (other jobs share these cores)")
    with tempfile.TemporaryDirectory(prefix="colhead-bench-") as tmp:
        tmp = Path(tmp)
        n = args.images or (30 if q else 60)  # several batches: decode and the column overlap
        C.write_camera_jpegs(tmp / "jpegs", n)
        ds = C.folder_dataset(tmp / "jpegs")
        blobs = [p.read_bytes() for p in ds.paths]
        secs = 2.0 if q else 4.0
        rounds = 1 if q else 3
        # The ceilings and the extractor are measured next to each other, in rounds, medians
        # taken: the load from other jobs on these cores changes from minute to minute.
        m: dict[str, list[float]] = {}
        for _ in range(rounds):
            for b in BACKENDS:
                for t, r in forward_rates(b).items():
                    m.setdefault(f"fwd {b} {t}", []).append(r)
            m.setdefault("draft", []).append(decode_ceiling(blobs, True, cores, secs))
            m.setdefault("full", []).append(decode_ceiling(blobs, False, cores, secs))
            for b in BACKENDS:
                for w, t in SPLITS:
                    rate = extractor_rate(ds, tmp / "x.h5", backend=b, workers=w, threads=t)
                    m.setdefault(f"run {b} {w} {t}", []).append(rate)
        med = {k: statistics.median(v) for k, v in m.items()}
        d_draft, d_full = med["draft"], med["full"]
        print(
            f"{n} camera-like JPEGs (640x480 / 1600x1200 / 4000x3000), median of {rounds} "
            f"rounds:\n  decode+resize ceiling ({cores} processes): {d_draft:.0f} img/s with "
            f"draft, {d_full:.0f} img/s full decode"
        )
        for b in BACKENDS:
            fwd = {t: med[f"fwd {b} {t}"] for t in sorted({1, cores})}
            best = max(fwd.values())
            print(
                f"  column ceiling, {b}: "
                + ", ".join(f"{r:.0f} img/s at {t} thread{'s' * (t > 1)}" for t, r in fwd.items())
                + f" ({best * flops / 1e9:.0f} GFLOP/s = {best * flops / (peak['bf16'] * 1e9):.0%}"
                f" of the bf16 matmul peak); joint 1/(1/decode + 1/column) "
                f"{1 / (1 / d_draft + 1 / best):.0f} img/s"
            )
            for w, t in SPLITS:
                r = med[f"run {b} {w} {t}"]
                print(
                    f"    extractor, {w} decode workers + {t} column thread{'s' * (t > 1)}: "
                    f"{r:.0f} img/s = {r / d_draft:.0%} of the decode ceiling, "
                    f"{r / (1 / (1 / d_draft + 1 / best)):.0%} of the joint ceiling"
                )
    print(C.load_average() + " (at the end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
