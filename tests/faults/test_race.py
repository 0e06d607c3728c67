"""Writers racing on one cache, and readers reading while a writer appends."""

from __future__ import annotations

import json
import time

import numpy as np

from colhead.cache import open_cache

from ._procs import FIGURES, extract_argv, same_content
from .test_kill import _DIE, _assert_prefix

WRITERS = 4


def _race(zygote, argv, ref, out):
    t0 = time.monotonic()
    children = [zygote.start(argv) for _ in range(WRITERS)]
    results = [c.wait(120) for c in children]
    won = [r for r in results if r.rc == 0]
    lost = [r for r in results if r.rc != 0]
    assert len(won) == 1, "\n".join(r.describe() for r in results)
    for r in lost:
        r.assert_no_crash()
        assert r.err.startswith("error: The cache ") and "is being written by" in r.err, (
            r.describe()
        )
        assert r.seconds < 30, f"a refused writer took {r.seconds:.1f} s to give up"
    assert same_content(open_cache(out, require_complete=True), ref) == []
    v = zygote.run(["cache", "verify", str(out)])
    assert v.rc == 0, v.describe()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    FIGURES["writers raced (one won, the others refused)"] += WRITERS
    return time.monotonic() - t0


def test_writers_racing_on_a_new_cache(zygote, digits_ref, tmp_path):
    _, ref, _ = digits_ref
    out = tmp_path / "c.h5"
    _race(zygote, extract_argv(out, batch_size=4, extra=["--split", "test"]), ref, out)


def test_writers_racing_over_a_dead_writers_lock(zygote, digits_ref, tmp_path):
    """Several writers find the stale lock and the unrecovered file of a killed run at once."""
    _, ref, _ = digits_ref
    out = tmp_path / "c.h5"
    argv = extract_argv(out, batch_size=4, extra=["--split", "test"])
    code = _DIE.format(hook="dying(_writer.CacheWriter, '_write_commit', 30)", argv=argv)
    assert zygote.run(code=code).rc == 9
    assert (tmp_path / "c.h5.lock").exists()
    _race(zygote, argv, ref, out)


# A reader in its own process: reads the cache again and again while it is written, and checks
# every read against the uninterrupted run: a prefix of its rows, never a half-written one.
_READER = """
import json, time
import numpy as np
from colhead.cache import CacheError, open_cache
ref = open_cache({ref!r})
pos = {{i: k for k, i in enumerate(ref.ids)}}
counts, errors = [], 0
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        c = open_cache({path!r})
    except FileNotFoundError:
        continue
    except CacheError as e:
        errors += 1
        if errors > 50:
            raise
        continue
    idx = np.array([pos[i] for i in c.ids], dtype=int)
    assert (idx == np.arange(len(c))).all(), "not a prefix"
    assert np.array_equal(c.features, ref.features[idx]), "a row differs"
    counts.append(len(c))
    if c.complete:
        break
print(json.dumps({{"counts": counts, "errors": errors}}))
"""


def test_readers_never_see_a_half_written_row(zygote, tmp_path, tmp_path_factory):
    ref_out = tmp_path / "ref.h5"
    assert zygote.run(extract_argv(ref_out, batch_size=8)).rc == 0
    ref = open_cache(ref_out)
    out = tmp_path / "c.h5"
    readers = [zygote.start(code=_READER.format(ref=str(ref_out), path=str(out))) for _ in "ab"]
    writer = zygote.start(extract_argv(out, batch_size=8))
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            seen.append(_assert_prefix(out, ref, ordered=True))
        except FileNotFoundError:
            pass
        if open_cache(out).complete if out.exists() else False:
            break
    w = writer.wait(120)
    assert w.rc == 0, w.describe()
    reads = 0
    for r in (child.wait(150) for child in readers):
        r.assert_no_crash()
        assert r.rc == 0, r.describe()
        got = json.loads(r.out)
        counts = got["counts"]
        assert counts == sorted(counts), "a reader saw the row count go down"
        assert counts[-1] == len(ref)
        reads += len(counts)
    assert seen == sorted(seen)
    assert np.array_equal(open_cache(out).features, ref.features)
    FIGURES["reads while a writer appended (all consistent)"] += reads + len(seen)
    print(f"{reads} reads by 2 reader processes, {len(seen)} in the test process")
