"""Open a file in HDF5's SWMR mode (one writer appends while readers read), for either side.

A SWMR reader takes a bad checksum, or a read past the end of the file, for a writer's append
in flight, and retries it: 100 times by default, backing off, which is minutes on a truncated
or damaged file (issue 13: a truncated cache left by a killed writer hung ``open_cache`` for
over 40 s). Retrying only makes sense while a writer lives; once none holds the lock (it was
killed, or its disk filled up) nothing can change the file, so it is opened with one attempt,
and damage is an error at once.

h5py does not wrap ``H5Pset_metadata_read_attempts``, so it is called through ctypes in the
very HDF5 library h5py loaded (found in ``/proc/self/maps``; elsewhere the default stays).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re

import h5py


def open_swmr_read(path, *, settled: bool) -> h5py.File:
    """Open a SWMR writer's file for reading; ``settled``: no writer can be appending to it."""
    fapl = _fapl()
    if settled:
        set_read_attempts(fapl, 1)
    flags = h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))


def open_swmr_write(path) -> h5py.File:
    """Open read-write straight in SWMR mode: the file is never marked as a plain writer's."""
    flags = h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=_fapl()))


def _fapl():
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    if hasattr(fapl, "set_file_locking"):
        fapl.set_file_locking(False, False)  # as locking=False: our own lock file rules
    return fapl


def set_read_attempts(fapl, attempts: int) -> bool:
    """``H5Pset_metadata_read_attempts`` on an h5py file access list; False if unavailable."""
    fn = _hdf5_function("H5Pset_metadata_read_attempts")
    return fn is not None and fn(fapl.id, attempts) >= 0


@functools.cache
def _hdf5_function(name: str):
    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "libhdf5" in line}
    except OSError:
        return None
    for lib in sorted(libs):
        if not re.fullmatch(r"libhdf5(?:_serial)?[-.].*", os.path.basename(lib)):
            continue  # libhdf5_hl and friends
        try:
            fn = getattr(ctypes.CDLL(lib), name)
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int64, ctypes.c_uint]  # hid_t is 64 bits since HDF5 1.10
        fn.restype = ctypes.c_int
        return fn
    return None
