// CPU kernels of en_seg::exemplar_ratios and en_seg::exemplar_ratios_backward.
//
// The ratio branch is a few small reductions per sample, so in PyTorch it costs a dozen
// operator launches forward and more backward, each with little work. Here the forward is
// one pass per sample, which also saves what the backward needs (ratio::SavedLayout); the
// backward is one pass per sample for the input gradients, then one pass per parameter
// entry that sums its per-sample terms in sample order. Samples and parameter entries are
// spread over threads with at::parallel_for once they carry enough work (below that it
// calls the loop directly, at the cost of a few function calls); no value depends on how
// the range is split, so results do not depend on the number of threads.
//
// The hidden layer's loops run along the P hidden units, contiguous in memory, so that the
// compiler vectorizes them, tanh included (ratio::tanh_of). For that fc1's weight is read
// transposed, (K², P), copied once per call (P·K² values).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "ratio_op.h"
#include "ratio_op_cpu.h"
#include "scratch.h"

namespace en_seg {
namespace {

using ratio::BackwardInputs;
using ratio::Grads;
using ratio::Inputs;
using ratio::SavedLayout;
using ratio::Sizes;

// Work worth a parallel task, in multiply-adds; ATen's own grain size (TensorIterator.h).
// Smaller problems stay on the calling thread, where a thread pool's hand-off would cost
// more than the arithmetic.
constexpr int64_t kGrainSize = 32768;

// Samples per parallel task. A sample costs K·C multiply-adds for the statistics and
// P (K² + K) for the two layers, plus P tanh of about twenty operations each.
int64_t sample_grain(const Sizes& s) {
  const int64_t work = s.k * s.c + s.hidden * (s.k * s.k + s.k + 20);
  return std::max<int64_t>(1, kGrainSize / work);
}

// w (rows, cols) row-major, transposed to (cols, rows). Row by row of the result, whose
// stores are then contiguous (faster than the other order for fc1's tall, narrow shape).
template <typename T>
std::unique_ptr<T[]> transposed(const T* w, int64_t rows, int64_t cols) {
  auto t = uninitialized<T>(rows * cols);
  for (int64_t j = 0; j < cols; ++j) {
    T* row = t.get() + j * rows;
    for (int64_t i = 0; i < rows; ++i) row[i] = w[i * cols + j];
  }
  return t;
}

// out[j] = Σ_i rows[j][i] x[i] for the `count` rows of `rows` (count, len), four sums at a
// time: a single vectorized sum waits on each of its adds in turn. A block past `count`
// repeats row count - 1 and is dropped.
template <typename T>
EN_SEG_CPU_DISPATCH
void dot_rows(const T* rows, int count, const T* x, int64_t len, T* out) {
  for (int j0 = 0; j0 < count; j0 += 4) {
    const T* row[4];
    for (int j = 0; j < 4; ++j) row[j] = rows + std::min(j0 + j, count - 1) * len;
    T sum0 = T(0), sum1 = T(0), sum2 = T(0), sum3 = T(0);
    EN_SEG_SIMD_SUM(sum0, sum1, sum2, sum3)
    for (int64_t i = 0; i < len; ++i) {
      sum0 += row[0][i] * x[i];
      sum1 += row[1][i] * x[i];
      sum2 += row[2][i] * x[i];
      sum3 += row[3][i] * x[i];
    }
    const T sums[4] = {sum0, sum1, sum2, sum3};
    for (int j = 0; j < 4 && j0 + j < count; ++j) out[j0 + j] = sums[j];
  }
}

// y[i] += Σ_j a[j] rows[j][i] for i < len over the `count` rows of `rows`, `stride` apart:
// up to four rows per pass over y, which saves a load and a store of y per row.
template <typename T>
EN_SEG_CPU_DISPATCH
void add_rows(const T* rows, int64_t stride, int count, const T* a, int64_t len, T* y) {
  int j = 0;
  for (; j + 4 <= count; j += 4) {
    const T* r0 = rows + j * stride;
    const T* r1 = r0 + stride;
    const T* r2 = r1 + stride;
    const T* r3 = r2 + stride;
    const T a0 = a[j], a1 = a[j + 1], a2 = a[j + 2], a3 = a[j + 3];
    EN_SEG_SIMD
    for (int64_t i = 0; i < len; ++i) {
      y[i] += a0 * r0[i] + a1 * r1[i] + a2 * r2[i] + a3 * r3[i];
    }
  }
  for (; j + 2 <= count; j += 2) {
    const T* r0 = rows + j * stride;
    const T* r1 = r0 + stride;
    const T a0 = a[j], a1 = a[j + 1];
    EN_SEG_SIMD
    for (int64_t i = 0; i < len; ++i) y[i] += a0 * r0[i] + a1 * r1[i];
  }
  for (; j < count; ++j) {
    const T* r0 = rows + j * stride;
    const T a0 = a[j];
    EN_SEG_SIMD
    for (int64_t i = 0; i < len; ++i) y[i] += a0 * r0[i];
  }
}

// Sample n's ratios (K) and its row of activations (SavedLayout). fc1_t is fc1_w
// transposed.
template <typename T>
EN_SEG_CPU_DISPATCH
void sample_forward(const Sizes& s, const Inputs<T>& in, const T* fc1_t, int64_t n, T* ratios,
                    T* saved) {
  const SavedLayout layout(s);
  const T* rstds = in.rstds + n * s.k * s.c;
  const int kk = s.k * s.k;
  T* v = saved + layout.gram;
  T* h = saved + layout.hidden;
  T* z = saved + layout.z;
  T* centred = saved + layout.centred;
  ratio::center(s, in.pooled + n * s.c, in.means + n * s.k * s.c, 0, s.c, centred);
  std::fill(v, v + kk, T(0));
  for (int64_t g = 0; g < s.groups(); ++g) {
    ratio::project_group(s, centred, rstds, in.conv_w, g, z + g * s.k);
    ratio::accumulate_gram(s.k, z + g * s.k, v);
  }
  std::copy(in.fc1_b, in.fc1_b + s.hidden, h);
  add_rows(fc1_t, s.hidden, kk, v, s.hidden, h);
  EN_SEG_SIMD
  for (int64_t i = 0; i < s.hidden; ++i) h[i] = ratio::tanh_of(h[i]);
  T* lambda = saved + layout.ratios;
  dot_rows(in.fc2_w, s.k, h, s.hidden, lambda);
  for (int k = 0; k < s.k; ++k) lambda[k] += in.fc2_b[k];
  ratio::softmax(s.k, lambda);
  std::copy(lambda, lambda + s.k, ratios);
}

template <typename T>
void forward_kernel(const Sizes& s, const Inputs<T>& in, T* ratios, T* activations) {
  const auto fc1_t = transposed(in.fc1_w, s.hidden, s.k * s.k);
  const int64_t row = SavedLayout(s).total;
  at::parallel_for(0, s.n, sample_grain(s), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      sample_forward(s, in, fc1_t.get(), n, ratios + n * s.k, activations + n * row);
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

// Steps 2-3 backward for one sample, from its z (G, K), centred and rstds (K, C): writes
// the gradients of pooled (C), means and rstds (K, C) and the sample's term of the
// convolution weights' gradient (C). The arithmetic of ratio::project_group_backward, which
// the CUDA kernel runs one group per thread; here each normalizer takes one pass along all
// channels, with gz_g = (S z_g)_k spread over group g's channels in `gz` (C), since short
// loops over the r channels of a group cost more in overhead than in arithmetic.
template <typename T>
EN_SEG_INLINE
void statistics_backward(const Sizes& s, const T* centred, const T* rstds, const T* conv_w,
                         const T* sym, const T* z, T* gz, T* g_pooled, T* g_means,
                         T* g_rstds, T* g_conv_w) {
  std::fill(g_pooled, g_pooled + s.c, T(0));
  std::fill(g_conv_w, g_conv_w + s.c, T(0));
  for (int k = 0; k < s.k; ++k) {
    const T* sym_k = sym + k * s.k;
    for (int64_t g = 0; g < s.groups(); ++g) {
      T gz_g = T(0);
      for (int b = 0; b < s.k; ++b) gz_g += sym_k[b] * z[g * s.k + b];
      std::fill(gz + g * s.r, gz + (g + 1) * s.r, gz_g);
    }
    const T* d = centred + k * s.c;
    const T* rstd = rstds + k * s.c;
    T* g_mean = g_means + k * s.c;
    T* g_rstd = g_rstds + k * s.c;
    EN_SEG_SIMD
    for (int64_t c = 0; c < s.c; ++c) {
      const T g_xhat = gz[c] * conv_w[c];
      g_conv_w[c] += gz[c] * (d[c] * rstd[c]);
      g_pooled[c] += g_xhat * rstd[c];
      g_mean[c] = -g_xhat * rstd[c];
      g_rstd[c] = g_xhat * d[c];
    }
  }
}

// Writes sample n's input gradients and its rows of `terms`. fc1_t is fc1_w transposed; gz
// is scratch for C values.
template <typename T>
EN_SEG_CPU_DISPATCH
void sample_backward(const Sizes& s, const BackwardInputs<T>& in, const T* fc1_t, int64_t n,
                     const Grads<T>& out, const SampleTerms<T>& terms, T* gz) {
  const SavedLayout layout(s);
  const T* saved = in.activations + n * layout.total;
  const T* h = saved + layout.hidden;
  const int kk = s.k * s.k;
  T* go = terms.go + n * s.k;
  T* gu = terms.gu + n * s.hidden;
  ratio::softmax_backward(s.k, saved + layout.ratios, in.grad + n * s.k, go);
  // gu = (W2ᵀ go) ⊙ (1 - h²), along the hidden units.
  std::fill(gu, gu + s.hidden, T(0));
  add_rows(in.fc2_w, s.hidden, s.k, go, s.hidden, gu);
  EN_SEG_SIMD
  for (int64_t i = 0; i < s.hidden; ++i) gu[i] = ratio::tanh_backward(gu[i], h[i]);
  // S = Gv + Gvᵀ with Gv_q = Σ_i W1_iq gu_i.
  T gv[ratio::kMaxNormalizers * ratio::kMaxNormalizers];
  dot_rows(fc1_t, kk, gu, s.hidden, gv);
  T sym[ratio::kMaxNormalizers * ratio::kMaxNormalizers];
  for (int a = 0; a < s.k; ++a) {
    for (int b = 0; b < s.k; ++b) sym[a * s.k + b] = gv[a * s.k + b] + gv[b * s.k + a];
  }
  statistics_backward(s, saved + layout.centred, in.rstds + n * s.k * s.c, in.conv_w, sym,
                      saved + layout.z, gz, out.pooled + n * s.c, out.means + n * s.k * s.c,
                      out.rstds + n * s.k * s.c, terms.conv_w + n * s.c);
}

// The parameter gradients, every entry the sum of its per-sample terms in sample order,
// four samples per pass over the entries:
// gW1_iq = Σ_n gu_ni v_nq, gb1_i = Σ_n gu_ni, gW2_ki = Σ_n go_nk h_ni, gb2_k = Σ_n go_nk,
// gw_c = Σ_n (conv term)_nc. Threads split the hidden units and the channels, never the
// samples, so that the sums do not depend on the number of threads.
template <typename T>
void param_grads(const Sizes& s, const BackwardInputs<T>& in, const SampleTerms<T>& terms,
                 const Grads<T>& out) {
  const SavedLayout layout(s);
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
    const T ones[4] = {T(1), T(1), T(1), T(1)};
    for (int64_t n0 = 0; n0 < s.n; n0 += 4) {
      const int count = static_cast<int>(std::min<int64_t>(4, s.n - n0));
      const T* saved = in.activations + n0 * layout.total;
      const T* gu = terms.gu + n0 * s.hidden + begin;
      T a[4];
      for (int q = 0; q < kk; ++q) {
        for (int j = 0; j < count; ++j) a[j] = saved[j * layout.total + layout.gram + q];
        add_rows(gu, s.hidden, count, a, units, g_fc1_t.data() + q * units);
      }
      add_rows(gu, s.hidden, count, ones, units, out.fc1_b + begin);
      for (int k = 0; k < s.k; ++k) {
        for (int j = 0; j < count; ++j) a[j] = terms.go[(n0 + j) * s.k + k];
        add_rows(saved + layout.hidden + begin, layout.total, count, a, units,
                 out.fc2_w + k * s.hidden + begin);
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
    std::fill(out.conv_w + begin, out.conv_w + end, T(0));
    const T ones[4] = {T(1), T(1), T(1), T(1)};
    for (int64_t n0 = 0; n0 < s.n; n0 += 4) {
      const int count = static_cast<int>(std::min<int64_t>(4, s.n - n0));
      add_rows(terms.conv_w + n0 * s.c + begin, s.c, count, ones, end - begin,
               out.conv_w + begin);
    }
  });
}

template <typename T>
void backward_kernel(const Sizes& s, const BackwardInputs<T>& in, const Grads<T>& out,
                     T* workspace) {
  const auto fc1_t = transposed(in.fc1_w, s.hidden, s.k * s.k);
  const SampleTerms<T> terms{workspace, workspace + s.n * s.k,
                             workspace + s.n * (s.k + s.hidden)};
  at::parallel_for(0, s.n, sample_grain(s), [&](int64_t begin, int64_t end) {
    const auto gz = uninitialized<T>(s.c);
    for (int64_t n = begin; n < end; ++n) {
      sample_backward(s, in, fc1_t.get(), n, out, terms, gz.get());
    }
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

RatioGradTensors exemplar_ratios_backward_cpu(const at::Tensor& grad,
                                              const at::Tensor& activations,
                                              const at::Tensor& rstds,
                                              const at::Tensor& conv_w,
                                              const at::Tensor& fc1_w,
                                              const at::Tensor& fc2_w) {
  const RatioBackwardArgs args = check_ratio_backward_args(
      "en_seg::exemplar_ratios_backward", grad, activations, rstds, conv_w, fc1_w, fc2_w);
  RatioGradBuffers out(args);
  const Sizes& s = args.sizes;
  at::Tensor workspace =
      at::empty({cpu::exemplar_ratios_backward_workspace(s)}, args.rstds.options());
  AT_DISPATCH_FLOATING_TYPES(args.rstds.scalar_type(), "exemplar_ratios_backward_cpu", [&] {
    backward_kernel(s, args.inputs<scalar_t>(), out.grads<scalar_t>(),
                    workspace.data_ptr<scalar_t>());
  });
  return out.tensors;
}

}  // namespace

namespace cpu {

template <typename T>
void exemplar_ratios_forward(const Sizes& sizes, const Inputs<T>& inputs, T* ratios,
                             T* activations) {
  forward_kernel(sizes, inputs, ratios, activations);
}

int64_t exemplar_ratios_backward_workspace(const Sizes& s) {
  return s.n * (s.k + s.hidden + s.c);
}

template <typename T>
void exemplar_ratios_backward(const Sizes& sizes, const BackwardInputs<T>& inputs,
                              const Grads<T>& grads, T* workspace) {
  backward_kernel(sizes, inputs, grads, workspace);
}

template void exemplar_ratios_forward(const Sizes&, const Inputs<float>&, float*, float*);
template void exemplar_ratios_forward(const Sizes&, const Inputs<double>&, double*, double*);
template void exemplar_ratios_backward(const Sizes&, const BackwardInputs<float>&,
                                       const Grads<float>&, float*);
template void exemplar_ratios_backward(const Sizes&, const BackwardInputs<double>&,
                                       const Grads<double>&, double*);

}  // namespace cpu

TORCH_LIBRARY_IMPL(en_seg, CPU, m) {
  m.impl("exemplar_ratios", &exemplar_ratios_cpu);
  m.impl("exemplar_ratios_backward", &exemplar_ratios_backward_cpu);
}

}  // namespace en_seg
