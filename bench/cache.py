"""Cache throughput: CacheWriter/open_cache against plain np.save/np.load of the same array.

The writer appends as the extractor does, in batches of 64 rows (ids, hashes, file stats,
labels and 1280-d vectors), committing each batch; the reader is ``open_cache``. The limit is
numpy writing and reading one ``.npy`` of the same features. Writes are interleaved (a b a b);
reads are warmed up and interleaved a b b a, and the median of the rounds is reported with the
spread (fastest-slowest), since other processes share the cores and the disk.

Reads are measured on the same complete cache in each layout a reader meets (see
cache/_freeze.py): frozen (contiguous features, memory-mapped: what a finished run leaves),
chunked (a cache being written, or one made before issue 14) and chunked with Fletcher-32.
A memory map reads its pages when they are first touched, so "frozen + sum" also times one
pass over the vectors after each read; a frozen cache's ids and hashes are read when first
used, so "frozen + ids" times them too.

Targets: writes >= 20x the extraction rate, so the cache is never the bottleneck (issue 4);
reads of complete float32 and float16 caches >= 1.0x np.load (issue 14).

    python bench/cache.py                  # 20,000 rows, ~1 minute
    python bench/cache.py --quick          # 5,000 rows
    python bench/cache.py --extract-rate 140   # compare with a measured rate (img/s)
    python bench/cache.py --reads          # only the reads (no writes timed, no extraction)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
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


def read_cache(path: Path, dtype, mmap: bool = True) -> np.ndarray:
    from colhead.cache import open_cache

    return open_cache(path, dtype=dtype, mmap=mmap).features


def open_cache_with_ids(path: Path):
    from colhead.cache import open_cache

    c = open_cache(path, dtype=None)
    return c.features, c.ids, c.hashes


def layouts(frozen: Path) -> dict[str, Path]:
    """The same complete cache in each layout a reader meets: frozen (contiguous, what a
    finished run leaves), chunked with Fletcher-32 per chunk (a cache being written, issue 13)
    and plain chunked (a cache made before issues 13 and 14)."""
    import shutil

    import h5py

    from colhead.cache._freeze import thaw

    out = {"frozen": frozen}
    for name, fletcher32 in (("chunked+fletcher32", True), ("chunked (old caches)", False)):
        path = frozen.with_name(f"{frozen.stem}-{'f32' if fletcher32 else 'plain'}.h5")
        shutil.copy(frozen, path)
        thaw(path)  # chunked as the writer lays it out now
        with h5py.File(path, "r+", locking=False) as f:
            ds = f["features"]
            if bool(ds.fletcher32) != fletcher32:  # the other kind: rewrite /features so
                data, rows = ds[:], ds.chunks
                del f["features"]
                f.create_dataset(
                    "features", data=data, chunks=rows, maxshape=(None, DIM), fletcher32=fletcher32
                )
        out[name] = path
    return out


def abba(a, b, rounds: int) -> tuple[list[float], list[float], object, object]:
    """Time a and b, warmed up, in rounds a b b a a b b a ...: the order never favours one."""
    ra, rb = a(), b()  # warm-up: page cache, imports, first-call costs
    ta, tb = [], []
    for r in range(rounds):
        for fn, ts in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return ta, tb, ra, rb


def spread(ts: list[float], mb: float) -> str:
    med = statistics.median(ts)
    return f"{mb / med:6.0f} MB/s ({min(ts) * 1e3:5.1f}-{max(ts) * 1e3:5.1f} ms)"


def compare_reads(h5: Path, npy: Path, mb: float, rounds: int) -> None:
    """open_cache of each layout next to np.load; for the frozen layout also with its ids read
    and with one pass over the data (a memory map reads its pages when first touched, and a
    frozen cache's ids when first used, so "open" alone would flatter it)."""

    def row(label, ta, tb, note="target >= 1.0x"):
        ratio = statistics.median(tb) / statistics.median(ta)
        print(
            f"  read {label:<21} open_cache {spread(ta, mb)} | np.load {spread(tb, mb)} | "
            f"{ratio:5.2f}x ({note})"
        )

    for name, path in layouts(h5).items():
        ta, tb, ra, rb = abba(lambda p=path: read_cache(p, None), lambda: np.load(npy), rounds)
        assert np.array_equal(ra, rb)
        row(name, ta, tb)
        if name == "frozen":
            ta, tb, _, _ = abba(lambda p=path: open_cache_with_ids(p), lambda: np.load(npy), rounds)
            row("frozen + ids", ta, tb, "its ids and hashes read too")
            ta, tb, _, _ = abba(
                lambda p=path: float(read_cache(p, None).sum(dtype=np.float64)),
                lambda: float(np.load(npy).sum(dtype=np.float64)),
                rounds,
            )
            row("frozen + sum", ta, tb, "then every page touched once")


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
    p.add_argument("--repeats", type=int, default=3, help="rounds of the writes")
    p.add_argument("--rounds", type=int, default=6, help="rounds of the reads (a b b a ...)")
    p.add_argument("--reads", action="store_true", help="time the reads only")
    p.add_argument("--extract-rate", type=float, default=None, help="img/s to compare with")
    p.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = p.parse_args(argv)
    n = args.rows or (5000 if args.quick else 20000)
    rows = fake_rows(n)

    print(f"machine: {C.machine()}")
    print(
        f"{n} rows of {DIM} dims, appended in batches of {BATCH}; writes: median of "
        f"{args.repeats}; reads: median (fastest-slowest) of {args.rounds}, warmed up, a b b a"
    )
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
                1 if args.reads else args.repeats,
            )
            mb = arr.nbytes / 1e6
            if args.reads:
                print(f"{dt}: features {mb:.1f} MB")
                compare_reads(h5, npy, mb, args.rounds)
                continue
            wc, ws = w["cache"]["median"], w["np.save"]["median"]
            results[dt] = n / wc
            print(
                f"{dt}: file {os.path.getsize(h5) / 1e6:.1f} MB (npy "
                f"{os.path.getsize(npy) / 1e6:.1f} MB, features {mb:.1f} MB)\n"
                f"  write  cache {n / wc:9.0f} rows/s {mb / wc:7.0f} MB/s | np.save {n / ws:9.0f} "
                f"rows/s {mb / ws:7.0f} MB/s | cache/np.save {ws / wc:.2f}x"
            )
            compare_reads(h5, npy, mb, args.rounds)
            # what a head actually reads: float32, whatever the file stores
            if dt == "float16":
                t = time.perf_counter()
                read_cache(h5, np.float32)
                print(
                    f"  read as float32 (what heads use) {n / (time.perf_counter() - t):.0f} rows/s"
                )
    if args.reads:
        return 0
    rate = args.extract_rate or measured_extract_rate()
    src = "given" if args.extract_rate else "measured now, 128 elpv images, model load excluded"
    print(f"extraction rate {rate:.1f} img/s ({src})")
    for dt, wr in results.items():
        print(f"  cache write ({dt}) / extraction rate = {wr / rate:.0f}x (target >= 20x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
