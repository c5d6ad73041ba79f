// CUDA's device-side vocabulary on the CPU, for the emulation that runs the project's CUDA
// kernels in the tests (tests/cuda_emulation). The kernel sources compile unchanged as
// C++20 against this header, after tests/cuda_emulation/build.py rewrites the two
// constructs a header cannot express: launches (kernel<<<...>>>(args) becomes
// emu::launch) and __shared__ declarations (a per-block static, NaN-filled per block, or
// the block's dynamic shared memory).
//
// Each CUDA thread is a fiber of runtime.cpp's scheduler; __syncthreads, __syncwarp and the
// shuffles are meeting points of the fibers of the block or warp (emulation/runtime.h).
// Fibers switch only there, so an atomic is a plain read-modify-write.
#pragma once

// Every standard header the kernels include comes first: the macros below (threadIdx,
// __CUDA_ARCH__, ...) must not reach the standard library.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>

#include "cuda_runtime_api.h"
#include "emulation/runtime.h"

// The kernels compile as in nvcc's device pass: `#if __CUDA_ARCH__` takes its device
// branch (e.g. ratio_math.h's tanhf), `#if __CUDACC__` its CUDA one.
#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
// What only PTX can say (inline asm) is guarded by `#ifndef EN_SEG_CUDA_EMULATION`, beside
// the C++ it stands for.
#define EN_SEG_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

#define threadIdx (::emu::detail::current->thread_idx)
#define blockIdx (::emu::detail::current->block_idx)
#define blockDim (::emu::detail::current->block_dim)
#define gridDim (::emu::detail::current->grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  ::emu::detail::sync_block(where);
}

inline int __syncthreads_or(int predicate,
                            std::source_location where = std::source_location::current()) {
  return ::emu::detail::sync_block_or(predicate != 0, where) ? 1 : 0;
}

// Blocks run one after another, each to its end, and threads switch only at meeting points:
// every write is visible to every later reader without a fence.
inline void __threadfence() {}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location where = std::source_location::current()) {
  ::emu::detail::sync_warp(mask, where);
}

namespace emu {

// What a shuffle moves: CUDA overloads the shuffles for the arithmetic types and the
// 16-bit floats; any value of up to 8 bytes moves the same way.
template <typename T>
concept ShuffleValue = std::is_trivially_copyable_v<T> && sizeof(T) <= 8;

template <ShuffleValue T>
T shuffle(detail::Shuffle kind, unsigned mask, T var, unsigned lane_arg, int width,
          std::source_location where) {
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof var);
  bits = detail::shuffle(kind, mask, bits, lane_arg, width, where);
  T out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// kernel<<<config>>>(args...): runs every thread of the grid before it returns. The
// parameters are copied once, as CUDA copies them to the device, and every thread calls
// kernel with its own copy.
template <typename Kernel, typename... Args>
void launch(const Config& config, Kernel kernel, Args... args) {
  const std::tuple<Args...> params(args...);
  auto body = [&] { std::apply(kernel, params); };
  detail::run_kernel(
      config, [](void* f) { (*static_cast<decltype(body)*>(f))(); }, &body);
}

// The two forms of __shared__ after build.py's rewrite.
template <typename T>
void enter_shared(T& variable, uint64_t& epoch) {
  detail::enter_shared(&variable, sizeof variable, epoch);
}

template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(detail::dynamic_shared());
}

}  // namespace emu

template <emu::ShuffleValue T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              std::source_location where = std::source_location::current()) {
  return emu::shuffle(emu::detail::Shuffle::kIndex, mask, var, src_lane, width, where);
}

template <emu::ShuffleValue T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 std::source_location where = std::source_location::current()) {
  return emu::shuffle(emu::detail::Shuffle::kUp, mask, var, delta, width, where);
}

template <emu::ShuffleValue T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   std::source_location where = std::source_location::current()) {
  return emu::shuffle(emu::detail::Shuffle::kDown, mask, var, delta, width, where);
}

template <emu::ShuffleValue T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  std::source_location where = std::source_location::current()) {
  return emu::shuffle(emu::detail::Shuffle::kXor, mask, var, lane_mask, width, where);
}

// Atomics, for CUDA's types of each; every one returns the old value.
namespace emu {
template <typename T, typename... Allowed>
concept OneOf = (std::same_as<T, Allowed> || ...);
template <typename T>
concept AtomicInteger = OneOf<T, int, unsigned, unsigned long long>;
template <typename T>
concept AtomicNumber = AtomicInteger<T> || OneOf<T, float, double>;

template <typename T, typename Op>
T read_modify_write(T* address, Op op) {
  const T old = *address;
  *address = op(old);
  return old;
}
}  // namespace emu

template <emu::AtomicNumber T>
T atomicAdd(T* address, T value) {
  return emu::read_modify_write(address, [&](T old) { return old + value; });
}

template <emu::OneOf<int, unsigned> T>
T atomicSub(T* address, T value) {
  return emu::read_modify_write(address, [&](T old) { return old - value; });
}

template <emu::AtomicNumber T>
T atomicExch(T* address, T value) {
  return emu::read_modify_write(address, [&](T) { return value; });
}

template <emu::AtomicInteger T>
T atomicMin(T* address, T value) {
  return emu::read_modify_write(address, [&](T old) { return std::min(old, value); });
}

template <emu::AtomicInteger T>
T atomicMax(T* address, T value) {
  return emu::read_modify_write(address, [&](T old) { return std::max(old, value); });
}

template <emu::AtomicInteger T>
T atomicCAS(T* address, T compare, T value) {
  return emu::read_modify_write(address, [&](T old) { return old == compare ? value : old; });
}
