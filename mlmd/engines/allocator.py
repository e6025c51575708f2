"""Keep freed memory in the process, so that MD steps stop paying the kernel for fresh pages.

Every energy + forces evaluation allocates and frees the same large per-edge tensors. glibc serves
allocations above its mmap threshold (at most 32 MB) with fresh mmap'd pages and unmaps them on free, so
every step page-faults and zero-fills them again: measured on 12,288 water atoms, 2.1 s of kernel time on
top of 1.3 s of computation per step (and ~30% extra at 1,536 atoms).

Two remedies, chosen by MLMD_KEEP_MEMORY:
- unset or "1": mlmd's caching CPU allocator for torch (plugins/lammps/mlmd_alloc.cpp, built beside the LAMMPS
  plugin as libmlmd_alloc.so): large blocks in size classes, mapped once, reused every step. No page faults
  per step, and peak memory near jemalloc's with decay off (benchmarks/RESULTS.md, issue 20 part 5). With
  MLMD_ALLOC_HUGE=1, blocks of 2 MiB and more are put on transparent huge pages (off by default: mlmd_alloc.cpp).
  Without the library (plugin not built) it falls back to the next one.
- "mallopt": glibc serves every block from its heap and never trims it (the setting before the allocator):
  equally fast, but the heap fragments (~1.4x the peak memory).
- "0": malloc left alone.
The engines call keep_freed_memory() when they load a model; the LAMMPS plugin makes the same choice in C++.
This file is also loaded by path in peer processes (benchmarks/peer_worker.py): standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
LIBRARY = "libmlmd_alloc.so"
STATS = ("live", "cached", "peak", "maps", "unmaps", "hits", "misses")
_mode: str | None = None  # "cache", "mallopt" or "none" once applied
_lib: ctypes.CDLL | None = None


def allocator_library() -> Path | None:
    """libmlmd_alloc.so where the LAMMPS plugin is built (a checkout's plugins/lammps/build, or the plugin
    cache of an installed mlmd), or $MLMD_ALLOC_LIBRARY; None if it is not built."""
    if os.environ.get("MLMD_ALLOC_LIBRARY"):
        path = Path(os.environ["MLMD_ALLOC_LIBRARY"])
        return path if path.is_file() else None
    here = Path(__file__).resolve().parents[2] / "plugins" / "lammps" / "build" / LIBRARY
    if here.is_file():
        return here
    try:  # an installed mlmd: beside the plugin in its cache folder
        from mlmd.engines.lammps.build import plugin_build_dir

        path = plugin_build_dir() / LIBRARY
    except ImportError:  # loaded by path outside the mlmd package
        return None
    return path if path.is_file() else None


def _load_library() -> ctypes.CDLL | None:
    path = allocator_library()
    if path is None:
        return None
    import torch  # noqa: F401  (the library resolves its c10 symbols against the torch already loaded)

    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # built for another torch: fall back
        return None
    lib.mlmd_alloc_setup.restype = ctypes.c_int
    lib.mlmd_alloc_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
    lib.mlmd_alloc_stats.restype = ctypes.c_int
    lib.mlmd_alloc_trim.restype = ctypes.c_uint64
    return lib


def _never_trim() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1 as a size is "never" (glibc converts it to SIZE_MAX)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def keep_freed_memory() -> bool:
    """Apply MLMD_KEEP_MEMORY (module docstring) once per process; True if freed memory is now kept.

    Process-wide and idempotent. memory_mode() says which remedy is in force.
    """
    global _mode, _lib
    if _mode is not None:
        return _mode != "none"
    how = os.environ.get("MLMD_KEEP_MEMORY", "1")
    if how == "0":
        _mode = "none"
    else:
        lib = _load_library() if how != "mallopt" else None
        if lib is not None:
            # the library reads MLMD_KEEP_MEMORY itself (as in LAMMPS) and falls back to the mallopt setting
            # if torch refuses the allocator; 1 = cache, 2 = mallopt
            _lib = lib
            _mode = {1: "cache", 2: "mallopt"}.get(lib.mlmd_alloc_setup(), "none")
        else:
            _mode = "mallopt" if _never_trim() else "none"
    return _mode != "none"


def memory_mode() -> str | None:
    """"cache", "mallopt" or "none" once keep_freed_memory() ran, else None."""
    return _mode


def allocator_stats() -> dict[str, int]:
    """The caching allocator's counters (bytes live / cached free / peak live, mappings made and released,
    allocations served from the cache and by a new mapping); empty if it is not in use."""
    if _lib is None or _mode != "cache":
        return {}
    out = (ctypes.c_uint64 * len(STATS))()
    _lib.mlmd_alloc_stats(out, len(STATS))
    return dict(zip(STATS, (int(v) for v in out)))


def trim_cache() -> int:
    """Unmap the caching allocator's free blocks (live tensors stay); the bytes released."""
    return int(_lib.mlmd_alloc_trim()) if _lib is not None and _mode == "cache" else 0
