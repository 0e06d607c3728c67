"""Cache throughput: CacheWriter/open_cache against plain np.save/np.load of the same array.

The writer appends as the extractor does, in batches of 64 rows (ids, hashes, file stats,
labels and 1280-d vectors), committing each batch; the reader is ``open_cache``. The limit is
numpy writing and reading one ``.npy`` of the same features. Every pair is interleaved (a b a b)
and the median is reported, since other processes share the cores and the disk.

Targets (issue 4): writes >= 20x the extraction rate, so the cache is never the bottleneck;
reads >= 0.5x np.load.

    python bench/cache.py                  # 20,000 rows, ~1 minute
    python bench/cache.py --quick          # 5,000 rows
    python bench/cache.py --extract-rate 140   # compare with a measured rate (img/s)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DIM, BATCH = 1280, 64


def fake_rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, DIM), dtype=np.float32)
    ids = [f"images/cell{i:06d}.png" for i in range(n)]
    hashes = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    stats = np.stack([rng.integers(1e4, 1e6, n), rng.integers(1e18, 2e18, n)], 1)
    labels = rng.integers(0, 4, n)
    return feats, ids, hashes, stats, labels


def write_cache(path: Path, rows, store_dtype: str) -> None:
    from colhead.cache import CacheWriter

    feats, ids, hashes, stats, labels = rows
    if path.exists():
        path.unlink()
    identity = {
        "column": "bench",
        "weights_sha256": "0" * 64,
        "preprocess": {},
        "precision": "fp32",
        "store_dtype": store_dtype,
        "dataset": "bench",
    }
    with CacheWriter(path, identity=identity, metadata={}, dim=DIM, store_dtype=store_dtype) as w:
        w.class_indices(["a", "b", "c", "d"])
        for s in range(0, len(ids), BATCH):
            e = s + BATCH
            w.append(ids[s:e], hashes[s:e], stats[s:e], labels[s:e], feats[s:e])
        w.finish()


def read_cache(path: Path, dtype) -> np.ndarray:
    from colhead.cache import open_cache

    return open_cache(path, dtype=dtype).features


def measured_extract_rate(n: int = 128) -> float:
    """colhead's default extraction rate (img/s) on ``n`` elpv images, model load excluded."""
    with tempfile.TemporaryDirectory() as tmp:
        ds = C.elpv_subset("train", n)
        # the first run pays for imports and the model; the second is the rate
        C.colhead_extract(ds, Path(tmp) / "warm.h5")
        t = time.perf_counter()
        _, res = C.colhead_extract(ds, Path(tmp) / "rate.h5")
        return n / (res.read_s + res.column_s + res.write_s or time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int, default=None, help="rows (default 20000, quick 5000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--extract-rate", type=float, default=None, help="img/s to compare with")
    p.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = p.parse_args(argv)
    n = args.rows or (5000 if args.quick else 20000)
    rows = fake_rows(n)

    print(f"machine: {C.machine()}")
    print(f"{n} rows of {DIM} dims, appended in batches of {BATCH}; median of {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="colhead-bench-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        results = {}
        for dt in ("float32", "float16"):
            arr = rows[0].astype(dt)
            h5, npy = tmp / f"c-{dt}.h5", tmp / f"a-{dt}.npy"
            w = C.interleaved(
                {
                    "cache": lambda dt=dt, h5=h5: write_cache(h5, rows, dt),
                    "np.save": lambda arr=arr, npy=npy: np.save(npy, arr),
                },
                args.repeats,
            )
            r = C.interleaved(
                {
                    "cache": lambda dt=dt, h5=h5: read_cache(h5, None),
                    "np.load": lambda npy=npy: np.load(npy),
                },
                args.repeats,
            )
            assert np.array_equal(r["cache"]["result"], r["np.load"]["result"])
            mb = arr.nbytes / 1e6
            wc, ws = w["cache"]["median"], w["np.save"]["median"]
            rc, rl = r["cache"]["median"], r["np.load"]["median"]
            results[dt] = n / wc
            print(
                f"{dt}: file {os.path.getsize(h5) / 1e6:.1f} MB (npy "
                f"{os.path.getsize(npy) / 1e6:.1f} MB, features {mb:.1f} MB)\n"
                f"  write  cache {n / wc:9.0f} rows/s {mb / wc:7.0f} MB/s | np.save {n / ws:9.0f} "
                f"rows/s {mb / ws:7.0f} MB/s | cache/np.save {ws / wc:.2f}x\n"
                f"  read   cache {n / rc:9.0f} rows/s {mb / rc:7.0f} MB/s | np.load {n / rl:9.0f} "
                f"rows/s {mb / rl:7.0f} MB/s | cache/np.load {rl / rc:.2f}x (target >= 0.5x)"
            )
            # what a head actually reads: float32, whatever the file stores
            if dt == "float16":
                t = time.perf_counter()
                read_cache(h5, np.float32)
                print(
                    f"  read as float32 (what heads use) {n / (time.perf_counter() - t):.0f} rows/s"
                )
    rate = args.extract_rate or measured_extract_rate()
    src = "given" if args.extract_rate else "measured now, 128 elpv images, model load excluded"
    print(f"extraction rate {rate:.1f} img/s ({src})")
    for dt, wr in results.items():
        print(f"  cache write ({dt}) / extraction rate = {wr / rate:.0f}x (target >= 20x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
