// CPU kernels of en_seg::exemplar_ratios and en_seg::exemplar_ratios_backward.
//
// The ratio branch is a few small reductions per sample, so in PyTorch it costs a dozen
// operator launches forward and more backward, each with little work. Here one pass per
// sample does it all; samples are spread over threads with at::parallel_for once they
// carry enough work. Every sample's result depends only on its own inputs and parameter
// gradients are summed over samples in a fixed order, so results do not depend on the
// number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "exemplar_ratios.h"

namespace en_seg {
namespace {

using ratio::Grads;
using ratio::Inputs;
using ratio::ParamLayout;
using ratio::Sample;
using ratio::Sizes;

// Work worth a parallel task, in multiply-adds; ATen's own grain size (TensorIterator.h).
// Smaller problems stay on the calling thread, where they are cheapest.
constexpr int64_t kGrainSize = 32768;

// Samples per parallel task. A sample's forward costs K·C multiply-adds for the statistics
// and P (K² + K) for the two layers, plus P tanh of about ten multiply-adds each.
int64_t sample_grain(const Sizes& s) {
  const int64_t work = s.k * s.c + s.hidden * (s.k * s.k + s.k + 10);
  return std::max<int64_t>(1, kGrainSize / work);
}

// One sample's forward scratch: v (K²), h (P), ratios (K).
template <typename T>
struct ForwardScratch {
  std::vector<T> v, h, ratios;
  explicit ForwardScratch(const Sizes& s) : v(s.k * s.k), h(s.hidden), ratios(s.k) {}
};

template <typename T>
void sample_forward(const Sizes& s, const Inputs<T>& in, int64_t n, ForwardScratch<T>& out) {
  const Sample<T> x(in, s, n);
  T z[ratio::kMaxNormalizers];
  std::fill(out.v.begin(), out.v.end(), T(0));
  for (int64_t g = 0; g < s.groups(); ++g) {
    ratio::project_group(s, x, in.conv_w, g, z);
    ratio::accumulate_gram(s.k, z, out.v.data());
  }
  for (int64_t i = 0; i < s.hidden; ++i) out.h[i] = ratio::hidden_unit(s, in, out.v.data(), i);
  for (int k = 0; k < s.k; ++k) out.ratios[k] = ratio::logit(s, in, out.h.data(), k);
  ratio::softmax(s.k, out.ratios.data());
}

template <typename T>
void forward_kernel(const Sizes& s, const Inputs<T>& in, T* ratios) {
  at::parallel_for(0, s.n, sample_grain(s), [&](int64_t begin, int64_t end) {
    ForwardScratch<T> scratch(s);
    for (int64_t n = begin; n < end; ++n) {
      sample_forward(s, in, n, scratch);
      std::copy(scratch.ratios.begin(), scratch.ratios.end(), ratios + n * s.k);
    }
  });
}

// Writes sample n's input gradients and its row of partial parameter gradients.
template <typename T>
void sample_backward(const Sizes& s, const Inputs<T>& in, const T* grad, int64_t n,
                     const Grads<T>& out, T* partial, ForwardScratch<T>& fwd,
                     std::vector<T>& gu) {
  sample_forward(s, in, n, fwd);
  const ParamLayout layout(s);
  const int kk = s.k * s.k;
  T go[ratio::kMaxNormalizers];
  ratio::softmax_backward(s.k, fwd.ratios.data(), grad + n * s.k, go);
  for (int64_t i = 0; i < s.hidden; ++i) {
    gu[i] = ratio::hidden_unit_backward(s, in, go, fwd.h[i], i);
    partial[layout.fc1_b + i] = gu[i];
    for (int q = 0; q < kk; ++q) partial[layout.fc1_w + i * kk + q] = gu[i] * fwd.v[q];
  }
  for (int k = 0; k < s.k; ++k) {
    partial[layout.fc2_b + k] = go[k];
    for (int64_t i = 0; i < s.hidden; ++i) {
      partial[layout.fc2_w + k * s.hidden + i] = go[k] * fwd.h[i];
    }
  }
  T sym[ratio::kMaxNormalizers * ratio::kMaxNormalizers];
  for (int a = 0; a < s.k; ++a) {
    for (int b = 0; b < s.k; ++b) {
      sym[a * s.k + b] = ratio::symmetric_gram_backward(s, in, gu.data(), a, b);
    }
  }
  const Sample<T> x(in, s, n);
  for (int64_t g = 0; g < s.groups(); ++g) {
    ratio::project_group_backward(s, x, in.conv_w, sym, g, out.pooled + n * s.c,
                                  out.means + n * s.k * s.c, out.rstds + n * s.k * s.c,
                                  partial + layout.conv_w);
  }
}

// Sums the (N, total) partial parameter gradients over samples, in sample order.
template <typename T>
void reduce_param_grads(const Sizes& s, const T* partials, const Grads<T>& out) {
  const ParamLayout layout(s);
  const struct {
    int64_t begin, end;
    T* grad;
  } params[] = {{layout.fc1_w, layout.fc1_b, out.fc1_w},
                {layout.fc1_b, layout.fc2_w, out.fc1_b},
                {layout.fc2_w, layout.fc2_b, out.fc2_w},
                {layout.fc2_b, layout.conv_w, out.fc2_b},
                {layout.conv_w, layout.total, out.conv_w}};
  const int64_t grain = std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, s.n));
  for (const auto& param : params) {
    at::parallel_for(0, param.end - param.begin, grain, [&](int64_t begin, int64_t end) {
      T* grad = param.grad;
      std::fill(grad + begin, grad + end, T(0));
      for (int64_t n = 0; n < s.n; ++n) {
        const T* row = partials + n * layout.total + param.begin;
        EN_SEG_SIMD
        for (int64_t p = begin; p < end; ++p) grad[p] += row[p];
      }
    });
  }
}

template <typename T>
void backward_kernel(const Sizes& s, const Inputs<T>& in, const T* grad, const Grads<T>& out,
                     T* partials) {
  const int64_t total = ParamLayout(s).total;
  at::parallel_for(0, s.n, sample_grain(s), [&](int64_t begin, int64_t end) {
    ForwardScratch<T> fwd(s);
    std::vector<T> gu(s.hidden);
    for (int64_t n = begin; n < end; ++n) {
      sample_backward(s, in, grad, n, out, partials + n * total, fwd, gu);
    }
  });
  reduce_param_grads(s, partials, out);
}

at::Tensor exemplar_ratios_cpu(const at::Tensor& pooled, const at::Tensor& means,
                               const at::Tensor& rstds, const at::Tensor& conv_w,
                               const at::Tensor& fc1_w, const at::Tensor& fc1_b,
                               const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  const RatioArgs args = check_ratio_args("en_seg::exemplar_ratios", pooled, means, rstds,
                                          conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
  at::Tensor ratios = at::empty({args.sizes.n, args.sizes.k}, args.pooled.options());
  AT_DISPATCH_FLOATING_TYPES(args.pooled.scalar_type(), "exemplar_ratios_cpu", [&] {
    forward_kernel(args.sizes, args.inputs<scalar_t>(), ratios.data_ptr<scalar_t>());
  });
  return ratios;
}

RatioGradTensors exemplar_ratios_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pooled, const at::Tensor& means,
    const at::Tensor& rstds, const at::Tensor& conv_w, const at::Tensor& fc1_w,
    const at::Tensor& fc1_b, const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  const char* op = "en_seg::exemplar_ratios_backward";
  const RatioArgs args =
      check_ratio_args(op, pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
  const at::Tensor grad_c = check_ratio_grad(op, grad, args);
  RatioGradBuffers out(args);
  at::Tensor partials =
      at::empty({args.sizes.n, ParamLayout(args.sizes).total}, args.pooled.options());
  AT_DISPATCH_FLOATING_TYPES(args.pooled.scalar_type(), "exemplar_ratios_backward_cpu", [&] {
    backward_kernel(args.sizes, args.inputs<scalar_t>(), grad_c.data_ptr<scalar_t>(),
                    out.grads<scalar_t>(), partials.data_ptr<scalar_t>());
  });
  return out.tensors;
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CPU, m) {
  m.impl("exemplar_ratios", &exemplar_ratios_cpu);
  m.impl("exemplar_ratios_backward", &exemplar_ratios_backward_cpu);
}

}  // namespace en_seg
