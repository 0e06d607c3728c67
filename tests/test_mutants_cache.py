"""Checks that kill mutants of cache/ which the other tests let live (issue 16, bench/mutants.py).

Each test names the mutation(s) it kills, as ``module:line: mutation`` of the code it was written
against. Small and fast: pure functions first, a few rows of real caches where needed.
"""

import json

import h5py
import numpy as np
import pytest
from test_manage import DIM, IDENT, make

from colhead.cache import CacheWriter, _format, open_cache
from colhead.cache._format import CacheError


# -- cache/_format.py ----------------------------------------------------------------------------
def test_feature_chunk_rows_aims_at_256_kib_between_1_and_4096_rows():
    assert _format.feature_chunk_rows(1280, 4) == 51  # 262144 // 5120
    assert _format.feature_chunk_rows(1280, 2) == 102
    assert _format.feature_chunk_rows(256, 4) == 256  # exactly 256 KiB
    assert _format.feature_chunk_rows(8, 4) == 4096  # capped
    assert _format.feature_chunk_rows(10**6, 4) == 1  # never 0 rows
    assert _format.feature_chunk_rows(0, 4) == 4096  # a zero width does not divide by zero


def test_identity_diff_names_each_differing_field_and_only_those():
    stored = {"column": "a", "precision": "fp32", "dataset": {"n": 1}, "store_dtype": "float16"}
    wanted = {**stored, "precision": "bf16", "dataset": {"n": 2}}
    diff = _format.identity_diff(stored, wanted)
    assert diff == [
        "precision: cache has fp32, asked for bf16",
        'dataset: cache has {"n":1}, asked for {"n":2}',
    ]
    assert _format.identity_diff(stored, dict(stored)) == []
    long = _format.identity_diff({"column": "x" * 200}, {"column": "y"})[0]
    assert long == f"column: cache has {'x' * 117}..., asked for y"


def test_column_key_ignores_what_does_not_change_the_vectors_meaning():
    ident = {"column": "c", "weights_sha256": "w", "preprocess": {"size": 224},
             "precision": "fp32", "store_dtype": "float32", "dataset": {"root": "/a"}}  # fmt: skip
    other = {**ident, "precision": "bf16", "dataset": {"root": "/b"}}
    assert _format.column_key(ident) == _format.column_key(other)
    assert _format.config_key(ident) != _format.config_key(other)
    assert _format.column_key(ident) != _format.column_key({**ident, "preprocess": {"size": 256}})
    assert len(_format.key_of(ident)) == 64


def test_keys_are_the_sha256_of_sorted_compact_utf8_json():
    # _format:51: sort_keys True -> False (a key would depend on dict order) and ensure_ascii
    # False -> True (every key of a non-ASCII identity, e.g. a dataset path, would change, and
    # existing caches would stop matching their own runs)
    import hashlib

    ident = {"dataset": {"root": "/données/été"}, "column": "c"}
    text = '{"column":"c","dataset":{"root":"/données/été"}}'
    assert _format.key_of(ident) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert _format.key_of(dict(reversed(ident.items()))) == _format.key_of(ident)


def test_dump_attr_allows_up_to_the_limit_and_refuses_beyond():
    pad = _format.MAX_ATTR_BYTES - len(json.dumps({"k": ""}, separators=(",", ":")))
    assert len(_format.dump_attr({"k": "x" * pad})) == _format.MAX_ATTR_BYTES
    with pytest.raises(ValueError, match="over the 65536-byte limit"):
        _format.dump_attr({"k": "x" * (pad + 1)})


def test_load_attr_reads_bytes_and_refuses_what_is_not_a_bounded_json_object():
    assert _format.load_attr(b'{"a": 1}', "identity") == {"a": 1}
    assert _format.load_attr('{"a": [1]}', "identity") == {"a": [1]}
    for bad, words in [
        (3, "not a JSON string"),
        ("{" * 10 + "}" * 10, "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"a": "' + "x" * _format.MAX_ATTR_BYTES + '"}', "larger than 65536 bytes"),
        ("[" * 30_000 + "]" * 30_000, "not valid JSON"),  # RecursionError, within the size
    ]:
        with pytest.raises(CacheError, match=words):
            _format.load_attr(bad, "metadata")
    just = '{"a": "' + "x" * (_format.MAX_ATTR_BYTES - 9) + '"}'
    assert len(just) == _format.MAX_ATTR_BYTES and _format.load_attr(just, "m")["a"]


def test_a_new_cache_has_the_documented_schema_1_layout(tmp_path):
    # _format:34: COMMIT_LEN 5 -> 6 wrote a /commit that older colheads cannot read
    path = make(tmp_path / "c.h5", range(4), complete=True)
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["format"] == "colhead-feature-cache" and f.attrs["schema_version"] == 1
        commit = f["commit"][()]
        assert commit.shape == (5,) and commit.dtype == np.float64
        assert (commit[0], commit[1], commit[2], commit[3]) == (4, 0, 1, 3)  # rows .. classes
        assert f["features"].shape == (4, DIM)


def test_only_the_last_20_runs_are_kept_in_the_metadata(tmp_path):
    # _format:30: MAX_RUNS_KEPT 20 -> 21
    path = tmp_path / "c.h5"
    for i in range(22):
        CacheWriter(path, identity=IDENT, metadata={"run": {"n": i}}, dim=DIM).close()
    runs = open_cache(path).metadata["runs"]
    assert [r["n"] for r in runs] == list(range(2, 22))


# -- cache/_files.py -----------------------------------------------------------------------------
def test_colheads_own_temp_and_probe_names_are_recognised_with_their_pid(tmp_path):
    # _files:45 (`probe_path` returning None); temp_owner's pid range and cache_name filter
    import os
    from pathlib import Path

    from colhead.cache import _files, probe_path

    probe = probe_path(tmp_path)
    assert probe == tmp_path / f".colhead-probe-{os.getpid()}"
    assert _files.temp_owner(probe) == os.getpid()
    tmp = _files.temp_path(tmp_path / "c.h5", "init")
    assert tmp.parent == tmp_path and _files.temp_owner(tmp, cache_name="c.h5") == os.getpid()
    assert _files.temp_owner(tmp, cache_name="d.h5") is None
    assert _files.temp_owner(Path(".c.h5.colhead-0.copy")) is None  # no process has pid 0
    assert _files.temp_owner(Path(".c.h5.colhead-2147483647.copy")) == 2**31 - 1
    assert _files.temp_owner(Path(".c.h5.colhead-2147483648.copy")) is None
    with pytest.raises(ValueError, match="kind must be 'init' or 'copy'"):
        _files.temp_path(tmp_path / "c.h5", "tmp")
    # _files:62: `0 < pid` -> `1 < pid`: in a container colhead itself may well be pid 1
    assert _files.temp_owner(Path(".c.h5.colhead-1.copy")) == 1


def test_the_fsync_helpers_close_what_they_open(tmp_path):
    # _files:79 and :93: `os.close(fd)` removed leaked a descriptor per commit or rename
    import os

    from colhead.cache import _files

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    src = tmp_path / "a"
    src.write_bytes(b"x")
    before = open_fds()
    for _ in range(5):
        _files.fsync_file(src)
        _files.fsync_dir(tmp_path)
        _files.replace_durably(src, tmp_path / "b")
        (tmp_path / "b").rename(src)
    assert open_fds() == before
    _files.fsync_dir(tmp_path / "missing")  # a no-op, not an error


# -- cache/_lock.py ------------------------------------------------------------------------------
def test_without_flock_a_local_lock_is_dead_exactly_when_its_pid_is_gone():
    # _lock:81 (`os.kill(pid, 0)` removed) and :99 (`return _pid_gone(...)` -> None): on a file
    # system without flock (some NFS mounts) a kill -9'd writer's lock must still be breakable
    import os
    import socket
    import time

    from test_manage import _dead_pid

    from colhead.cache import _lock

    host, now, dead = socket.gethostname(), time.time(), _dead_pid()
    assert _lock._dead({"host": host, "pid": dead}, now, None) is True
    assert _lock._dead({"host": host, "pid": os.getpid()}, now, None) is False
    assert not _lock._dead({"host": host + "-other", "pid": dead}, now, None)
    assert _lock._dead({"host": host, "pid": os.getpid()}, now, True) is True  # flock says free
    assert _lock._dead({"host": host, "pid": dead}, now, False) is False  # flock held


def test_pid_checks_of_a_lock_owner_record():
    # _lock:77 (a pid that is not an int counted as gone -> its lock broken), :78-79 (pids no
    # process can have: -1 would signal every process, 2**70 overflows os.kill)
    import os

    from colhead.cache import _lock

    assert _lock._pid_gone(os.getpid()) is False
    for not_a_pid in ("123", True, None, 1.5):
        assert _lock._pid_gone(not_a_pid) is False
    for impossible in (0, -1, 2**31, 2**70):
        assert _lock._pid_gone(impossible) is True


def test_a_lock_file_that_vanishes_or_is_garbage_reads_as_no_owner(tmp_path):
    # _lock:64: `return {}` -> None when the file is gone between two looks
    from colhead.cache import _lock

    assert _lock._read_owner(tmp_path / "gone.lock") == {}
    (tmp_path / "bad.lock").write_bytes(b"\xff[1, 2")
    assert _lock._read_owner(tmp_path / "bad.lock") == {}


def test_acquire_and_release_leave_no_descriptor_open(tmp_path):
    # _lock:211: `os.close(self._fd)` removed leaked one descriptor (and its flock) per writer
    import os

    from colhead.cache._lock import WriterLock, lock_path_for

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with WriterLock(tmp_path / "c.h5"):
            assert lock_path_for(tmp_path / "c.h5").exists()
    assert len(os.listdir("/proc/self/fd")) == before
    assert not lock_path_for(tmp_path / "c.h5").exists()


def test_a_held_flock_wins_over_an_owner_record_that_looks_dead(tmp_path):
    # _lock:113: `return False` -> None on a held flock let the pid check decide, and a live
    # writer whose recorded pid is not visible here (another pid namespace) lost its lock
    import fcntl
    import os
    import socket

    from test_manage import _dead_pid

    from colhead.cache import CacheLockedError
    from colhead.cache._lock import WriterLock, _flock_free, lock_path_for

    lock = lock_path_for(tmp_path / "c.h5")
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": 0}))
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the live holder
        assert _flock_free(lock) is False
        with pytest.raises(CacheLockedError):
            WriterLock(tmp_path / "c.h5").acquire()
        assert lock.exists()
    finally:
        os.close(fd)
    assert _flock_free(lock) is True and WriterLock(tmp_path / "c.h5").is_stale()


def test_an_empty_lock_file_is_dead_only_when_old_and_unheld():
    # _lock:94 (`flock_free is not False`, `> EMPTY_LOCK_S` mutated): a writer between create
    # and write leaves an empty file for a moment; only an old one nobody flocks is stale
    import time

    from colhead.cache import _lock

    now, old = time.time(), time.time() - _lock.EMPTY_LOCK_S - 5
    assert _lock._dead({}, now, None) is False
    assert _lock._dead({}, now, True) is False
    assert _lock._dead({}, old, None) is True
    assert _lock._dead({}, old, True) is True
    assert _lock._dead({}, old, False) is False


# -- cache/_structure.py -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hashes", "skipped/reasons"])
def test_a_cache_missing_a_dataset_is_a_cache_error_that_names_it(tmp_path, name):
    # _structure:67: the raise removed gave h5py's bare KeyError, or read on without it
    from colhead.cache import verify_cache

    path = make(tmp_path / "c.h5", range(4), complete=True, skip=[7])
    with h5py.File(path, "r+", locking=False) as f:
        del f[name]
    with pytest.raises(CacheError, match=f"missing the dataset /{name}"):
        open_cache(path)
    assert any(f"/{name}" in p for p in verify_cache(path))


def test_check_extent_refuses_committed_rows_without_their_chunks(tmp_path):
    # _structure:166 (`not count` -> `count`), :171 (`or` -> `and`), :172 (raise removed): the
    # truncation test in test_cache_hardening is caught by other checks first, so this one
    # calls the check itself: 5000 rows allocate 2 chunks of 4096, 9000 committed need 3
    import numpy as np

    from colhead.cache import _structure

    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=np.ones((5000, 8), np.float32), chunks=(4096, 8),
                         maxshape=(None, 8))  # fmt: skip
    with h5py.File(path, "r") as f:
        _structure.check_extent(f, path, {"d": 5000})
        _structure.check_extent(f, path, {"d": 0})
        with pytest.raises(CacheError, match="is truncated: committed entries of /d"):
            _structure.check_extent(f, path, {"d": 9000})


def test_check_sizes_counts_bytes_per_row_times_rows(tmp_path):
    # _structure:136 (`count * row_bytes` -> `/`) and :127 (`shape[1:]` -> `shape[2:]`, one
    # float per row instead of 8): a count the file cannot hold at 32 bytes a row is refused
    import numpy as np

    from colhead.cache import _structure

    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=np.ones((10, 8), np.float32))
    size = path.stat().st_size
    with h5py.File(path, "r") as f:
        assert _structure.row_bytes(f["d"]) == 32
        _structure.check_sizes(f, path, {"d": 10})
        with pytest.raises(CacheError, match="declares /d: .* in a file of"):
            _structure.check_sizes(f, path, {"d": size // 16})  # 2x the file at 32 B a row


def test_an_optional_dataset_behind_a_soft_link_is_refused(tmp_path):
    # _structure:60: `return True` -> None for a link that is not a hard link skipped the
    # optional checksum datasets' link check, so verify followed a soft link
    from colhead.cache import verify_cache

    path = make(tmp_path / "c.h5", range(4), complete=True)
    with h5py.File(path, "r+", locking=False) as f:
        del f["checksums/ids"]
        f["checksums/ids"] = h5py.SoftLink("/labels")
    problems = verify_cache(path)
    assert problems and "/checksums/ids is a soft link to /labels" in problems[0]


# -- cache/_export.py ----------------------------------------------------------------------------
def test_export_to_a_folder_says_to_give_a_file_name(tmp_path):
    # _export:74: the raise removed let os.replace fail with a bare OSError
    from colhead.cache import export_cache

    path = make(tmp_path / "c.h5", range(3), complete=True)
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        export_cache(path, tmp_path / "out", format="npz")
