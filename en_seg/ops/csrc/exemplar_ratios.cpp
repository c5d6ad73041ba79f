#include "exemplar_ratios.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <utility>

namespace en_seg {
namespace {

void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
               const char* expected) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " has shape ", t.sizes(), ", expected ",
              expected);
}

// `shape` is a braced list at every call: an IntArrayRef of it allocates nothing, and the
// checks run on every call of the ops.
void check_shape(const char* op, const char* name, const at::Tensor& t, c10::IntArrayRef shape,
                 const char* expected) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " has shape ", t.sizes(), ", expected ",
              expected, " = ", shape);
}

using NamedTensors = std::initializer_list<std::pair<const char*, const at::Tensor*>>;

// Every tensor in `tensors` has pooled's dtype and device.
void check_like(const char* op, NamedTensors tensors, const at::Tensor& pooled) {
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t->scalar_type() == pooled.scalar_type(), op, ": ", name, " has dtype ",
                t->scalar_type(), " but pooled has ", pooled.scalar_type(),
                "; pass every tensor in one floating dtype");
    TORCH_CHECK(t->device() == pooled.device(), op, ": ", name, " is on ", t->device(),
                " but pooled is on ", pooled.device(), "; pass every tensor on one device");
  }
}

// The checks both ops share: the statistics, the convolution and both weight matrices.
ratio::Sizes check_statistics_and_weights(const char* op, const at::Tensor& pooled,
                                          const at::Tensor& means, const at::Tensor& rstds,
                                          const at::Tensor& conv_w, const at::Tensor& fc1_w,
                                          const at::Tensor& fc2_w) {
  TORCH_CHECK(at::isFloatingType(pooled.scalar_type()), op,
              ": expects floating-point tensors, got pooled of dtype ", pooled.scalar_type());
  check_dim(op, "pooled", pooled, 2, "(N, C)");
  check_dim(op, "means", means, 3, "(N, K, C)");
  check_dim(op, "conv_w", conv_w, 3, "(C / r, r, 1)");
  check_dim(op, "fc1_w", fc1_w, 2, "(P, K * K)");
  const int64_t n = pooled.size(0);
  const int64_t c = pooled.size(1);
  const int64_t k = means.size(1);
  const int64_t groups = conv_w.size(0);
  const int64_t r = conv_w.size(1);
  const int64_t hidden = fc1_w.size(0);
  TORCH_CHECK(c >= 1, op, ": pooled has shape ", pooled.sizes(),
              ", expected (N, C) with at least one channel");
  TORCH_CHECK(k >= 1 && k <= ratio::kMaxNormalizers, op, ": means has shape ", means.sizes(),
              ", expected (N, K, C) with 1 <= K <= ", ratio::kMaxNormalizers);
  check_shape(op, "means", means, {n, k, c}, "(N, K, C)");
  check_shape(op, "rstds", rstds, {n, k, c}, "(N, K, C)");
  TORCH_CHECK(groups * r == c && conv_w.size(2) == 1, op, ": conv_w has shape ",
              conv_w.sizes(), ", expected (C / r, r, 1) with (C / r) * r = C = ", c);
  check_shape(op, "fc1_w", fc1_w, {hidden, k * k}, "(P, K * K)");
  check_shape(op, "fc2_w", fc2_w, {k, hidden}, "(K, P)");
  check_like(op,
             {{"means", &means}, {"rstds", &rstds}, {"conv_w", &conv_w}, {"fc1_w", &fc1_w},
              {"fc2_w", &fc2_w}},
             pooled);
  return ratio::Sizes{n, c, r, hidden, static_cast<int>(k)};
}

}  // namespace

RatioArgs check_ratio_args(const char* op, const at::Tensor& pooled, const at::Tensor& means,
                           const at::Tensor& rstds, const at::Tensor& conv_w,
                           const at::Tensor& fc1_w, const at::Tensor& fc1_b,
                           const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  const ratio::Sizes sizes =
      check_statistics_and_weights(op, pooled, means, rstds, conv_w, fc1_w, fc2_w);
  check_shape(op, "fc1_b", fc1_b, {sizes.hidden}, "(P,)");
  check_shape(op, "fc2_b", fc2_b, {sizes.k}, "(K,)");
  check_like(op, {{"fc1_b", &fc1_b}, {"fc2_b", &fc2_b}}, pooled);
  return {pooled.contiguous(), means.contiguous(), rstds.contiguous(), conv_w.contiguous(),
          fc1_w.contiguous(),  fc1_b.contiguous(), fc2_w.contiguous(), fc2_b.contiguous(),
          sizes};
}

std::tuple<at::Tensor, at::Tensor> empty_ratio_outputs(const RatioArgs& args) {
  const auto options = args.pooled.options();
  return {at::empty({args.sizes.n, args.sizes.k}, options),
          at::empty({args.sizes.n, args.sizes.activations()}, options)};
}

RatioBackwardArgs check_ratio_backward_args(
    const char* op, const at::Tensor& grad, const at::Tensor& ratios,
    const at::Tensor& activations, const at::Tensor& pooled, const at::Tensor& means,
    const at::Tensor& rstds, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc2_w) {
  const ratio::Sizes sizes =
      check_statistics_and_weights(op, pooled, means, rstds, conv_w, fc1_w, fc2_w);
  check_shape(op, "grad", grad, {sizes.n, sizes.k}, "(N, K)");
  check_shape(op, "ratios", ratios, {sizes.n, sizes.k}, "(N, K)");
  check_shape(op, "activations", activations, {sizes.n, sizes.activations()},
              "(N, K * K + P)");
  check_like(op, {{"grad", &grad}, {"ratios", &ratios}, {"activations", &activations}},
             pooled);
  return {grad.contiguous(),   ratios.contiguous(), activations.contiguous(),
          pooled.contiguous(), means.contiguous(),  rstds.contiguous(),
          conv_w.contiguous(), fc1_w.contiguous(),  fc2_w.contiguous(),
          sizes};
}

RatioGradBuffers::RatioGradBuffers(const RatioBackwardArgs& args)
    : tensors(at::empty_like(args.pooled), at::empty_like(args.means),
              at::empty_like(args.rstds), at::empty_like(args.conv_w),
              at::empty_like(args.fc1_w), at::empty({args.sizes.hidden}, args.fc1_w.options()),
              at::empty_like(args.fc2_w), at::empty({args.sizes.k}, args.fc2_w.options())) {}

}  // namespace en_seg
