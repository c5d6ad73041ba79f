// CUDA implementations of en_seg::channel_moments, channel_affine, channel_affine_grad_sums
// and channel_norm_input_grad: argument checks, allocation on the caching allocator and
// launch on the current stream. The kernels are in
// channel_op_kernel.cu.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../channel_op.h"
#include "arrival_counters.h"
#include "channel_op_kernel.h"

namespace en_seg {
namespace {

cuda::DType kernel_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf:
      return cuda::DType::kFloat16;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kFloat:
      return cuda::DType::kFloat32;
    default:
      return cuda::DType::kFloat64;  // check_activation admits nothing else
  }
}

// On the current device (the callers' guard).
cuda::Activation kernel_shape(const Activation& x) {
  int multiprocessors = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  return {x.n, x.c, x.hw, x.channels_last, multiprocessors};
}

// What a reduction needs besides its outputs: its shape (the split depends on the GPU),
// and cuda::ReductionScratch's device scratch for partial results and zeroed arrival
// counters.
struct Reduction {
  cuda::Activation shape;
  at::Tensor workspace;
  unsigned* arrivals;

  explicit Reduction(const Activation& x) : shape(kernel_shape(x)) {
    const cuda::ReductionScratch scratch =
        cuda::reduction_scratch(shape, kernel_dtype(x.tensor.scalar_type()));
    workspace = at::empty({scratch.workspace_bytes}, x.tensor.options().dtype(at::kByte));
    arrivals = scratch.arrivals > 0 ? arrival_counters(scratch.arrivals) : nullptr;
  }
};

std::tuple<at::Tensor, at::Tensor> channel_moments_cuda(const at::Tensor& input) {
  const Activation x = check_activation("en_seg::channel_moments", input);
  const c10::cuda::CUDAGuard guard(x.tensor.device());
  at::Tensor mean = empty_stats(x), var = empty_stats(x);
  const Reduction reduction(x);
  C10_CUDA_CHECK(cuda::launch_channel_moments(
      x.tensor.const_data_ptr(), kernel_dtype(x.tensor.scalar_type()), reduction.shape,
      mean.data_ptr(), var.data_ptr(), reduction.workspace.data_ptr(), reduction.arrivals,
      c10::cuda::getCurrentCUDAStream()));
  return {mean, var};
}

at::Tensor channel_affine_cuda(const at::Tensor& input, const at::Tensor& center,
                               const at::Tensor& scale, const at::Tensor& shift) {
  const AffineArgs args = check_affine_args(input, center, scale, shift);
  const Activation& x = args.x;
  const c10::cuda::CUDAGuard guard(x.tensor.device());
  at::Tensor y = empty_activation(x);
  C10_CUDA_CHECK(cuda::launch_channel_affine(
      x.tensor.const_data_ptr(), kernel_dtype(x.tensor.scalar_type()), kernel_shape(x),
      args.center.const_data_ptr(), args.scale.const_data_ptr(), args.shift.const_data_ptr(),
      y.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return y;
}

std::tuple<at::Tensor, at::Tensor> channel_affine_grad_sums_cuda(const at::Tensor& grad_y,
                                                                 const at::Tensor& input,
                                                                 const at::Tensor& center) {
  const GradSumsArgs args = check_grad_sums_args(grad_y, input, center);
  const Activation& x = args.x;
  const c10::cuda::CUDAGuard guard(x.tensor.device());
  at::Tensor sum_dy = empty_stats(x), sum_dy_xc = empty_stats(x);
  const Reduction reduction(x);
  C10_CUDA_CHECK(cuda::launch_channel_affine_grad_sums(
      args.grad_y.const_data_ptr(), x.tensor.const_data_ptr(),
      kernel_dtype(x.tensor.scalar_type()), reduction.shape, args.center.const_data_ptr(),
      sum_dy.data_ptr(), sum_dy_xc.data_ptr(), reduction.workspace.data_ptr(),
      reduction.arrivals, c10::cuda::getCurrentCUDAStream()));
  return {sum_dy, sum_dy_xc};
}

at::Tensor channel_norm_input_grad_cuda(const at::Tensor& grad_y, const at::Tensor& input,
                                        const at::Tensor& mean, const at::Tensor& scale,
                                        const at::Tensor& sum_dy, const at::Tensor& grad_mean,
                                        const at::Tensor& grad_var) {
  const NormInputGradArgs args =
      check_norm_input_grad_args(grad_y, input, mean, scale, sum_dy, grad_mean, grad_var);
  const Activation& x = args.x;
  const c10::cuda::CUDAGuard guard(x.tensor.device());
  at::Tensor dx = empty_activation(x);
  C10_CUDA_CHECK(cuda::launch_channel_norm_input_grad(
      args.grad_y.const_data_ptr(), x.tensor.const_data_ptr(),
      kernel_dtype(x.tensor.scalar_type()), kernel_shape(x), args.mean.const_data_ptr(),
      args.scale.const_data_ptr(), args.sum_dy.const_data_ptr(),
      args.grad_mean.const_data_ptr(), args.grad_var.const_data_ptr(), dx.data_ptr(),
      c10::cuda::getCurrentCUDAStream()));
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CUDA, m) {
  m.impl("channel_moments", &channel_moments_cuda);
  m.impl("channel_affine", &channel_affine_cuda);
  m.impl("channel_affine_grad_sums", &channel_affine_grad_sums_cuda);
  m.impl("channel_norm_input_grad", &channel_norm_input_grad_cuda);
}

}  // namespace en_seg
