#include "ratio_op.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <utility>

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
