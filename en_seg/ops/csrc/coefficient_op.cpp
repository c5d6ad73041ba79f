// The coefficient ops of the mixed layers and the apply ops that carry a layer's gradient
// (docs/method.md#statistics, #running-statistics, #output, #switchable-normalization).
//
// A fused layer runs three ops forward: en_seg::channel_moments(x) -> (mean, var); the
// coefficient op, which turns the (N, C) moments, the parameters and the running
// statistics into the affine map (scale, shift) of every (n, c) in one call (statistics of
// every normalizer, the running statistics' update, EN's ratio branch, Eq. 3 folded), and
// saves what its backward needs; and the apply op, y = scale * (x - mean) + shift. The
// moments and the coefficients carry no gradient (the layer calls them with gradients
// disabled): the apply op's backward is the whole layer's, three ops again:
//   (Σ dy, Σ dy (x - mean)) = channel_affine_grad_sums(dy, x, mean), the gradients of shift
//     and scale;
//   the coefficient op's backward, from them to the gradients of mean, var and every
//     parameter;
//   dx = channel_norm_input_grad(dy, x, mean, scale, Σ dy, grad_mean, grad_var).
// Registering that backward on the apply op rather than chaining one formula per op is what
// writes dx in one pass: the moments' gradient is known only after the coefficients'.
//
// The autograd kernels are C++ (this file) rather than torch.library.register_autograd:
// that refuses ops that mutate an input (the running statistics), and its Python wrapper
// costs more per call than a whole small layer's arithmetic. Kernels:
// coefficient_op_cpu.cpp, cuda/coefficient_op_*.
#include "coefficient_op.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "channel_op.h"
#include "dispatch.h"
#include "ratio_op.h"

namespace en_seg {
namespace {

coef::Pool check_pool(const char* op, c10::IntArrayRef normalizers) {
  const int64_t k = static_cast<int64_t>(normalizers.size());
  TORCH_CHECK(k >= 1 && k <= coef::kMaxPool, op, ": normalizers ", normalizers,
              " must name 1 to 3 of IN (0), LN (1), BN (2)");
  coef::Pool pool{static_cast<int>(k), {0, 0, 0}, -1, -1};
  bool seen[coef::kMaxPool] = {false, false, false};
  for (int j = 0; j < pool.k; ++j) {
    const int64_t code = normalizers[j];
    TORCH_CHECK(code >= coef::kIN && code <= coef::kBN && !seen[code], op, ": normalizers ",
                normalizers, " must name each of IN (0), LN (1), BN (2) at most once");
    seen[code] = true;
    pool.code[j] = static_cast<int>(code);
    if (code == coef::kLN) pool.ln = j;
    if (code == coef::kBN) pool.bn = j;
  }
  return pool;
}

// A running buffer: (C,) in the statistics' dtype, on their device, contiguous (it is
// written in place).
void check_running_buffer(const char* op, const char* name, const at::Tensor& t,
                          const at::Tensor& mean) {
  check_shape(op, name, t, {mean.size(1)}, "(C,)");
  TORCH_CHECK(t.scalar_type() == mean.scalar_type() && t.device() == mean.device(), op, ": ",
              name, " is ", t.scalar_type(), " on ", t.device(), ", expected ",
              mean.scalar_type(), " on ", mean.device(), " like the moments");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (it is updated in place)");
}

StatisticsArgs check_statistics_args(
    const char* op, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, c10::IntArrayRef normalizers,
    bool batch_stats, std::optional<double> momentum, double eps, c10::SymInt count) {
  check_dim(op, "mean", mean, 2, "(N, C)");
  TORCH_CHECK(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble, op,
              ": expects float32 or float64 moments, got ", mean.scalar_type());
  TORCH_CHECK(mean.size(0) >= 1 && mean.size(1) >= 1, op, ": mean has shape ", mean.sizes(),
              ", expected (N, C) with at least one sample and one channel");
  check_like(op, "mean", mean, {{"var", &var}});
  check_shape(op, "var", var, {mean.size(0), mean.size(1)}, "(N, C)");
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  // Symbolic while a tracer runs the layer (the fake kernels take it then); a kernel is
  // only called on real tensors, whose count is a number.
  const int64_t values = count.expect_int();
  TORCH_CHECK(values >= 1 && values % mean.size(0) == 0, op, ": count ", values,
              " must be N * H * W for N = ", mean.size(0));
  const coef::Pool pool = check_pool(op, normalizers);
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(), op,
              ": pass running_mean and running_var together, or neither");
  RunningArgs running{{}, {}, {}, false, !momentum.has_value(), momentum.value_or(0.0), values};
  if (running_mean.has_value()) {
    check_running_buffer(op, "running_mean", *running_mean, mean);
    check_running_buffer(op, "running_var", *running_var, mean);
    running.mean = *running_mean;
    running.var = *running_var;
  }
  const bool uses_running = pool.bn >= 0 && !batch_stats;
  TORCH_CHECK(!uses_running || running.mean.defined(), op,
              ": batch_stats=False normalizes BN by the running statistics; pass them");
  running.update = pool.bn >= 0 && batch_stats && running.mean.defined();
  if (running.update) {
    TORCH_CHECK(num_batches_tracked.has_value(), op,
                ": updating the running statistics needs num_batches_tracked");
    const at::Tensor& tracked = *num_batches_tracked;
    TORCH_CHECK(tracked.scalar_type() == at::kLong && tracked.numel() == 1 &&
                    tracked.device() == mean.device(),
                op, ": num_batches_tracked must be one int64 on ", mean.device(), ", got ",
                tracked.scalar_type(), " of shape ", tracked.sizes(), " on ", tracked.device());
    running.num_batches_tracked = tracked;
  }
  return {mean.contiguous(), var.contiguous(), mean.size(0), mean.size(1), pool, batch_stats,
          eps, running};
}

// The pool and N, C of a backward, from its (N, C) gradients.
void check_grads(const char* op, const at::Tensor& grad_scale, const at::Tensor& grad_shift) {
  check_dim(op, "grad_scale", grad_scale, 2, "(N, C)");
  TORCH_CHECK(grad_scale.scalar_type() == at::kFloat || grad_scale.scalar_type() == at::kDouble,
              op, ": expects float32 or float64 gradients, got ", grad_scale.scalar_type());
  check_shape(op, "grad_shift", grad_shift, {grad_scale.size(0), grad_scale.size(1)}, "(N, C)");
}

void check_saved(const char* op, const at::Tensor& saved, int64_t total) {
  check_shape(op, "saved", saved, {total}, "the forward's saved values");
}

}  // namespace

ExemplarArgs check_exemplar_args(
    const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, c10::IntArrayRef normalizers,
    bool batch_stats, std::optional<double> momentum, double eps, c10::SymInt count) {
  const char* op = "en_seg::exemplar_coefficients";
  StatisticsArgs stats =
      check_statistics_args(op, mean, var, running_mean, running_var, num_batches_tracked,
                            normalizers, batch_stats, momentum, eps, count);
  check_like(op, "mean", mean,
             {{"weight", &weight}, {"bias", &bias}, {"conv_w", &conv_w}, {"fc1_w", &fc1_w},
              {"fc1_b", &fc1_b}, {"fc2_w", &fc2_w}, {"fc2_b", &fc2_b}});
  ratio::Sizes sizes{stats.n, stats.c, 1, 0, stats.pool.k};
  check_shape(op, "weight", weight, {sizes.k, sizes.c}, "(K, C)");
  check_shape(op, "bias", bias, {sizes.k, sizes.c}, "(K, C)");
  check_weights(op, conv_w, fc1_w, fc2_w, sizes);
  check_shape(op, "fc1_b", fc1_b, {sizes.hidden}, "(P,)");
  check_shape(op, "fc2_b", fc2_b, {sizes.k}, "(K,)");
  return {stats,          weight.contiguous(), bias.contiguous(),  conv_w.contiguous(),
          fc1_w.contiguous(), fc1_b.contiguous(), fc2_w.contiguous(), fc2_b.contiguous(),
          sizes};
}

ExemplarOutputs empty_exemplar_outputs(const ExemplarArgs& args) {
  const ratio::Sizes& s = args.sizes;
  const auto options = args.stats.mean.options();
  return {at::empty({s.n, s.c}, options), at::empty({s.n, s.c}, options),
          at::empty({s.n, s.k}, options),
          at::empty({coef::ExemplarSavedLayout(s).total}, options)};
}

ExemplarBackwardArgs check_exemplar_backward_args(
    const at::Tensor& grad_scale, const at::Tensor& grad_shift, const at::Tensor& saved,
    const at::Tensor& weight, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc2_w, c10::IntArrayRef normalizers, bool batch_stats) {
  const char* op = "en_seg::exemplar_coefficients_backward";
  check_grads(op, grad_scale, grad_shift);
  check_like(op, "grad_scale", grad_scale,
             {{"grad_shift", &grad_shift}, {"saved", &saved}, {"weight", &weight},
              {"conv_w", &conv_w}, {"fc1_w", &fc1_w}, {"fc2_w", &fc2_w}});
  const coef::Pool pool = check_pool(op, normalizers);
  ratio::Sizes sizes{grad_scale.size(0), grad_scale.size(1), 1, 0, pool.k};
  check_shape(op, "weight", weight, {sizes.k, sizes.c}, "(K, C)");
  check_weights(op, conv_w, fc1_w, fc2_w, sizes);
  check_saved(op, saved, coef::ExemplarSavedLayout(sizes).total);
  return {grad_scale.contiguous(), grad_shift.contiguous(), saved.contiguous(),
          weight.contiguous(),     conv_w.contiguous(),     fc1_w.contiguous(),
          fc2_w.contiguous(),      sizes,                   pool,
          batch_stats};
}

ExemplarGradTensors empty_exemplar_grads(const ExemplarBackwardArgs& args) {
  const ratio::Sizes& s = args.sizes;
  const auto options = args.grad_scale.options();
  return {at::empty({s.n, s.c}, options),          at::empty({s.n, s.c}, options),
          at::empty({s.k, s.c}, options),          at::empty({s.k, s.c}, options),
          at::empty({s.groups(), s.r, 1}, options), at::empty({s.hidden, s.k * s.k}, options),
          at::empty({s.hidden}, options),          at::empty({s.k, s.hidden}, options),
          at::empty({s.k}, options)};
}

SwitchableArgs check_switchable_args(
    const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean_weight, const at::Tensor& var_weight,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, c10::IntArrayRef normalizers,
    bool batch_stats, std::optional<double> momentum, double eps, c10::SymInt count) {
  const char* op = "en_seg::switchable_coefficients";
  StatisticsArgs stats =
      check_statistics_args(op, mean, var, running_mean, running_var, num_batches_tracked,
                            normalizers, batch_stats, momentum, eps, count);
  check_like(op, "mean", mean,
             {{"weight", &weight}, {"bias", &bias}, {"mean_weight", &mean_weight},
              {"var_weight", &var_weight}});
  check_shape(op, "weight", weight, {stats.c}, "(C,)");
  check_shape(op, "bias", bias, {stats.c}, "(C,)");
  check_shape(op, "mean_weight", mean_weight, {stats.pool.k}, "(K,)");
  check_shape(op, "var_weight", var_weight, {stats.pool.k}, "(K,)");
  return {stats, weight.contiguous(), bias.contiguous(), mean_weight.contiguous(),
          var_weight.contiguous()};
}

SwitchableOutputs empty_switchable_outputs(const SwitchableArgs& args) {
  const StatisticsArgs& s = args.stats;
  const auto options = s.mean.options();
  return {at::empty({s.n, s.c}, options), at::empty({s.n, s.c}, options),
          at::empty({coef::SwitchableSavedLayout(s.n, s.c, s.pool.k).total}, options)};
}

SwitchableBackwardArgs check_switchable_backward_args(
    const at::Tensor& grad_scale, const at::Tensor& grad_shift, const at::Tensor& saved,
    const at::Tensor& weight, c10::IntArrayRef normalizers, bool batch_stats) {
  const char* op = "en_seg::switchable_coefficients_backward";
  check_grads(op, grad_scale, grad_shift);
  check_like(op, "grad_scale", grad_scale,
             {{"grad_shift", &grad_shift}, {"saved", &saved}, {"weight", &weight}});
  const coef::Pool pool = check_pool(op, normalizers);
  const int64_t n = grad_scale.size(0), c = grad_scale.size(1);
  check_shape(op, "weight", weight, {c}, "(C,)");
  check_saved(op, saved, coef::SwitchableSavedLayout(n, c, pool.k).total);
  return {grad_scale.contiguous(), grad_shift.contiguous(), saved.contiguous(),
          weight.contiguous(), n, c, pool, batch_stats};
}

SwitchableGradTensors empty_switchable_grads(const SwitchableBackwardArgs& args) {
  const auto options = args.grad_scale.options();
  return {at::empty({args.n, args.c}, options), at::empty({args.n, args.c}, options),
          at::empty({args.c}, options),         at::empty({args.c}, options),
          at::empty({args.pool.k}, options),    at::empty({args.pool.k}, options)};
}

at::Tensor exemplar_norm_apply_forward(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, c10::IntArrayRef, bool) {
  return channel_affine(x, mean, scale, shift);
}

at::Tensor switchable_norm_apply_forward(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, c10::IntArrayRef, bool) {
  return channel_affine(x, mean, scale, shift);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Optional = std::optional<at::Tensor>;

// The coefficient ops take no part in autograd: a call that would need their gradient is
// refused, so that the error names the op that does carry it.
template <typename T>
void refuse_gradient(const char* op, const char* apply_op, const T& arg) {
  if constexpr (std::is_same_v<T, at::Tensor>) {
    TORCH_CHECK(!arg.requires_grad(), op,
                " is not differentiable: call it with gradients disabled (torch.no_grad()); "
                "a layer's gradient flows through ", apply_op, ", whose backward runs ", op,
                "_backward");
  }
}

// Running statistics updated in place: their version counters move, as for any in-place op,
// so that autograd notices a saved copy being overwritten.
template <typename T>
void bump_version(const T& arg) {
  if constexpr (std::is_same_v<T, Optional>) {
    if (arg.has_value()) torch::autograd::impl::bump_version(*arg);
  }
}

// The Autograd kernel of coefficient op `op` (signature Outputs(Params...)): refuses every
// tensor argument that requires grad, moves the versions of the optional ones (the running
// statistics), and runs the op below autograd.
template <const char* op, const char* apply_op, typename Signature>
struct CoefficientsAutograd;

template <const char* op, const char* apply_op, typename Outputs, typename... Params>
struct CoefficientsAutograd<op, apply_op, Outputs(Params...)> {
  static Outputs run(Params... params) {
    if (at::GradMode::is_enabled()) (refuse_gradient(op, apply_op, params), ...);
    (bump_version(params), ...);
    static const auto handle = op_handle<Outputs(Params...)>(op);
    at::AutoDispatchBelowADInplaceOrView guard;
    return handle.call(params...);
  }
};

constexpr char kExemplarCoefficients[] = "en_seg::exemplar_coefficients";
constexpr char kExemplarNormApply[] = "en_seg::exemplar_norm_apply";
constexpr char kSwitchableCoefficients[] = "en_seg::switchable_coefficients";
constexpr char kSwitchableNormApply[] = "en_seg::switchable_norm_apply";

// The statistics and coefficients an apply op is given are the outputs of ops called with
// gradients disabled; one that requires grad did not come from them.
void check_constant_inputs(const char* op, std::initializer_list<const at::Tensor*> inputs) {
  for (const at::Tensor* t : inputs) {
    TORCH_CHECK(!t->requires_grad(), op,
                ": mean, scale, shift and saved must come from channel_moments and the "
                "coefficient op called with gradients disabled; the gradient of x and of the "
                "parameters is this op's");
  }
}

// Saves x, mean, scale and `saved` first, then the apply op's `params` that its backward
// reads; keeps the pool and batch_stats.
void save_layer(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mean,
                const at::Tensor& scale, const at::Tensor& saved,
                std::vector<at::Tensor> params, c10::IntArrayRef normalizers,
                bool batch_stats) {
  params.insert(params.begin(), {x, mean, scale, saved});
  ctx->save_for_backward(params);
  ctx->saved_data["normalizers"] = normalizers.vec();
  ctx->saved_data["batch_stats"] = batch_stats;
}

// How autograd holds its nodes: c10::intrusive_ptr in recent torch, std::shared_ptr before
// (the GPU check builds against an older torch than ours).
using NodeRef = std::decay_t<decltype(std::declval<const at::TensorBase&>().grad_fn())>;

template <typename T, typename... Args>
NodeRef make_node(Args&&... args) {
  if constexpr (std::is_same_v<NodeRef, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>(std::forward<Args>(args)...);
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

// What the backward of both apply ops shares: the layer save_layer saved, read back, the
// one reduction pass over (dy, x), and the input gradient once the coefficients' backward
// has given the gradients of the moments.
struct LayerBackward {
  // The kernel ops run below autograd: they have no autograd kernel, and the fallback
  // would box every argument only to find that none records a graph (first_order says
  // what a create_graph backward gets instead).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  variable_list saved;  // x, mean, scale, saved, then the op's parameters
  std::vector<int64_t> normalizers;
  bool batch_stats;
  // The upstream gradient in x's layout: both passes read it, so it is copied (where its
  // layout differs) once here rather than by each op.
  at::Tensor grad_y;
  at::Tensor sum_dy, sum_dy_xc;

  LayerBackward(AutogradContext* ctx, const at::Tensor& upstream)
      : saved(ctx->get_saved_variables()),
        normalizers(ctx->saved_data["normalizers"].toIntVector()),
        batch_stats(ctx->saved_data["batch_stats"].toBool()),
        grad_y(upstream.contiguous(activation_layout(saved[0]))) {
    std::tie(sum_dy, sum_dy_xc) = channel_affine_grad_sums(grad_y, saved[0], saved[1]);
  }

  // The layer's gradients are first order, as torch's once_differentiable makes a Python
  // Function's: under create_graph, `grads` (dx and the parameters' gradients) get a node
  // that refuses to be differentiated, so that a second derivative fails with this message
  // rather than coming out silently wrong; a create_graph backward that is not
  // differentiated again is unaffected.
  void first_order(const char* op, const at::Tensor& upstream, variable_list& grads) const {
    if (!torch::autograd::compute_requires_grad(upstream, saved)) return;
    auto refuse = make_node<torch::autograd::Error>(
        std::string(op) + ": the compiled ops give first derivatives only; differentiating "
        "a gradient of this layer again needs its pure-PyTorch reference (impl='reference')",
        torch::autograd::collect_next_edges(upstream, saved));
    for (const at::Tensor& grad : grads) {
      if (grad.defined()) torch::autograd::set_history(grad, refuse);
    }
  }

  // dx, or an undefined tensor where x needs no gradient.
  at::Tensor grad_x(AutogradContext* ctx, const at::Tensor& grad_mean,
                    const at::Tensor& grad_var) const {
    if (!ctx->needs_input_grad(0)) return {};
    return channel_norm_input_grad(grad_y, saved[0], saved[1], saved[2], sum_dy, grad_mean,
                                   grad_var);
  }
};

class ExemplarNormApply : public torch::autograd::Function<ExemplarNormApply> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mean,
                            const at::Tensor& scale, const at::Tensor& shift,
                            const at::Tensor& saved, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& conv_w,
                            const at::Tensor& fc1_w, const at::Tensor& fc1_b,
                            const at::Tensor& fc2_w, const at::Tensor& fc2_b,
                            c10::IntArrayRef normalizers, bool batch_stats) {
    check_constant_inputs("en_seg::exemplar_norm_apply", {&mean, &scale, &shift, &saved});
    save_layer(ctx, x, mean, scale, saved, {weight, conv_w, fc1_w, fc2_w}, normalizers,
               batch_stats);
    static const auto op = op_handle<decltype(exemplar_norm_apply_forward)>(
        "en_seg::exemplar_norm_apply");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, mean, scale, shift, saved, weight, bias, conv_w, fc1_w, fc1_b, fc2_w,
                   fc2_b, normalizers, batch_stats);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(14);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const LayerBackward layer(ctx, grad_y);
    const variable_list& s = layer.saved;
    static const auto backward_op =
        op_handle<detail::OpSignature<ExemplarGradTensors, check_exemplar_backward_args>>(
            "en_seg::exemplar_coefficients_backward");
    auto [grad_mean, grad_var, grad_weight, grad_bias, grad_conv_w, grad_fc1_w, grad_fc1_b,
          grad_fc2_w, grad_fc2_b] =
        backward_op.call(layer.sum_dy_xc, layer.sum_dy, s[3], s[4], s[5], s[6], s[7],
                         layer.normalizers, layer.batch_stats);
    out[0] = layer.grad_x(ctx, grad_mean, grad_var);
    out[5] = grad_weight;
    out[6] = grad_bias;
    out[7] = grad_conv_w;
    out[8] = grad_fc1_w;
    out[9] = grad_fc1_b;
    out[10] = grad_fc2_w;
    out[11] = grad_fc2_b;
    layer.first_order(kExemplarNormApply, grad_y, out);
    return out;
  }
};

class SwitchableNormApply : public torch::autograd::Function<SwitchableNormApply> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mean,
                            const at::Tensor& scale, const at::Tensor& shift,
                            const at::Tensor& saved, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& mean_weight,
                            const at::Tensor& var_weight, c10::IntArrayRef normalizers,
                            bool batch_stats) {
    check_constant_inputs("en_seg::switchable_norm_apply", {&mean, &scale, &shift, &saved});
    save_layer(ctx, x, mean, scale, saved, {weight}, normalizers, batch_stats);
    static const auto op = op_handle<decltype(switchable_norm_apply_forward)>(
        "en_seg::switchable_norm_apply");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, mean, scale, shift, saved, weight, bias, mean_weight, var_weight,
                   normalizers, batch_stats);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(11);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const LayerBackward layer(ctx, grad_y);
    const variable_list& s = layer.saved;
    static const auto backward_op =
        op_handle<detail::OpSignature<SwitchableGradTensors, check_switchable_backward_args>>(
            "en_seg::switchable_coefficients_backward");
    auto [grad_mean, grad_var, grad_weight, grad_bias, grad_mean_weight, grad_var_weight] =
        backward_op.call(layer.sum_dy_xc, layer.sum_dy, s[3], s[4], layer.normalizers,
                         layer.batch_stats);
    out[0] = layer.grad_x(ctx, grad_mean, grad_var);
    out[5] = grad_weight;
    out[6] = grad_bias;
    out[7] = grad_mean_weight;
    out[8] = grad_var_weight;
    layer.first_order(kSwitchableNormApply, grad_y, out);
    return out;
  }
};

at::Tensor exemplar_norm_apply_autograd(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor& saved, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b,
    c10::IntArrayRef normalizers, bool batch_stats) {
  return ExemplarNormApply::apply(x, mean, scale, shift, saved, weight, bias, conv_w, fc1_w,
                                  fc1_b, fc2_w, fc2_b, normalizers, batch_stats);
}

at::Tensor switchable_norm_apply_autograd(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor& saved, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean_weight, const at::Tensor& var_weight,
    c10::IntArrayRef normalizers, bool batch_stats) {
  return SwitchableNormApply::apply(x, mean, scale, shift, saved, weight, bias, mean_weight,
                                    var_weight, normalizers, batch_stats);
}

// The layer ops: a fused layer's three ops in one call, so that a forward crosses from
// Python into the dispatcher once (a small layer's arithmetic costs less than a crossing).
// CompositeImplicitAutograd: each op inside runs its own kernels and autograd, and tracers
// see those three ops.
struct LayerMoments {
  at::Tensor mean, var;
  c10::SymInt count;  // N * H * W, symbolic under a tracer with dynamic shapes
};

LayerMoments layer_moments(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": expects a 4-D (N, C, H, W) input, got shape ", x.sizes());
  static const auto moments =
      op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>("en_seg::channel_moments");
  at::NoGradGuard no_grad;
  auto [mean, var] = moments.call(x);
  return {mean, var, x.sym_size(0) * x.sym_size(2) * x.sym_size(3)};
}

std::tuple<at::Tensor, at::Tensor> exemplar_norm(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& conv_w, const at::Tensor& fc1_w, const at::Tensor& fc1_b,
    const at::Tensor& fc2_w, const at::Tensor& fc2_b, const Optional& running_mean,
    const Optional& running_var, const Optional& num_batches_tracked,
    c10::IntArrayRef normalizers, bool batch_stats, std::optional<double> momentum,
    double eps) {
  const LayerMoments m = layer_moments("en_seg::exemplar_norm", x);
  static const auto coefficients =
      op_handle<detail::OpSignature<ExemplarOutputs, check_exemplar_args>>(
          kExemplarCoefficients);
  at::Tensor scale, shift, ratios, saved;
  {
    at::NoGradGuard no_grad;
    std::tie(scale, shift, ratios, saved) = coefficients.call(
        m.mean, m.var, weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b, running_mean,
        running_var, num_batches_tracked, normalizers, batch_stats, momentum, eps, m.count);
  }
  if (!at::GradMode::is_enabled()) return {channel_affine(x, m.mean, scale, shift), ratios};
  static const auto apply =
      op_handle<decltype(exemplar_norm_apply_forward)>(kExemplarNormApply);
  return {apply.call(x, m.mean, scale, shift, saved, weight, bias, conv_w, fc1_w, fc1_b, fc2_w,
                     fc2_b, normalizers, batch_stats),
          ratios};
}

at::Tensor switchable_norm(const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& bias, const at::Tensor& mean_weight,
                           const at::Tensor& var_weight, const Optional& running_mean,
                           const Optional& running_var, const Optional& num_batches_tracked,
                           c10::IntArrayRef normalizers, bool batch_stats,
                           std::optional<double> momentum, double eps) {
  const LayerMoments m = layer_moments("en_seg::switchable_norm", x);
  static const auto coefficients =
      op_handle<detail::OpSignature<SwitchableOutputs, check_switchable_args>>(
          kSwitchableCoefficients);
  at::Tensor scale, shift, saved;
  {
    at::NoGradGuard no_grad;
    std::tie(scale, shift, saved) = coefficients.call(
        m.mean, m.var, weight, bias, mean_weight, var_weight, running_mean, running_var,
        num_batches_tracked, normalizers, batch_stats, momentum, eps, m.count);
  }
  if (!at::GradMode::is_enabled()) return channel_affine(x, m.mean, scale, shift);
  static const auto apply =
      op_handle<decltype(switchable_norm_apply_forward)>(kSwitchableNormApply);
  return apply.call(x, m.mean, scale, shift, saved, weight, bias, mean_weight, var_weight,
                    normalizers, batch_stats);
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CompositeImplicitAutograd, m) {
  m.impl("exemplar_norm", &exemplar_norm);
  m.impl("switchable_norm", &switchable_norm);
}

TORCH_LIBRARY_IMPL(en_seg, Autograd, m) {
  using detail::OpSignature;
  m.impl("exemplar_coefficients",
         &CoefficientsAutograd<kExemplarCoefficients, kExemplarNormApply,
                               OpSignature<ExemplarOutputs, check_exemplar_args>>::run);
  m.impl("switchable_coefficients",
         &CoefficientsAutograd<kSwitchableCoefficients, kSwitchableNormApply,
                               OpSignature<SwitchableOutputs, check_switchable_args>>::run);
  m.impl("exemplar_norm_apply", &exemplar_norm_apply_autograd);
  m.impl("switchable_norm_apply", &switchable_norm_apply_autograd);
}

}  // namespace en_seg
