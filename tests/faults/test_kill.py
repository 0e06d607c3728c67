"""kill -9 an extraction at random moments, resume after each: nothing lost, nothing doubled.

Kill points are drawn (seeded) two ways: a random delay after the process starts (it may land
while the model loads, while the cache is created or recovered, or between any two commits),
and a random count of committed rows, watched by a reader as the writer appends. After every
kill the committed rows must read back as a prefix of the uninterrupted run's; after the last
resume the whole cache must equal it, and ``colhead cache verify`` must pass.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from colhead.cache import CacheError, open_cache

from ._procs import FIGURES, extract_argv, same_content
from .conftest import FULL_KILLS


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _rows(path: Path) -> int:
    try:
        return len(open_cache(path, include_stale=True))
    except Exception:  # not created yet, or being recovered (renamed into place) right now
        return 0


def _assert_prefix(path: Path, ref, *, ordered: bool) -> int:
    """The committed rows of an interrupted cache are rows of the reference, intact."""
    if not path.exists():
        return 0
    c = open_cache(path)
    n = len(c)
    assert len(set(c.ids)) == n, "duplicate ids after a kill"
    pos = {id_: i for i, id_ in enumerate(ref.ids)}
    idx = np.array([pos[i] for i in c.ids], dtype=int)
    if ordered:
        assert (idx == np.arange(n)).all(), "rows are not a prefix of the uninterrupted run"
        np.testing.assert_array_equal(c.features, ref.features[idx])
    else:  # Ray: rows in arrival order, vectors from another process (fp32 tolerance)
        np.testing.assert_allclose(c.features, ref.features[idx], rtol=1e-5, atol=1e-6)
    assert [c.classes[i] for i in c.labels] == [ref.classes[i] for i in ref.labels[idx]]
    return n


def assert_same_rows(c, ref, *, ordered: bool) -> None:
    """A finished cache holds the reference's rows: in its order (local engine), or in any
    order with vectors within fp32 tolerance (Ray writes batches as they arrive)."""
    if ordered:
        assert same_content(c, ref) == []
        return
    order, ref_order = np.argsort(c.ids), np.argsort(ref.ids)
    assert list(c.ids[order]) == list(ref.ids[ref_order]), "other ids than the reference's"
    np.testing.assert_allclose(c.features[order], ref.features[ref_order], rtol=1e-5, atol=1e-6)
    names = [c.classes[i] if i >= 0 else None for i in c.labels[order]]
    assert names == [ref.classes[i] if i >= 0 else None for i in ref.labels[ref_order]]
    assert sorted(c.skipped) == sorted(ref.skipped)


def kill_and_resume(zygote, argv, ref, ref_seconds, out: Path, count: int, seed: int, *, engine):
    """Kill ``argv`` ``count`` times at seeded random moments, resuming each time; check all."""
    ordered = engine == "local"
    rng = np.random.default_rng(seed)
    kills = completed = 0
    by_delay = by_rows = 0
    n = len(ref)
    while kills < count:
        done = _rows(out)
        by = "delay" if rng.random() < 0.5 else "rows"
        target = int(rng.integers(done + 1, n)) if done + 1 < n else n
        # Half the delays fall in the first 0.4 s, where the writer opens, recovers the file a
        # killed run left and stamps its metadata; the rest anywhere in a whole run.
        delay = float(rng.uniform(0, 0.4 if rng.random() < 0.5 else ref_seconds))
        child = zygote.start(argv)
        if by == "delay":
            time.sleep(delay)
        else:
            deadline = time.monotonic() + 120
            while _rows(out) < target and _state(child.pid) not in "ZX":
                assert time.monotonic() < deadline, "no progress in 120 s"
                time.sleep(0.003)
        child.kill()
        r = child.wait(120)
        if r.rc == -9:
            kills += 1
            by_delay += by == "delay"
            by_rows += by == "rows"
            _assert_prefix(out, ref, ordered=ordered)
        else:  # it finished before the kill: check it, then start a fresh file
            assert r.rc == 0, r.describe()
            assert_same_rows(open_cache(out, require_complete=True), ref, ordered=ordered)
            completed += 1
            out.unlink()
    r = zygote.run(argv)
    assert r.rc == 0, r.describe()
    final = open_cache(out, require_complete=True)
    assert_same_rows(final, ref, ordered=ordered)
    assert len(set(final.ids)) == len(final.ids) == n
    v = zygote.run(["cache", "verify", str(out)])
    assert (v.rc, v.out.strip().endswith("OK")) == (0, True), v.describe()
    leftovers = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
    assert leftovers == [], f"files left beside the cache: {leftovers}"
    FIGURES[f"kill -9 points survived ({engine})"] += kills
    FIGURES[f"  of which at a random delay ({engine})"] += by_delay
    FIGURES[f"  of which at a random row count ({engine})"] += by_rows
    print(
        f"{engine}: {kills} kills ({by_delay} by delay, {by_rows} by rows), {completed} runs done"
    )


def test_kill_9_at_random_moments_then_resume(zygote, digits_ref, fault_count, tmp_path):
    ref_path, ref, seconds = digits_ref
    out = tmp_path / "k" / "c.h5"
    out.parent.mkdir()
    argv = extract_argv(out, batch_size=4, extra=["--split", "test"])
    kill_and_resume(zygote, argv, ref, seconds, out, fault_count, seed=7, engine="local")


@pytest.mark.slow
def test_kill_9_at_the_full_count_of_moments(zygote, digits_ref, fault_count, tmp_path):
    ref_path, ref, seconds = digits_ref
    out = tmp_path / "k" / "c.h5"
    out.parent.mkdir()
    argv = extract_argv(out, batch_size=4, extra=["--split", "test"])
    count = max(FULL_KILLS, fault_count)
    kill_and_resume(zygote, argv, ref, seconds, out, count, seed=2024, engine="local")


RAY_KILLS = 2  # by default: each Ray run costs seconds of imports and start-up


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs) that every killed and resumed run joins by address."""
    ray = pytest.importorskip("ray")
    _ray = pytest.importorskip("colhead.extract._ray")
    started = not ray.is_initialized()
    if started:
        _ray._keep_loopback()  # on 127.0.0.1 only, as colhead's own local Ray (issue 13)
        ray.init(
            address="local",
            num_cpus=2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level=logging.ERROR,
        )
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


def _ray_kills(zygote, ray_cluster, tmp_path, count: int, seed: int) -> None:
    # The children were forked before this Ray started: hand them its client settings.
    zygote.env = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}

    def argv(out):
        extra = ["--split", "test", "--engine", "ray", "--ray-address", ray_cluster]
        return extract_argv(out, batch_size=16, workers=1, extra=extra)

    ref_out = tmp_path / "ref.h5"
    r = zygote.run(argv(ref_out), timeout=300)
    assert r.rc == 0, r.describe()
    out = tmp_path / "k" / "c.h5"
    out.parent.mkdir()
    ref = open_cache(ref_out)
    try:
        kill_and_resume(zygote, argv(out), ref, r.seconds, out, count, seed=seed, engine="ray")
    finally:
        zygote.env = {}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_kill_9_the_ray_engine_then_resume(zygote, ray_cluster, fault_count, tmp_path):
    _ray_kills(zygote, ray_cluster, tmp_path, min(RAY_KILLS, fault_count), seed=3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_kill_9_the_ray_engine_at_the_full_count(zygote, ray_cluster, fault_count, tmp_path):
    _ray_kills(zygote, ray_cluster, tmp_path, max(FULL_KILLS, fault_count), seed=4)


def test_a_ray_cluster_that_is_not_there_is_a_clear_error(monkeypatch, capsys, tmp_path):
    pytest.importorskip("ray")
    _ray = pytest.importorskip("colhead.extract._ray")
    from colhead.cli import main

    def unreachable(address):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(_ray, "_connect", unreachable)
    argv = extract_argv(tmp_path / "c.h5", workers=1, extra=["--engine", "ray"])
    assert main([*argv, "--ray-address", "10.0.0.1:6379"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Failed to connect to Ray cluster at 10.0.0.1:6379")


# Each window a crash can hit, hit on purpose: the child dies (os._exit, no clean-up, as
# kill -9) at an exact point inside the writer, then a plain rerun must repair and finish.
_DIE = """
import os
import h5py
from colhead.cache import _layout, _writer
from colhead.cli import main

def dying(owner, name, after_calls):
    real = getattr(owner, name)
    calls = [0]
    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] >= after_calls:
            os._exit(9)
        return out
    setattr(owner, name, wrapper)

def dying_in_stamp(path):
    # inside the short non-SWMR session: the attribute is set, the file not yet closed
    real = h5py.File.close
    def close(self):
        if self.id.valid and self.filename == path and self.mode == "r+" and not self.swmr_mode:
            os._exit(9)
        return real(self)
    h5py.File.close = close

{hook}
main({argv!r})
"""
CRASH_POINTS = {
    # name: (hook, needs a partial cache first)
    "creating the file, before its rename": ("dying(_layout, 'layout', 1)", False),
    "stamping metadata, before switching to SWMR": ("dying_in_stamp({out!r})", True),
    "between a batch's data and its commit": ("dying(_writer, '_extend', 9)", True),
    "committing a batch (after phase 2)": ("dying(_writer.CacheWriter, '_write_commit', 7)", True),
    "recovering a killed run's file, mid-copy": ("dying(_layout, '_put', 3)", True),
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_a_crash_at_each_window_of_the_writer_is_repaired(zygote, digits_ref, tmp_path, point):
    ref_path, ref, _ = digits_ref
    out = tmp_path / "c.h5"
    argv = extract_argv(out, batch_size=4, extra=["--split", "test"])
    hook, partial = CRASH_POINTS[point]
    if partial:  # a run killed after 20 commits: the file a resumed run recovers first
        code = _DIE.format(hook="dying(_writer.CacheWriter, '_write_commit', 20)", argv=argv)
        assert zygote.run(code=code).rc == 9
        assert _assert_prefix(out, ref, ordered=True) > 0
    r = zygote.run(code=_DIE.format(hook=hook.format(out=str(out)), argv=argv))
    assert r.rc == 9, r.describe()
    if out.exists():
        try:
            _assert_prefix(out, ref, ordered=True)
        except CacheError as e:  # only while (or after) a writer opened it without SWMR
            assert "stamping" in point and "Rerun the same `colhead extract`" in str(e)
    r = zygote.run(argv)
    assert r.rc == 0, r.describe()
    assert same_content(open_cache(out, require_complete=True), ref) == []
    assert zygote.run(["cache", "verify", str(out)]).rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
    FIGURES["crash windows hit on purpose"] += 1
