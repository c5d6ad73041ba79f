// Argument checking, output allocation, the saved values' layouts and the entry points
// shared by the CPU and CUDA implementations of the coefficient ops
// en_seg::exemplar_coefficients, switchable_coefficients, their backward ops, and the apply
// ops exemplar_norm_apply and switchable_norm_apply (schemas in module.cpp, their math in
// coefficient_op.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "coefficient_math.h"

namespace en_seg {

// The running statistics of a forward: the buffers (undefined when absent) and how the
// batch statistics fold into them.
struct RunningArgs {
  at::Tensor mean, var, num_batches_tracked;
  bool update;            // the pool has BN, its batch statistics are used, buffers given
  bool cumulative;        // momentum None: f = 1 / num_batches_tracked
  double momentum;
  int64_t count;          // L = N * H * W
};

// What both forwards share, checked: the moments, the pool and the running statistics.
struct StatisticsArgs {
  at::Tensor mean, var;   // (N, C), contiguous
  int64_t n, c;
  coef::Pool pool;
  bool batch_stats;       // BN member on batch statistics (else on the running ones)
  double eps;
  RunningArgs running;
};

struct ExemplarArgs {
  StatisticsArgs stats;
  at::Tensor weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b;  // contiguous
  ratio::Sizes sizes;
};

ExemplarArgs check_exemplar_args(
    const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, c10::IntArrayRef normalizers,
    bool batch_stats, std::optional<double> momentum, double eps, c10::SymInt count);

// scale, shift (N, C), ratios (N, K), saved (ExemplarSavedLayout::total,), uninitialised.
using ExemplarOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
ExemplarOutputs empty_exemplar_outputs(const ExemplarArgs& args);

struct ExemplarBackwardArgs {
  at::Tensor grad_scale, grad_shift, saved, weight, conv_w, fc1_w, fc2_w;  // contiguous
  ratio::Sizes sizes;
  coef::Pool pool;
  bool batch_stats;
};

ExemplarBackwardArgs check_exemplar_backward_args(
    const at::Tensor& grad_scale, const at::Tensor& grad_shift, const at::Tensor& saved,
    const at::Tensor& weight, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc2_w, c10::IntArrayRef normalizers, bool batch_stats);

// Gradients of mean, var, weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b, uninitialised.
using ExemplarGradTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                       at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                       at::Tensor>;
ExemplarGradTensors empty_exemplar_grads(const ExemplarBackwardArgs& args);

struct SwitchableArgs {
  StatisticsArgs stats;
  at::Tensor weight, bias, mean_weight, var_weight;  // contiguous
};

SwitchableArgs check_switchable_args(
    const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean_weight, const at::Tensor& var_weight,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, c10::IntArrayRef normalizers,
    bool batch_stats, std::optional<double> momentum, double eps, c10::SymInt count);

// scale, shift (N, C), saved (SwitchableSavedLayout::total,), uninitialised.
using SwitchableOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
SwitchableOutputs empty_switchable_outputs(const SwitchableArgs& args);

struct SwitchableBackwardArgs {
  at::Tensor grad_scale, grad_shift, saved, weight;  // contiguous
  int64_t n, c;
  coef::Pool pool;
  bool batch_stats;
};

SwitchableBackwardArgs check_switchable_backward_args(
    const at::Tensor& grad_scale, const at::Tensor& grad_shift, const at::Tensor& saved,
    const at::Tensor& weight, c10::IntArrayRef normalizers, bool batch_stats);

// Gradients of mean, var, weight, bias, mean_weight, var_weight, uninitialised.
using SwitchableGradTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                         at::Tensor, at::Tensor>;
SwitchableGradTensors empty_switchable_grads(const SwitchableBackwardArgs& args);

// The apply ops' forward on every backend: en_seg::channel_affine(x, mean, scale, shift).
at::Tensor exemplar_norm_apply_forward(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor& saved, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
    c10::IntArrayRef normalizers, bool batch_stats);

at::Tensor switchable_norm_apply_forward(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor& saved, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean_weight, const at::Tensor& var_weight,
    c10::IntArrayRef normalizers, bool batch_stats);

// A backend's kernels of the coefficient ops take their checked arguments and return their
// outputs, which they allocate (empty_exemplar_outputs and the like).
using ExemplarKernel = ExemplarOutputs (*)(const ExemplarArgs&);
using ExemplarBackwardKernel = ExemplarGradTensors (*)(const ExemplarBackwardArgs&);
using SwitchableKernel = SwitchableOutputs (*)(const SwitchableArgs&);
using SwitchableBackwardKernel = SwitchableGradTensors (*)(const SwitchableBackwardArgs&);

namespace detail {

// The signature of the op whose arguments `check` checks: check's parameters (the op's, as
// module.cpp declares them), returning Outputs.
template <typename Outputs, typename Check>
struct SignatureOf;

template <typename Outputs, typename Args, typename... Params>
struct SignatureOf<Outputs, Args (*)(Params...)> {
  using type = Outputs(Params...);
};

template <typename Outputs, auto check>
using OpSignature = typename SignatureOf<Outputs, decltype(check)>::type;

// An op on one backend: its arguments checked by `check`, then the backend's kernel on what
// the check returns.
template <typename Outputs, auto check, auto kernel, typename = OpSignature<Outputs, check>>
struct Entry;

template <typename Outputs, auto check, auto kernel, typename... Params>
struct Entry<Outputs, check, kernel, Outputs(Params...)> {
  static Outputs run(Params... params) { return kernel(check(params...)); }
};

}  // namespace detail

// Registers a backend's kernels of the coefficient ops, from its TORCH_LIBRARY_IMPL block,
// with the apply ops' forward (the same on every backend).
template <ExemplarKernel exemplar, ExemplarBackwardKernel exemplar_backward,
          SwitchableKernel switchable, SwitchableBackwardKernel switchable_backward>
void register_coefficient_kernels(torch::Library& m) {
  using detail::Entry;
  m.impl("exemplar_coefficients", &Entry<ExemplarOutputs, check_exemplar_args, exemplar>::run);
  m.impl("exemplar_coefficients_backward",
         &Entry<ExemplarGradTensors, check_exemplar_backward_args, exemplar_backward>::run);
  m.impl("exemplar_norm_apply", &exemplar_norm_apply_forward);
  m.impl("switchable_coefficients",
         &Entry<SwitchableOutputs, check_switchable_args, switchable>::run);
  m.impl("switchable_coefficients_backward",
         &Entry<SwitchableGradTensors, check_switchable_backward_args, switchable_backward>::run);
  m.impl("switchable_norm_apply", &switchable_norm_apply_forward);
}

}  // namespace en_seg
