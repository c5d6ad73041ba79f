// The emulation's scheduler (runtime.cpp), as cuda_runtime.h builds CUDA's device API on
// it. Every CUDA thread of a block is a cooperative fiber; blocks run one after another on
// the calling OS thread. A fiber runs until it reaches a meeting point (a barrier, a warp
// sync or a shuffle) and waits there until every thread that meeting needs has arrived;
// if no fiber can run and the block has not finished, the scheduler reports a deadlock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <source_location>

#include "../cuda_runtime_api.h"

namespace emu {

// A launch's <<<grid, block, dynamic shared bytes, stream>>>; parentheses rather than
// braces so that an int converts to dim3 as in a launch.
struct Config {
  dim3 grid, block;
  size_t dynamic_shared;

  Config(dim3 grid, dim3 block, size_t dynamic_shared = 0, cudaStream_t = nullptr)
      : grid(grid), block(block), dynamic_shared(dynamic_shared) {}
};

namespace detail {

// The built-in variables of the CUDA thread now running.
struct Builtins {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
extern const Builtins* current;

// Checks `config`, then runs body(context) as every thread of every block. Errors go where
// cudaGetLastError finds them.
void run_kernel(const Config& config, void (*body)(void*), void* context);

// __syncthreads, __syncthreads_or and __syncwarp, for the running thread.
void sync_block(std::source_location where);
bool sync_block_or(bool predicate, std::source_location where);
void sync_warp(unsigned mask, std::source_location where);

enum class Shuffle { kIndex, kUp, kDown, kXor };

// One lane's part of a warp shuffle of up to 8 bytes: returns the bits of the lane that
// `kind` and `lane_arg` (source lane, delta or lane mask) select, once every lane of
// `mask` has arrived.
uint64_t shuffle(Shuffle kind, unsigned mask, uint64_t bits, unsigned lane_arg, int width,
                 std::source_location where);

// The block's dynamic shared memory (extern __shared__), NaN bytes when the block starts.
void* dynamic_shared();

// Called by every thread at a static __shared__ declaration: the first thread of a block to
// arrive there fills the variable with NaN bytes (so a read before any write in this block
// shows), later ones do nothing. `epoch` is the variable's own block counter.
void enter_shared(void* storage, size_t bytes, uint64_t& epoch);

}  // namespace detail

// Clears the errors (sticky ones too) before a new host-side call.
void reset();

}  // namespace emu

// What the last failed launch or kernel reported, "" if none since emu::reset(); exported
// by every library of the emulation.
extern "C" const char* emu_failure_message();

// The kernels launched since emu::reset(), i.e. by the library's last host-side call.
extern "C" int64_t emu_launch_count();
