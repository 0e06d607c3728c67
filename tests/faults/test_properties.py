"""Property: any sequence of appends, skips, interruptions and resumes of the cache writer
leaves the content of one uninterrupted write.

Interruptions: closing without finishing; a crash (the writer's process ``os._exit``s right
after a batch's data is written and before its commit); and a copy of the file taken while the
writer has it open, put back in place of the original (the file as a crash at that moment, or
a backup taken mid-run, would leave it). After each one, a reader sees a prefix of the rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colhead.cache import open_cache, verify_cache

from . import _model
from ._procs import FIGURES

TESTS = str(Path(__file__).resolve().parents[1])

_CRASH = """
import sys
sys.path.insert(0, {tests!r})
from faults._model import run
run({path!r}, {bad!r}, {batch}, None, crash_at={crash_at})
"""

interruption = st.tuples(
    st.sampled_from(["close", "crash", "copy"]),
    st.integers(1, 8),  # batch size of that run
    st.integers(0, 6),  # batches (close, copy) or commits (crash) before it stops
)


def _check_prefix(path: Path, exp) -> None:
    if not path.exists():
        return
    c = open_cache(path)
    ids, vectors, names, _ = exp
    n = len(c)
    assert list(c.ids) == ids[:n], "rows are not a prefix of the uninterrupted write"
    np.testing.assert_array_equal(c.features, vectors[:n])
    assert [c.classes[i] for i in c.labels] == names[:n]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    bad=st.lists(st.booleans(), min_size=1, max_size=40).map(
        lambda b: [x and i % 5 != 0 for i, x in enumerate(b)]  # keep some good items
    ),
    interruptions=st.lists(interruption, max_size=4),
    final_batch=st.integers(1, 8),
)
def test_any_interrupted_write_equals_an_uninterrupted_one(
    zygote, tmp_path_factory, bad, interruptions, final_batch
):
    path = tmp_path_factory.mktemp("prop") / "c.h5"
    exp = _model.expected(bad)
    for kind, batch, k in interruptions:
        if kind == "close":
            _model.run(path, bad, batch, stop_after=k)
        elif kind == "crash":
            code = _CRASH.format(tests=TESTS, path=str(path), bad=bad, batch=batch, crash_at=k + 1)
            r = zygote.run(code=code, timeout=60)
            assert r.rc in (0, 9), r.describe()  # 0: it finished before the k-th commit
        else:  # copy the file while a writer has it open mid-run, then put the copy back
            copy = path.with_suffix(".copy")
            _model.run(path, bad, batch, stop_after=k, on_stop=lambda c=copy: shutil.copy(path, c))
            if copy.exists():
                copy.replace(path)
        _check_prefix(path, exp)
    _model.run(path, bad, final_batch, stop_after=None)
    c = open_cache(path, require_complete=True)
    ids, vectors, names, skipped = exp
    assert list(c.ids) == ids
    np.testing.assert_array_equal(c.features, vectors)
    assert [c.classes[i] for i in c.labels] == names
    assert sorted(c.skipped) == skipped
    assert verify_cache(path) == []
    FIGURES["property examples (interrupted writes = one write)"] += 1
    FIGURES["  interruptions in them"] += len(interruptions)
