"""Local engine against the Ray engine on this machine: images/s and the overhead ratio.

Same column, same images, same settings, each run into a fresh cache, interleaved (local, ray,
local, ray, ...) and reported as medians, because other processes share the cores. Ray is
started once (``ray.init``, timed on its own) and then reused, as a cluster would be; each Ray
run still pays its per-run start-up (a probe task, the column actors' import and model build).

Two workloads:
  * efficientnet_lite0 on 300 elpv images (300x300 PNG): the column dominates, as in real use;
  * tiny on scikit-learn digits (1,797 8x8 images): almost no work, so it shows Ray's overhead.

On one 2-core machine Ray can only lose: it splits the same two cores between decode tasks
and one column actor, and adds its own processes. The ratio says what scaling out costs per
node; the gain comes from the number of nodes and GPUs.

    python bench/ray.py            # ~2-3 minutes on 2 cores
    python bench/ray.py --quick    # one round
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# This file is named ray.py: take its folder off sys.path so `import ray` finds Ray itself,
# and load the shared helpers by path instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("_common", _HERE / "_common.py")
C = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(C)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round instead of two")
    ap.add_argument("--images", type=int, default=300, help="elpv images for the lite0 workload")
    args = ap.parse_args()
    rounds = 1 if args.quick else 2

    import ray

    from colhead.extract import parse_dataset

    print(f"machine: {C.machine()}, ray {ray.__version__}")
    from colhead.extract._ray import _connect

    t = time.perf_counter()
    _connect(None)  # colhead's own private Ray: this machine's CPUs, on 127.0.0.1 only
    init_s = time.perf_counter() - t
    print(f"ray.init (a local Ray with {os.cpu_count()} CPUs, loopback): {init_s:.1f} s, once\n")

    tmp = Path(tempfile.mkdtemp(prefix="colhead-bench-ray-"))
    workloads = [
        ("efficientnet_lite0", C.elpv_subset("train", args.images), 32),
        ("tiny", parse_dataset("digits"), 64),
    ]
    try:
        rows = []
        for column, ds, bs in workloads:
            loc, ray_, r = _compare(column, ds, bs, tmp, rounds)
            rows.append((column, len(ds), loc, ray_))
            print(
                f"{column:<20} {len(ds):>5} images: local {loc:7.1f} img/s, ray {ray_:7.1f} img/s "
                f"({r.device}, {r.precision}); local/ray = {loc / ray_:.2f}x"
            )
        print("\nsummary (medians of", rounds, "round(s); end to end, model build included)")
        print(f"{'column':<20}{'images':>7}{'local img/s':>13}{'ray img/s':>11}{'local/ray':>11}")
        for column, n, loc, ray_ in rows:
            print(f"{column:<20}{n:>7}{loc:>13.1f}{ray_:>11.1f}{loc / ray_:>10.2f}x")
        print(f"plus ray.init once: {init_s:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()


def _compare(column, ds, batch_size, tmp: Path, rounds: int):
    """Median img/s of the local and the Ray engine, interleaved; and the last Ray result."""
    import colhead
    from colhead.extract._ray import extract_ray

    count = {"n": 0}

    def fresh(tag):
        count["n"] += 1
        return tmp / f"{column}-{tag}-{count['n']}.h5"

    kw = dict(batch_size=batch_size, precision="auto", progress=False)
    res = C.interleaved(
        {
            "local": lambda: colhead.extract(column, ds, out=fresh("local"), **kw),
            "ray": lambda: extract_ray(column, ds, out=fresh("ray"), **kw),
        },
        rounds,
    )
    n = len(ds)
    return n / res["local"]["median"], n / res["ray"]["median"], res["ray"]["result"]


if __name__ == "__main__":
    main()
