// CUDA implementations of en_seg::exemplar_ratios and en_seg::exemplar_ratios_backward:
// argument checks, allocation on the caching allocator and launch on the current stream.
// The kernels themselves are in ratio_op_kernel.cu.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ratio_op.h"
#include "ratio_op_kernel.h"

namespace en_seg {
namespace {

// The CUDA kernels are float32 only (the layer computes its statistics in float32) and
// keep P hidden values per sample in shared memory; float64 runs on the CPU kernel or the
// PyTorch reference.
void check_cuda_limits(const char* op, const at::Tensor& tensor, const at::Tensor& fc1_w,
                      const ratio::Sizes& sizes) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat, op,
              ": the CUDA kernel takes float32 tensors, got ", tensor.scalar_type());
  TORCH_CHECK(sizes.hidden <= cuda::kMaxHidden, op, ": fc1_w has shape ", fc1_w.sizes(),
              ", expected (P, K * K) with P <= ", cuda::kMaxHidden,
              " hidden units for the CUDA kernel");
}

std::tuple<at::Tensor, at::Tensor> exemplar_ratios_cuda(
    const at::Tensor& pooled, const at::Tensor& means, const at::Tensor& rstds,
    const at::Tensor& conv_w, const at::Tensor& fc1_w, const at::Tensor& fc1_b,
    const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  const char* op = "en_seg::exemplar_ratios";
  const RatioArgs args =
      check_ratio_args(op, pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
  check_cuda_limits(op, args.pooled, args.fc1_w, args.sizes);
  const c10::cuda::CUDAGuard guard(args.pooled.device());
  auto outputs = empty_ratio_outputs(args);
  auto& [ratios, activations] = outputs;
  C10_CUDA_CHECK(cuda::launch_exemplar_ratios_forward(
      args.sizes, args.inputs<float>(), ratios.data_ptr<float>(),
      activations.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return outputs;
}

RatioGradTensors exemplar_ratios_backward_cuda(const at::Tensor& grad,
                                               const at::Tensor& activations,
                                               const at::Tensor& rstds,
                                               const at::Tensor& conv_w,
                                               const at::Tensor& fc1_w,
                                               const at::Tensor& fc2_w) {
  const char* op = "en_seg::exemplar_ratios_backward";
  const RatioBackwardArgs args =
      check_ratio_backward_args(op, grad, activations, rstds, conv_w, fc1_w, fc2_w);
  check_cuda_limits(op, args.rstds, args.fc1_w, args.sizes);
  const c10::cuda::CUDAGuard guard(args.rstds.device());
  RatioGradBuffers out(args);
  at::Tensor workspace =
      at::empty({cuda::exemplar_ratios_backward_workspace(args.sizes)}, args.rstds.options());
  C10_CUDA_CHECK(cuda::launch_exemplar_ratios_backward(
      args.sizes, args.inputs<float>(), out.grads<float>(), workspace.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream()));
  return out.tensors;
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CUDA, m) {
  m.impl("exemplar_ratios", &exemplar_ratios_cuda);
  m.impl("exemplar_ratios_backward", &exemplar_ratios_backward_cuda);
}

}  // namespace en_seg
