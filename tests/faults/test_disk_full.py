"""The disk fills up mid-write: a clear error, the committed rows intact, a rerun finishes.

Two ways to fill it: a file-size limit on the writer process (``RLIMIT_FSIZE`` with SIGXFSZ
ignored, so writes past it fail with EFBIG, as on a full disk), and, where we may mount, a real
small tmpfs (writes fail with ENOSPC), grown afterwards to give the rerun its space.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from colhead.cache import open_cache

from ._procs import FIGURES, extract_argv, same_content
from .test_kill import _assert_prefix

# Where the limit falls: below what a writer wants free before it starts (it refuses, and
# writes nothing), and at 10%, 50% and 90% of the way from the size after the first batch to
# the finished size (mid-run failures).
POINTS = ("no room at all", "under the minimum", 0.1, 0.5, 0.9)

_SIZES = """
import json, os
from colhead.cache import _writer
from colhead.cli import main
real, sizes = _writer.CacheWriter._write_commit, []
def recording(self):
    real(self)
    sizes.append(os.path.getsize(self.path))
_writer.CacheWriter._write_commit = recording
assert main({argv!r}) == 0
print(json.dumps(sizes))
"""


@pytest.fixture(scope="module")
def digits_all_ref(zygote, tmp_path_factory):
    """An uninterrupted digits:all run (1797 rows, batches of 16), and its size at each commit."""
    out = tmp_path_factory.mktemp("ref-all") / "digits.h5"
    r = zygote.run(code=_SIZES.format(argv=extract_argv(out, batch_size=16)))
    assert r.rc == 0, r.describe()
    return out, open_cache(out), json.loads(r.out.splitlines()[-1])


def _limit(point, sizes) -> int:
    if point == "no room at all":
        return 4096
    if point == "under the minimum":
        return 200_000  # < the writer's 256 KiB minimum
    return int(sizes[1] + point * (sizes[-1] - sizes[1]))


def _check_failure(r, out, ref) -> int:
    """A clear error that says how many rows it kept; those rows read back intact."""
    r.assert_no_crash()
    assert r.rc == 1, r.describe()
    assert any(w in r.err for w in ("disk", "space", "too large", "limit")), r.describe()
    said = re.search(r"The (\d+) rows committed before are kept", r.err)
    kept = int(said.group(1)) if said else 0
    if out.exists() and kept:
        assert _assert_prefix(out, ref, ordered=True) == kept
    return kept


def _finish(zygote, argv, out, ref, kept: int) -> None:
    """A rerun with room reuses every kept row and ends equal to the uninterrupted run."""
    r = zygote.run(argv)
    assert r.rc == 0, r.describe()
    assert f" {kept} reused," in r.out, r.describe()
    assert same_content(open_cache(out, require_complete=True), ref) == []
    v = zygote.run(["cache", "verify", str(out)])
    assert v.rc == 0, v.describe()


@pytest.mark.parametrize("point", POINTS)
def test_file_size_limit_mid_write(zygote, digits_all_ref, tmp_path, point):
    _, ref, sizes = digits_all_ref
    out = tmp_path / "c.h5"
    argv = extract_argv(out, batch_size=16)
    limit = _limit(point, sizes)
    r = zygote.run(argv, fsize=limit)
    kept = _check_failure(r, out, ref)
    if not isinstance(point, str):
        assert kept > 0, "nothing was committed before the limit"
    _finish(zygote, argv, out, ref, kept)
    FIGURES["disk-full failures survived (file-size limit)"] += 1
    print(f"limit {limit} B: failed cleanly with {kept} rows kept: {r.err.strip()[:200]}")


@pytest.fixture
def small_tmpfs(tmp_path, digits_all_ref):
    """A tmpfs the cache outgrows half-way between its first batch and its end."""
    sizes = digits_all_ref[2]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    size = (sizes[1] + sizes[-1]) // 2
    opts = f"size={size}"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:100]})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_file_system(zygote, digits_all_ref, small_tmpfs):
    _, ref, sizes = digits_all_ref
    out = small_tmpfs / "c.h5"
    argv = extract_argv(out, batch_size=16)
    r = zygote.run(argv)
    kept = _check_failure(r, out, ref)
    assert kept > 0 and "No space left" in r.err, r.describe()
    grow = ["mount", "-o", f"remount,size={4 * sizes[-1]}", str(small_tmpfs)]
    subprocess.run(grow, check=True)
    _finish(zygote, argv, out, ref, kept)
    FIGURES["disk-full failures survived (full tmpfs)"] += 1
    print(f"full tmpfs: failed cleanly with {kept} rows kept: {r.err.strip()[:200]}")
