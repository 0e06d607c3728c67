"""Export throughput and memory: ``colhead cache export`` of a 100,000-row cache (issue 11).

Each export runs as its own process (``colhead.cli.main(["cache", "export", ...])``), so its
peak resident memory (VmHWM) is the command's own; next to it, a process that only opens the
cache and touches every page of its vectors, and ``np.load`` + ``np.save`` of the same
float32 features as the speed reference (a copy of the vectors in the fastest format).
Rounds are interleaved (a b c, c b a, ...) and the median is reported with the spread.

Peak memory is what matters for "a million rows never sit twice in memory": the parquet export
converts and writes one row group (~64 MB of vectors: 13,107 rows) at a time. A frozen
(complete) cache's features are memory-mapped, and the mapped pages the export reads count in
its resident memory although they are the kernel's page cache; a chunked cache's features are
read into memory once. Both are measured.

    python bench/export.py                 # 100,000 x 1280 float32 (512 MB of vectors), ~1 min
    python bench/export.py --rows 20000    # quicker
    python bench/export.py --chunked       # also from a chunked cache (read into memory)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache as B  # noqa: E402  (bench/cache.py: fake rows, CacheWriter like the extractor)
from colhead.cache._freeze import thaw  # noqa: E402

# Each child times its own work (after python has started and imported) and reports its
# resident memory from /proc/self/status (Linux): VmRSS before the work and VmHWM, the peak,
# after it. (ru_maxrss from wait4 would not do: Linux keeps the parent's high-water mark
# across fork and exec, and this parent has held the vectors.)
CHILD = """
import sys, time, json
def mem(key):
    with open('/proc/self/status') as fh:
        return next(int(x.split()[1]) / 1024 for x in fh if x.startswith(key))
{imports}
before = mem('VmRSS:')
t = time.perf_counter()
{work}
print(json.dumps({{'s': time.perf_counter() - t, 'peak': mem('VmHWM:'), 'before': before}}))
"""
EXPORT = CHILD.format(
    imports="import pyarrow.parquet, colhead.cache, colhead.extract; from colhead.cli import main",
    work="assert main(['cache', 'export', *sys.argv[1:], '--force']) == 0",
)
OPEN_ONLY = CHILD.format(
    imports="import pyarrow.parquet; from colhead.cli import main; from colhead.cache import "
    "open_cache",
    work="float(open_cache(sys.argv[1]).features[:, 0].sum())  # touches every page",
)
NP_SAVE = CHILD.format(
    imports="import numpy as np",
    work="np.save(sys.argv[2], np.load(sys.argv[1]))",
)


def run(argv: list[str]) -> dict:
    """What the child reported (s, peak, before), and its whole wall time as "wall"."""
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{r.stderr}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - t}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--chunked", action="store_true", help="also export a chunked copy")
    p.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = p.parse_args(argv)
    n, py = args.rows, sys.executable
    mb = n * B.DIM * 4 / 1e6
    print(f"{n} rows x {B.DIM} float32 ({mb:.0f} MB of vectors); median (fastest-slowest) of "
          f"{args.rounds} interleaved rounds after a warm-up")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="colhead-export-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        rows = B.fake_rows(n)
        frozen, chunked, npy = tmp / "frozen.h5", tmp / "chunked.h5", tmp / "a.npy"
        B.write_cache(frozen, rows, "float32")
        if args.chunked:  # the same rows, chunked: a cache being written, or an old one
            shutil.copy(frozen, chunked)
            thaw(chunked)
        np.save(npy, rows[0])
        del rows
        cmds = {
            "open only (frozen)": [py, "-c", OPEN_ONLY, str(frozen)],
            "parquet (frozen)": [py, "-c", EXPORT, str(frozen), "--out", str(tmp / "f.parquet")],
            "parquet (chunked)": [py, "-c", EXPORT, str(chunked), "--out", str(tmp / "c.parquet")],
            "npz (frozen)": [py, "-c", EXPORT, str(frozen), "--out", str(tmp / "f.npz")],
            "np.load+save (ref.)": [py, "-c", NP_SAVE, str(npy), str(tmp / "b.npy")],
        }
        if not args.chunked:
            del cmds["parquet (chunked)"]
        got = {k: [] for k in cmds}
        for k in ("open only (frozen)", "np.load+save (ref.)"):  # warm-up: page cache, .pyc
            run(cmds[k])
        names = list(cmds)
        for r in range(args.rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                got[k].append(run(cmds[k]))
        ref = statistics.median(x["s"] for x in got["np.load+save (ref.)"])
        for k in names:
            ts = [x["s"] for x in got[k]]
            med = statistics.median(ts)
            peak = statistics.median(x["peak"] for x in got[k])
            added = statistics.median(x["peak"] - x["before"] for x in got[k])
            print(
                f"  {k:<20} {med:6.2f} s ({min(ts):.2f}-{max(ts):.2f}) {n / med:8.0f} rows/s "
                f"{mb / med:5.0f} MB/s | ref./this {ref / med:5.2f}x | process "
                f"{statistics.median(x['wall'] for x in got[k]):5.2f} s | peak RSS {peak:5.0f} MB"
                f" (+{added:.0f} MB over its start)"
            )
        size = {x: os.path.getsize(tmp / x) / 1e6 for x in ("f.parquet", "f.npz", "b.npy")}
        print("  files: " + ", ".join(f"{k} {v:.0f} MB" for k, v in size.items()))
        print(
            "  seconds: the command's work (main(), after importing python, numpy, pyarrow); "
            "process: the whole process; peak RSS (VmHWM) counts mapped cache pages read"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
