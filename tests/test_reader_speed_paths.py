"""The reader's fast paths (issue 14): frozen caches memory-mapped, chunked ones read directly.

Every path must give exactly the rows that were written: frozen (contiguous) complete caches,
chunked caches still being written, chunked with Fletcher-32 checksums, with stale rows, in
both stored dtypes. Speed itself is measured by ``bench/cache.py``, never asserted here.
"""

import io
import mmap
import os

import h5py
import numpy as np
import pytest

from colhead.cache import CacheError, CacheWriter, open_cache, verify_cache
from colhead.cache._freeze import CRC

DIM = 6
IDENT = {
    "column": "tiny",
    "weights_sha256": "0" * 64,
    "preprocess": {},
    "precision": "fp32",
    "store_dtype": "float32",
    "dataset": "digits:all",
}


def vec(i: int) -> np.ndarray:
    return (i + np.arange(DIM) / DIM).astype(np.float32)


def sha(i: int) -> str:
    return f"{i:064x}"


def write(path, nums, *, dtype="float32", complete=True, retire=()):
    ident = {**IDENT, "store_dtype": dtype}
    with CacheWriter(path, identity=ident, metadata={}, dim=DIM, store_dtype=dtype) as w:
        w.class_indices(["a", "b"])
        ids = [f"item/{i:04d}.png" for i in nums]
        w.append(ids, [sha(i) for i in nums], [(0, 0)] * len(ids), [i % 2 for i in nums],
                 np.stack([vec(i) for i in nums]))  # fmt: skip
        if retire:
            w.retire(rows=retire)
        if complete:
            w.finish()
    return path


def expect(c, nums):
    assert list(c.ids) == [f"item/{i:04d}.png" for i in nums]
    assert list(c.hashes) == [sha(i) for i in nums]
    assert c.labels.tolist() == [i % 2 for i in nums]
    np.testing.assert_array_equal(c.features, np.stack([vec(i) for i in nums]))


def mapped(a: np.ndarray) -> bool:
    """Whether an array's memory is a memory map (an mmap object down its chain of bases)."""
    while a is not None:
        if isinstance(a, mmap.mmap):
            return True
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return False


def layout(path) -> tuple:
    with h5py.File(path, "r", locking=False) as f:
        return f["features"].chunks, CRC in f


def test_a_complete_cache_is_frozen_and_its_features_memory_mapped(tmp_path):
    p = write(tmp_path / "c.h5", range(50))
    assert layout(p) == (None, True)  # contiguous, with its CRC-32s
    c = open_cache(p)
    expect(c, range(50))
    assert mapped(c.features)
    assert c.features.flags.writeable  # copy-on-write: usable as any array ...
    c.features[0] = 0
    expect(open_cache(p), range(50))  # ... and the file never changes
    m = open_cache(p, mmap=False)
    expect(m, range(50))
    assert not mapped(m.features)
    assert verify_cache(p) == []


def test_an_incomplete_cache_stays_chunked_and_reads_the_same(tmp_path):
    p = write(tmp_path / "c.h5", range(30), complete=False)
    assert layout(p)[0] is not None
    expect(open_cache(p), range(30))


@pytest.mark.parametrize("complete", [True, False])
def test_stale_rows_are_left_out_unless_asked_for(tmp_path, complete):
    p = write(tmp_path / "c.h5", range(20), complete=complete, retire=[3, 7])
    expect(open_cache(p), [i for i in range(20) if i not in (3, 7)])
    expect(open_cache(p, include_stale=True), range(20))


@pytest.mark.parametrize("complete", [True, False])
def test_float16_caches_read_in_either_dtype(tmp_path, complete):
    p = write(tmp_path / "c.h5", range(40), dtype="float16", complete=complete)
    want = np.stack([vec(i) for i in range(40)]).astype(np.float16)
    raw = open_cache(p, dtype=None).features
    assert raw.dtype == np.float16 and np.array_equal(raw, want)
    as32 = open_cache(p).features
    assert as32.dtype == np.float32 and np.array_equal(as32, want.astype(np.float32))


def test_appending_to_a_frozen_cache_thaws_it_and_keeps_every_row(tmp_path):
    p = write(tmp_path / "c.h5", range(10))
    held = open_cache(p)  # a reader's map made before the writer rewrites the file
    ident = {**IDENT}
    with CacheWriter(p, identity=ident, metadata={}, dim=DIM) as w:
        w.mark_incomplete()
        ids = [f"item/{i:04d}.png" for i in range(10, 15)]
        w.append(ids, [sha(i) for i in range(10, 15)], [(0, 0)] * 5, [i % 2 for i in range(10, 15)],
                 np.stack([vec(i) for i in range(10, 15)]))  # fmt: skip
        assert layout(p)[0] is not None  # chunked while being written
        expect(open_cache(p), range(15))  # read through HDF5 meanwhile (SWMR)
        w.finish()
    assert layout(p) == (None, True)  # frozen again
    expect(open_cache(p), range(15))
    expect(held, range(10))  # the old map still reads the old file


def test_a_rerun_that_adds_nothing_keeps_the_frozen_file(tmp_path):
    p = write(tmp_path / "c.h5", range(10))
    inode = p.stat().st_ino
    with CacheWriter(p, identity=IDENT, metadata={}, dim=DIM) as w:
        w.finish()
    assert p.stat().st_ino == inode and layout(p) == (None, True)


def test_chunked_features_with_fletcher32_read_the_same(tmp_path):
    """Caches of the hardening work (checksummed chunks) and old caches go through read_direct."""
    p = write(tmp_path / "c.h5", range(25), complete=False)
    with h5py.File(p, "r+", locking=False) as f:
        data = f["features"][:]
        del f["features"]
        f.create_dataset("features", data=data, chunks=(4, DIM), maxshape=(None, DIM),
                         fletcher32=True)  # fmt: skip
    c = open_cache(p)
    assert layout(p)[0] == (4, DIM)
    expect(c, range(25))


def test_damage_to_frozen_vectors_is_found_by_verify(tmp_path):
    p = write(tmp_path / "c.h5", range(30))
    with h5py.File(p, "r", locking=False) as f:
        at = f["features"].id.get_offset()
    data = bytearray(p.read_bytes())
    data[at + 8 : at + 12] = b"\x00\x00\x80\x3f"
    p.write_bytes(bytes(data))
    problems = verify_cache(p)
    assert len(problems) == 1 and "CRC-32 mismatch, first at row 0" in problems[0]


def test_ids_and_hashes_are_str_and_the_fingerprint_is_stable(tmp_path):
    p = write(tmp_path / "c.h5", range(5))
    c = open_cache(p)
    assert c.ids.dtype == object and all(type(i) is str for i in c.ids)
    assert all(type(h) is str for h in c.hashes)
    assert c.fingerprint == open_cache(p, mmap=False).fingerprint
    assert len(c) == 5 and c.dim == DIM and "5 x 6 float32" in repr(c)


def test_ids_of_a_frozen_cache_read_later_come_from_the_file_that_was_opened(tmp_path):
    p = write(tmp_path / "c.h5", range(8))
    early, late = open_cache(p), open_cache(p)
    with CacheWriter(p, identity=IDENT, metadata={}, dim=DIM) as w:  # a writer has it open
        expect(early, range(8))  # ids read while a writer has the file open
        w.mark_incomplete()
        w.append(["item/0008.png"], [sha(8)], [(0, 0)], [0], vec(8)[None])  # thaws: a new file
        w.finish()
    expect(late, range(8))
    first = open_cache(p)
    write(tmp_path / "other.h5", range(100, 108))
    os.replace(tmp_path / "other.h5", p)
    expect(first, range(9))  # ids of the file it opened, not of the one renamed over it
    expect(open_cache(p), range(100, 108))
    import pickle

    again = pickle.loads(pickle.dumps(open_cache(p)))  # ids travel, not the descriptor
    expect(again, range(100, 108))


def test_ids_read_later_through_swmr_when_a_plain_open_is_refused(tmp_path, monkeypatch):
    """Older HDF5 refuses a plain open of a file a writer has open: then SWMR, same file."""
    from colhead.cache import _reader

    p = write(tmp_path / "c.h5", range(8))
    c, gone = open_cache(p), open_cache(p)
    plain = h5py.File

    def refuse(name, *a, **k):
        if isinstance(name, io.IOBase):  # the reader's file object, not the writer's
            raise OSError("file is already open for write")
        return plain(name, *a, **k)

    monkeypatch.setattr(_reader.h5py, "File", refuse)
    with CacheWriter(p, identity=IDENT, metadata={}, dim=DIM):
        expect(c, range(8))
    write(tmp_path / "other.h5", range(3))
    os.replace(tmp_path / "other.h5", p)
    with pytest.raises(CacheError, match="was replaced"):
        list(gone.ids)
