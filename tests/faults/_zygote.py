"""A fork server for the fault tests: import colhead (torch, timm, h5py) once, fork per command.

A cold ``colhead extract`` spends ~5 s importing torch and timm before it writes a byte; killing
20 of them would spend the test budget on imports. This server imports everything once and then
forks a fresh child per command, so each child is a real process with its own files, that
``kill -9`` really kills, and that starts writing within milliseconds.

Nothing here runs a torch op or opens an HDF5 file before forking (no threads, no open files
shared with the children).

Protocol: one JSON object per line on stdin, one reply per line on stdout.
    {"op": "run", "argv": [...], "out": PREFIX, "fsize": BYTES|null, "cwd": DIR|null,
     "env": {NAME: VALUE}|null}
    {"op": "py", "code": "...", "out": PREFIX, ...}      -> {"pid": PID}
    {"op": "wait", "pid": PID, "timeout": S}            -> {"rc": RC, "timed_out": bool}
The child's stdout/stderr go to PREFIX.out / PREFIX.err. RC is the exit status, or -SIGNAL.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback


def _preload() -> None:
    import h5py  # noqa: F401
    import numpy  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401
    import tqdm.auto  # noqa: F401
    from PIL import Image

    import colhead.cache  # noqa: F401
    import colhead.cli  # noqa: F401
    import colhead.compare  # noqa: F401
    import colhead.extract  # noqa: F401
    import colhead.heads  # noqa: F401
    from colhead.extract import _columns, _embedder, _extractor  # noqa: F401

    Image.init()  # register every PIL plugin now, not once per child


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the fork server dies, so no hung child outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(req: dict) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if req.get("fsize") is not None:
        # A full disk, as the writer sees it: writes past the limit fail with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
    import torch

    torch.set_num_threads(1)  # the tests share 2 cores; one thread also keeps runs comparable
    os.environ.update(req.get("env") or {})
    if req.get("cwd"):
        os.chdir(req["cwd"])
    for fd, suffix in ((1, ".out"), (2, ".err")):
        f = os.open(req["out"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    rc = 1
    try:
        if req["op"] == "run":
            from colhead.cli import main

            rc = main(req["argv"])
        else:
            exec(compile(req["code"], "<fault-test>", "exec"), {"__name__": "__fault__"})
            rc = 0
    except SystemExit as e:  # argparse: 2
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()  # what an uncaught exception shows a user
        rc = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"rc": os.waitstatus_to_exitcode(status), "timed_out": False}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return {"rc": os.waitstatus_to_exitcode(status), "timed_out": True}
        time.sleep(0.005)


def serve() -> None:
    _preload()
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    children: set[int] = set()
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] in ("run", "py"):
            pid = os.fork()
            if pid == 0:
                _child(req)
            children.add(pid)
            reply = {"pid": pid}
        elif req["op"] == "wait":
            reply = _wait(req["pid"], req["timeout"])
            children.discard(req["pid"])
        else:
            reply = {"error": f"unknown op {req['op']!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    for pid in children:  # the test side went away: leave no process behind
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


if __name__ == "__main__":
    serve()
