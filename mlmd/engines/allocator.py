"""Keep freed memory in the process (glibc malloc), so that MD steps stop paying the kernel for fresh pages.

Every energy + forces evaluation allocates and frees the same large per-edge tensors. glibc serves
allocations above its mmap threshold (at most 32 MB) with fresh mmap'd pages and unmaps them on free, so
every step page-faults and zero-fills them again: measured on 12,288 water atoms, 2.1 s of kernel time on
top of 1.3 s of computation per step (and ~30% extra at 1,536 atoms). Serving them from the heap and never
trimming it removes that (0 page faults per step); the price is that the process keeps its peak memory,
which the next step needs anyway. The same effect as jemalloc with decay disabled, without preloading.

The engines call keep_freed_memory() when they load a model; MLMD_KEEP_MEMORY=0 leaves malloc alone.
The LAMMPS plugin does the same in C++ (pair_mlmd.cpp).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Ask glibc to serve large allocations from the heap and never give its top back; True if it did.

    Process-wide and idempotent; does nothing (False) without glibc or with MLMD_KEEP_MEMORY=0. Threads
    other than the main one still fall back to mmap for blocks larger than their arena (glibc does that).
    """
    global _done
    if _done:
        return True
    if os.environ.get("MLMD_KEEP_MEMORY", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1 as a size is "never" (glibc converts it to SIZE_MAX)
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    return _done
