// Argument checking shared by the CPU and CUDA kernels of the fused statistics / apply ops
// en_seg::channel_moments, channel_affine, channel_affine_grad_sums and
// channel_norm_input_grad (schemas and their math in channel_op.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace en_seg {

// A 4-D activation (N, C, H, W) as the kernels walk it: dense in one of two layouts.
struct Activation {
  at::Tensor tensor;   // contiguous (N, C, H, W) or contiguous in channels_last
  int64_t n, c, hw;    // N, C and H * W
  bool channels_last;  // memory order (N, H, W, C) rather than (N, C, H, W)
};

// The layout the kernels walk x in: channels_last where only that order describes its
// memory, else contiguous (N, C, H, W), also when both do (C == 1 or H * W == 1).
at::MemoryFormat activation_layout(const at::Tensor& x);

// Checks x: 4-D, floating point (float16, bfloat16, float32 or float64), H * W >= 1.
// Returns it dense: as it is when contiguous or channels_last, else a contiguous copy.
// Raises c10::Error naming `op`, the offending shape or dtype.
Activation check_activation(const char* op, const at::Tensor& x);

// Checks a second activation (the upstream gradient) against x: same shape, dtype and
// device. Returns it dense in x's layout (a copy only when it is not already).
at::Tensor match_activation(const char* op, const char* name, const at::Tensor& t,
                            const Activation& x);

// The dtype of statistics and coefficients for an activation dtype: float64 for float64,
// float32 otherwise (docs/method.md#precision).
at::ScalarType stats_dtype(at::ScalarType activation_dtype);

// Checks an (N, C) per-(n, c) coefficient: that shape, stats_dtype(x) and x's device.
// Returns it contiguous.
at::Tensor check_coefficient(const char* op, const char* name, const at::Tensor& t,
                             const Activation& x);

// The checked arguments of the ops that take (N, C) coefficients, for their CPU and CUDA
// entry points: the checks above applied in argument order, each error naming the op.
struct AffineArgs {  // en_seg::channel_affine
  Activation x;
  at::Tensor center, scale, shift;
};
AffineArgs check_affine_args(const at::Tensor& x, const at::Tensor& center,
                             const at::Tensor& scale, const at::Tensor& shift);

struct GradSumsArgs {  // en_seg::channel_affine_grad_sums
  Activation x;
  at::Tensor grad_y, center;
};
GradSumsArgs check_grad_sums_args(const at::Tensor& grad_y, const at::Tensor& x,
                                  const at::Tensor& center);

struct NormInputGradArgs {  // en_seg::channel_norm_input_grad
  Activation x;
  at::Tensor grad_y, mean, scale, sum_dy, grad_mean, grad_var;
};
NormInputGradArgs check_norm_input_grad_args(const at::Tensor& grad_y, const at::Tensor& x,
                                             const at::Tensor& mean, const at::Tensor& scale,
                                             const at::Tensor& sum_dy,
                                             const at::Tensor& grad_mean,
                                             const at::Tensor& grad_var);

// The channel ops called through the dispatcher, as from Python (autograd included, where
// the caller has not gone below it): the autograd kernels of every op family build their
// forward and backward from them.
at::Tensor channel_affine(const at::Tensor& x, const at::Tensor& center,
                          const at::Tensor& scale, const at::Tensor& shift);
std::tuple<at::Tensor, at::Tensor> channel_affine_grad_sums(const at::Tensor& grad_y,
                                                            const at::Tensor& x,
                                                            const at::Tensor& center);
at::Tensor channel_norm_input_grad(const at::Tensor& grad_y, const at::Tensor& x,
                                   const at::Tensor& mean, const at::Tensor& scale,
                                   const at::Tensor& sum_dy, const at::Tensor& grad_mean,
                                   const at::Tensor& grad_var);

// An uninitialised (N, C) tensor of stats_dtype(x) on x's device.
at::Tensor empty_stats(const Activation& x);

// An uninitialised activation shaped, typed and laid out like x.
at::Tensor empty_activation(const Activation& x);

}  // namespace en_seg
