// Argument checks of the ratio op en_seg::exemplar_ratios and its backward (schemas in
// module.cpp, math in ratio_math.h, kernels in ratio_op_cpu.cpp and cuda/), and its autograd
// formula; the fake kernels are in en_seg/ops/ratio_op.py.
#include "ratio_op.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <utility>

#include "dispatch.h"

namespace en_seg {

void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
               const char* expected) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " has shape ", t.sizes(), ", expected ",
              expected);
}

void check_shape(const char* op, const char* name, const at::Tensor& t, c10::IntArrayRef shape,
                 const char* expected) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " has shape ", t.sizes(), ", expected ",
              expected, " = ", shape);
}

void check_like(const char* op, const char* first_name, const at::Tensor& first,
                NamedTensors others) {
  TORCH_CHECK(at::isFloatingType(first.scalar_type()), op,
              ": expects floating-point tensors, got ", first_name, " of dtype ",
              first.scalar_type());
  for (const auto& [name, t] : others) {
    TORCH_CHECK(t->scalar_type() == first.scalar_type(), op, ": ", name, " has dtype ",
                t->scalar_type(), " but ", first_name, " has ", first.scalar_type(),
                "; pass every tensor in one floating dtype");
    TORCH_CHECK(t->device() == first.device(), op, ": ", name, " is on ", t->device(), " but ",
                first_name, " is on ", first.device(), "; pass every tensor on one device");
  }
}

namespace {

// The statistics' sizes: `stats` (N, K, C) with C >= 1 and 1 <= K <= kMaxNormalizers.
ratio::Sizes check_statistics(const char* op, const char* name, const at::Tensor& stats) {
  check_dim(op, name, stats, 3, "(N, K, C)");
  const int64_t k = stats.size(1);
  TORCH_CHECK(k >= 1 && k <= ratio::kMaxNormalizers, op, ": ", name, " has shape ",
              stats.sizes(), ", expected (N, K, C) with 1 <= K <= ", ratio::kMaxNormalizers);
  TORCH_CHECK(stats.size(2) >= 1, op, ": ", name, " has shape ", stats.sizes(),
              ", expected (N, K, C) with at least one channel");
  return ratio::Sizes{stats.size(0), stats.size(2), 1, 0, static_cast<int>(k)};
}

}  // namespace

void check_weights(const char* op, const at::Tensor& conv_w, const at::Tensor& fc1_w,
                   const at::Tensor& fc2_w, ratio::Sizes& sizes) {
  check_dim(op, "conv_w", conv_w, 3, "(C / r, r, 1)");
  check_dim(op, "fc1_w", fc1_w, 2, "(P, K * K)");
  TORCH_CHECK(conv_w.size(0) * conv_w.size(1) == sizes.c && conv_w.size(2) == 1, op,
              ": conv_w has shape ", conv_w.sizes(),
              ", expected (C / r, r, 1) with (C / r) * r = C = ", sizes.c);
  sizes.r = conv_w.size(1);
  sizes.hidden = fc1_w.size(0);
  check_shape(op, "fc1_w", fc1_w, {sizes.hidden, sizes.k * sizes.k}, "(P, K * K)");
  check_shape(op, "fc2_w", fc2_w, {sizes.k, sizes.hidden}, "(K, P)");
}

RatioArgs check_ratio_args(const char* op, const at::Tensor& pooled, const at::Tensor& means,
                           const at::Tensor& rstds, const at::Tensor& conv_w,
                           const at::Tensor& fc1_w, const at::Tensor& fc1_b,
                           const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  check_like(op, "pooled", pooled,
             {{"means", &means}, {"rstds", &rstds}, {"conv_w", &conv_w}, {"fc1_w", &fc1_w},
              {"fc1_b", &fc1_b}, {"fc2_w", &fc2_w}, {"fc2_b", &fc2_b}});
  ratio::Sizes sizes = check_statistics(op, "means", means);
  check_shape(op, "pooled", pooled, {sizes.n, sizes.c}, "(N, C)");
  check_shape(op, "rstds", rstds, {sizes.n, sizes.k, sizes.c}, "(N, K, C)");
  check_weights(op, conv_w, fc1_w, fc2_w, sizes);
  check_shape(op, "fc1_b", fc1_b, {sizes.hidden}, "(P,)");
  check_shape(op, "fc2_b", fc2_b, {sizes.k}, "(K,)");
  return {pooled.contiguous(), means.contiguous(), rstds.contiguous(), conv_w.contiguous(),
          fc1_w.contiguous(),  fc1_b.contiguous(), fc2_w.contiguous(), fc2_b.contiguous(),
          sizes};
}

std::tuple<at::Tensor, at::Tensor> empty_ratio_outputs(const RatioArgs& args) {
  const auto options = args.pooled.options();
  return {at::empty({args.sizes.n, args.sizes.k}, options),
          at::empty({args.sizes.n, ratio::SavedLayout(args.sizes).total}, options)};
}

RatioBackwardArgs check_ratio_backward_args(const char* op, const at::Tensor& grad,
                                            const at::Tensor& activations,
                                            const at::Tensor& rstds, const at::Tensor& conv_w,
                                            const at::Tensor& fc1_w, const at::Tensor& fc2_w) {
  check_like(op, "grad", grad,
             {{"activations", &activations}, {"rstds", &rstds}, {"conv_w", &conv_w},
              {"fc1_w", &fc1_w}, {"fc2_w", &fc2_w}});
  ratio::Sizes sizes = check_statistics(op, "rstds", rstds);
  check_shape(op, "grad", grad, {sizes.n, sizes.k}, "(N, K)");
  check_weights(op, conv_w, fc1_w, fc2_w, sizes);
  check_shape(op, "activations", activations, {sizes.n, ratio::SavedLayout(sizes).total},
              "(N, K + K * K + P + K * C / r + K * C)");
  return {grad.contiguous(),   activations.contiguous(), rstds.contiguous(),
          conv_w.contiguous(), fc1_w.contiguous(),       fc2_w.contiguous(),
          sizes};
}

// at::empty rather than at::empty_like, whose memory-format logic costs about 70 ns more
// per tensor: eight of them per backward, whatever N.
RatioGradBuffers::RatioGradBuffers(const RatioBackwardArgs& args) {
  const ratio::Sizes& s = args.sizes;
  const auto options = args.rstds.options();
  tensors = {at::empty({s.n, s.c}, options),
             at::empty({s.n, s.k, s.c}, options),
             at::empty({s.n, s.k, s.c}, options),
             at::empty({s.groups(), s.r, 1}, options),
             at::empty({s.hidden, s.k * s.k}, options),
             at::empty({s.hidden}, options),
             at::empty({s.k, s.hidden}, options),
             at::empty({s.k}, options)};
}

}  // namespace en_seg

namespace en_seg {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using RatiosOp = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
using RatiosBackwardOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&);

std::tuple<at::Tensor, at::Tensor> ratios_below_autograd(
    const at::Tensor& pooled, const at::Tensor& means, const at::Tensor& rstds,
    const at::Tensor& conv_w, const at::Tensor& fc1_w, const at::Tensor& fc1_b,
    const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  static const auto op = op_handle<RatiosOp>("en_seg::exemplar_ratios");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
}

// The activations hold everything the backward needs besides rstds and the three weights,
// so it recomputes nothing and 5 tensors rather than the 8 inputs are saved; every saved
// tensor adds to the fixed per-call cost that dominates at small N
// (docs/benchmark_ratio.md). Nothing flows back through the activations, and an undefined
// gradient of the ratios is not materialized as zeros.
class ExemplarRatios : public torch::autograd::Function<ExemplarRatios> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pooled,
                               const at::Tensor& means, const at::Tensor& rstds,
                               const at::Tensor& conv_w, const at::Tensor& fc1_w,
                               const at::Tensor& fc1_b, const at::Tensor& fc2_w,
                               const at::Tensor& fc2_b) {
    auto [ratios, activations] =
        ratios_below_autograd(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
    ctx->mark_non_differentiable({activations});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({activations, rstds, conv_w, fc1_w, fc2_w});
    return {ratios, activations};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(8);
    static const auto op = op_handle<RatiosBackwardOp>("en_seg::exemplar_ratios_backward");
    const variable_list s = ctx->get_saved_variables();
    auto [pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b] =
        op.call(grads[0], s[0], s[1], s[2], s[3], s[4]);
    return {pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b};
  }
};

std::tuple<at::Tensor, at::Tensor> exemplar_ratios_autograd(
    const at::Tensor& pooled, const at::Tensor& means, const at::Tensor& rstds,
    const at::Tensor& conv_w, const at::Tensor& fc1_w, const at::Tensor& fc1_b,
    const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  if (!records_graph({&pooled, &means, &rstds, &conv_w, &fc1_w, &fc1_b, &fc2_w, &fc2_b})) {
    return ratios_below_autograd(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
  }
  variable_list out =
      ExemplarRatios::apply(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace en_seg

TORCH_LIBRARY_IMPL(en_seg, Autograd, m) {
  m.impl("exemplar_ratios", &en_seg::exemplar_ratios_autograd);
}
