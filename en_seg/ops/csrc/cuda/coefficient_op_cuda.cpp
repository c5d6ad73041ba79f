// CUDA implementations of the coefficient ops and the CUDA registration of the apply ops:
// argument checks (../coefficient_op.cpp), allocation on the caching allocator and launch on
// the current stream. The kernels are in coefficient_op_kernel.cu.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../coefficient_op.h"
#include "arrival_counters.h"
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

ExemplarOutputs exemplar_coefficients_cuda(const ExemplarArgs& args) {
  const char* op = "en_seg::exemplar_coefficients";
  check_float32(op, args.stats.mean);
  TORCH_CHECK(args.sizes.hidden <= cuda::kMaxHidden, op, ": fc1_w has shape ",
              args.fc1_w.sizes(), ", expected (P, K * K) with P <= ", cuda::kMaxHidden,
              " hidden units for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(args.stats.mean.device());
  ExemplarOutputs outputs = empty_exemplar_outputs(args);
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

ExemplarGradTensors exemplar_coefficients_backward_cuda(const ExemplarBackwardArgs& args) {
  check_float32("en_seg::exemplar_coefficients_backward", args.grad_scale);
  const c10::cuda::CUDAGuard guard(args.grad_scale.device());
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
      shape, args.sizes, inputs, out, scratch.data_ptr<float>(), arrival_counters(1),
      c10::cuda::getCurrentCUDAStream()));
  return grads;
}

SwitchableOutputs switchable_coefficients_cuda(const SwitchableArgs& args) {
  check_float32("en_seg::switchable_coefficients", args.stats.mean);
  const c10::cuda::CUDAGuard guard(args.stats.mean.device());
  SwitchableOutputs outputs = empty_switchable_outputs(args);
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
    const SwitchableBackwardArgs& args) {
  check_float32("en_seg::switchable_coefficients_backward", args.grad_scale);
  const c10::cuda::CUDAGuard guard(args.grad_scale.device());
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
      shape, inputs, out, scratch.data_ptr<float>(), arrival_counters(1),
      c10::cuda::getCurrentCUDAStream()));
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CUDA, m) {
  register_coefficient_kernels<exemplar_coefficients_cuda, exemplar_coefficients_backward_cuda,
                               switchable_coefficients_cuda,
                               switchable_coefficients_backward_cuda>(m);
}

}  // namespace en_seg
