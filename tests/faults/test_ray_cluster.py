"""A real two-node Ray cluster on this machine loses its worker node mid-extraction (issue 13).

Two ``ray start`` nodes, each a raylet with its own CPU, object store and temp folder, every
process on 127.0.0.1; ``colhead extract --engine ray --ray-address 127.0.0.1:PORT`` runs over
digits:test (450 images); once the worker node is running part of the pipeline and some batches
are committed, every process of that node is killed (SIGKILL: the machine is gone). The run
must finish (Ray retries the lost tasks and restarts the column actor on the head) or, if it
stalls or fails, a plain rerun of the same command must resume; either way the cache ends with
the uninterrupted run's ids and vectors. docs/scaling.md ("A cluster on one machine") says how
to start such a cluster by hand; this file is that recipe, executed.

Why the recipe looks as it does (Ray 2.60, found here):
* Ray replaces 127.0.0.1 by the machine's interface address for ``--node-ip-address`` and
  ``--address`` (``services.resolve_ip_for_localhost``), so a "loopback" node listens on the
  network and a joining node dials the interface, where a loopback head is not listening. The
  switch that stops it (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) also makes ``ray start
  --address`` refuse to start ("Multi-node Ray clusters are not supported on Windows and OSX").
  So both nodes start through Ray's own CLI with that one function made the identity (LAUNCH).
  colhead's driver needs nothing: it keeps loopback addresses itself (extract/_ray.py).
* Ray >= 2.59 turns token authentication on for a new local head (and ``ray start --head``
  whenever ``~/.ray/auth_token`` exists), but a joining node or driver given an explicit
  address never turns it on by itself and is refused with ``InvalidAuthToken``. So every
  process gets ``RAY_AUTH_MODE=token`` and the same token file (``RAY_AUTH_TOKEN_PATH``).
* ``ray stop`` would stop every Ray of this machine (other people's too): the nodes are
  stopped by their process ids instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("colhead.extract._ray")

from _ray_local import group, not_on_loopback, title  # noqa: E402

import colhead  # noqa: E402
from colhead.cache import open_cache, verify_cache  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# Ray's CLI, keeping 127.0.0.1 as given (see the module's docstring)
LAUNCH = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
ROWS, BATCH = 450, 8
KILL_AFTER = 24  # committed rows before the worker node dies: a few batches, far from the end
STALL_S = 45  # no new row for this long after the kill: the run is stuck, rerun it


class LocalCluster:
    """``ray start`` nodes on 127.0.0.1 sharing one token, stopped by process id."""

    def __init__(self):
        # short: Ray's socket paths live under it and must fit in 107 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="chray-", dir="/tmp"))
        token = self.dir / "token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(token),
            RAY_USAGE_STATS_ENABLED="0",
            # notice a dead node in ~3 s instead of ~15 s
            RAY_health_check_period_ms="1000",
            RAY_health_check_failure_threshold="3",
        )
        self.groups: dict[str, int] = {}
        self.address = ""

    def start(self, name: str, *args: str) -> None:
        cmd = [sys.executable, "-c", LAUNCH, "start", "--node-ip-address=127.0.0.1",
               "--disable-usage-stats", "--object-store-memory=80000000",
               f"--temp-dir={self.dir / name}", *args]  # fmt: skip
        p = subprocess.Popen(cmd, env=self.env, start_new_session=True, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        self.groups[name] = p.pid  # its own session: the node's processes keep this group
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out = p.communicate()[0]
        assert p.returncode == 0, f"ray start {name} failed:\n{out[-3000:]}"

    def start_head(self, cpus: int) -> str:
        self.start("head", "--head", "--port=0", "--include-dashboard=false", f"--num-cpus={cpus}")
        self.address = (self.dir / "head" / "ray_current_cluster").read_text().strip()
        assert self.address.startswith("127.0.0.1:"), self.address
        return self.address

    def start_worker(self, cpus: int) -> None:
        self.start("worker", f"--address={self.address}", f"--num-cpus={cpus}",
                   '--resources={"side": 1}')  # fmt: skip

    def pids(self, name: str) -> set[int]:
        return group(self.groups[name]) if name in self.groups else set()

    def kill(self, name: str) -> set[int]:
        pids = self.pids(name)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def close(self) -> None:
        for name in list(self.groups):
            self.kill(name)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster():
    c = LocalCluster()
    try:
        yield c
    finally:
        c.close()


def _by_id(c):
    order = np.argsort(np.asarray(c.ids, dtype=str), kind="stable")
    return np.asarray(c.ids)[order], c.features[order], c.labels[order]


def _rows(path) -> int:
    try:
        return len(open_cache(path))  # a reader: safe while the writer appends
    except Exception:
        return 0


def test_killing_the_worker_node_mid_extraction_keeps_the_result(cluster, tmp_path):
    ref = colhead.extract(column="tiny", data="digits", split="test", out=tmp_path / "ref.h5",
                          batch_size=BATCH, workers=0, precision="fp32",
                          progress=False)  # fmt: skip
    assert ref.rows == ROWS

    # 1 CPU each: colhead reserves one CPU for decoding and one for the column actor, so the
    # worker node always runs one of the two stages.
    address = cluster.start_head(cpus=1)
    cluster.start_worker(cpus=1)

    out = tmp_path / "ray.h5"
    cmd = [sys.executable, "-m", "colhead", "extract", "--engine", "ray", "--ray-address",
           address, "--column", "tiny", "--data", "digits", "--split", "test", "--out", str(out),
           "--batch-size", str(BATCH), "--precision", "fp32", "--no-progress"]  # fmt: skip
    log = open(tmp_path / "driver.log", "w+")
    driver = subprocess.Popen(cmd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # wait until the worker node runs a stage of the pipeline and a few batches are in
        deadline = time.time() + 240
        busy: list[str] = []
        while time.time() < deadline and driver.poll() is None:
            busy = [t for p in cluster.pids("worker") if "MapBatches" in (t := title(p))]
            if busy and _rows(out) >= KILL_AFTER:
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the run ended before the worker node was killed"
        assert busy, "the worker node never ran a stage of the pipeline"
        # every Ray process of both nodes, and the driver, listens on 127.0.0.1 only
        everyone = cluster.pids("head") | cluster.pids("worker") | {driver.pid}
        assert not_on_loopback(everyone) == []

        killed = cluster.kill("worker")
        at_kill = _rows(out)
        assert at_kill < ROWS, "no work was left when the worker node died"

        # the run goes on without the worker node, or stalls / fails: then rerun it
        last, last_t = at_kill, time.time()
        while driver.poll() is None and time.time() - last_t < STALL_S:
            if (n := _rows(out)) != last:
                last, last_t = n, time.time()
            time.sleep(0.5)
        finished = driver.poll() == 0
        if driver.poll() is None:
            driver.kill()
        driver.wait()
        log.seek(0)
        if not finished:
            before = _rows(out)
            r = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=240)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
            assert f"{before} reused" in r.stdout, r.stdout  # only what was missing
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    how = "finished" if finished else "was rerun"
    print(f"worker node ({len(killed)} processes: {', '.join(sorted(busy))}) killed at "
          f"{at_kill}/{ROWS} rows; the run {how}")  # fmt: skip

    a, b = open_cache(ref.path), open_cache(out, require_complete=True)
    assert len(b) == ROWS and len(set(b.ids)) == ROWS
    ids_a, fa, la = _by_id(a)
    ids_b, fb, lb = _by_id(b)
    assert list(ids_a) == list(ids_b)
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)  # fp32, another engine
    assert [a.classes[i] for i in la] == [b.classes[i] for i in lb]
    assert b.metadata["runs"][-1]["engine"] == "ray" and verify_cache(out) == []
