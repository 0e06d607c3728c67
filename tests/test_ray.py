"""The Ray engine against the local one, on a real local Ray (2 CPUs): same rows, same resume."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
# Ray Data's own deprecation notices about its settings, not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

from _ray_local import descendants, listening, not_on_loopback  # noqa: E402

import colhead  # noqa: E402
from colhead.cache import open_cache, verify_cache  # noqa: E402
from colhead.extract._ray import _connect, _is_loopback, extract_ray  # noqa: E402
from conftest import broken_files  # noqa: E402

FAST = dict(column="tiny", precision="fp32", progress=False)


@pytest.fixture(scope="module")
def ray_address():
    """One Ray for the module; subprocesses join it by address instead of starting their own.

    Started the way colhead starts its private Ray (``_connect(None)``: on 127.0.0.1), with
    2 CPUs whatever the machine, so the column actors stay few.
    """
    started = not ray.is_initialized()
    if started:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "cpu_count", lambda: 2)
            _connect(None)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


def test_a_local_ray_listens_on_loopback_only(ray_address):
    # Ray swaps 127.0.0.1 for the machine's interface address unless told not to (see
    # extract/_ray.py _keep_loopback); then its GCS, raylet and workers listen on the network.
    assert ray_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    ours = descendants(os.getpid())  # the driver, GCS, raylet, agents and workers
    assert len(listening(ours)) >= 3  # at least the driver, the GCS and the raylet
    assert not_on_loopback(ours) == []


def test_loopback_addresses_are_recognised():
    for a in ["127.0.0.1:6379", "localhost:6379", "[::1]:6379", "ray://127.0.0.1:10001"]:
        assert _is_loopback(a), a
    for a in ["192.0.2.2:6379", "head:6379", "auto", "ray://10.0.0.1:10001"]:
        assert not _is_loopback(a), a


def _by_id(c):
    order = np.argsort(np.asarray(c.ids, dtype=str), kind="stable")
    return np.asarray(c.ids)[order], c.features[order], c.labels[order]


def assert_same_cache(a, b):
    ids_a, fa, la = _by_id(a)
    ids_b, fb, lb = _by_id(b)
    assert list(ids_a) == list(ids_b)
    assert len(set(b.ids)) == len(b.ids)
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)  # fp32 tolerance
    assert [a.classes[i] for i in la] == [b.classes[i] for i in lb]
    assert a.identity == b.identity and a.config_key == b.config_key


def test_ray_gives_the_local_engines_ids_and_vectors(ray_address, tmp_path):
    ref = colhead.extract(data="digits", out=tmp_path / "local.h5", batch_size=64, workers=0,
                          **FAST)  # fmt: skip
    r = extract_ray(data="digits", out=tmp_path / "ray.h5", batch_size=64, **FAST)
    assert (r.written, r.rows, r.skipped) == (ref.written, ref.rows, 0) == (1797, 1797, 0)
    assert r.device.startswith("ray:") and r.precision == "fp32"
    a, b = open_cache(ref.path), open_cache(r.path)
    assert_same_cache(a, b)
    assert b.metadata["runs"][-1]["engine"] == "ray" and verify_cache(r.path) == []
    # a rerun over a complete cache finds nothing to do, with either engine
    again = extract_ray(data="digits", out=r.path, batch_size=64, **FAST)
    assert (again.written, again.reused) == (0, 1797)
    assert colhead.extract(data="digits", out=r.path, workers=0, **FAST).reused == 1797


def test_ray_skips_broken_files_with_the_same_reasons(ray_address, image_folder, tmp_path):
    broken_files(image_folder / "dog")
    data = f"folder:{image_folder}"
    ref = colhead.extract(data=data, out=tmp_path / "local.h5", batch_size=5, workers=0, **FAST)
    r = extract_ray(data=data, out=tmp_path / "ray.h5", batch_size=5, **FAST)
    assert (r.written, r.skipped_now) == (ref.written, ref.skipped_now) == (12, 3)
    a, b = open_cache(ref.path), open_cache(r.path)
    assert_same_cache(a, b)
    assert sorted(a.skipped) == sorted(b.skipped)


def test_a_ray_run_killed_half_way_resumes_to_the_uninterrupted_result(ray_address, tmp_path):
    ref = colhead.extract(data="digits", out=tmp_path / "ref.h5", batch_size=16, workers=0, **FAST)
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "colhead", "extract", "--engine", "ray", "--ray-address",
           ray_address, "--column", "tiny", "--data", "digits", "--out", str(out),
           "--batch-size", "16", "--precision", "fp32", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = 0
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                seen = len(open_cache(out))  # a reader: safe while the writer appends
            except Exception:
                pass
            if seen >= 40:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed = open_cache(out)
    assert 40 <= len(killed) < 1797 and not killed.complete

    r = extract_ray(data="digits", out=out, batch_size=16, **FAST)  # the same job, rerun
    assert r.reused == len(killed) and r.written == 1797 - len(killed)  # only what was missing
    b = open_cache(out, require_complete=True)
    assert len(b) == 1797
    assert_same_cache(open_cache(ref.path), b)
    # rows the killed run committed are kept as they were
    ids_k, fk, _ = _by_id(killed)
    pos = {i: k for k, i in enumerate(b.ids)}
    np.testing.assert_array_equal(fk, b.features[[pos[i] for i in ids_k]])
    assert verify_cache(out) == []


def test_bad_arguments_fail_before_ray_starts(tmp_path, monkeypatch):
    from colhead.extract import _ray

    def boom(*a, **k):
        raise AssertionError("Ray was started before validation failed")

    monkeypatch.setattr(_ray, "_connect", boom)
    for kwargs, exc, match in [
        (dict(data="folder:/definitely/missing"), FileNotFoundError, "No folder"),
        (dict(data="digits", column="nope"), ValueError, "Unknown column"),
        (dict(data="digits", device="tpu"), ValueError, "device must be"),
        (dict(data="digits", device="cpu", precision="fp16"), ValueError, "fp16 needs a CUDA"),
        (dict(data="digits", workers=0), ValueError, "workers"),
        (dict(data="digits", out="/proc/colhead.h5"), PermissionError, "write"),
    ]:
        with pytest.raises(exc, match=match):
            extract_ray(**{"column": "tiny", "progress": False, **kwargs})
