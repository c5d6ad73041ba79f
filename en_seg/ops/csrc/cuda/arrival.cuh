// The last block of a group to finish, so that a reduction's second step (merging the
// group's partial results) runs in the tail of its first launch instead of a launch of its
// own: the pattern of the CUDA C++ Programming Guide's "Memory Fence Functions" example,
// as PyTorch's channels_last BatchNorm uses it.
//
// A group's blocks count their arrival at one unsigned counter in device memory. The
// launchers' contract for their `arrivals`: zero on entry, and zero again when the launch
// ends, since the last block of each group resets its counter (so a per-stream buffer,
// zeroed once, serves every launch on that stream: arrival_counters.h).
#pragma once

#include <cuda_runtime.h>

namespace en_seg {
namespace cuda {

// Called by every thread of a block (uniform control flow: it holds barriers) once the
// block has written what its group's last block reads. Returns, in every thread, whether
// this block is the last of the `blocks` blocks counting at *counter; that block resets
// the counter and then sees every other block's writes.
//
// The first barrier keeps the block's arrival after all of its threads' writes (and their
// fences); the emulation runs blocks one after another, so it cannot show that barrier
// needed: a GPU can.
__device__ __forceinline__ bool last_to_arrive(unsigned* counter, unsigned blocks) {
  __threadfence();  // release: this thread's writes, visible device-wide before the arrival
  __syncthreads();
  bool last = false;
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    last = atomicAdd(counter, 1u) == blocks - 1;
    if (last) {
      *counter = 0u;    // every block of the group has arrived: ready for the next launch
      __threadfence();  // acquire: the other blocks' writes, before this block reads them
    }
  }
  return __syncthreads_or(last);
}

}  // namespace cuda
}  // namespace en_seg
