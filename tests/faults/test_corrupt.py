"""Caches truncated or overwritten with garbage at random offsets (seeded).

Every command that opens such a file either fails with one clear ``error: ...`` line (exit 1,
no traceback, no hang), or, where the damage hit bytes the cache does not use, still works
and verifies. ``colhead cache verify`` never passes a file whose content changed: every
dataset carries a checksum (Fletcher-32, CRC-32 for strings and frozen vectors; issue 13), and
a file that opens but reads other values fails the test unless verify reports it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import broken_files, photo, write_image

from ._procs import FIGURES, extract_argv
from .conftest import FULL_CORRUPT

# open_cache in a fresh process: prints what it read, or the CacheError; anything else is a
# traceback and fails the test.
_OPEN = """
import hashlib, json, sys
from colhead.cache import CacheError, open_cache
try:  # ids and hashes may be read on first use: a CacheError then counts the same
    c = open_cache({path!r})
    h = hashlib.sha256(c.features.tobytes())
    h.update(json.dumps([list(c.ids), c.labels.tolist(), c.classes, c.skipped]).encode())
except CacheError as e:
    print(json.dumps({{"error": str(e)}}))
else:
    print(json.dumps({{"rows": len(c), "digest": h.hexdigest()}}))
"""


@pytest.fixture(scope="session")
def base_cache(zygote, tmp_path_factory):
    """A small complete cache with rows, classes and skipped items, and its folder."""
    d = tmp_path_factory.mktemp("corrupt-base")
    root = d / "imgs"
    for c, name in enumerate(["ant", "bee", "cow"]):
        for i in range(6):
            write_image(root / name / f"{i}.png", photo(100 * c + i, size=(24, 20), cls=c))
    broken_files(root / "bee")
    out = d / "base.h5"
    r = zygote.run(extract_argv(out, f"folder:{root}", batch_size=4))
    assert r.rc == 0, r.describe()
    ref = zygote.run(code=_OPEN.format(path=str(out)))
    return out, root, json.loads(ref.out)


def damage(src: Path, dst: Path, rng: np.random.Generator) -> str:
    """Copy ``src`` to ``dst`` with one seeded injury; return what was done."""
    data = bytearray(src.read_bytes())
    size = len(data)
    kind = rng.choice(["truncate", "garbage", "garbage", "zeros", "header", "vectors"])
    if kind == "vectors":  # inside committed vectors: only a checksum can tell (issue 13)
        start, length = _vector_bytes(src)
        at, n = start + int(rng.integers(0, length - 8)), int(rng.integers(1, 9))
        data[at : at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        dst.write_bytes(bytes(data))
        return f"{n} random bytes inside the vectors, at offset {at} of {size}"
    if kind == "truncate":
        at = int(rng.integers(0, size))
        dst.write_bytes(bytes(data[:at]))
        return f"truncated to {at} of {size} bytes"
    if kind == "header":  # the superblock and the root group's object header
        at, n = int(rng.integers(0, 512)), int(rng.integers(1, 16))
    else:
        at = int(rng.integers(0, size - 1))
        n = int(rng.choice([1, 8, 64, 512, 4096]))
    n = min(n, size - at)
    fill = bytes(n) if kind == "zeros" else rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    data[at : at + n] = fill
    dst.write_bytes(bytes(data))
    return f"{n} {'zero' if kind == 'zeros' else 'random'} bytes at offset {at} of {size}"


def _vector_bytes(path: Path) -> tuple[int, int]:
    """(file offset, length) of the committed vectors of row 0 on: contiguous or first chunk."""
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        ds = f["features"]
        rows = ds.shape[0] if ds.chunks is None else min(ds.shape[0], ds.chunks[0])
        at = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
        return at, rows * ds.shape[1] * ds.dtype.itemsize


def check_variant(zygote, base_cache, work: Path, rng) -> tuple[str, str, int]:
    """Damage a copy of the base cache, run every command on it; return what, outcome, rc."""
    base, root, ref = base_cache
    bad = work / "c.h5"
    what = damage(base, bad, rng)
    snapshot = bad.read_bytes()
    info = zygote.run(["cache", "info", str(bad)], timeout=60)
    verify = zygote.run(["cache", "verify", str(bad)], timeout=60)
    opened = zygote.run(code=_OPEN.format(path=str(bad)), timeout=60)
    ls = zygote.run(["cache", "ls", str(work)], timeout=60)
    heads = zygote.run(
        ["heads", "--train", str(bad), "--test", str(base), "--head", "knn"], timeout=60
    )
    for r in (info, verify, opened, ls, heads):
        r.assert_no_crash()
    assert bad.read_bytes() == snapshot, "a reader changed the file"
    got = json.loads(opened.out)
    if "error" in got:
        assert verify.rc == 1 and "problem" in verify.out, verify.describe()
        # info reads no vectors and heads no hashes: damage only in what a command does not
        # read (a chunk whose checksum fails) need not stop it. Either way a clear error or
        # a result, never a traceback (assert_no_crash above); verify reads everything.
        assert info.rc in (0, 1) and heads.rc in (0, 1)
        outcome = "failed cleanly"
    elif got == ref:
        outcome = "intact"
    else:  # the file opens but reads other values: verify must say so (issue 16)
        assert verify.rc == 1 and "problem" in verify.out, (
            f"silent damage ({what}): the file reads other values and verify passes it\n"
            + verify.describe()
        )
        outcome = "changed, caught by verify"
    # Resuming into it: fails clearly, or works and leaves a cache that verifies.
    resume = zygote.run(extract_argv(bad, f"folder:{root}", batch_size=4), timeout=120)
    resume.assert_no_crash()
    if resume.rc == 0:
        after = zygote.run(["cache", "verify", str(bad)], timeout=60)
        assert after.rc == 0, "resumed into, then\n" + after.describe()
    return what, outcome, resume.rc


def try_variants(zygote, base_cache, tmp_path, count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tally = {"failed cleanly": 0, "intact": 0, "changed, caught by verify": 0}
    failures = []
    for k in range(count):
        work = tmp_path / f"v{k}"
        work.mkdir()
        try:
            what, outcome, rc = check_variant(zygote, base_cache, work, rng)
        except AssertionError as e:
            failures.append(f"variant {k} ({work}): {e}")
            continue
        tally[outcome] += 1
        print(f"variant {k}: {what}: {outcome}; resume rc {rc}")
    assert not failures, "\n\n".join(failures)
    return tally


def _report(tally: dict) -> None:
    FIGURES["corrupt cache files tried"] += sum(tally.values())
    FIGURES["  refused with a clear error"] += tally["failed cleanly"]
    FIGURES["  damage in unused bytes: still intact"] += tally["intact"]
    FIGURES["  opens with other values, caught by verify"] += tally["changed, caught by verify"]


def test_corrupt_caches_fail_clearly_or_still_verify(zygote, base_cache, corrupt_count, tmp_path):
    tally = try_variants(zygote, base_cache, tmp_path, corrupt_count, seed=11)
    _report(tally)


@pytest.mark.slow
def test_corrupt_caches_at_the_full_count(zygote, base_cache, corrupt_count, tmp_path):
    tally = try_variants(zygote, base_cache, tmp_path, max(FULL_CORRUPT, corrupt_count), seed=99)
    _report(tally)


def test_a_missing_or_empty_cache_file(zygote, tmp_path):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    folder = tmp_path / "dir.h5"
    folder.mkdir()
    for f in (tmp_path / "missing.h5", empty, folder):
        for argv in (["cache", "info", str(f)], ["cache", "verify", str(f)]):
            r = zygote.run(argv, timeout=60)
            r.assert_no_crash()
            assert r.rc == 1
    shutil.rmtree(folder)


def test_damage_inside_committed_vectors_is_detected(base_cache, tmp_path):
    """A complete cache is frozen (cache/_freeze.py): a CRC-32 per block guards its vectors."""
    import h5py

    from colhead.cache import verify_cache

    base, _, _ = base_cache
    bad = tmp_path / "c.h5"
    shutil.copy(base, bad)
    with h5py.File(bad, "r", locking=False) as f:
        ds = f["features"]  # contiguous once frozen, else chunked
        at = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
    data = bytearray(bad.read_bytes())
    data[at + 64 : at + 72] = b"\x00\x00\x80\x3f" * 2  # two floats of row 0 become 1.0
    bad.write_bytes(bytes(data))
    from colhead.cache import open_cache

    if open_cache(bad).features[0, 16] != 1.0:  # not an AssertionError: a real failure
        raise RuntimeError("the damage did not land in row 0's vector")
    assert verify_cache(bad) != []
