"""What a cache file may contain before colhead reads a byte of its data (issue 13).

HDF5 can point a dataset elsewhere: at another file (external links, external storage), at
a mix of other datasets (virtual datasets), or through a name (soft links). A cache that did
so would make colhead read, verify and merge bytes of files its sender chose. HDF5 can also
declare sizes it does not hold (10^12 rows in a 400 KB file) and run decompression filters;
a reader that trusts either can be made to allocate more memory than the machine has. So,
on every open, before any array is read:

* every object colhead reads is reached by a hard link (``check_links``) and is a plain,
  local dataset: contiguous, chunked or compact, with no external storage (``check_dataset``);
* its filters are in ``ALLOWED_FILTERS``: checksums and byte shuffling, which do not change
  sizes, so what a dataset declares is what the file stores; its chunks are at most
  ``MAX_CHUNK_BYTES``;
* the committed entries fit in the file: rows times bytes per stored row, summed over the
  datasets, is at most the file's size.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from ._format import CacheError

# Fletcher-32 (what colhead writes) and shuffle: neither changes a chunk's size.
ALLOWED_FILTERS = {h5py.h5z.FILTER_FLETCHER32: "fletcher32", h5py.h5z.FILTER_SHUFFLE: "shuffle"}
MAX_CHUNK_BYTES = 16 << 20  # colhead writes chunks of at most ~1 MiB
_LAYOUTS = {h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED}
VLEN_BYTES = 16  # a variable-length string's entry in its dataset: length + global heap id


def check_links(f: h5py.File, path, names, optional=()) -> None:
    """Refuse a file whose datasets ``names`` (and ``optional`` ones, when present) are not
    reached by hard links. Links are looked at, never followed, and no dataset is opened: a
    SWMR reader must open them only after reading /commit (see ``_h5.read_commit``)."""
    for name in list(names) + [n for n in optional if _present(f, n)]:
        parts = name.split("/")
        for k in range(1, len(parts) + 1):  # each group on the way, then the dataset
            _hard_link(f, path, "/".join(parts[:k]))


def check_dataset(obj, path, name: str) -> None:
    """Refuse ``obj`` unless it is a plain local dataset (layout, storage, filters, chunks)."""
    if not isinstance(obj, h5py.Dataset):
        raise CacheError(f"{path}: /{name} is not a dataset; the file is corrupt.")
    _plain_dataset(obj, path, name)


def _present(f: h5py.File, name: str) -> bool:
    """Whether the link ``name`` exists (links on the way are looked at, never followed)."""
    parts = name.split("/")
    for k in range(1, len(parts) + 1):
        link = f.get("/".join(parts[:k]), getlink=True)
        if link is None:
            return False
        if not isinstance(link, h5py.HardLink):
            return True  # present, and refused by check_objects with its message
    return True


def _hard_link(f: h5py.File, path, name: str) -> None:
    link = f.get(name, getlink=True)  # the link itself: never followed here
    if link is None:
        raise CacheError(f"{path} is missing the dataset /{name}: it is corrupt.")
    if isinstance(link, h5py.HardLink):
        return
    if isinstance(link, h5py.ExternalLink):
        what = f"an external link to {link.path} in the file {link.filename!r}"
    elif isinstance(link, h5py.SoftLink):
        what = f"a soft link to {link.path}"
    else:
        what = "a user-defined link"
    raise CacheError(
        f"{path}: /{name} is {what}. A colhead cache holds its own data, so colhead refuses "
        "to follow it (it would read another file's bytes as this cache's). Re-extract the "
        "cache, or ask its sender for one written by colhead."
    )


def _plain_dataset(ds: h5py.Dataset, path, name: str) -> None:
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout not in _LAYOUTS:
        kind = "a virtual dataset" if layout == h5py.h5d.VIRTUAL else f"layout {layout}"
        raise CacheError(
            f"{path}: /{name} is {kind}, whose data lives in other datasets or files; a "
            "colhead cache never is, so it is refused. Re-extract the cache."
        )
    if dcpl.get_external_count():
        raise CacheError(
            f"{path}: /{name} keeps its data in external files ({_external(dcpl)}); a colhead "
            "cache never does, so it is refused (it would read those files). Re-extract it."
        )
    for i in range(dcpl.get_nfilters()):
        code, _, _, fname = dcpl.get_filter(i)
        if code not in ALLOWED_FILTERS:
            raise CacheError(
                f"{path}: /{name} uses the HDF5 filter {fname.decode(errors='replace')!r} "
                f"({code}); colhead reads only {sorted(ALLOWED_FILTERS.values())}, filters "
                "that cannot make a small file decode into a large one. Re-extract the cache."
            )
    if ds.chunks is not None:
        nbytes = int(np.prod(ds.chunks, dtype=np.float64)) * _item_bytes(ds)
        if nbytes > MAX_CHUNK_BYTES:
            raise CacheError(
                f"{path}: /{name} has chunks of {nbytes} bytes, over the {MAX_CHUNK_BYTES} "
                "colhead ever writes; the file is corrupt or not colhead's."
            )


def _external(dcpl) -> str:
    n = min(3, dcpl.get_external_count())
    return ", ".join(repr(dcpl.get_external(i)[0].decode(errors="replace")) for i in range(n))


def _item_bytes(ds: h5py.Dataset) -> int:
    if h5py.check_vlen_dtype(ds.dtype) is not None:  # variable-length strings included
        return VLEN_BYTES
    return ds.dtype.itemsize


def row_bytes(ds: h5py.Dataset) -> int:
    """Bytes the file stores for one entry (row) of ``ds``."""
    return _item_bytes(ds) * int(np.prod(ds.shape[1:], dtype=np.float64))


def check_sizes(f: h5py.File, path, counts: dict) -> None:
    """Refuse counts of committed entries (dataset name -> count) that the file cannot hold."""
    size = os.path.getsize(f.filename)
    total = 0.0
    for name, count in counts.items():
        ds = f[name]
        total += float(count) * row_bytes(ds)
        if ds.chunks is None and ds.id.get_offset() is not None:  # contiguous: all allocated
            end = ds.id.get_offset() + float(ds.id.get_storage_size())
            if end > size:
                raise CacheError(
                    f"{path}: /{name} declares {ds.shape[0]} entries ending at byte {end:.0f}, "
                    f"past the end of the {size}-byte file: it is truncated or corrupt."
                )
    if total > size:
        raise CacheError(
            f"{path} declares {_counts(counts)} committed entries, {total:.3g} bytes, in a file "
            f"of {size} bytes: it is corrupt or not colhead's (refused before reading, so it "
            "cannot exhaust memory)."
        )


def _counts(counts: dict) -> str:
    return ", ".join(f"/{k}: {v}" for k, v in list(counts.items())[:3]) + ", ..."


def check_extent(f: h5py.File, path, counts: dict) -> None:
    """Refuse a file whose committed chunks lie past its end (it lost its tail).

    A writer that died, or whose disk filled up, leaves a file that may end short of what it
    had allocated, which is harmless as long as every committed row is on disk; a copy cut
    short loses committed rows, which would read back as zeros. This tells them apart.
    """
    size = os.path.getsize(f.filename)
    for name, count in counts.items():
        ds = f[name]
        if not count or ds.chunks is None:
            continue
        rows = ds.chunks[0]
        needed = -(-int(count) // rows)  # chunks holding committed rows
        have = [end for start, end in _chunks(ds) if start < count]
        if len(have) < needed or any(end > size for end in have):
            raise CacheError(
                f"{path} is truncated: committed entries of /{name} lie past its end ({size} "
                "bytes; an interrupted copy or download?). Copy it again, or delete it and "
                "extract again."
            )


def _chunks(ds: h5py.Dataset) -> list[tuple[int, int]]:
    """(first row, end byte) of each allocated chunk of ``ds``."""
    out: list[tuple[int, int]] = []
    if hasattr(ds.id, "chunk_iter"):  # HDF5 >= 1.12.3: one pass over the chunk index
        ds.id.chunk_iter(lambda c: out.append((c.chunk_offset[0], c.byte_offset + c.size)))
        return out
    for i in range(ds.id.get_num_chunks()):
        c = ds.id.get_chunk_info(i)
        out.append((c.chunk_offset[0], c.byte_offset + c.size))
    return out
