// CUDA implementations of the coefficient ops and the CUDA registration of the apply ops:
// argument checks (../coefficient_op.cpp), allocation on the caching allocator and launch on
// the current stream. The kernels are in coefficient_op_kernel.cu.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../coefficient_op.h"
#include "coefficient_op_kernel.h"
#include "ratio_op_kernel.h"

namespace en_seg {
namespace {

// The CUDA kernels are float32 only (the layers' statistics are float32 on the GPU; float64
// runs on the CPU kernels or the PyTorch reference).
void check_float32(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": the CUDA kernel takes float32 tensors, got ",
              t.scalar_type());
}

cuda::StatisticsShape statistics_shape(const StatisticsArgs& s) {
  return {s.n, s.c, s.pool, s.batch_stats, static_cast<float>(s.eps)};
}

cuda::RunningStatistics running_statistics(const RunningArgs& r) {
  const bool given = r.mean.defined();
  return {given ? r.mean.data_ptr<float>() : nullptr,
          given ? r.var.data_ptr<float>() : nullptr,
          r.update ? r.num_batches_tracked.data_ptr<int64_t>() : nullptr,
          r.update,
          r.cumulative,
          static_cast<float>(r.momentum),
          static_cast<float>(r.count > 1 ? static_cast<double>(r.count) / (r.count - 1) : 1.0)};
}

at::Tensor workspace(const at::Tensor& like, int64_t floats) {
  return at::empty({floats}, like.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> exemplar_coefficients_cuda(
    const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, c10::IntArrayRef normalizers,
    bool batch_stats, std::optional<double> momentum, double eps, int64_t count) {
  const char* op = "en_seg::exemplar_coefficients";
  const ExemplarArgs args =
      check_exemplar_args(op, mean, var, weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b,
                          running_mean, running_var, num_batches_tracked, normalizers,
                          batch_stats, momentum, eps, count);
  check_float32(op, args.stats.mean);
  TORCH_CHECK(args.sizes.hidden <= cuda::kMaxHidden, op, ": fc1_w has shape ", fc1_w.sizes(),
              ", expected (P, K * K) with P <= ", cuda::kMaxHidden,
              " hidden units for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(mean.device());
  auto outputs = empty_exemplar_outputs(args);
  auto& [scale, shift, ratios, saved] = outputs;
  at::Tensor scratch = workspace(args.stats.mean, cuda::exemplar_forward_workspace(args.sizes));
  const cuda::ExemplarInputs inputs{
      args.stats.mean.data_ptr<float>(), args.stats.var.data_ptr<float>(),
      args.weight.data_ptr<float>(),     args.bias.data_ptr<float>(),
      args.conv_w.data_ptr<float>(),     args.fc1_w.data_ptr<float>(),
      args.fc1_b.data_ptr<float>(),      args.fc2_w.data_ptr<float>(),
      args.fc2_b.data_ptr<float>()};
  C10_CUDA_CHECK(cuda::launch_exemplar_coefficients(
      statistics_shape(args.stats), args.sizes, inputs, running_statistics(args.stats.running),
      scale.data_ptr<float>(), shift.data_ptr<float>(), ratios.data_ptr<float>(),
      saved.data_ptr<float>(), scratch.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return outputs;
}

ExemplarGradTensors exemplar_coefficients_backward_cuda(
    const at::Tensor& grad_scale, const at::Tensor& grad_shift, const at::Tensor& saved,
    const at::Tensor& weight, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc2_w, c10::IntArrayRef normalizers, bool batch_stats) {
  const char* op = "en_seg::exemplar_coefficients_backward";
  const ExemplarBackwardArgs args = check_exemplar_backward_args(
      op, grad_scale, grad_shift, saved, weight, conv_w, fc1_w, fc2_w, normalizers,
      batch_stats);
  check_float32(op, args.grad_scale);
  const c10::cuda::CUDAGuard guard(grad_scale.device());
  ExemplarGradTensors grads = empty_exemplar_grads(args);
  at::Tensor scratch = workspace(args.grad_scale, cuda::exemplar_backward_workspace(args.sizes));
  const cuda::ExemplarBackwardInputs inputs{
      args.grad_scale.data_ptr<float>(), args.grad_shift.data_ptr<float>(),
      args.saved.data_ptr<float>(),      args.weight.data_ptr<float>(),
      args.conv_w.data_ptr<float>(),     args.fc1_w.data_ptr<float>(),
      args.fc2_w.data_ptr<float>()};
  const cuda::ExemplarGrads out{
      std::get<0>(grads).data_ptr<float>(), std::get<1>(grads).data_ptr<float>(),
      std::get<2>(grads).data_ptr<float>(), std::get<3>(grads).data_ptr<float>(),
      std::get<4>(grads).data_ptr<float>(), std::get<5>(grads).data_ptr<float>(),
      std::get<6>(grads).data_ptr<float>(), std::get<7>(grads).data_ptr<float>(),
      std::get<8>(grads).data_ptr<float>()};
  const cuda::StatisticsShape shape{args.sizes.n, args.sizes.c, args.pool, args.batch_stats,
                                    0.f};
  C10_CUDA_CHECK(cuda::launch_exemplar_coefficients_backward(
      shape, args.sizes, inputs, out, scratch.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream()));
  return grads;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> switchable_coefficients_cuda(
    const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean_weight, const at::Tensor& var_weight,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, c10::IntArrayRef normalizers,
    bool batch_stats, std::optional<double> momentum, double eps, int64_t count) {
  const char* op = "en_seg::switchable_coefficients";
  const SwitchableArgs args =
      check_switchable_args(op, mean, var, weight, bias, mean_weight, var_weight, running_mean,
                            running_var, num_batches_tracked, normalizers, batch_stats,
                            momentum, eps, count);
  check_float32(op, args.stats.mean);
  const c10::cuda::CUDAGuard guard(mean.device());
  auto outputs = empty_switchable_outputs(args);
  auto& [scale, shift, saved] = outputs;
  const cuda::SwitchableInputs inputs{
      args.stats.mean.data_ptr<float>(), args.stats.var.data_ptr<float>(),
      args.weight.data_ptr<float>(),     args.bias.data_ptr<float>(),
      args.mean_weight.data_ptr<float>(), args.var_weight.data_ptr<float>()};
  C10_CUDA_CHECK(cuda::launch_switchable_coefficients(
      statistics_shape(args.stats), inputs, running_statistics(args.stats.running),
      scale.data_ptr<float>(), shift.data_ptr<float>(), saved.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream()));
  return outputs;
}

SwitchableGradTensors switchable_coefficients_backward_cuda(
    const at::Tensor& grad_scale, const at::Tensor& grad_shift, const at::Tensor& saved,
    const at::Tensor& weight, c10::IntArrayRef normalizers, bool batch_stats) {
  const char* op = "en_seg::switchable_coefficients_backward";
  const SwitchableBackwardArgs args = check_switchable_backward_args(
      op, grad_scale, grad_shift, saved, weight, normalizers, batch_stats);
  check_float32(op, args.grad_scale);
  const c10::cuda::CUDAGuard guard(grad_scale.device());
  SwitchableGradTensors grads = empty_switchable_grads(args);
  const cuda::StatisticsShape shape{args.n, args.c, args.pool, args.batch_stats, 0.f};
  at::Tensor scratch = workspace(args.grad_scale, cuda::switchable_backward_workspace(shape));
  const cuda::SwitchableBackwardInputs inputs{
      args.grad_scale.data_ptr<float>(), args.grad_shift.data_ptr<float>(),
      args.saved.data_ptr<float>(), args.weight.data_ptr<float>()};
  const cuda::SwitchableGrads out{
      std::get<0>(grads).data_ptr<float>(), std::get<1>(grads).data_ptr<float>(),
      std::get<2>(grads).data_ptr<float>(), std::get<3>(grads).data_ptr<float>(),
      std::get<4>(grads).data_ptr<float>(), std::get<5>(grads).data_ptr<float>()};
  C10_CUDA_CHECK(cuda::launch_switchable_coefficients_backward(
      shape, inputs, out, scratch.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CUDA, m) {
  m.impl("exemplar_coefficients", &exemplar_coefficients_cuda);
  m.impl("exemplar_coefficients_backward", &exemplar_coefficients_backward_cuda);
  m.impl("exemplar_norm_apply", &exemplar_norm_apply_forward);
  m.impl("switchable_coefficients", &switchable_coefficients_cuda);
  m.impl("switchable_coefficients_backward", &switchable_coefficients_backward_cuda);
  m.impl("switchable_norm_apply", &switchable_norm_apply_forward);
}

}  // namespace en_seg
