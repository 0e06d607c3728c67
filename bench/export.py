"""Export throughput and memory: ``colhead cache export`` of a 100,000-row cache (issue 11).

Each export runs as its own process (``python -m colhead cache export ...``), so its peak
resident memory (``ru_maxrss`` from ``os.wait4``) is the command's own; next to it, a process
that only imports colhead and pyarrow and opens the cache, and ``np.save`` of the same
float32 features as the speed reference. Rounds are interleaved (a b c, c b a, ...) and the
median is reported with the spread.

Peak memory is what matters for "a million rows never sit twice in memory": the parquet export
converts and writes one row group (65,536 rows) at a time. A frozen (complete) cache's
features are memory-mapped, and the mapped pages the export reads count in its resident memory
although they are the kernel's page cache; a chunked cache's features are read into memory
once. Both are measured.

    python bench/export.py                 # 100,000 x 1280 float32 (512 MB of vectors), ~1 min
    python bench/export.py --rows 20000    # quicker
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

# Each child times its own work (after python has started and imported) and prints it as
# JSON; the parent reads the child's peak resident memory from os.wait4.
EXPORT = (
    "import sys, time, json; import pyarrow.parquet; from colhead.cli import main; "
    "t = time.perf_counter(); "
    "rc = main(['cache', 'export', *sys.argv[1:], '--force']); "
    "print(json.dumps({'s': time.perf_counter() - t})); sys.exit(rc)"
)
OPEN_ONLY = (
    "import sys, time, json; import pyarrow.parquet; from colhead.cli import main; "
    "from colhead.cache import open_cache; t = time.perf_counter(); c = open_cache(sys.argv[1]); "
    "float(c.features[:, 0].sum()); print(json.dumps({'s': time.perf_counter() - t}))"
)
NP_SAVE = (
    "import sys, time, json; import numpy as np; a = np.load(sys.argv[1]); "
    "t = time.perf_counter(); np.save(sys.argv[2], a); "
    "print(json.dumps({'s': time.perf_counter() - t}))"
)


def run(argv: list[str]) -> tuple[float, float, float]:
    """Work seconds (as the child timed them), process seconds, peak RSS (MB) of one child."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.stdout.read(), p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    p.stdout.close()
    p.stderr.close()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err.decode()}")
    return json.loads(out.decode().strip().splitlines()[-1])["s"], wall, ru.ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = p.parse_args(argv)
    n, py = args.rows, sys.executable
    mb = n * B.DIM * 4 / 1e6
    print(f"{n} rows x {B.DIM} float32 ({mb:.0f} MB of vectors); median (fastest-slowest) of "
          f"{args.rounds} interleaved rounds, a warm-up first")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="colhead-export-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        rows = B.fake_rows(n)
        frozen, chunked, npy = tmp / "frozen.h5", tmp / "chunked.h5", tmp / "a.npy"
        B.write_cache(frozen, rows, "float32")
        shutil.copy(frozen, chunked)
        thaw(chunked)  # the same rows, chunked: a cache being written, or made before issue 14
        np.save(npy, rows[0])
        del rows
        cmds = {
            "open only (frozen)": [py, "-c", OPEN_ONLY, str(frozen)],
            "parquet (frozen)": [py, "-c", EXPORT, str(frozen), "--out", str(tmp / "f.parquet")],
            "parquet (chunked)": [py, "-c", EXPORT, str(chunked), "--out", str(tmp / "c.parquet")],
            "npz (frozen)": [py, "-c", EXPORT, str(frozen), "--out", str(tmp / "f.npz")],
            "np.save (reference)": [py, "-c", NP_SAVE, str(npy), str(tmp / "b.npy")],
        }
        times = {k: [] for k in cmds}
        walls = {k: [] for k in cmds}
        rss = {k: [] for k in cmds}
        for argv_ in cmds.values():  # warm-up: page cache, .pyc files
            run(argv_)
        names = list(cmds)
        for r in range(args.rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                s, wall, peak = run(cmds[k])
                times[k].append(s)
                walls[k].append(wall)
                rss[k].append(peak)
        ref = statistics.median(times["np.save (reference)"])
        for k in names:
            ts, med = times[k], statistics.median(times[k])
            print(
                f"  {k:<20} {med:6.2f} s ({min(ts):.2f}-{max(ts):.2f}) {n / med:9.0f} rows/s "
                f"{mb / med:6.0f} MB/s | np.save/this {ref / med:5.2f}x | process "
                f"{statistics.median(walls[k]):5.2f} s, peak RSS "
                f"{statistics.median(rss[k]):5.0f} MB"
            )
        size = {x: os.path.getsize(tmp / x) / 1e6 for x in ("f.parquet", "f.npz", "b.npy")}
        print("  files: " + ", ".join(f"{k} {v:.0f} MB" for k, v in size.items()))
        print(
            "  seconds: the command's work (main(), after importing python, numpy, pyarrow); "
            "process: the whole process; peak RSS: the whole process, mapped cache pages included"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
