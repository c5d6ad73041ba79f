// The host side of the CUDA runtime that the kernels' launchers use, for the emulation
// that runs CUDA kernels on the CPU (tests/cuda_emulation). Launches run synchronously, so
// streams are only a type here.
#pragma once

#include <cstddef>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};

// CUDA's values, so that a printed code means the same as on a GPU. A fault the emulation
// detects while a kernel runs (deadlock, barrier mismatch, bad shuffle) is a launch
// failure, sticky as on a GPU; emu_failure_message() says what happened.
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

// Returns the last error and clears it, unless it is a launch failure (sticky).
cudaError_t cudaGetLastError();
