// Schemas and argument checks of the fused statistics / apply ops of mixed normalization
// layers (docs/method.md#statistics and #output; paper Sec. 3.1-3.3, Eq. 3).
//
// Exemplar (and Switchable) Normalization output is an affine map of X per (n, c),
//   y = scale_nc * (x - center_nc) + shift_nc,
// whose coefficients are small (N, C) functions of the per-(n, c) moments. So a layer needs
// BatchNorm's memory passes: channel_moments reads X once, channel_affine reads X and writes
// Y once; backward, channel_affine_grad_sums reads (dY, X) once and
// channel_norm_input_grad reads (dY, X) and writes dX once. The (N, C) algebra between
// them (merging moments into IN / LN / BN statistics, the ratio branch) stays in PyTorch.
// Centring on the per-(n, c) mean keeps the sums free of cancellation when |mean| >> std.
//
// Kernels: channel_op_cpu.cpp (CPU), cuda/ (CUDA); the autograd formulas of the moments and
// the affine map are below, the fake kernels in en_seg/ops/channel_op.py.
#include "channel_op.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "dispatch.h"

namespace en_seg {

Activation check_activation(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": expects a 4-D (N, C, H, W) input, got shape ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat ||
                  dtype == at::kDouble,
              op, ": expects float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": needs H * W >= 1 to take moments over, got "
              "shape ", x.sizes());
  const bool channels_last = activation_layout(x) == at::MemoryFormat::ChannelsLast;
  return {channels_last ? x : x.contiguous(), x.size(0), x.size(1), x.size(2) * x.size(3),
          channels_last};
}

at::MemoryFormat activation_layout(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

at::Tensor match_activation(const char* op, const char* name, const at::Tensor& t,
                            const Activation& x) {
  TORCH_CHECK(t.sizes() == x.tensor.sizes(), op, ": ", name, " has shape ", t.sizes(),
              ", expected the input's shape ", x.tensor.sizes());
  TORCH_CHECK(t.scalar_type() == x.tensor.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but the input has ", x.tensor.scalar_type());
  TORCH_CHECK(t.device() == x.tensor.device(), op, ": ", name, " is on ", t.device(),
              " but the input is on ", x.tensor.device());
  return t.contiguous(x.channels_last ? at::MemoryFormat::ChannelsLast
                                      : at::MemoryFormat::Contiguous);
}

at::ScalarType stats_dtype(at::ScalarType activation_dtype) {
  return activation_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor check_coefficient(const char* op, const char* name, const at::Tensor& t,
                             const Activation& x) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == x.n && t.size(1) == x.c, op, ": ", name,
              " has shape ", t.sizes(), ", expected (N, C) = (", x.n, ", ", x.c, ")");
  const auto expected = stats_dtype(x.tensor.scalar_type());
  TORCH_CHECK(t.scalar_type() == expected, op, ": ", name, " has dtype ", t.scalar_type(),
              ", expected ", expected, " for a ", x.tensor.scalar_type(),
              " input (coefficients are float32, float64 for a float64 input)");
  TORCH_CHECK(t.device() == x.tensor.device(), op, ": ", name, " is on ", t.device(),
              " but the input is on ", x.tensor.device());
  return t.contiguous();
}

AffineArgs check_affine_args(const at::Tensor& x, const at::Tensor& center,
                             const at::Tensor& scale, const at::Tensor& shift) {
  const char* op = "en_seg::channel_affine";
  const Activation a = check_activation(op, x);
  return {a, check_coefficient(op, "center", center, a),
          check_coefficient(op, "scale", scale, a), check_coefficient(op, "shift", shift, a)};
}

GradSumsArgs check_grad_sums_args(const at::Tensor& grad_y, const at::Tensor& x,
                                  const at::Tensor& center) {
  const char* op = "en_seg::channel_affine_grad_sums";
  const Activation a = check_activation(op, x);
  return {a, match_activation(op, "grad_y", grad_y, a),
          check_coefficient(op, "center", center, a)};
}

NormInputGradArgs check_norm_input_grad_args(const at::Tensor& grad_y, const at::Tensor& x,
                                             const at::Tensor& mean, const at::Tensor& scale,
                                             const at::Tensor& sum_dy,
                                             const at::Tensor& grad_mean,
                                             const at::Tensor& grad_var) {
  const char* op = "en_seg::channel_norm_input_grad";
  const Activation a = check_activation(op, x);
  return {a,
          match_activation(op, "grad_y", grad_y, a),
          check_coefficient(op, "mean", mean, a),
          check_coefficient(op, "scale", scale, a),
          check_coefficient(op, "sum_dy", sum_dy, a),
          check_coefficient(op, "grad_mean", grad_mean, a),
          check_coefficient(op, "grad_var", grad_var, a)};
}

at::Tensor empty_stats(const Activation& x) {
  return at::empty({x.n, x.c}, x.tensor.options().dtype(stats_dtype(x.tensor.scalar_type())));
}

at::Tensor empty_activation(const Activation& x) {
  return at::empty(x.tensor.sizes(), x.tensor.options(),
                   x.channels_last ? at::MemoryFormat::ChannelsLast
                                   : at::MemoryFormat::Contiguous);
}

}  // namespace en_seg

// The schema library (TORCH_LIBRARY) lives in module.cpp; these ops join it as a fragment.
// Every op takes x (N, C, H, W) in float16 / bfloat16 / float32 / float64, contiguous or
// channels_last; (N, C) tensors are float32 (float64 for a float64 x); outputs that are
// activations have x's dtype and layout.
TORCH_LIBRARY_FRAGMENT(en_seg, m) {
  m.set_python_module("en_seg.ops.channel_op");
  // (mean, var): per-(n, c) mean and biased variance over H * W.
  m.def("channel_moments(Tensor x) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  // y = scale * (x - center) + shift per (n, c).
  m.def("channel_affine(Tensor x, Tensor center, Tensor scale, Tensor shift) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // (sum_dy, sum_dy_xc): per-(n, c) sums over H * W of dy and of dy * (x - center).
  m.def("channel_affine_grad_sums(Tensor grad_y, Tensor x, Tensor center) -> "
        "(Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // dx of y = scale * (x - mean) + shift with mean, var the moments of x over M = H * W
  // values, given Σ dy per (n, c) and the gradients grad_mean, grad_var that reach the
  // moments through scale and shift: dx = scale * dy + (grad_mean - scale * sum_dy
  // + 2 * grad_var * (x - mean)) / M, the first term direct, the second through mean as the
  // centre, the rest through the moments (a mixed layer's input gradient,
  // docs/method.md#output).
  m.def("channel_norm_input_grad(Tensor grad_y, Tensor x, Tensor mean, Tensor scale, "
        "Tensor sum_dy, Tensor grad_mean, Tensor grad_var) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

namespace en_seg {

at::Tensor channel_affine(const at::Tensor& x, const at::Tensor& center,
                          const at::Tensor& scale, const at::Tensor& shift) {
  static const auto op = op_handle<decltype(channel_affine)>("en_seg::channel_affine");
  return op.call(x, center, scale, shift);
}

std::tuple<at::Tensor, at::Tensor> channel_affine_grad_sums(const at::Tensor& grad_y,
                                                            const at::Tensor& x,
                                                            const at::Tensor& center) {
  static const auto op =
      op_handle<decltype(channel_affine_grad_sums)>("en_seg::channel_affine_grad_sums");
  return op.call(grad_y, x, center);
}

at::Tensor channel_norm_input_grad(const at::Tensor& grad_y, const at::Tensor& x,
                                   const at::Tensor& mean, const at::Tensor& scale,
                                   const at::Tensor& sum_dy, const at::Tensor& grad_mean,
                                   const at::Tensor& grad_var) {
  static const auto op =
      op_handle<decltype(channel_norm_input_grad)>("en_seg::channel_norm_input_grad");
  return op.call(grad_y, x, mean, scale, sum_dy, grad_mean, grad_var);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> moments(const at::Tensor& x) {
  static const auto op =
      op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>("en_seg::channel_moments");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x);
}

at::Tensor affine_below_autograd(const at::Tensor& x, const at::Tensor& center,
                                 const at::Tensor& scale, const at::Tensor& shift) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return channel_affine(x, center, scale, shift);
}

// mean and var average M = H * W values: d mean / dx = 1 / M and d var / dx = 2 (x - mean)
// / M, so dx is one affine pass over x. Undefined gradients arrive as zeros (the default).
class ChannelMoments : public torch::autograd::Function<ChannelMoments> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x) {
    auto [mean, var] = moments(x);
    ctx->save_for_backward({x, mean});
    return {mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    // M symbolic under a tracer with dynamic shapes.
    const c10::SymFloat m(saved[0].sym_size(2) * saved[0].sym_size(3));
    return {channel_affine(saved[0], saved[1], grads[1].mul(c10::SymFloat(2.0) / m),
                           grads[0].mul(c10::SymFloat(1.0) / m))};
  }
};

// y = scale (x - center) + shift: d shift = Σ dy, d scale = Σ dy (x - center),
// d center = -scale Σ dy, dx = scale dy.
class ChannelAffine : public torch::autograd::Function<ChannelAffine> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& center,
                            const at::Tensor& scale, const at::Tensor& shift) {
    ctx->save_for_backward({x, center, scale});
    return affine_below_autograd(x, center, scale, shift);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &center = saved[1], &scale = saved[2];
    // Both passes read grad_y in x's layout: copied, where it differs, once here.
    const at::Tensor grad_y = grads[0].contiguous(activation_layout(x));
    auto [sum_dy, sum_dy_xc] = channel_affine_grad_sums(grad_y, x, center);
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor zeros = at::zeros_like(scale);
      grad_x = channel_affine(grad_y, zeros, scale, zeros);
    }
    return {grad_x, scale.mul(sum_dy).neg_(), sum_dy_xc, sum_dy};
  }
};

std::tuple<at::Tensor, at::Tensor> channel_moments_autograd(const at::Tensor& x) {
  if (!records_graph({&x})) return moments(x);
  variable_list out = ChannelMoments::apply(x);
  return {out[0], out[1]};
}

at::Tensor channel_affine_autograd(const at::Tensor& x, const at::Tensor& center,
                                   const at::Tensor& scale, const at::Tensor& shift) {
  if (!records_graph({&x, &center, &scale, &shift})) {
    return affine_below_autograd(x, center, scale, shift);
  }
  return ChannelAffine::apply(x, center, scale, shift);
}

}  // namespace
}  // namespace en_seg

TORCH_LIBRARY_IMPL(en_seg, Autograd, m) {
  m.impl("channel_moments", &en_seg::channel_moments_autograd);
  m.impl("channel_affine", &en_seg::channel_affine_autograd);
}
