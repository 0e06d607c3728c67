"""Run the fault-injection suite (tests/faults) at its full counts and print its figures.

    python bench/faults.py              # kill -9 at 20+ moments per engine, 60+ corrupt files, ...
    python bench/faults.py --count 50   # more of each
    python bench/faults.py -- -x        # anything after -- goes to pytest

The default ``pytest`` run tries a reduced count (5 kill points, 2 with Ray, 20 corrupt files)
and skips the ``slow`` tests; this runs them all, with ``--fault-count``, and ends with the
table of figures the suite collects (kill points survived, corrupt files tried, bad inputs
tried, ...). Ray's kills are skipped when Ray is not installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20, help="kill points / corrupt files per test")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args(argv)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests" / "faults"),
        "-m",
        "slow or not slow",
        "--fault-count",
        str(args.count),
        "-q",
        "-p",
        "no:cacheprovider",
        *args.pytest_args,
    ]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    print(f"\nfault suite {'passed' if rc == 0 else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
