// The emulation's scheduler (interface and model in include/emulation/runtime.h): CUDA
// threads as ucontext fibers on the calling OS thread, blocks one after another, and the
// errors a GPU would report or leave undefined (illegal launch configurations, deadlocks,
// barriers that not every thread passes, shuffles that read a lane outside their mask).
//
// CUDA_EMULATION_ORDER (forward, reversed or shuffled; default forward) is the order in
// which the scheduler visits blocks and, in every pass, the ready threads of a block;
// CUDA_EMULATION_SEED (default 0) seeds the shuffled order. A race that a barrier should
// have prevented shows in at least one of the orders, as a read of the NaN bytes that fill
// shared memory when a block starts.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "emulation/runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <dlfcn.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

namespace emu {
namespace detail {
const Builtins* current = nullptr;
}  // namespace detail

namespace {

using detail::Shuffle;

// CUDA's limits for every GPU since Kepler.
constexpr uint64_t kMaxThreads = 1024;
constexpr unsigned kMaxBlockXY = 1024, kMaxBlockZ = 64;
constexpr uint64_t kMaxGridX = (1ull << 31) - 1;
constexpr unsigned kMaxGridYZ = 65535;
// Dynamic shared memory a launch may take without cudaFuncSetAttribute.
constexpr size_t kMaxDynamicShared = 48 * 1024;
constexpr unsigned kWarp = 32;
// AddressSanitizer's redzones make frames several times larger.
constexpr size_t kStackBytes = (EMU_ASAN ? 256 : 64) * 1024;
constexpr unsigned char kNaNByte = 0xff;  // 0xff.. is a NaN in every floating type

enum class State { kReady, kAtBarrier, kAtWarp, kDone };
enum class Order { kForward, kReversed, kShuffled };

// One CUDA thread.
struct Fiber {
  detail::Builtins builtins;
  ucontext_t context;
  char* stack = nullptr;  // kStackBytes above a guard page
  State state = State::kDone;
  unsigned lane = 0, warp = 0;
  int barriers = 0;             // __syncthreads passed
  std::source_location where;   // of the meeting it waits at
  uint64_t result = 0;          // of its last shuffle
  void* fake_stack = nullptr;   // AddressSanitizer's, while switched out
  bool abandoned = false;       // left suspended by a failed block
};

// The meeting a warp's lanes are gathering at: a shuffle, or else __syncwarp.
struct WarpMeeting {
  bool is_shuffle = false;
  Shuffle kind = Shuffle::kIndex;
  unsigned mask = 0, arrived = 0;
  int width = 0;
  std::source_location where;
  uint64_t values[kWarp] = {};
  int sources[kWarp] = {};  // the lane each lane reads, -1 for its own value
};

// Errors, as cudaGetLastError sees them.
cudaError_t last_error = cudaSuccess;
bool sticky = false;
std::string message;
// Kernels launched since emu::reset(), each counted once its configuration passed.
int64_t launches = 0;

// The block being run.
std::vector<Fiber> fibers;  // grows to the largest block; stacks are kept
std::vector<WarpMeeting> warps;
unsigned barrier_arrived = 0;
std::source_location barrier_site;
// __syncthreads_or: the predicates of the threads at the barrier so far, and the value of
// the barrier last passed.
bool barrier_any = false, barrier_result = false;
unsigned done = 0;
bool block_failed = false;
uint3 block_index;
unsigned char* shared_memory = nullptr;
uint64_t block_epoch = 0;
Fiber* running = nullptr;
void (*kernel_body)(void*) = nullptr;
void* kernel_context = nullptr;
ucontext_t scheduler;
std::mt19937_64 shuffle_engine;
#if EMU_ASAN
const void* scheduler_stack = nullptr;
size_t scheduler_stack_bytes = 0;
#endif

void record(cudaError_t error, const std::string& text) {
  if (sticky) return;
  last_error = error;
  message = text;
  sticky = error == cudaErrorLaunchFailure;
}

std::string format(const char* pattern, auto... args) {
  char buffer[512];
  std::snprintf(buffer, sizeof buffer, pattern, args...);
  return buffer;
}

std::string site(const std::source_location& where) {
  return format("%s:%u", where.file_name(), static_cast<unsigned>(where.line()));
}

unsigned block_size(const dim3& block) { return block.x * block.y * block.z; }

std::string triple(const uint3& v) { return format("(%u, %u, %u)", v.x, v.y, v.z); }
std::string triple(const dim3& v) { return format("(%u, %u, %u)", v.x, v.y, v.z); }

const char* shuffle_name(const WarpMeeting& m) {
  if (!m.is_shuffle) return "__syncwarp";
  switch (m.kind) {
    case Shuffle::kIndex:
      return "__shfl_sync";
    case Shuffle::kUp:
      return "__shfl_up_sync";
    case Shuffle::kDown:
      return "__shfl_down_sync";
    case Shuffle::kXor:
      return "__shfl_xor_sync";
  }
  return "?";
}

// What a thread is doing, for a deadlock report.
std::string doing(const Fiber& f) {
  switch (f.state) {
    case State::kReady:
      return "is ready";
    case State::kAtBarrier:
      return format("waits at __syncthreads #%d at ", f.barriers + 1) + site(f.where);
    case State::kAtWarp:
      return std::string("waits at ") + shuffle_name(warps[f.warp]) + " at " + site(f.where);
    case State::kDone:
      return format("exited after %d __syncthreads", f.barriers);
  }
  return "?";
}

// ------------------------------------------------------------------------------------------
// Switching between the scheduler and a fiber

// AddressSanitizer's swapcontext interceptor clears the shadow of the whole target stack
// at every switch: slow, and it forgets the redzones of the frames the fiber resumes. The
// fiber annotations in enter and leave tell it about each switch, so a sanitized build
// calls libc's own swapcontext.
void switch_context(ucontext_t* from, const ucontext_t* to) {
#if EMU_ASAN
  using Swap = int (*)(ucontext_t*, const ucontext_t*);
  static const Swap libc_swap = reinterpret_cast<Swap>(
      dlsym(dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD), "swapcontext"));
  libc_swap(from, to);
#else
  swapcontext(from, to);
#endif
}

void enter(Fiber& f) {
  running = &f;
  detail::current = &f.builtins;
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
  switch_context(&scheduler, &f.context);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(&scheduler, &f.context);
#endif
}

// Back to the scheduler until it resumes this fiber; `final` when the fiber will not be.
void leave(bool final) {
  Fiber& f = *running;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(final ? nullptr : &f.fake_stack, scheduler_stack,
                                 scheduler_stack_bytes);
  switch_context(&f.context, &scheduler);
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#else
  (void)final;
  switch_context(&f.context, &scheduler);
#endif
}

void fiber_main() {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack, &scheduler_stack_bytes);
#endif
  kernel_body(kernel_context);
  running->state = State::kDone;
  ++done;
  leave(true);
}

// Ends the launch from inside a fiber: the scheduler abandons the block's fibers.
[[noreturn]] void fail(const std::string& what, const std::source_location& where) {
  record(cudaErrorLaunchFailure, "block " + triple(block_index) + " thread " +
                                     triple(running->builtins.thread_idx) + ": " + what +
                                     " (" + site(where) + ")");
  block_failed = true;
  leave(true);
  std::abort();  // never resumed
}

char* new_stack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* base = mmap(nullptr, page + kStackBytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    std::perror("emulation: mmap of a fiber stack");
    std::abort();
  }
  mprotect(base, page, PROT_NONE);  // an overflow faults rather than corrupts
  return static_cast<char*>(base) + page;
}

void start(Fiber& f) {
  if (f.stack == nullptr) f.stack = new_stack();
#if EMU_ASAN
  // An abandoned fiber left its frames' redzones poisoned.
  if (f.abandoned) __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
  f.abandoned = false;
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiber_main, 0);
  f.state = State::kReady;
  f.barriers = 0;
}

// ------------------------------------------------------------------------------------------
// Running a launch

Order order_from_environment(bool& ok) {
  ok = true;
  const char* value = std::getenv("CUDA_EMULATION_ORDER");
  if (value == nullptr || std::strcmp(value, "forward") == 0) return Order::kForward;
  if (std::strcmp(value, "reversed") == 0) return Order::kReversed;
  if (std::strcmp(value, "shuffled") == 0) return Order::kShuffled;
  ok = false;
  return Order::kForward;
}

template <typename Index>
void arrange(std::vector<Index>& items, Order order) {
  std::iota(items.begin(), items.end(), Index(0));
  if (order == Order::kReversed) std::reverse(items.begin(), items.end());
  if (order == Order::kShuffled) std::shuffle(items.begin(), items.end(), shuffle_engine);
}

std::string deadlock_report(unsigned threads) {
  std::string report = "block " + triple(block_index) + ": deadlock, no thread can run.";
  bool at_barrier = false, exited = false;
  for (unsigned i = 0; i < threads; ++i) {
    at_barrier |= fibers[i].state == State::kAtBarrier;
    exited |= fibers[i].state == State::kDone;
  }
  if (at_barrier && exited) {
    report += " Its threads pass different numbers of __syncthreads.";
  }
  // One line per kind of wait: the first thread of each (state, site, barriers) group.
  std::vector<std::string> seen;
  for (unsigned i = 0; i < threads; ++i) {
    const std::string what = doing(fibers[i]);
    if (std::find(seen.begin(), seen.end(), what) != seen.end()) continue;
    seen.push_back(what);
    report += "\n  thread " + triple(fibers[i].builtins.thread_idx) + " " + what;
  }
  for (unsigned w = 0; w < warps.size(); ++w) {
    const WarpMeeting& m = warps[w];
    if (m.arrived == 0) continue;
    report += format("\n  warp %u: lanes 0x%08x of mask 0x%08x wait at %s at ", w, m.arrived,
                     m.mask, shuffle_name(m)) + site(m.where);
  }
  return report;
}

void run_block(const Config& c, uint3 block_idx, Order order, std::vector<unsigned>& visit) {
  const unsigned threads = block_size(c.block);
  if (fibers.size() < threads) fibers.resize(threads);
  warps.assign((threads + kWarp - 1) / kWarp, WarpMeeting{});
  barrier_arrived = 0;
  barrier_any = false;
  done = 0;
  ++block_epoch;
  std::vector<unsigned char> dynamic(c.dynamic_shared, kNaNByte);  // exact size: ASan
  shared_memory = dynamic.data();
  block_index = block_idx;
  for (unsigned i = 0; i < threads; ++i) {
    Fiber& f = fibers[i];
    const uint3 thread_idx{i % c.block.x, (i / c.block.x) % c.block.y,
                           i / (c.block.x * c.block.y)};
    f.builtins = {thread_idx, block_idx, c.block, c.grid};
    f.lane = i % kWarp;
    f.warp = i / kWarp;
    start(f);
  }
  visit.resize(threads);
  arrange(visit, order);
  while (done < threads) {
    bool ran = false;
    for (unsigned i : visit) {
      if (fibers[i].state != State::kReady) continue;
      ran = true;
      enter(fibers[i]);
      if (block_failed) break;
    }
    if (!ran) {
      record(cudaErrorLaunchFailure, deadlock_report(threads));
      block_failed = true;
    }
    if (block_failed) {
      for (unsigned i = 0; i < threads; ++i) fibers[i].abandoned = fibers[i].state != State::kDone;
      return;
    }
    if (order == Order::kShuffled) arrange(visit, order);
  }
}

bool check_config(const Config& c) {
  const dim3 b = c.block, g = c.grid;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > kMaxBlockXY || b.y > kMaxBlockXY ||
      b.z > kMaxBlockZ || threads > kMaxThreads) {
    record(cudaErrorInvalidConfiguration,
           "launch: block " + triple(b) +
               format(" has %llu threads; a block takes 1 to 1024, x and y at most 1024, z at"
                      " most 64", static_cast<unsigned long long>(threads)));
    return false;
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > kMaxGridX || g.y > kMaxGridYZ ||
      g.z > kMaxGridYZ) {
    record(cudaErrorInvalidConfiguration,
           "launch: grid " + triple(g) + " is empty or past 2^31 - 1 blocks in x or 65535 in"
                                         " y or z");
    return false;
  }
  if (c.dynamic_shared > kMaxDynamicShared) {
    record(cudaErrorInvalidValue,
           format("launch: %zu bytes of dynamic shared memory, more than the 49152 a launch"
                  " takes", c.dynamic_shared));
    return false;
  }
  return true;
}

}  // namespace

namespace detail {

void run_kernel(const Config& config, void (*body)(void*), void* context) {
  if (sticky || !check_config(config)) return;
  bool ok;
  const Order order = order_from_environment(ok);
  if (!ok) {
    record(cudaErrorInvalidValue, "CUDA_EMULATION_ORDER must be forward, reversed or shuffled");
    return;
  }
  ++launches;
  kernel_body = body;
  kernel_context = context;
  block_failed = false;
  const dim3 g = config.grid;
  std::vector<uint64_t> blocks(uint64_t(g.x) * g.y * g.z);
  arrange(blocks, order);
  std::vector<unsigned> visit;
  for (const uint64_t b : blocks) {
    const uint3 block_idx{static_cast<unsigned>(b % g.x), static_cast<unsigned>(b / g.x % g.y),
                          static_cast<unsigned>(b / (uint64_t(g.x) * g.y))};
    run_block(config, block_idx, order, visit);
    if (block_failed) break;
  }
  running = nullptr;
  current = nullptr;
}

void sync_block(std::source_location where) {
  Fiber& f = *running;
  if (barrier_arrived > 0 && (barrier_site.line() != where.line() ||
                              std::strcmp(barrier_site.file_name(), where.file_name()) != 0)) {
    fail("reaches a __syncthreads other than the one at " + site(barrier_site) +
             " that other threads of the block wait at",
         where);
  }
  barrier_site = where;
  f.state = State::kAtBarrier;
  f.where = where;
  const unsigned threads = block_size(f.builtins.block_dim);
  if (++barrier_arrived < threads) {
    leave(false);
    return;
  }
  barrier_arrived = 0;
  barrier_result = barrier_any;
  barrier_any = false;
  for (unsigned i = 0; i < threads; ++i) {
    fibers[i].state = State::kReady;
    ++fibers[i].barriers;
  }
}

// Every thread reads the result as it leaves the barrier, before any can pass the next.
bool sync_block_or(bool predicate, std::source_location where) {
  barrier_any = barrier_any || predicate;
  sync_block(where);
  return barrier_result;
}

namespace {

// The lane whose value `lane` receives, or -1 for its own value: PTX shfl.sync's rule
// for a segment of `width` lanes (width a power of two).
int source_lane(Shuffle kind, unsigned lane, unsigned arg, unsigned width) {
  const unsigned first = lane & ~(width - 1), last = first + width - 1;
  switch (kind) {
    case Shuffle::kIndex:
      return static_cast<int>(first + (arg & (width - 1)));
    case Shuffle::kUp:
      return lane - first >= arg ? static_cast<int>(lane - arg) : -1;
    case Shuffle::kDown:
      return uint64_t(lane) + arg <= last ? static_cast<int>(lane + arg) : -1;
    case Shuffle::kXor:
      return (lane ^ arg) <= last ? static_cast<int>(lane ^ arg) : -1;
  }
  return -1;
}

// The running lane joins its warp's meeting `m` (mask, kind and where set), with its
// value and source lane; returns once every lane of the mask has joined.
void meet(const WarpMeeting& m, uint64_t value, int source) {
  Fiber& f = *running;
  WarpMeeting& open = warps[f.warp];
  const unsigned threads = block_size(f.builtins.block_dim);
  const unsigned lanes = std::min(kWarp, threads - f.warp * kWarp);
  const char* name = shuffle_name(m);
  if (!(m.mask >> f.lane & 1u)) {
    fail(format("lane %u calls %s with mask 0x%08x, which excludes it", f.lane, name, m.mask),
         m.where);
  }
  if (lanes < kWarp && (m.mask >> lanes) != 0) {
    fail(format("%s with mask 0x%08x names lanes past the %u of warp %u", name, m.mask, lanes,
                f.warp),
         m.where);
  }
  if (open.arrived == 0) {
    open.is_shuffle = m.is_shuffle;
    open.kind = m.kind;
    open.mask = m.mask;
    open.width = m.width;
    open.where = m.where;
  } else if (open.is_shuffle != m.is_shuffle || open.kind != m.kind ||
             open.mask != m.mask || open.width != m.width) {
    fail(format("lane %u calls %s (mask 0x%08x, width %d) while lanes 0x%08x of its warp wait"
                " at %s (mask 0x%08x, width %d) at ",
                f.lane, name, m.mask, m.width, open.arrived, shuffle_name(open), open.mask,
                open.width) + site(open.where),
         m.where);
  }
  open.values[f.lane] = value;
  open.sources[f.lane] = source;
  open.arrived |= 1u << f.lane;
  f.state = State::kAtWarp;
  f.where = m.where;
  if (open.arrived != open.mask) {
    leave(false);
    return;
  }
  for (unsigned l = 0; l < kWarp; ++l) {
    if (!(open.mask >> l & 1u)) continue;
    Fiber& g = fibers[f.warp * kWarp + l];
    g.result = open.values[open.sources[l] < 0 ? l : open.sources[l]];
    g.state = State::kReady;
  }
  open.arrived = 0;
}

}  // namespace

void sync_warp(unsigned mask, std::source_location where) {
  WarpMeeting m;
  m.mask = mask;
  m.where = where;
  meet(m, 0, -1);
}

uint64_t shuffle(Shuffle kind, unsigned mask, uint64_t bits, unsigned lane_arg, int width,
                 std::source_location where) {
  WarpMeeting m;
  m.is_shuffle = true;
  m.kind = kind;
  m.mask = mask;
  m.width = width;
  m.where = where;
  if (width < 1 || width > static_cast<int>(kWarp) || (width & (width - 1)) != 0) {
    fail(format("%s with width %d; it must be a power of two up to 32", shuffle_name(m),
                width),
         where);
  }
  const unsigned lane = running->lane;
  const int source = source_lane(kind, lane, lane_arg, static_cast<unsigned>(width));
  if (source >= 0 && !(mask >> source & 1u)) {
    fail(format("lane %u reads lane %d in %s, but mask 0x%08x leaves that lane out", lane,
                source, shuffle_name(m), mask),
         where);
  }
  meet(m, bits, source);
  return running->result;
}

void* dynamic_shared() { return shared_memory; }

void enter_shared(void* storage, size_t bytes, uint64_t& epoch) {
  if (epoch == block_epoch) return;
  std::memset(storage, kNaNByte, bytes);
  epoch = block_epoch;
}

}  // namespace detail

void reset() {
  last_error = cudaSuccess;
  sticky = false;
  message.clear();
  launches = 0;
  const char* seed = std::getenv("CUDA_EMULATION_SEED");
  shuffle_engine.seed(seed ? std::strtoull(seed, nullptr, 10) : 0);
}

}  // namespace emu

extern "C" __attribute__((visibility("default"))) const char* emu_failure_message() {
  return emu::message.c_str();
}

extern "C" __attribute__((visibility("default"))) int64_t emu_launch_count() {
  return emu::launches;
}

cudaError_t cudaGetLastError() {
  const cudaError_t error = emu::last_error;
  if (!emu::sticky) emu::last_error = cudaSuccess;
  return error;
}
