"""What checksums and fsync cost the cache writer (issue 13): the same rows written four ways.

  plain      no Fletcher-32, no fsync (colhead before issue 13)
  checksums  Fletcher-32 on every dataset, CRC-32 of the strings; no fsync
  fsync      fsync before every commit (and of the marker); no Fletcher-32
  both       what colhead does now

Only the writing is timed: freezing the finished cache (a one-off copy per completed run, see
bench/cache.py) is switched off for all four. Each round writes every variant once, in the
order a b c d d c b a, a fresh file each time,
on the disk of ``--dir`` (default: a folder beside this script; /tmp may be a RAM disk, where
fsync costs nothing). Prints medians, spread (min-max) and each variant's rate relative to
``plain``. ~20-40 s with the defaults.

    python bench/cache_durability.py [--rounds 3] [--rows 4096] [--dim 1280] [--batch 64]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from colhead.cache import CacheWriter, _freeze
from colhead.cache import _writer as writer_module

IDENT = {
    "column": "bench",
    "weights_sha256": "0" * 64,
    "preprocess": {},
    "precision": "fp32",
    "store_dtype": "float32",
    "dataset": "bench:durability",
}
VARIANTS = ("plain", "checksums", "fsync", "both")


@contextlib.contextmanager
def variant(name: str):
    """Switch Fletcher-32 and/or fsync off for the writes inside (test-style patches)."""
    real_create, real_sync = h5py.Group.create_dataset, writer_module.CacheWriter._sync

    def no_fletcher(self, *args, **kwargs):
        kwargs.pop("fletcher32", None)
        return real_create(self, *args, **kwargs)

    def flush_only(self):
        self._f.flush()

    if name in ("plain", "fsync"):
        h5py.Group.create_dataset = no_fletcher
    if name in ("plain", "checksums"):
        writer_module.CacheWriter._sync = flush_only
    try:
        yield
    finally:
        h5py.Group.create_dataset, writer_module.CacheWriter._sync = real_create, real_sync


def write(path: Path, feats: np.ndarray, ids, hashes, batch: int) -> float:
    """Seconds to write (and finish) the cache, batch by batch as an extraction does."""
    t = time.perf_counter()
    with CacheWriter(path, identity=IDENT, metadata={}, dim=feats.shape[1]) as w:
        labels = w.class_indices(["a", "b"] * (batch // 2))
        for i in range(0, len(feats), batch):
            j = min(len(feats), i + batch)
            w.append(ids[i:j], hashes[i:j], [(0, 0)] * (j - i), labels[: j - i], feats[i:j])
        w.finish()
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((a.rows, a.dim)).astype(np.float32)
    ids = [f"folder/class{i % 7}/image{i:07d}.jpg" for i in range(a.rows)]
    hashes = [hashlib.sha256(x.encode()).hexdigest() for x in ids]
    work = Path(tempfile.mkdtemp(prefix=".bench-durability-", dir=a.dir))
    _freeze.freeze = lambda path: False  # the writer calls it at close: not timed here
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        with variant("both"):  # warm-up: imports, page cache, HDF5's first-use costs
            write(work / "warm.h5", feats[: a.batch * 2], ids, hashes, a.batch)
        for r in range(a.rounds):
            for k, v in enumerate(VARIANTS + VARIANTS[::-1]):  # a b c d d c b a
                path = work / f"r{r}-{k}-{v}.h5"
                with variant(v):
                    times[v].append(write(path, feats, ids, hashes, a.batch))
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = feats.nbytes / 1e6
    base = statistics.median(times["plain"])
    print(
        f"cache writes: {a.rows} rows x {a.dim} float32 ({mb:.1f} MB) in batches of {a.batch}, "
        f"{a.rounds} rounds x 2 (a b c d d c b a), on {a.dir}"
    )
    print(
        f"{'variant':<10} {'median s':>9} {'min-max s':>15} {'rows/s':>9} {'MB/s':>7} {'rate':>6}"
    )
    for v in VARIANTS:
        med = statistics.median(times[v])
        spread = f"{min(times[v]):.3f}-{max(times[v]):.3f}"
        rate = f"x{base / med:.2f}"
        print(f"{v:<10} {med:9.3f} {spread:>15} {a.rows / med:9.0f} {mb / med:7.1f} {rate:>6}")


if __name__ == "__main__":
    main()
