"""Caches that lie (issue 13): links and storage that point elsewhere, sizes a file does not
hold, truncation after a dead writer, silent rot, renames a power loss could undo, and gc's
names. Every case is a real file made with h5py from a real cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from test_manage import DIM, IDENT, make

from colhead.cache import (
    CacheError,
    CacheWriter,
    cache_info,
    gc_caches,
    list_caches,
    merge_caches,
    open_cache,
    verify_cache,
)
from colhead.cli import main


@pytest.fixture
def good(tmp_path):
    """An incomplete cache of 10 rows and a skipped item (chunked: a complete one is frozen)."""
    return make(tmp_path / "good.h5", range(10), skip=[11], complete=False)


def _secret(tmp_path, n: int):
    """Another file of the victim's: what a hostile cache would make colhead read."""
    path = tmp_path / "secret.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.array([b"S" * 64] * n, dtype="S64")
        f["feats"] = np.full((n, DIM), 7.0, np.float32)
        f["labels"] = np.zeros(n, np.int64)
    raw = tmp_path / "secret.raw"
    raw.write_bytes(np.full(n, 2, np.int64).tobytes())
    return path, raw


def _replace(path, name, make_new):
    with h5py.File(path, "r+", locking=False) as f:
        n = f[name].shape[0]
        del f[name]
        make_new(f, n)


HOSTILE = {
    "an external link": (
        "hashes",
        lambda f, n, s, raw: f.__setitem__("hashes", h5py.ExternalLink(str(s), "/data")),
        "external link",
    ),
    "a soft link": (
        "hashes",
        lambda f, n, s, raw: (
            f.create_dataset("h2", data=np.array([b"0" * 64] * n, "S64")),
            f.__setitem__("hashes", h5py.SoftLink("/h2")),
        ),
        "soft link",
    ),
    "external storage": (
        "labels",
        lambda f, n, s, raw: f.create_dataset(
            "labels", (n,), np.int64, external=[(str(raw), 0, n * 8)]
        ),
        "external files",
    ),
    "a virtual dataset": (
        "features",
        lambda f, n, s, raw: f.create_virtual_dataset("features", _virtual(s, n), fillvalue=0),
        "virtual dataset",
    ),
    "a gzip filter": (
        "stats",
        lambda f, n, s, raw: f.create_dataset(
            "stats", data=np.zeros((n, 2), np.int64), compression="gzip", chunks=(n, 2)
        ),
        "filter 'deflate'",
    ),
}


def _virtual(secret, n):
    layout = h5py.VirtualLayout((n, DIM), np.float32)
    layout[:] = h5py.VirtualSource(str(secret), "feats", shape=(n, DIM))
    return layout


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_cache_pointing_elsewhere_is_refused_on_every_open(good, tmp_path, case, capsys):
    name, plant, words = HOSTILE[case]
    secret, raw = _secret(tmp_path, 10)
    _replace(good, name, lambda f, n: plant(f, n, secret, raw))
    with pytest.raises(CacheError, match=words):
        open_cache(good)
    with pytest.raises(CacheError, match=words):
        cache_info(good)
    problems = verify_cache(good)
    assert len(problems) == 1 and words in problems[0]
    other = make(tmp_path / "other.h5", range(10, 12))
    with pytest.raises(CacheError, match=words):
        merge_caches([other, good], tmp_path / "merged.h5")
    assert not (tmp_path / "merged.h5").exists()
    entry = {os.path.basename(e["path"]): e for e in list_caches(tmp_path)}["good.h5"]
    assert entry["kind"] == "not a cache" and words in entry["error"]
    assert main(["cache", "verify", str(good)]) == 1
    assert words in capsys.readouterr().out


def _declare_huge(path, rows: int = 10**12) -> None:
    """Resize every dataset to ``rows`` and commit them: metadata only, the file stays small."""
    with h5py.File(path, "r+", locking=False) as f:
        for name in ("features", "labels", "ids", "hashes", "stats", "live"):
            f[name].resize((rows,) + f[name].shape[1:])
        for name in list(f.get("checksums", {})):
            f["checksums"][name].resize((rows,))
        commit = f["commit"][:]
        commit[0] = rows
        f["commit"][:] = commit


def test_a_declared_size_the_file_cannot_hold_is_a_cache_error(good, tmp_path, capsys):
    _declare_huge(good)
    assert good.stat().st_size < 1_000_000
    with pytest.raises(CacheError, match="declares .* in a file of"):
        open_cache(good)
    assert main(["cache", "info", str(good)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "declares" in err
    assert "declares" in verify_cache(good)[0]
    done = make(tmp_path / "done.h5", range(3), complete=True)
    entries = {os.path.basename(e["path"]): e for e in list_caches(tmp_path)}
    assert entries["good.h5"]["kind"] == "not a cache" and entries["done.h5"]["rows"] == 3
    assert gc_caches(tmp_path) == []  # keeps going, and removes nothing it cannot read
    assert len(open_cache(done)) == 3


_KILLED = """
import os, sys
sys.path.insert(0, {tests!r})
from test_manage import make
import colhead.cache._writer as w
real = w.CacheWriter.close
w.CacheWriter.close = lambda self: os._exit(9)  # dies holding the file: flags set, SWMR
make({path!r}, range(300))
"""
_OPEN = """
import sys, time
from colhead.cache import CacheError, open_cache
t = time.time()
try:
    open_cache(sys.argv[1])
except CacheError as e:
    print("CacheError", e)
print("seconds %.1f" % (time.time() - t))
"""


@pytest.mark.parametrize("keep", [1000, 1 / 3, 2 / 3])
def test_a_truncated_file_of_a_dead_writer_is_refused_at_once(tmp_path, keep):
    path = tmp_path / "c.h5"
    tests = os.path.dirname(__file__)
    code = _KILLED.format(tests=tests, path=str(path))
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 9
    assert len(open_cache(path)) == 300  # readable as it was left: its rows committed
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(keep if keep > 1 else int(size * keep))
    # before: a SWMR reader retried the missing metadata for minutes (>40 s in issue 13)
    r = subprocess.run([sys.executable, "-c", _OPEN, str(path)], capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CacheError" in r.stdout, r.stdout
    assert any(w in r.stdout for w in ("truncated", "declares", "corrupt")), r.stdout
    assert float(r.stdout.split("seconds")[1]) < 5


def _damage(path, dataset: str, data: bytes) -> None:
    with h5py.File(path, "r", locking=False) as f:
        at = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(data)


def test_rot_inside_committed_vectors_is_caught_by_reads_and_verify(good, tmp_path):
    with h5py.File(good, "r", locking=False) as f:
        assert all(f[n].fletcher32 for n in ("features", "labels", "hashes", "stats", "live"))
        assert all(f["skipped"][n].fletcher32 for n in ("hashes", "stats", "live"))
        assert f["commit"].fletcher32 and sorted(f["checksums"]) == [
            "classes", "ids", "skipped_ids", "skipped_reasons"]  # fmt: skip
    _damage(good, "features", b"\x00\x00\x80\x3f" * 2)  # two floats of row 0 become 1.0
    with pytest.raises(CacheError):
        open_cache(good)
    problems = verify_cache(good)
    assert any("/features is damaged near entry 0" in p for p in problems), problems


def test_rot_inside_the_ids_is_caught_by_verify(good):
    data = bytearray(good.read_bytes())
    at = data.index(b"item00003")
    data[at : at + 9] = b"item99999"  # a plausible id, in HDF5's heap: no checksum of its own
    good.write_bytes(bytes(data))
    assert "item99999" in list(open_cache(good).ids)
    problems = verify_cache(good)
    assert any("/ids changed since they were written" in p for p in problems), problems


def _old_layout(src, dst) -> None:
    """``dst``: ``src`` as colhead wrote caches before checksums (no filters, no CRCs)."""
    with h5py.File(src, "r", locking=False) as f, h5py.File(dst, "w", libver="latest") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v

        def copy(name, obj):
            if name.startswith("checksums") or not isinstance(obj, h5py.Dataset):
                return
            if name == "commit":
                g.create_dataset(name, data=obj[:])
            else:
                g.create_dataset(name, data=obj[:], maxshape=(None,) + obj.shape[1:],
                                 chunks=obj.chunks, dtype=obj.dtype)  # fmt: skip

        f.visititems(copy)


def test_an_old_cache_without_checksums_opens_resumes_and_verify_says_so(good, tmp_path, capsys):
    old = tmp_path / "old.h5"
    _old_layout(good, old)
    assert len(open_cache(old)) == 10
    notes = []
    assert verify_cache(old, notes=notes) == [] or "incomplete" in verify_cache(old)[0]
    assert "before colhead stored checksums" in notes[0]
    assert cache_info(old)["checksums"] is False and cache_info(good)["checksums"] is True
    with CacheWriter(old, identity=IDENT, metadata={}, dim=DIM) as w:  # resumes as before
        w.append(["new"], ["0" * 64], [(0, 0)], w.class_indices(["a"]), np.ones((1, DIM)))
        w.finish()
    assert len(open_cache(old)) == 11 and verify_cache(old) == []
    main(["cache", "verify", str(old)])
    assert "before colhead stored checksums" in capsys.readouterr().out
    merged = tmp_path / "new.h5"
    merge_caches([old], merged)  # the way to add them
    assert cache_info(merged)["checksums"] is True and verify_cache(merged) == []


def test_data_is_fsynced_before_each_commit_and_renames_are_durable(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", _name(fd))),
                                                 real_fsync(fd))[1])  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))),
                                                     real_replace(a, b))[1])  # fmt: skip
    real_write = CacheWriter._write_commit

    def commit(self):
        real_write(self)
        events.append(("commit", ""))

    monkeypatch.setattr(CacheWriter, "_write_commit", commit)
    a = make(tmp_path / "a.h5", range(5))
    b = make(tmp_path / "b.h5", range(5, 9))
    commits = [i for i, e in enumerate(events) if e[0] == "commit"]
    assert len(commits) >= 4
    for lo, hi in zip([0] + commits, commits):  # a fsync of the cache between two commits
        assert ("fsync", str(tmp_path / "a.h5")) in events[lo:hi] or (
            "fsync", str(tmp_path / "b.h5")) in events[lo:hi], events[lo:hi]  # fmt: skip
    events.clear()
    merge_caches([a, b], tmp_path / "m.h5")
    i = events.index(("replace", str(tmp_path / "m.h5")))
    assert events[i - 1][0] == "fsync" and ".m.h5.colhead-" in events[i - 1][1]
    assert events[i + 1] == ("fsync", str(tmp_path))  # the folder, after the rename


def _name(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_gc_removes_only_colheads_own_temp_names_and_survives_huge_pids(tmp_path):
    old = os.path.getmtime(tmp_path) - 3600
    hdf5 = b"\x89HDF\r\n\x1a\n" + bytes(100)
    files = {
        ".notes.2023.copy": b"my notes",  # a user's file with a temp-like name
        ".x.h5.99999999999999999999999.copy": hdf5,  # a pid no process can have
        ".x.h5.colhead-99999999999999999999999.copy": b"x",
        ".c.h5.colhead-999999.copy": b"x",  # ours, its process gone
        ".c.h5.999998.init": hdf5,  # an older colhead's, its process gone
        ".colhead-probe-999997": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, (old, old))
    removed = sorted(os.path.basename(p) for p, _ in gc_caches(tmp_path, dry_run=False))
    assert removed == [".c.h5.999998.init", ".c.h5.colhead-999999.copy", ".colhead-probe-999997"]
    assert (tmp_path / ".notes.2023.copy").exists()


def test_verify_of_a_file_that_is_not_hdf5_says_so(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    assert main(["cache", "verify", str(photo)]) == 1
    out = capsys.readouterr().out
    assert "not an HDF5 file" in out and "cache verify" not in out.split("problem")[1]


def test_info_escapes_control_characters_in_skipped_ids(tmp_path, capsys):
    path = tmp_path / "c.h5"
    with CacheWriter(path, identity=IDENT, metadata={}, dim=DIM) as w:
        w.skip(["evil\x1b[2J\x1b]0;pwned\x07.png"], ["0" * 64], [(0, 0)], ["bad\x1b[31m"])
    assert main(["cache", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "evil\\x1b[2J" in out
    assert json.loads(json.dumps(cache_info(path)["skipped"]))  # --json keeps the raw text
