"""Rows of a shard's dataset read with one ``os.preadv`` straight into the caller's array.

featcache writes every dataset contiguous, unchunked and unfiltered (cache/writer.py), so rows [a, b) of a field are
one run of bytes at a fixed offset of the shard's file. h5py's ``read_direct`` of the same hyperslab is 2-3x slower
on this path (it builds selections and goes through HDF5's I/O pipeline on every call, and took 0.3-0.7M rows/s
where a plain pread of the same bytes took 1.0M on a loaded 2-core box, docs/benchmarks.md "Scale"), and
``os.preadv`` releases the GIL for the whole copy, so the out-of-core loader's prefetch thread reads while the
training loop gathers. Datasets of any other layout, filter, byte order or dtype fall back to ``read_direct``.
"""

from __future__ import annotations

import os
import threading
import weakref

import h5py
import numpy as np

# h5py's FileID -> {dataset name: (byte offset, bytes per row, dtype, row shape) or None (not raw-readable)}
_LAYOUTS: "weakref.WeakKeyDictionary[h5py.h5f.FileID, dict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def raw_layout(f: h5py.File, name: str) -> tuple[int, int, np.dtype, tuple[int, ...]] | None:
    """(byte offset, bytes per row, dtype, row shape) of dataset ``name`` in the file when its rows are one plain run
    of native bytes there (what featcache writes), else None; remembered per open file."""
    with _LOCK:
        per_file = _LAYOUTS.setdefault(f.id, {})
        if name in per_file:
            return per_file[name]
    ds = f[name]
    plist = ds.id.get_create_plist()
    offset = ds.id.get_offset()
    ok = (f.driver == "sec2" and plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_nfilters() == 0
          and plist.get_external_count() == 0 and offset is not None and ds.dtype.isnative
          and ds.dtype.kind in "fiu" and len(ds.shape) >= 1)
    row_shape = tuple(ds.shape[1:])
    value = (int(offset), ds.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64)), ds.dtype, row_shape) if ok \
        else None
    with _LOCK:
        per_file[name] = value
    return value


def read_rows_into(f: h5py.File, name: str, out: np.ndarray, a: int, b: int, dest: int) -> None:
    """Rows [a, b) of dataset ``name`` of the open shard ``f`` into ``out[dest : dest + b - a]``."""
    lay = raw_layout(f, name)
    target = out[dest : dest + b - a]
    if lay is None or lay[2] != out.dtype or lay[3] != out.shape[1:] or not target.flags.c_contiguous:
        f[name].read_direct(out, source_sel=np.s_[a:b], dest_sel=np.s_[dest : dest + b - a])
        return
    offset, row, _, _ = lay
    view = memoryview(target).cast("B")  # type: ignore[arg-type]  # an ndarray is a buffer
    fd = f.id.get_vfd_handle()  # the shard h5py opened (and featcache checked); pread moves no file position
    at, done = offset + a * row, 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], at + done)
        if got == 0:
            raise OSError(f"{f.filename}: {name} rows [{a}, {b}) end before the dataset does (file truncated)")
        done += got
