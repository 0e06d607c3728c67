"""Client side of the fork server (``_zygote.py``), and helpers shared by the fault tests."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ZYGOTE = Path(__file__).with_name("_zygote.py")

# Figures the closing note quotes; conftest prints them at the end of the run.
FIGURES: Counter = Counter()


@dataclass
class Result:
    argv: list[str] | None
    rc: int
    out: str
    err: str
    seconds: float
    timed_out: bool

    def describe(self) -> str:
        return (
            f"{self.argv}: rc {self.rc}{' (timed out)' if self.timed_out else ''} after "
            f"{self.seconds:.1f} s\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"
        )

    def assert_no_crash(self) -> None:
        """No hang, no traceback, no signal: exit 0, or 1 with one ``error: ...`` message."""
        assert not self.timed_out, "hung: " + self.describe()
        assert "Traceback" not in self.err, "traceback: " + self.describe()
        assert self.rc in (0, 1), "crashed: " + self.describe()
        if self.rc == 1 and self.argv and self.argv[:2] != ["cache", "verify"]:
            assert self.err.startswith("error: "), "no clear message: " + self.describe()


def _text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:  # killed before it opened its output
        return ""


class Child:
    def __init__(self, zygote: Zygote, pid: int, argv, prefix: str):
        self.zygote, self.pid, self.argv, self.prefix = zygote, pid, argv, prefix
        self.t0 = time.monotonic()
        self.result: Result | None = None

    def kill(self) -> None:
        if self.result is None:
            os.kill(self.pid, signal.SIGKILL)  # unreaped until wait(): the pid is still ours

    def wait(self, timeout: float = 120.0) -> Result:
        if self.result is None:
            r = self.zygote._call({"op": "wait", "pid": self.pid, "timeout": timeout}, timeout + 30)
            self.result = Result(
                self.argv,
                r["rc"],
                _text(self.prefix + ".out"),
                _text(self.prefix + ".err"),
                time.monotonic() - self.t0,
                r["timed_out"],
            )
        return self.result


class Zygote:
    """A process that has imported colhead once and forks a fresh child per command."""

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._n = itertools.count()
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.logdir / "zygote.err", "wb"),
            bufsize=0,
        )
        self._buf = b""
        self._read(120)

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"the fork server did not answer in {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                err = (self.logdir / "zygote.err").read_text(errors="replace")
                raise RuntimeError(f"the fork server died:\n{err[-3000:]}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _call(self, req: dict, timeout: float = 30) -> dict:
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        return self._read(timeout)

    def start(self, argv=None, *, code=None, fsize=None, cwd=None, env=None) -> Child:
        """Start ``colhead ARGV`` (or Python ``code``) in a fresh child; returns at once."""
        prefix = str(self.logdir / f"c{next(self._n)}")
        req = {"op": "run" if code is None else "py", "argv": argv, "code": code}
        req.update(out=prefix, fsize=fsize, cwd=str(cwd) if cwd else None, env=env or self.env)
        return Child(self, self._call(req)["pid"], argv, prefix)

    def run(self, argv=None, *, code=None, fsize=None, cwd=None, timeout=120.0) -> Result:
        return self.start(argv, code=code, fsize=fsize, cwd=cwd).wait(timeout)

    env: dict = {}  # set for every child (e.g. what a Ray cluster expects of its clients)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def extract_argv(out, data="digits", *, batch_size=8, workers=0, extra=()) -> list[str]:
    """The fast extraction every fault test runs: tiny column, fp32, decoding in-process."""
    return [
        "extract",
        "--column",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--precision",
        "fp32",
        "--workers",
        str(workers),
        "--no-progress",
        *extra,
    ]


def same_content(a, b) -> list[str]:
    """Differences between two FeatureCaches' rows (ids, order, vectors, labels, skipped)."""
    import numpy as np

    diffs = []
    if list(a.ids) != list(b.ids):
        diffs.append(f"ids differ: {len(a.ids)} vs {len(b.ids)} rows")
    elif not np.array_equal(a.features, b.features):
        diffs.append("vectors differ")
    if list(a.ids) == list(b.ids) and not np.array_equal(
        [a.classes[i] if i >= 0 else None for i in a.labels],
        [b.classes[i] if i >= 0 else None for i in b.labels],
    ):
        diffs.append("labels differ")
    if sorted(a.skipped) != sorted(b.skipped):
        diffs.append(f"skipped differ: {sorted(a.skipped)} vs {sorted(b.skipped)}")
    return diffs
