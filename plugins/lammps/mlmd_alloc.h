// A caching CPU allocator for torch (libmlmd_alloc.so; the LAMMPS plugin links it, the Python engines load it
// with ctypes). Blocks of at least MLMD_ALLOC_MIN_KB (default 1024) are rounded up to one of 8 size classes per
// power of two, mapped once and kept on per-class free lists, so the per-edge tensors that every MD step
// allocates and frees again are served without page faults; smaller blocks go to torch's default allocator
// (malloc); a free block up to twice the size serves a request too. Cached-but-free bytes are bounded: a new
// mapping first unmaps least-recently used free blocks while live + cached would exceed MLMD_ALLOC_SLACK
// (default 2) times the peak of live bytes. With MLMD_ALLOC_HUGE=1, blocks of 2 MiB and more start on a 2 MiB
// boundary and are advised for transparent huge pages (off by default). Defaults and the figures behind them:
// mlmd_alloc.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// Process-wide mode from MLMD_KEEP_MEMORY, applied once: unset or "1": this allocator (0 if torch refused it);
// "mallopt": glibc never unmaps or trims (the setting before this allocator); "0": malloc left alone.
// Returns what is in force: MLMD_ALLOC_NONE, MLMD_ALLOC_CACHE or MLMD_ALLOC_MALLOPT.
int mlmd_alloc_setup(void);

// Install the caching allocator now (whatever the environment says); 1 if torch uses it.
int mlmd_alloc_install(std::size_t min_block, double slack);

// Counters, in this order (at most n written; returns how many exist): live bytes, cached free bytes, peak live
// bytes, mappings made, mappings released, allocations served from the cache, allocations that mapped.
int mlmd_alloc_stats(std::uint64_t *out, int n);

// Unmap every cached free block (live blocks stay); returns the bytes released.
std::uint64_t mlmd_alloc_trim(void);
}

enum { MLMD_ALLOC_NONE = 0, MLMD_ALLOC_CACHE = 1, MLMD_ALLOC_MALLOPT = 2 };
