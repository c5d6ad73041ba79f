// Launchers of the CUDA kernels of the fused statistics / apply ops
// (channel_op_kernel.cu; schemas and math in ../channel_op.cpp). Plain C++ and CUDA
// runtime types only, so the kernels compile with nvcc without torch headers; the torch glue
// is channel_op_cuda.cpp.
//
// Pointers are device pointers. Activations (x, y, grad_y, grad_x) are dense (N, C, H, W)
// or channels_last arrays of `dtype`; (N, C) arrays (mean, var, center, scale, shift, ...)
// are contiguous float32, or float64 when dtype is kFloat64. Launchers enqueue on `stream`
// and return the launch error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace en_seg {
namespace cuda {

enum class DType { kFloat16, kBFloat16, kFloat32, kFloat64 };

// A 4-D activation as the kernels walk it, on a GPU of `multiprocessors` SMs (which sizes
// the reductions' splits).
struct Activation {
  int64_t n, c, hw;    // N, C and H * W (H * W >= 1)
  bool channels_last;  // memory order (N, H, W, C) rather than (N, C, H, W)
  int multiprocessors;
};

// What the two reductions need for `x` besides their outputs: `workspace_bytes` of device
// scratch for partial results (uninitialized), and `arrivals` unsigned counters, zero
// when a launch starts and left zero when it ends (arrival.cuh). Both 0 where every
// (n, c) row is one block's.
struct ReductionScratch {
  int64_t workspace_bytes, arrivals;
};
ReductionScratch reduction_scratch(const Activation& x, DType dtype);

// mean, var (N, C): per-(n, c) mean and biased variance of x. One launch.
cudaError_t launch_channel_moments(const void* x, DType dtype, const Activation& shape,
                                   void* mean, void* var, void* workspace,
                                   unsigned* arrivals, cudaStream_t stream);

// y = scale * (x - center) + shift per (n, c).
cudaError_t launch_channel_affine(const void* x, DType dtype, const Activation& shape,
                                  const void* center, const void* scale, const void* shift,
                                  void* y, cudaStream_t stream);

// sum_dy, sum_dy_xc (N, C): per-(n, c) sums of dy and of dy * (x - center). One launch.
cudaError_t launch_channel_affine_grad_sums(const void* grad_y, const void* x, DType dtype,
                                            const Activation& shape, const void* center,
                                            void* sum_dy, void* sum_dy_xc, void* workspace,
                                            unsigned* arrivals, cudaStream_t stream);

// grad_x = scale * dy + (grad_mean - scale * sum_dy + 2 grad_var (x - mean)) / (H * W) per
// (n, c).
cudaError_t launch_channel_norm_input_grad(const void* grad_y, const void* x, DType dtype,
                                           const Activation& shape, const void* mean,
                                           const void* scale, const void* sum_dy,
                                           const void* grad_mean, const void* grad_var,
                                           void* grad_x, cudaStream_t stream);

}  // namespace cuda
}  // namespace en_seg
