// Kernels that exercise the emulation itself (tests/test_cuda_emulation.py): built-in
// variables, shuffles, shared memory, atomics, the scheduling order, the errors it reports
// and the 16-bit float conversions. Each extern "C" entry launches one kernel, as CUDA
// code would, and returns cudaGetLastError(); emu_failure_message() says why.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

__device__ unsigned linear_thread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

__device__ unsigned linear_block() {
  return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}

// out[block][thread] = (threadIdx.xyz, blockIdx.xyz).
__global__ void builtins_kernel(unsigned* out) {
  unsigned* o = out + 6 * (linear_block() * blockDim.x * blockDim.y * blockDim.z + linear_thread());
  const unsigned values[6] = {threadIdx.x, threadIdx.y, threadIdx.z,
                              blockIdx.x,  blockIdx.y,  blockIdx.z};
  for (int i = 0; i < 6; ++i) o[i] = values[i];
}

// Lanes in `mask` shuffle 100 + their index by `kind` (0 index, 1 up, 2 down, 3 xor).
__global__ void shuffle_kernel(int kind, unsigned mask, unsigned arg, int width, int* out) {
  const unsigned t = threadIdx.x;
  if (!(mask >> (t % 32) & 1u)) return;
  const int v = 100 + static_cast<int>(t);
  int r = 0;
  switch (kind) {
    case 0:
      r = __shfl_sync(mask, v, static_cast<int>(arg), width);
      break;
    case 1:
      r = __shfl_up_sync(mask, v, arg, width);
      break;
    case 2:
      r = __shfl_down_sync(mask, v, arg, width);
      break;
    default:
      r = __shfl_xor_sync(mask, v, static_cast<int>(arg), width);
  }
  out[t] = r;
}

// A double and a 16-bit float through one shuffle each: all 8 and 2 bytes move.
__global__ void shuffle_types_kernel(double* doubles, __half* halves) {
  const unsigned t = threadIdx.x;
  doubles[t] = __shfl_xor_sync(0xffffffffu, doubles[t], 1);
  halves[t] = __shfl_down_sync(0xffffffffu, halves[t], 1);
}

// The first word of dynamic and of static shared memory as each block first sees it
// (NaN bytes), then both overwritten, which the next block must not see.
__global__ void shared_poison_kernel(unsigned* out) {
  extern __shared__ unsigned dynamic[];
  __shared__ unsigned fixed[64];
  if (linear_thread() == 0) {
    out[2 * linear_block()] = dynamic[0];
    out[2 * linear_block() + 1] = fixed[0];
  }
  __syncthreads();
  dynamic[linear_thread() % 4] = linear_block();
  fixed[linear_thread() % 64] = linear_block();
}

// Every atomic on counters[0..8): see test_atomics for the expected values.
__global__ void atomics_kernel(int* ints, unsigned* uints, unsigned long long* ulls,
                               float* floats, double* doubles) {
  const unsigned t = linear_thread() + blockDim.x * linear_block();
  atomicAdd(&ints[0], 1);
  atomicSub(&ints[1], 2);
  atomicMax(&ints[2], static_cast<int>(t));
  atomicMin(&uints[0], t + 7);
  atomicAdd(&ulls[0], 1ull << 33);
  atomicAdd(&floats[0], 0.5f);
  atomicAdd(&doubles[0], 0.25);
  atomicExch(&floats[1], 3.0f);
  // Exactly one thread swaps 0 for its index + 1; the others see it taken.
  if (atomicCAS(&uints[1], 0u, t + 1) != 0u) atomicAdd(&uints[2], 1u);
}

// order[t] = when thread t of the block first ran (a ticket), for every block in turn.
__global__ void order_kernel(unsigned* ticket, unsigned* order) {
  order[linear_block() * blockDim.x + threadIdx.x] = atomicAdd(ticket, 1u);
}

// Thread 0 leaves before the barrier the others wait at.
__global__ void skipped_barrier_kernel() {
  if (threadIdx.x == 0) return;
  __syncthreads();
}

// Lane 0 waits at the barrier while the other lanes of its warp wait for it at a shuffle.
__global__ void crossed_wait_kernel(int* out) {
  if (threadIdx.x != 0) out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
  __syncthreads();
}

// The two halves of the block reach different __syncthreads.
__global__ void split_barrier_kernel() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

// Lane 31 exits while the others wait for it at __syncwarp.
__global__ void exited_lane_kernel() {
  if (threadIdx.x == 31) return;
  __syncwarp();
}

__global__ void empty_kernel() {}

}  // namespace

EMU_EXPORT int emu_probe_builtins(unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                  unsigned by, unsigned bz, unsigned* out) {
  emu::reset();
  builtins_kernel<<<dim3(gx, gy, gz), dim3(bx, by, bz)>>>(out);
  return cudaGetLastError();
}

EMU_EXPORT int emu_probe_shuffle(int threads, int kind, unsigned mask, unsigned arg,
                                 int width, int* out) {
  emu::reset();
  shuffle_kernel<<<1, threads>>>(kind, mask, arg, width, out);
  return cudaGetLastError();
}

EMU_EXPORT int emu_probe_shuffle_types(double* doubles, uint16_t* halves) {
  emu::reset();
  shuffle_types_kernel<<<1, 32>>>(doubles, reinterpret_cast<__half*>(halves));
  return cudaGetLastError();
}

EMU_EXPORT int emu_probe_shared_poison(unsigned blocks, unsigned* out) {
  emu::reset();
  shared_poison_kernel<<<blocks, 128, 16 * sizeof(unsigned)>>>(out);
  return cudaGetLastError();
}

EMU_EXPORT int emu_probe_atomics(unsigned blocks, unsigned threads, int* ints, unsigned* uints,
                                 unsigned long long* ulls, float* floats, double* doubles) {
  emu::reset();
  atomics_kernel<<<blocks, threads>>>(ints, uints, ulls, floats, doubles);
  return cudaGetLastError();
}

EMU_EXPORT int emu_probe_order(unsigned blocks, unsigned threads, unsigned* ticket,
                               unsigned* order) {
  emu::reset();
  order_kernel<<<blocks, threads>>>(ticket, order);
  return cudaGetLastError();
}

// which: 0 skipped barrier, 1 crossed wait, 2 split barrier, 3 exited lane.
EMU_EXPORT int emu_probe_fault(int which, int* scratch) {
  emu::reset();
  switch (which) {
    case 0:
      skipped_barrier_kernel<<<2, 64>>>();
      break;
    case 1:
      crossed_wait_kernel<<<1, 64>>>(scratch);
      break;
    case 2:
      split_barrier_kernel<<<1, 32>>>();
      break;
    default:
      exited_lane_kernel<<<1, 32>>>();
  }
  return cudaGetLastError();
}

EMU_EXPORT int emu_probe_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                unsigned by, unsigned bz, size_t shared_bytes) {
  emu::reset();
  empty_kernel<<<dim3(gx, gy, gz), dim3(bx, by, bz), shared_bytes>>>();
  return cudaGetLastError();
}

EMU_EXPORT void emu_float_to_half(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]).__x;
}

EMU_EXPORT void emu_half_to_float(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __half2float(__half{in[i]});
}

EMU_EXPORT void emu_float_to_bfloat16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(in[i]).__x;
}

EMU_EXPORT void emu_bfloat16_to_float(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(__nv_bfloat16{in[i]});
}
