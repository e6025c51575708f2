// Caching CPU allocator for torch: see mlmd_alloc.h. Why: glibc either unmaps large freed blocks (every MD step
// then page-faults and zero-fills them again: half the CPU time at 12,288 atoms) or, told never to (mallopt),
// keeps them in a heap that fragments (peak RSS ~1.4x jemalloc's). The same tensor sizes come back every step,
// so size-class reuse needs neither. Defaults (environment overrides, read once):
//   MLMD_ALLOC_MIN_KB 1024  smaller blocks go to malloc
//   MLMD_ALLOC_SLACK  2     live + cached free bytes stay under this times the live peak (a step of the water
//                           model maps ~1.5x its live peak with reach 2, ~1.2x with 8; 1.25 thrashed at reach 2)
//   MLMD_ALLOC_REACH  8     a free block up to this many classes larger (8: twice the size) serves a request:
//                           fewer distinct blocks, and the tail pages a request does not use are never touched
//                           (12,288 water atoms in ASE: peak RSS 2163 MB with reach 2, 1973 MB with 8)
//   MLMD_ALLOC_HUGE   0     1: blocks of at least 2 MiB start on a 2 MiB boundary and are advised for transparent
//                           huge pages (madvise; used where the kernel's THP mode is "madvise" or "always"). Off by
//                           default: on this 2-core VM (12,288 water atoms) interleaved medians gained 4-8% per
//                           step, but single runs lost up to 16% and the first evaluation took 3.4 s longer (the
//                           kernel compacting memory for the huge pages; benchmarks/RESULTS.md, session 15)
#include "mlmd_alloc.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <malloc.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

// above torch's default CPU allocator (registered with priority 0)
constexpr uint8_t kPriority = 1;
// x86-64's (and most aarch64 kernels') transparent huge page
constexpr std::size_t kHugePage = std::size_t(2) << 20;

// the class of an n-byte block: n rounded up to a multiple of 2^(p-3) where 2^p <= n, i.e. 8 classes per power
// of two and at most 12.5% rounding (untouched tail pages of a block cost address space, not memory)
std::size_t class_of(std::size_t n)
{
  const int p = 63 - __builtin_clzll(n);
  const std::size_t step = std::size_t(1) << (p - 3);
  return (n + step - 1) / step * step;
}

struct SizeClass {
  std::vector<void *> free;
  std::uint64_t last_use = 0;
};

class CachingAllocator final : public c10::Allocator {
 public:
  CachingAllocator(c10::Allocator *fallback, std::size_t min_block, double slack, int reach, bool huge) :
      fallback_(fallback), fallback_raw_deleter_(fallback->raw_deleter()), min_block_(min_block), slack_(slack),
      reach_(reach), huge_(huge)
  {
  }

  c10::DataPtr allocate(std::size_t n) override
  {
    if (n < min_block_) return fallback_->allocate(n);
    void *p = take(n);
    // context == data, as torch's own CPU allocator does (raw_allocate and is_simple_data_ptr rely on it)
    return {p, p, &raw_delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &raw_delete; }

  void copy_data(void *dest, const void *src, std::size_t count) const override
  {
    default_copy_data(dest, src, count);
  }

  void stats(std::uint64_t *out) const
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::uint64_t v[7] = {live_, cached_, peak_, maps_, unmaps_, hits_, misses_};
    std::memcpy(out, v, sizeof v);
  }

  std::uint64_t trim()
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::uint64_t before = cached_;
    for (auto &kv : classes_)
      while (!kv.second.free.empty()) unmap_one(kv.first, kv.second);
    return before - cached_;
  }

  static CachingAllocator *instance;

 private:
  static void raw_delete(void *p)
  {
    if (p == nullptr) return;
    if (!instance->give_back(p)) instance->fallback_raw_deleter_(p);    // a small block (raw_allocate)
  }

  void *take(std::size_t n)
  {
    const std::size_t want = class_of(n);
    std::lock_guard<std::mutex> lock(mutex_);
    const std::uint64_t now = ++tick_;
    // the class itself, else a free block up to reach_ classes larger: sizes drift a little between MD steps,
    // and a larger block serves without touching its tail pages
    std::size_t size = want;
    for (int k = 0; k <= reach_; ++k, size = class_of(size + 1)) {
      auto it = classes_.find(size);
      if (it == classes_.end() || it->second.free.empty()) continue;
      void *p = it->second.free.back();
      it->second.free.pop_back();
      it->second.last_use = now;
      cached_ -= size;
      ++hits_;
      note_live(size);
      return p;
    }
    // bound the cache: release least-recently used free blocks before mapping more than slack x the live peak
    const double limit = slack_ * double(std::max<std::uint64_t>(peak_, live_ + want));
    while (cached_ > 0 && double(live_ + cached_ + want) > limit) unmap_lru();
    void *p = map_block(want);
    if (p == MAP_FAILED) {
      while (cached_ > 0) unmap_lru();
      p = map_block(want);
    }
    if (p == MAP_FAILED) {
      // torch reports this to Python as an out-of-memory RuntimeError, as for malloc failing
      TORCH_CHECK(false, "mlmd allocator: cannot map ", want, " bytes (out of memory)");
    }
    ++maps_;
    ++misses_;
    size_of_[p] = want;
    classes_[want].last_use = now;
    note_live(want);
    return p;
  }

  bool give_back(void *p)
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = size_of_.find(p);
    if (it == size_of_.end()) return false;
    SizeClass &c = classes_[it->second];
    c.free.push_back(p);
    c.last_use = ++tick_;
    live_ -= it->second;
    cached_ += it->second;
    return true;
  }

  // a fresh mapping of `size` bytes (a page multiple); at least kHugePage: aligned to it and advised for huge pages
  void *map_block(std::size_t size) const
  {
    const int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
    if (!huge_ || size < kHugePage) return mmap(nullptr, size, prot, flags, -1, 0);
    // map a huge page more and unmap what lies before the first boundary and after the block
    const std::size_t span = size + kHugePage;
    void *raw = mmap(nullptr, span, prot, flags, -1, 0);
    if (raw == MAP_FAILED) return MAP_FAILED;
    const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (start + kHugePage - 1) & ~std::uintptr_t(kHugePage - 1);
    if (aligned > start) munmap(raw, aligned - start);
    const std::size_t tail = span - (aligned - start) - size;
    if (tail > 0) munmap(reinterpret_cast<void *>(aligned + size), tail);
    void *p = reinterpret_cast<void *>(aligned);
    madvise(p, size, MADV_HUGEPAGE);    // refused (no THP in this kernel): 4 KiB pages, as without
    return p;
  }

  void note_live(std::size_t size)
  {
    live_ += size;
    if (live_ > peak_) peak_ = live_;
  }

  void unmap_one(std::size_t size, SizeClass &c)
  {
    void *p = c.free.back();
    c.free.pop_back();
    munmap(p, size);
    size_of_.erase(p);
    cached_ -= size;
    ++unmaps_;
  }

  void unmap_lru()
  {
    std::size_t best = 0;
    SizeClass *oldest = nullptr;
    for (auto &kv : classes_)
      if (!kv.second.free.empty() && (oldest == nullptr || kv.second.last_use < oldest->last_use)) {
        oldest = &kv.second;
        best = kv.first;
      }
    if (oldest != nullptr) unmap_one(best, *oldest);
  }

  c10::Allocator *fallback_;
  c10::DeleterFnPtr fallback_raw_deleter_;
  const std::size_t min_block_;
  const double slack_;
  const int reach_;
  const bool huge_;
  mutable std::mutex mutex_;    // torch's intra-op threads allocate too
  std::unordered_map<std::size_t, SizeClass> classes_;
  std::unordered_map<void *, std::size_t> size_of_;    // every mapped block (live or free) and its class
  std::uint64_t live_ = 0, cached_ = 0, peak_ = 0, tick_ = 0;
  std::uint64_t maps_ = 0, unmaps_ = 0, hits_ = 0, misses_ = 0;
};

CachingAllocator *CachingAllocator::instance = nullptr;
std::mutex setup_mutex;
int mode = -1;    // what mlmd_alloc_setup applied (-1: not yet)

double env_number(const char *name, double fallback)
{
  const char *v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char *end = nullptr;
  const double x = std::strtod(v, &end);
  return (end != v && x > 0) ? x : fallback;
}

// "0" -> false, unset or empty -> fallback, anything else -> true
bool env_flag(const char *name, bool fallback)
{
  const char *v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strcmp(v, "0") != 0;
}

}    // namespace

extern "C" int mlmd_alloc_install(std::size_t min_block, double slack)
{
  std::lock_guard<std::mutex> lock(setup_mutex);
  if (CachingAllocator::instance == nullptr) {
    // blocks allocated before keep their own deleter (their DataPtr carries it), so switching late is safe;
    // the instance is never destroyed: tensors may be freed during static destruction at exit
    CachingAllocator::instance = new CachingAllocator(c10::GetCPUAllocator(), std::max<std::size_t>(min_block, 65536),
                                                      std::max(slack, 1.0), int(env_number("MLMD_ALLOC_REACH", 8)),
                                                      env_flag("MLMD_ALLOC_HUGE", false));
    c10::SetCPUAllocator(CachingAllocator::instance, kPriority);
  }
  return c10::GetCPUAllocator() == CachingAllocator::instance ? 1 : 0;
}

extern "C" int mlmd_alloc_setup(void)
{
  {
    std::lock_guard<std::mutex> lock(setup_mutex);
    if (mode >= 0) return mode;
  }
  const char *keep = std::getenv("MLMD_KEEP_MEMORY");
  const std::string how = keep ? keep : "1";
  int m = MLMD_ALLOC_NONE;
  if (how != "0") {
    if (how != "mallopt" &&
        mlmd_alloc_install(std::size_t(env_number("MLMD_ALLOC_MIN_KB", 1024) * 1024), env_number("MLMD_ALLOC_SLACK", 2.0)))
      m = MLMD_ALLOC_CACHE;
    else {
      // glibc serves every block from its heap and never trims it: no page faults, a fragmenting heap
      mallopt(M_MMAP_MAX, 0);
      mallopt(M_TRIM_THRESHOLD, -1);
      m = MLMD_ALLOC_MALLOPT;
    }
  }
  std::lock_guard<std::mutex> lock(setup_mutex);
  if (mode < 0) mode = m;
  return mode;
}

extern "C" int mlmd_alloc_stats(std::uint64_t *out, int n)
{
  std::uint64_t v[7] = {0, 0, 0, 0, 0, 0, 0};
  if (CachingAllocator::instance != nullptr) CachingAllocator::instance->stats(v);
  for (int i = 0; i < n && i < 7; ++i) out[i] = v[i];
  return 7;
}

extern "C" std::uint64_t mlmd_alloc_trim(void)
{
  return CachingAllocator::instance ? CachingAllocator::instance->trim() : 0;
}
