"""Caches as a collection (merge, ls, gc) and shared use: many readers, one writer, processes."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from colhead.cache import (
    CacheLockedError,
    CacheMismatchError,
    CacheWriter,
    gc_caches,
    list_caches,
    merge_caches,
    open_cache,
    verify_cache,
)
from colhead.cli import main

DIM = 8
NAMES = ["a", "b", "c"]
IDENT = {
    "column": "tiny",
    "weights_sha256": "0" * 64,
    "preprocess": {"resize": 36, "crop": 32},
    "precision": "fp32",
    "store_dtype": "float32",
    "dataset": "digits:all",
}


def vec(i: int) -> np.ndarray:
    """The vector of item i: exact in float32, so a reader can check every row it sees."""
    return (i + np.arange(DIM) / DIM).astype(np.float32)


def item(i: int) -> str:
    return f"item{i:05d}"


def sha(id_: str, salt: str = "") -> str:
    return hashlib.sha256((id_ + salt).encode()).hexdigest()


def make(path, nums, *, ident=IDENT, classes=NAMES, items=10, complete=False, salt="", skip=()):
    """A cache holding items ``nums`` (label of item i: NAMES[i % 3]), written by CacheWriter."""
    meta = {"dataset": {"items": items}, "run": {"device": "test"}}
    with CacheWriter(path, identity=ident, metadata=meta, dim=DIM) as w:
        w.class_indices(list(classes))  # fixes this cache's own class order
        ids = [item(i) for i in nums]
        labels = w.class_indices([NAMES[i % 3] for i in nums])
        w.append(ids, [sha(x, salt) for x in ids], [(0, 0)] * len(ids), labels,
                 np.stack([vec(i) for i in nums]))  # fmt: skip
        if skip:
            w.skip([item(i) for i in skip], ["0" * 64] * len(skip), [(0, 0)] * len(skip),
                   ["cannot decode: test"] * len(skip))  # fmt: skip
        if complete:
            w.finish()
    return path


def rows(c) -> dict:
    return {i: (c.features[k], c.classes[c.labels[k]]) for k, i in enumerate(c.ids)}


# -- merge -------------------------------------------------------------------------------------
def test_merge_disjoint_shards_into_one_complete_cache(tmp_path):
    a = make(tmp_path / "a.h5", range(0, 5), skip=[9])
    b = make(tmp_path / "b.h5", range(5, 9), classes=["c", "b", "a"], skip=[9])
    out = tmp_path / "m.h5"
    s = merge_caches([a, b], out)
    assert (s["rows"], s["skipped"], s["duplicates"], s["complete"]) == (9, 1, 0, True)
    m = open_cache(out, require_complete=True)
    got = rows(m)
    assert sorted(got) == [item(i) for i in range(9)]
    for i in range(9):
        np.testing.assert_array_equal(got[item(i)][0], vec(i))
        assert got[item(i)][1] == NAMES[i % 3]  # labels follow class names, not indices
    assert m.skipped == [(item(9), "cannot decode: test")]
    assert m.identity == IDENT and verify_cache(out) == []
    assert [r["path"] for r in m.metadata["merged_from"]] == [str(a), str(b)]
    assert not list(tmp_path.glob(".*"))  # nothing left beside it
    with pytest.raises(ValueError, match="exists and is not one of the inputs"):
        merge_caches([a, b], out)


def test_merge_refuses_another_configuration_and_names_the_field(tmp_path):
    a = make(tmp_path / "a.h5", range(0, 5))
    b = make(tmp_path / "b.h5", range(5, 10), ident={**IDENT, "precision": "bf16"})
    with pytest.raises(CacheMismatchError, match="precision: a.h5 has fp32, b.h5 has bf16"):
        merge_caches([a, b], tmp_path / "m.h5")
    c = make(tmp_path / "c.h5", range(5, 10), ident={**IDENT, "dataset": "digits:test"})
    with pytest.raises(CacheMismatchError, match="dataset") as e:
        merge_caches([a, c], tmp_path / "m.h5")
    assert "precision" not in str(e.value)
    assert not (tmp_path / "m.h5").exists()


def test_merge_keeps_an_identical_duplicate_once_and_refuses_a_conflicting_one(tmp_path):
    a = make(tmp_path / "a.h5", range(0, 6))
    b = make(tmp_path / "b.h5", range(4, 10))  # items 4 and 5 in both, same content
    s = merge_caches([a, b], tmp_path / "m.h5")
    assert (s["rows"], s["duplicates"], s["complete"]) == (10, 2, True)
    assert len(set(open_cache(tmp_path / "m.h5").ids)) == 10
    c = make(tmp_path / "c.h5", range(5, 10), salt="changed")  # item 5 with other content
    with pytest.raises(ValueError, match="'item00005' is in .*a.h5 and in .*c.h5 with different"):
        merge_caches([a, c], tmp_path / "m2.h5")
    assert not (tmp_path / "m2.h5").exists()


def test_merge_in_place_and_with_the_cli(tmp_path, capsys):
    a = make(tmp_path / "a.h5", range(0, 5))
    b = make(tmp_path / "b.h5", range(5, 10))
    assert main(["cache", "merge", str(a), str(b), "-o", str(a)]) == 0
    assert "10 rows" in capsys.readouterr().out
    assert len(open_cache(a, require_complete=True)) == 10
    x = make(tmp_path / "x.h5", range(0, 2), ident={**IDENT, "column": "other"})
    assert main(["cache", "merge", str(a), str(x), "-o", str(tmp_path / "y.h5")]) == 1
    assert "column: a.h5 has tiny, x.h5 has other" in capsys.readouterr().err


# -- ls and gc ---------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _hold_writer(path) -> subprocess.Popen:
    """A live writer of ``path`` in another process; returns once it holds the lock."""
    code = (
        "import sys, json, time; from colhead.cache import CacheWriter; "
        f"w = CacheWriter({str(path)!r}, identity=json.loads(sys.argv[1]), metadata={{}}, "
        f"dim={DIM}); print('open', flush=True); time.sleep(120)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, json.dumps(IDENT)], stdout=subprocess.PIPE,
                         text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "open"
    return p


@pytest.fixture
def messy(tmp_path):
    d = tmp_path / "caches"
    d.mkdir()
    make(d / "done.h5", range(10), complete=True)
    make(d / "broken-off.h5", range(3))  # an interrupted run
    make(d / "writing.h5", range(2))  # incomplete, but a writer is at it (started below)
    (d / "notes.h5").write_bytes(b"not hdf5 at all")
    (d / "readme.txt").write_text("hi")
    dead = _dead_pid()
    lock = d / "done.h5.lock"  # a writer of done.h5 that was kill -9'd
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "started": 0}))
    old = time.time() - 3600
    for name in (f".broken-off.h5.colhead-{dead}.init", f".done.h5.colhead-{dead}.copy"):
        (d / name).write_bytes(b"x")
        os.utime(d / name, (old, old))
    (d / f".fresh.h5.colhead-{dead}.copy").write_bytes(b"x")  # too young to judge
    (d / f".mine.h5.colhead-{os.getpid()}.copy").write_bytes(b"x")  # its process is alive
    os.utime(d / f".mine.h5.colhead-{os.getpid()}.copy", (old, old))
    holder = _hold_writer(d / "writing.h5")
    yield d, dead
    holder.kill()
    holder.wait()


def test_ls_reports_every_cache_and_what_is_not_one(messy, capsys):
    d, _ = messy
    got = {os.path.basename(e["path"]): e for e in list_caches(d)}
    assert sorted(got) == ["broken-off.h5", "done.h5", "notes.h5", "writing.h5"]
    assert (got["done.h5"]["rows"], got["done.h5"]["complete"]) == (10, True)
    assert got["done.h5"]["column"] == "tiny" and got["done.h5"]["dataset"] == "digits:all"
    assert got["done.h5"]["writer"] is None  # its lock is stale
    assert (got["broken-off.h5"]["rows"], got["broken-off.h5"]["complete"]) == (3, False)
    assert got["writing.h5"]["writer"]["pid"] is not None
    assert got["notes.h5"]["kind"] == "not a cache" and "HDF5" in got["notes.h5"]["error"]
    assert main(["cache", "ls", str(d)]) == 0
    out = capsys.readouterr().out
    assert "done.h5" in out and "not a cache" in out and "writing" in out


def test_gc_dry_run_then_removes_only_leftovers(messy, capsys):
    d, dead = messy
    before = sorted(p.name for p in d.iterdir())
    expected = sorted(
        [
            "broken-off.h5",
            "done.h5.lock",
            f".broken-off.h5.colhead-{dead}.init",
            f".done.h5.colhead-{dead}.copy",
        ]  # fmt: skip
    )
    plan = gc_caches(d)
    assert sorted(os.path.basename(p) for p, _ in plan) == expected
    assert sorted(p.name for p in d.iterdir()) == before  # a dry run touches nothing
    assert "incomplete cache (3 rows)" in dict(plan)[str(d / "broken-off.h5")]
    assert main(["cache", "gc", str(d)]) == 0
    assert "would remove" in capsys.readouterr().out
    assert sorted(p.name for p in d.iterdir()) == before
    assert main(["cache", "gc", str(d), "--yes"]) == 0
    assert "removed" in capsys.readouterr().out
    left = sorted(p.name for p in d.iterdir())
    assert left == sorted(set(before) - set(expected))
    assert "done.h5" in left and "writing.h5" in left and "writing.h5.lock" in left
    assert len(open_cache(d / "done.h5")) == 10
    assert gc_caches(d, dry_run=False) == []  # nothing more to do


# -- shared use by processes -------------------------------------------------------------------
WRITER = """
import hashlib, json, sys, time
import numpy as np
from colhead.cache import CacheWriter
path, ident = sys.argv[1], json.loads(sys.argv[2])
n_batches, bs = int(sys.argv[3]), int(sys.argv[4])
w = CacheWriter(path, identity=ident, metadata={}, dim=%(dim)d)
print("open", flush=True)
sys.stdin.readline()  # go
for b in range(n_batches):
    nums = range(b * bs, (b + 1) * bs)
    ids = ["item%%05d" %% i for i in nums]
    feats = np.stack([(i + np.arange(%(dim)d) / %(dim)d).astype(np.float32) for i in nums])
    labels = w.class_indices([%(names)r[i %% 3] for i in nums])
    w.append(ids, [hashlib.sha256(x.encode()).hexdigest() for x in ids], [(0, 0)] * bs, labels,
             feats)
    time.sleep(0.005)
w.finish()
w.close()
""" % {"dim": DIM, "names": NAMES}

READER = """
import json, sys, time
import numpy as np
from colhead.cache import open_cache
path, total = sys.argv[1], int(sys.argv[2])
reads, last, deadline = 0, 0, time.time() + 120
while time.time() < deadline:
    c = open_cache(path)
    n = len(c)
    if n < last:
        sys.exit("count went down: %%d after %%d" %% (n, last))
    nums = [int(i[4:]) for i in c.ids]
    if nums != list(range(n)):
        sys.exit("ids are not the written ones: %%r" %% nums[:20])
    want = np.array(nums, np.float32)[:, None] + np.arange(%(dim)d) / %(dim)d
    if not np.array_equal(c.features, want.astype(np.float32)):
        sys.exit("a row differs from what the writer wrote")
    if [c.classes[k] for k in c.labels] != [%(names)r[i %% 3] for i in nums]:
        sys.exit("a label differs from what the writer wrote")
    reads, last = reads + 1, n
    if c.complete:
        break
print(json.dumps({"reads": reads, "rows": last}))
""" % {"dim": DIM, "names": NAMES}

SECOND_WRITER = """
import json, sys, time
from colhead.cache import CacheWriter, CacheLockedError
t = time.time()
try:
    CacheWriter(sys.argv[1], identity=json.loads(sys.argv[2]), metadata={}, dim=%(dim)d)
except CacheLockedError as e:
    print(json.dumps({"refused": str(e), "seconds": time.time() - t}))
else:
    print(json.dumps({"refused": None}))
""" % {"dim": DIM}


def test_readers_see_only_whole_rows_while_a_writer_appends_and_a_second_writer_is_refused(
    tmp_path,
):
    path = tmp_path / "shared.h5"
    n_batches, bs = 120, 16
    ident = json.dumps(IDENT)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), ident, str(n_batches), str(bs)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "open", writer.stderr.read()
        readers = [
            subprocess.Popen([sys.executable, "-c", READER, str(path), str(n_batches * bs)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]  # fmt: skip
        writer.stdin.write("go\n")
        writer.stdin.flush()
        second = subprocess.run(
            [sys.executable, "-c", SECOND_WRITER, str(path), ident],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        got = json.loads(second.stdout)
        assert got["refused"] and f"being written by pid {writer.pid}" in got["refused"]
        assert got["seconds"] < 2  # refused at once, not after a wait
        results = []
        for r in readers:
            out, err = r.communicate(timeout=150)
            assert r.returncode == 0, err[-2000:]
            results.append(json.loads(out))
        assert writer.wait(timeout=60) == 0, writer.stderr.read()
    finally:
        if writer.poll() is None:
            writer.kill()
    assert all(r["rows"] == n_batches * bs for r in results)
    assert sum(r["reads"] for r in results) > 3  # they read while it wrote, not only at the end
    assert verify_cache(path) == []
    CacheWriter(path, identity=IDENT, metadata={}, dim=DIM).close()  # free again


# -- the writer lock ---------------------------------------------------------------------------
RACER = """
import sys, time
from colhead.cache._lock import CacheLockedError, WriterLock
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
try:
    lock = WriterLock(sys.argv[1]).acquire()
except CacheLockedError:
    print("refused", flush=True)
else:
    print("got", flush=True)
    time.sleep(1.5)
    lock.release()
"""


def test_many_writers_breaking_one_stale_lock_leave_exactly_one_owner(tmp_path):
    from colhead.cache._lock import lock_path_for

    cache = tmp_path / "c.h5"
    info = {"host": socket.gethostname(), "pid": _dead_pid(), "started": 0}
    lock_path_for(cache).write_text(json.dumps(info))  # left by a writer killed with -9
    start = time.time() + 2.0
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(cache), str(start)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    got = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert got == ["got", "refused", "refused", "refused"]
    assert not lock_path_for(cache).exists()  # the winner released it


def test_a_writers_own_process_sees_its_lock_as_live(tmp_path):
    from colhead.cache._lock import WriterLock, writer_active

    cache = tmp_path / "c.h5"
    with WriterLock(cache):
        assert writer_active(cache)["pid"] == os.getpid()
        with pytest.raises(CacheLockedError, match=f"being written by pid {os.getpid()}"):
            WriterLock(cache).acquire()
        assert writer_active(cache)["pid"] == os.getpid()  # probing did not drop it
    assert writer_active(cache) is None
