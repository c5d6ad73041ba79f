// CPU kernels of en_seg::exemplar_ratios and en_seg::exemplar_ratios_backward.
//
// The ratio branch is a few small reductions per sample, so in PyTorch it costs a dozen
// operator launches forward and more backward, each with little work. Here the forward is
// one pass per sample, which also saves v and h; the backward is one pass per sample for
// the input gradients, then one pass per parameter entry that sums its per-sample terms in
// sample order. Samples and parameter entries are spread over threads with
// at::parallel_for once they carry enough work; no value depends on how the range is split,
// so results do not depend on the number of threads.
//
// The hidden layer's loops run along the P hidden units, contiguous in memory, so that the
// compiler vectorizes them, tanh included (ratio::tanh_of). For that fc1's weight is read
// transposed, (K², P), copied once per call (P·K² values).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "exemplar_ratios.h"

namespace en_seg {
namespace {

using ratio::BackwardInputs;
using ratio::Grads;
using ratio::Inputs;
using ratio::Sample;
using ratio::Sizes;

// Work worth a parallel task, in multiply-adds; ATen's own grain size (TensorIterator.h).
// Smaller problems stay on the calling thread, where they are cheapest: at N = 2 the whole
// op is a few microseconds of arithmetic.
constexpr int64_t kGrainSize = 32768;

// Samples per parallel task. A sample costs K·C multiply-adds for the statistics and
// P (K² + K) for the two layers, plus P tanh of about twenty operations each.
int64_t sample_grain(const Sizes& s) {
  const int64_t work = s.k * s.c + s.hidden * (s.k * s.k + s.k + 20);
  return std::max<int64_t>(1, kGrainSize / work);
}

// w (rows, cols) row-major, transposed to (cols, rows).
template <typename T>
std::vector<T> transposed(const T* w, int64_t rows, int64_t cols) {
  std::vector<T> t(rows * cols);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = w[i * cols + j];
  }
  return t;
}

// Sample n's ratios (K) and activations (v, K², then h, P). fc1_t is fc1_w transposed.
template <typename T>
void sample_forward(const Sizes& s, const Inputs<T>& in, const T* fc1_t, int64_t n, T* ratios,
                    T* activations) {
  const Sample<T> x(in.pooled, in.means, in.rstds, s, n);
  const int kk = s.k * s.k;
  T* v = activations;
  T* h = activations + kk;
  T z[ratio::kMaxNormalizers];
  std::fill(v, v + kk, T(0));
  for (int64_t g = 0; g < s.groups(); ++g) {
    ratio::project_group(s, x, in.conv_w, g, z);
    ratio::accumulate_gram(s.k, z, v);
  }
  std::copy(in.fc1_b, in.fc1_b + s.hidden, h);
  for (int q = 0; q < kk; ++q) {
    const T v_q = v[q];
    const T* w = fc1_t + q * s.hidden;
    EN_SEG_SIMD
    for (int64_t i = 0; i < s.hidden; ++i) h[i] += w[i] * v_q;
  }
  EN_SEG_SIMD
  for (int64_t i = 0; i < s.hidden; ++i) h[i] = ratio::tanh_of(h[i]);
  for (int k = 0; k < s.k; ++k) ratios[k] = ratio::logit(s, in.fc2_w, in.fc2_b, h, k);
  ratio::softmax(s.k, ratios);
}

template <typename T>
void forward_kernel(const Sizes& s, const Inputs<T>& in, T* ratios, T* activations) {
  const std::vector<T> fc1_t = transposed(in.fc1_w, s.hidden, s.k * s.k);
  at::parallel_for(0, s.n, sample_grain(s), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      sample_forward(s, in, fc1_t.data(), n, ratios + n * s.k,
                     activations + n * s.activations());
    }
  });
}

// Per-sample values the parameter gradients are summed from, each (N, ·) row-major.
template <typename T>
struct SampleTerms {
  T* go;      // (N, K) gradient of the logits
  T* gu;      // (N, P) gradient of the hidden pre-activations
  T* conv_w;  // (N, C) sample n's term of the convolution weights' gradient
};

// Writes sample n's input gradients and its rows of `terms`. fc1_t is fc1_w transposed.
template <typename T>
void sample_backward(const Sizes& s, const BackwardInputs<T>& in, const T* fc1_t, int64_t n,
                     const Grads<T>& out, const SampleTerms<T>& terms) {
  const int kk = s.k * s.k;
  const T* h = in.activations + n * s.activations() + kk;
  T* go = terms.go + n * s.k;
  T* gu = terms.gu + n * s.hidden;
  ratio::softmax_backward(s.k, in.ratios + n * s.k, in.grad + n * s.k, go);
  // gu = (W2ᵀ go) ⊙ (1 - h²), along the hidden units.
  std::fill(gu, gu + s.hidden, T(0));
  for (int k = 0; k < s.k; ++k) {
    const T go_k = go[k];
    const T* w = in.fc2_w + k * s.hidden;
    EN_SEG_SIMD
    for (int64_t i = 0; i < s.hidden; ++i) gu[i] += w[i] * go_k;
  }
  EN_SEG_SIMD
  for (int64_t i = 0; i < s.hidden; ++i) gu[i] = ratio::tanh_backward(gu[i], h[i]);
  // S = Gv + Gvᵀ with Gv_q = Σ_i W1_iq gu_i, sums along the hidden units taken four at a
  // time: one sum alone waits on each of its vector adds in turn.
  T gv[ratio::kMaxNormalizers * ratio::kMaxNormalizers];
  const int64_t p = s.hidden;
  int q = 0;
  for (; q + 4 <= kk; q += 4) {
    const T* w = fc1_t + q * p;
    T sum0 = T(0), sum1 = T(0), sum2 = T(0), sum3 = T(0);
    EN_SEG_SIMD_SUM(sum0, sum1, sum2, sum3)
    for (int64_t i = 0; i < p; ++i) {
      sum0 += w[i] * gu[i];
      sum1 += w[p + i] * gu[i];
      sum2 += w[2 * p + i] * gu[i];
      sum3 += w[3 * p + i] * gu[i];
    }
    gv[q] = sum0;
    gv[q + 1] = sum1;
    gv[q + 2] = sum2;
    gv[q + 3] = sum3;
  }
  for (; q < kk; ++q) {
    const T* w = fc1_t + q * p;
    T sum = T(0);
    EN_SEG_SIMD_SUM(sum)
    for (int64_t i = 0; i < p; ++i) sum += w[i] * gu[i];
    gv[q] = sum;
  }
  T sym[ratio::kMaxNormalizers * ratio::kMaxNormalizers];
  for (int a = 0; a < s.k; ++a) {
    for (int b = 0; b < s.k; ++b) sym[a * s.k + b] = gv[a * s.k + b] + gv[b * s.k + a];
  }
  const Sample<T> x(in.pooled, in.means, in.rstds, s, n);
  for (int64_t g = 0; g < s.groups(); ++g) {
    ratio::project_group_backward(s, x, in.conv_w, sym, g, out.pooled + n * s.c,
                                  out.means + n * s.k * s.c, out.rstds + n * s.k * s.c,
                                  terms.conv_w + n * s.c);
  }
}

// The parameter gradients, every entry the sum of its per-sample terms in sample order:
// gW1_iq = Σ_n gu_ni v_nq, gb1_i = Σ_n gu_ni, gW2_ki = Σ_n go_nk h_ni, gb2_k = Σ_n go_nk,
// gw_c = Σ_n (conv term)_nc. Threads split the hidden units and the channels.
template <typename T>
void param_grads(const Sizes& s, const BackwardInputs<T>& in, const SampleTerms<T>& terms,
                 const Grads<T>& out) {
  const int kk = s.k * s.k;
  const int64_t samples = std::max<int64_t>(1, s.n);
  const int64_t unit_grain = std::max<int64_t>(1, kGrainSize / (samples * (kk + s.k + 1)));
  at::parallel_for(0, s.hidden, unit_grain, [&](int64_t begin, int64_t end) {
    const int64_t units = end - begin;
    // gW1 of units [begin, end), transposed to (K², units) so that the loops run along
    // the units.
    std::vector<T> g_fc1_t(kk * units, T(0));
    std::fill(out.fc1_b + begin, out.fc1_b + end, T(0));
    for (int k = 0; k < s.k; ++k) {
      std::fill(out.fc2_w + k * s.hidden + begin, out.fc2_w + k * s.hidden + end, T(0));
    }
    for (int64_t n = 0; n < s.n; ++n) {
      const T* v = in.activations + n * s.activations();
      const T* h = v + kk + begin;
      const T* gu = terms.gu + n * s.hidden + begin;
      for (int q = 0; q < kk; ++q) {
        const T v_q = v[q];
        T* g = g_fc1_t.data() + q * units;
        EN_SEG_SIMD
        for (int64_t i = 0; i < units; ++i) g[i] += gu[i] * v_q;
      }
      T* g_fc1_b = out.fc1_b + begin;
      EN_SEG_SIMD
      for (int64_t i = 0; i < units; ++i) g_fc1_b[i] += gu[i];
      for (int k = 0; k < s.k; ++k) {
        const T go_k = terms.go[n * s.k + k];
        T* g = out.fc2_w + k * s.hidden + begin;
        EN_SEG_SIMD
        for (int64_t i = 0; i < units; ++i) g[i] += go_k * h[i];
      }
    }
    for (int64_t i = 0; i < units; ++i) {
      for (int q = 0; q < kk; ++q) out.fc1_w[(begin + i) * kk + q] = g_fc1_t[q * units + i];
    }
  });
  for (int k = 0; k < s.k; ++k) {
    T sum = T(0);
    for (int64_t n = 0; n < s.n; ++n) sum += terms.go[n * s.k + k];
    out.fc2_b[k] = sum;
  }
  const int64_t channel_grain = std::max<int64_t>(1, kGrainSize / samples);
  at::parallel_for(0, s.c, channel_grain, [&](int64_t begin, int64_t end) {
    T* g = out.conv_w;
    std::fill(g + begin, g + end, T(0));
    for (int64_t n = 0; n < s.n; ++n) {
      const T* row = terms.conv_w + n * s.c;
      EN_SEG_SIMD
      for (int64_t c = begin; c < end; ++c) g[c] += row[c];
    }
  });
}

template <typename T>
void backward_kernel(const Sizes& s, const BackwardInputs<T>& in, const Grads<T>& out,
                     T* workspace) {
  const std::vector<T> fc1_t = transposed(in.fc1_w, s.hidden, s.k * s.k);
  const SampleTerms<T> terms{workspace, workspace + s.n * s.k,
                             workspace + s.n * (s.k + s.hidden)};
  at::parallel_for(0, s.n, sample_grain(s), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) sample_backward(s, in, fc1_t.data(), n, out, terms);
  });
  param_grads(s, in, terms, out);
}

std::tuple<at::Tensor, at::Tensor> exemplar_ratios_cpu(
    const at::Tensor& pooled, const at::Tensor& means, const at::Tensor& rstds,
    const at::Tensor& conv_w, const at::Tensor& fc1_w, const at::Tensor& fc1_b,
    const at::Tensor& fc2_w, const at::Tensor& fc2_b) {
  const RatioArgs args = check_ratio_args("en_seg::exemplar_ratios", pooled, means, rstds,
                                          conv_w, fc1_w, fc1_b, fc2_w, fc2_b);
  auto outputs = empty_ratio_outputs(args);
  auto& [ratios, activations] = outputs;
  AT_DISPATCH_FLOATING_TYPES(args.pooled.scalar_type(), "exemplar_ratios_cpu", [&] {
    forward_kernel(args.sizes, args.inputs<scalar_t>(), ratios.data_ptr<scalar_t>(),
                   activations.data_ptr<scalar_t>());
  });
  return outputs;
}

RatioGradTensors exemplar_ratios_backward_cpu(
    const at::Tensor& grad, const at::Tensor& ratios, const at::Tensor& activations,
    const at::Tensor& pooled, const at::Tensor& means, const at::Tensor& rstds,
    const at::Tensor& conv_w, const at::Tensor& fc1_w, const at::Tensor& fc2_w) {
  const RatioBackwardArgs args =
      check_ratio_backward_args("en_seg::exemplar_ratios_backward", grad, ratios,
                                activations, pooled, means, rstds, conv_w, fc1_w, fc2_w);
  RatioGradBuffers out(args);
  const Sizes& s = args.sizes;
  at::Tensor workspace = at::empty({s.n * (s.k + s.hidden + s.c)}, args.pooled.options());
  AT_DISPATCH_FLOATING_TYPES(args.pooled.scalar_type(), "exemplar_ratios_backward_cpu", [&] {
    backward_kernel(s, args.inputs<scalar_t>(), out.grads<scalar_t>(),
                    workspace.data_ptr<scalar_t>());
  });
  return out.tensors;
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CPU, m) {
  m.impl("exemplar_ratios", &exemplar_ratios_cpu);
  m.impl("exemplar_ratios_backward", &exemplar_ratios_backward_cpu);
}

}  // namespace en_seg
