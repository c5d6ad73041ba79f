#include "exemplar_ratios.h"

#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <vector>

namespace en_seg {
namespace {

void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
               const char* expected) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " has shape ", t.sizes(), ", expected ",
              expected);
}

void check_shape(const char* op, const char* name, const at::Tensor& t,
                 const std::vector<int64_t>& shape, const char* expected) {
  TORCH_CHECK(t.sizes() == c10::IntArrayRef(shape), op, ": ", name, " has shape ", t.sizes(),
              ", expected ", expected, " = ", c10::IntArrayRef(shape));
}

void check_like(const char* op, const char* name, const at::Tensor& t,
                const at::Tensor& pooled) {
  TORCH_CHECK(t.scalar_type() == pooled.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but pooled has ", pooled.scalar_type(),
              "; pass every tensor in one floating dtype");
  TORCH_CHECK(t.device() == pooled.device(), op, ": ", name, " is on ", t.device(),
              " but pooled is on ", pooled.device(), "; pass every tensor on one device");
}

}  // namespace

RatioArgs check_ratio_args(const char* op, const at::Tensor& pooled, const at::Tensor& means,
                           const at::Tensor& rstds, const at::Tensor& conv_w,
                           const at::Tensor& fc1_w, const at::Tensor& fc1_b,
                           const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
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
  check_shape(op, "fc1_b", fc1_b, {hidden}, "(P,)");
  check_shape(op, "fc2_w", fc2_w, {k, hidden}, "(K, P)");
  check_shape(op, "fc2_b", fc2_b, {k}, "(K,)");
  const char* names[] = {"means", "rstds", "conv_w", "fc1_w", "fc1_b", "fc2_w", "fc2_b"};
  const at::Tensor* tensors[] = {&means, &rstds, &conv_w, &fc1_w, &fc1_b, &fc2_w, &fc2_b};
  for (int i = 0; i < 7; ++i) check_like(op, names[i], *tensors[i], pooled);
  return {pooled.contiguous(), means.contiguous(), rstds.contiguous(), conv_w.contiguous(),
          fc1_w.contiguous(),  fc1_b.contiguous(), fc2_w.contiguous(), fc2_b.contiguous(),
          ratio::Sizes{n, c, r, hidden, static_cast<int>(k)}};
}

at::Tensor check_ratio_grad(const char* op, const at::Tensor& grad, const RatioArgs& args) {
  check_shape(op, "grad", grad, {args.sizes.n, args.sizes.k}, "(N, K)");
  check_like(op, "grad", grad, args.pooled);
  return grad.contiguous();
}

RatioGradBuffers::RatioGradBuffers(const RatioArgs& args)
    : tensors(at::empty_like(args.pooled), at::empty_like(args.means),
              at::empty_like(args.rstds), at::empty_like(args.conv_w),
              at::empty_like(args.fc1_w), at::empty_like(args.fc1_b),
              at::empty_like(args.fc2_w), at::empty_like(args.fc2_b)) {}

}  // namespace en_seg
