"""The HDF5 superblock's file-consistency flags: read them, and clear those a dead writer left.

HDF5 marks a file 'open for writing' in its superblock while a writer has it open, and refuses
to open a marked file again (readers included) unless the mark says SWMR, which SWMR readers
accept. A writer killed while it had the file open *without* SWMR leaves a mark nothing in
h5py can clear (the C tool ``h5clear -s`` can), so the file reads as broken although its content
is intact. ``CacheWriter`` holds the writer lock when it calls ``clear_write_flags``, so it
knows the writer that left the mark is gone.

Only superblock versions 2 and 3 at offset 0 are handled (what ``libver="latest"`` writes):
the flags byte is at offset 11 and the superblock ends in a Jenkins lookup3 checksum, which is
checked before anything is changed, so a file of another layout is never touched.
"""

from __future__ import annotations

import os
import struct

SIGNATURE = b"\x89HDF\r\n\x1a\n"
WRITE_ACCESS = 0x01  # H5F_SUPER_WRITE_ACCESS
SWMR_WRITE_ACCESS = 0x04  # H5F_SUPER_SWMR_WRITE_ACCESS
_FLAGS_AT = 11
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, as HDF5's ``H5_checksum_lookup3`` computes it."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    k = 0
    while n - k > 12:
        x, y, z = struct.unpack_from("<3I", data, k)
        a, b, c = (a + x) & _M, (b + y) & _M, (c + z) & _M
        a = ((a - c) & _M) ^ _rot(c, 4)
        c = (c + b) & _M
        b = ((b - a) & _M) ^ _rot(a, 6)
        a = (a + c) & _M
        c = ((c - b) & _M) ^ _rot(b, 8)
        b = (b + a) & _M
        a = ((a - c) & _M) ^ _rot(c, 16)
        c = (c + b) & _M
        b = ((b - a) & _M) ^ _rot(a, 19)
        a = (a + c) & _M
        c = ((c - b) & _M) ^ _rot(b, 4)
        b = (b + a) & _M
        k += 12
    if n - k == 0:
        return c
    x, y, z = struct.unpack("<3I", data[k:].ljust(12, b"\0"))
    a, b, c = (a + x) & _M, (b + y) & _M, (c + z) & _M
    c = ((c ^ b) - _rot(b, 14)) & _M
    a = ((a ^ c) - _rot(c, 11)) & _M
    b = ((b ^ a) - _rot(a, 25)) & _M
    c = ((c ^ b) - _rot(b, 16)) & _M
    a = ((a ^ c) - _rot(c, 4)) & _M
    b = ((b ^ a) - _rot(a, 14)) & _M
    c = ((c ^ b) - _rot(b, 24)) & _M
    return c


def _superblock(head: bytes) -> int | None:
    """Length of a checksummed v2/v3 superblock at the start of ``head``, or None."""
    if len(head) < 12 or head[:8] != SIGNATURE or head[8] not in (2, 3):
        return None
    end = 12 + 4 * head[9]  # base, extension, end-of-file and root addresses
    if len(head) < end + 4:
        return None
    (stored,) = struct.unpack_from("<I", head, end)
    return end if lookup3(head[:end]) == stored else None


def write_flags(path: str | os.PathLike) -> int | None:
    """The superblock's consistency flags, or None when it is not a checksummed v2/v3 one."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    return head[_FLAGS_AT] if _superblock(head) is not None else None


def truncation(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size, expected size) when a closed file is shorter than its superblock says, else None.

    HDF5 checks this when it opens a file without SWMR, but not with SWMR (a writer may be
    extending the file), and a SWMR read of a truncated file can then spin for minutes. A file
    with no writer mark has been closed, and closing makes the file exactly as long as the
    superblock's end-of-file address, so a shorter one lost its tail.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    end = _superblock(head)
    if end is None or head[_FLAGS_AT]:
        return None
    width = head[9]
    base = int.from_bytes(head[12 : 12 + width], "little")
    eof = int.from_bytes(head[12 + 2 * width : 12 + 3 * width], "little")
    return (size, base + eof) if size < base + eof else None


def extend_eoa(path: str | os.PathLike, increment: int = 1 << 20) -> bool:
    """Set the superblock's end-of-file address past the file's end, as ``h5clear --increment``.

    A SWMR writer that died (killed, or its disk full) may have grown a global heap, where the
    ids live, past the end of file its superblock recorded, or have written only the start of
    a grown heap; HDF5 then refuses to read the committed ids stored in it ("len exceeds
    EOA"). Moving the address past the end lets it load the heap (bytes past the end of the
    file read as zeros, which a heap reads as free space), so the committed rows can be read
    and recovered. The caller must hold the cache's writer lock, or be its writer. True if set.
    """
    with open(path, "r+b") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
        end = _superblock(head)
        if end is None or not head[_FLAGS_AT] & SWMR_WRITE_ACCESS:
            return False
        width = head[9]
        base = int.from_bytes(head[12 : 12 + width], "little")
        at = 12 + 2 * width
        eoa = max(base + int.from_bytes(head[at : at + width], "little"), size) + increment
        block = bytearray(head[:end])
        block[at : at + width] = (eoa - base).to_bytes(width, "little")
        f.seek(0)
        f.write(bytes(block) + struct.pack("<I", lookup3(bytes(block))))
        f.flush()
        os.fsync(f.fileno())
    return True


def clear_write_flags(path: str | os.PathLike) -> bool:
    """Clear a dead writer's 'open for writing' mark (as ``h5clear -s``); True if cleared.

    The caller must hold the cache's writer lock: clearing the mark of a live writer would let
    a second writer in.
    """
    with open(path, "r+b") as f:
        head = f.read(64)
        end = _superblock(head)
        if end is None or not head[_FLAGS_AT]:
            return False
        block = bytearray(head[:end])
        block[_FLAGS_AT] = 0
        f.seek(0)
        f.write(bytes(block) + struct.pack("<I", lookup3(bytes(block))))
        f.flush()
        os.fsync(f.fileno())
    return True
