"""Where the extractor stands against this machine's ceilings: compute and decode.

- compute ceiling: torch.matmul of large square matrices at fp32 and bf16 (GFLOP/s), divided by
  the column's FLOPs per image (torch.utils.flop_counter; 1 multiply-add = 2 FLOPs);
- decode ceiling: images/s of ``colhead.extract._images.decode`` alone (decode + resize + crop),
  with and without JPEG draft mode, one process per core, for large JPEGs and elpv PNGs;
- achieved: colhead's extractor (default settings, model load excluded) and the column's
  forward alone, as fractions of those ceilings. On a CPU decode and compute share the cores, so
  the joint ceiling is 1 / (1/decode + 1/compute), per image.

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


def forward_rates(batch: int = 64, repeats: int = 5) -> dict[int, float]:
    """The column's forward alone through colhead's Embedder (default precision, its CPU slices
    of 8), at 1 thread and at all cores, interleaved: {threads: img/s}."""
    import torch

    from colhead.extract._embedder import Embedder

    emb = Embedder()
    x = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    options = sorted({1, before})
    times = {t: [] for t in options}
    try:
        for t in options:
            torch.set_num_threads(t)
            emb.forward(x)
        for _ in range(repeats):
            for t in options:
                torch.set_num_threads(t)
                s = time.perf_counter()
                emb.forward(x)
                times[t].append(time.perf_counter() - s)
    finally:
        torch.set_num_threads(before)
    return {t: batch / float(np.median(v)) for t, v in times.items()}


def extractor_rate(ds, out: Path) -> float:
    """colhead.extract's loop rate (read + column + write; model load excluded), img/s."""
    _, res = C.colhead_extract(ds, out)
    return len(ds) / (res.read_s + res.column_s + res.write_s)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
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
    with tempfile.TemporaryDirectory(prefix="colhead-bench-") as tmp:
        tmp = Path(tmp)
        n_jpeg = 24 if q else 128  # several batches, so decode and the column overlap
        C.write_jpegs(tmp / "jpegs", n_jpeg)
        big = C.folder_dataset(tmp / "jpegs")
        small = C.elpv_subset("train", 100 if q else 300)
        sets = {
            "large JPEG": (big, [p.read_bytes() for p in big.paths]),
            "elpv PNG": (small, [p.read_bytes() for p in small.paths]),
        }
        secs = 2.0 if q else 4.0
        comp = peak["bf16"] * 1e9 / flops
        # The ceilings and the extractor are measured next to each other, in rounds, medians
        # taken: the load from other jobs on these cores changes from minute to minute.
        rounds = 1 if q else 3
        for name, (ds, blobs) in sets.items():
            m = {"fwd": [], "draft": [], "full": [], "rate": []}
            for _ in range(rounds):
                m["fwd"].append(max(forward_rates(repeats=3).values()))
                m["draft"].append(decode_ceiling(blobs, True, cores, secs))
                if name == "large JPEG":
                    m["full"].append(decode_ceiling(blobs, False, cores, secs))
                m["rate"].append(extractor_rate(ds, tmp / "x.h5"))
            fwd, d_draft, rate = (statistics.median(m[k]) for k in ("fwd", "draft", "rate"))
            d_full = statistics.median(m["full"]) if m["full"] else d_draft
            joint = 1 / (1 / d_draft + 1 / comp)
            joint_fwd = 1 / (1 / d_draft + 1 / fwd)  # with the forward rate actually reached
            print(
                f"{name} (median of {rounds} rounds):\n"
                f"  column forward alone (Embedder, best of 1 and {cores} threads) {fwd:.0f} img/s"
                f" = {fwd * flops / 1e9:.0f} GFLOP/s = {fwd * flops / (peak['bf16'] * 1e9):.1%} "
                f"of the bf16 matmul peak\n"
                f"  decode+resize ceiling ({cores} processes) {d_draft:.0f} img/s with draft, "
                f"{d_full:.0f} img/s full decode ({d_draft / d_full:.1f}x)\n"
                f"  joint ceiling (decode + bf16 peak) {joint:.0f} img/s; decode + measured "
                f"forward {joint_fwd:.0f} img/s\n"
                f"  extractor achieved {rate:.0f} img/s (rounds: "
                f"{' '.join(f'{r:.0f}' for r in m['rate'])}) = {rate / comp:.1%} of the compute "
                f"ceiling, {rate / d_draft:.0%} of the decode ceiling, {rate / joint_fwd:.0%} "
                f"of decode + measured forward"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
