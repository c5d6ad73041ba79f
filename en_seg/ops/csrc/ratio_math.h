// The per-sample arithmetic of Exemplar Normalization's ratio branch (docs/method.md#ratio-branch,
// steps 2-6; paper Sec. 3.3, Fig. 2, Eq. 4) and its gradient, shared by both kernels where their
// loops agree. The CUDA kernel (cuda/ratio_op_kernel.cu) spreads a sample over a thread
// block, one group of channels or one unit per thread, with the per-group and per-unit forms below.
// The CPU kernel (ratio_op_cpu.cpp) runs the forward's per-group steps and the elementwise
// pieces, but the hidden layer as sums along the P units and the statistics' backward along all C
// channels, so that its loops are long enough to vectorize. Plain C++ (no torch, no CUDA headers)
// so that nvcc compiles the CUDA translation unit without torch.
//
// For one sample, with d_kc = p_c - μ_kc, x̂_kc = d_kc s_kc (s = 1/sqrt(σ² + ε)),
// g(c) = c / r:
//   z_gk = Σ_{c in group g} w_c x̂_kc          (grouped 1-D conv, C -> G = C / r)
//   v    = zᵀ z flattened row-major to K²     (v_{aK+b} = Σ_g z_ga z_gb)
//   h    = tanh(W1 v + b1)                    (P = πK hidden units)
//   λ    = softmax(W2 h + b2)                 (K ratios)
// The forward saves λ, v, h, z and d (SavedLayout, its second output "activations"), so
// that the backward recomputes nothing and needs neither p nor μ. For an upstream gradient gλ:
//   go   = λ ⊙ (gλ - <λ, gλ>)                 gW2 = go hᵀ, gb2 = go
//   gu_i = (W2ᵀ go)_i (1 - h_i²)              gW1 = gu vᵀ, gb1 = gu
//   S    = Gv + Gvᵀ, Gv = (W1ᵀ gu) as K×K     gz_g = S z_g (v is quadratic in z)
//   gx̂_kc = gz_g(c)k w_c                      gw_c = Σ_k gz_g(c)k x̂_kc
//   gp_c = Σ_k gx̂_kc s_kc,  gμ_kc = -gx̂_kc s_kc,  gs_kc = gx̂_kc d_kc.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.h"

// On the host these are inlined into every caller, so that in the CPU kernels' clones
// (EN_SEG_CPU_DISPATCH, simd.h) they are compiled for the clone's instruction set.
#if defined(__CUDACC__)
#define EN_SEG_HOST_DEVICE __host__ __device__ inline
#else
#define EN_SEG_HOST_DEVICE EN_SEG_INLINE
#endif

namespace en_seg {
namespace ratio {

// Bound on K so that per-group values live in fixed-size local arrays, with no allocation
// per group. The paper's pool has 3 normalizers; 8 leaves room for extra ones such as GN.
constexpr int kMaxNormalizers = 8;

// Problem sizes; shapes are those of the ops' schemas.
struct Sizes {
  int64_t n;       // samples N
  int64_t c;       // channels C
  int64_t r;       // channels per group of the grouped convolution
  int64_t hidden;  // P = πK, hidden units of fc1
  int k;           // normalizers K

  EN_SEG_HOST_DEVICE int64_t groups() const { return c / r; }
};

// Where a sample's values sit in its row of the forward's second output, activations: what
// the backward needs from the forward.
struct SavedLayout {
  int64_t ratios;   // λ (K)
  int64_t gram;     // v (K²)
  int64_t hidden;   // h (P)
  int64_t z;        // z (G, K), group by group
  int64_t centred;  // d = p - μ_k (K, C)
  int64_t total;    // values per sample: K + K² + P + K·G + K·C

  EN_SEG_HOST_DEVICE explicit SavedLayout(const Sizes& s)
      : ratios(0),
        gram(s.k),
        hidden(gram + s.k * s.k),
        z(hidden + s.hidden),
        centred(z + s.groups() * s.k),
        total(centred + s.k * s.c) {}
};

// What the forward reads.
template <typename T>
struct Inputs {
  const T* pooled;  // (N, C)
  const T* means;   // (N, K, C)
  const T* rstds;   // (N, K, C)
  const T* conv_w;  // (C / r, r, 1), read as (C,): channel c's weight is conv_w[c]
  const T* fc1_w;   // (P, K²)
  const T* fc1_b;   // (P,)
  const T* fc2_w;   // (K, P)
  const T* fc2_b;   // (K,)
};

// What the backward reads: the upstream gradient, the forward's saved values, and the
// inputs the gradients depend on besides them.
template <typename T>
struct BackwardInputs {
  const T* grad;         // (N, K) dL/dλ
  const T* activations;  // (N, SavedLayout::total)
  const T* rstds;        // shapes as in Inputs
  const T* conv_w;
  const T* fc1_w;
  const T* fc2_w;
};

template <typename T>
struct Grads {
  T* pooled;  // same shapes as Inputs
  T* means;
  T* rstds;
  T* conv_w;
  T* fc1_w;
  T* fc1_b;
  T* fc2_w;
  T* fc2_b;
};

// tanh(x) = sign(x) (1 - 2 / (e^y + 1)), y = 2 |x|. On the GPU, CUDA's tanhf. On the CPU,
// e^y = 2^m e^f with m = round(y / ln 2) and |f| <= ln(2) / 2, e^f by its Taylor polynomial
// of degree 7 (truncation error below 1e-8): only arithmetic, one comparison and bit
// operations, so that the compiler vectorizes a loop of it (the CPU kernel's hidden layer),
// where libm's tanhf or expf is a call per value. |x| is clamped at 9, where tanh rounds to
// 1 in float32, so that 2^m stays a normal float. Within 1.2e-7 of tanh; NaN stays NaN.
// Float64 (used to check gradients) keeps libm's tanh.
EN_SEG_HOST_DEVICE float tanh_of(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  constexpr float kLog2e = 1.44269504f;
  constexpr float kLn2 = 0.693147181f;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds
  const float y = 2.f * std::min(std::fabs(x), 9.f);
  const float m = (y * kLog2e + kRound) - kRound;
  const float f = y - m * kLn2;
  float e_f = 1.f / 5040.f;
  e_f = e_f * f + 1.f / 720.f;
  e_f = e_f * f + 1.f / 120.f;
  e_f = e_f * f + 1.f / 24.f;
  e_f = e_f * f + 1.f / 6.f;
  e_f = e_f * f + 0.5f;
  e_f = e_f * f + 1.f;
  e_f = e_f * f + 1.f;
  // 2^m as a float: biased exponent m + 127, zero mantissa (0 <= m <= 26).
  const int32_t exponent_bits = (static_cast<int32_t>(m) + 127) << 23;
  float two_to_m;
  std::memcpy(&two_to_m, &exponent_bits, sizeof two_to_m);
  return std::copysign(1.f - 2.f / (e_f * two_to_m + 1.f), x);
#endif
}
EN_SEG_HOST_DEVICE double tanh_of(double x) { return tanh(x); }
EN_SEG_HOST_DEVICE float exp_of(float x) { return expf(x); }
EN_SEG_HOST_DEVICE double exp_of(double x) { return exp(x); }

// Step 2's differences for channels [begin, end) of one sample: d_kc = p_c - μ_kc, from its
// pooled (C) and means (K, C), into centred (K, C).
template <typename T>
EN_SEG_HOST_DEVICE void center(const Sizes& s, const T* pooled, const T* means, int64_t begin,
                               int64_t end, T* centred) {
  for (int k = 0; k < s.k; ++k) {
    const T* mean = means + k * s.c;
    T* d = centred + k * s.c;
    EN_SEG_SIMD
    for (int64_t c = begin; c < end; ++c) d[c] = pooled[c] - mean[c];
  }
}

// Steps 2-3 for group g of one sample, from its centred and rstds (K, C): z_k =
// Σ_{c in g} w_c d_kc s_kc for every k. Four normalizers at a time: their sums share the
// loads of w and, being independent, do not wait on each other's adds. A block past K
// repeats normalizer K - 1 and is dropped.
template <typename T>
EN_SEG_HOST_DEVICE void project_group(const Sizes& s, const T* centred, const T* rstds,
                                      const T* conv_w, int64_t g, T* z) {
  const int64_t begin = g * s.r;
  const int64_t end = begin + s.r;
  for (int k0 = 0; k0 < s.k; k0 += 4) {
    const T* d[4];
    const T* rstd[4];
    for (int j = 0; j < 4; ++j) {
      const int k = k0 + j < s.k ? k0 + j : s.k - 1;
      d[j] = centred + k * s.c;
      rstd[j] = rstds + k * s.c;
    }
    T sum0 = T(0), sum1 = T(0), sum2 = T(0), sum3 = T(0);
    EN_SEG_SIMD_SUM(sum0, sum1, sum2, sum3)
    for (int64_t c = begin; c < end; ++c) {
      const T w = conv_w[c];
      sum0 += w * (d[0][c] * rstd[0][c]);
      sum1 += w * (d[1][c] * rstd[1][c]);
      sum2 += w * (d[2][c] * rstd[2][c]);
      sum3 += w * (d[3][c] * rstd[3][c]);
    }
    const T sums[4] = {sum0, sum1, sum2, sum3};
    for (int j = 0; j < 4 && k0 + j < s.k; ++j) z[k0 + j] = sums[j];
  }
}

// Step 4, group g's term: v += z_g z_gᵀ (K² entries, row-major).
template <typename T>
EN_SEG_HOST_DEVICE void accumulate_gram(int k, const T* z, T* v) {
  for (int a = 0; a < k; ++a) {
    for (int b = 0; b < k; ++b) v[a * k + b] += z[a] * z[b];
  }
}

// Step 5 for hidden unit i (the CUDA kernel's form): h_i = tanh(b1_i + Σ_q W1_iq v_q).
template <typename T>
EN_SEG_HOST_DEVICE T hidden_unit(const Sizes& s, const T* fc1_w, const T* fc1_b, const T* v,
                                 int64_t i) {
  const int kk = s.k * s.k;
  T u = fc1_b[i];
  for (int q = 0; q < kk; ++q) u += fc1_w[i * kk + q] * v[q];
  return tanh_of(u);
}

// Step 6 before the softmax, logit k (the CUDA kernel's form): b2_k + Σ_i W2_ki h_i.
template <typename T>
EN_SEG_HOST_DEVICE T logit(const Sizes& s, const T* fc2_w, const T* fc2_b, const T* h, int k) {
  const T* w = fc2_w + k * s.hidden;
  T o = fc2_b[k];
  for (int64_t i = 0; i < s.hidden; ++i) o += w[i] * h[i];
  return o;
}

// Step 6, in place over K logits; shifted by the maximum so exp cannot overflow.
template <typename T>
EN_SEG_HOST_DEVICE void softmax(int k, T* x) {
  T top = x[0];
  for (int j = 1; j < k; ++j) top = x[j] > top ? x[j] : top;
  T sum = T(0);
  for (int j = 0; j < k; ++j) {
    x[j] = exp_of(x[j] - top);
    sum += x[j];
  }
  for (int j = 0; j < k; ++j) x[j] /= sum;
}

// Gradient of the logits from that of the ratios: go = λ ⊙ (gλ - <λ, gλ>).
template <typename T>
EN_SEG_HOST_DEVICE void softmax_backward(int k, const T* ratios, const T* grad, T* go) {
  T dot = T(0);
  for (int j = 0; j < k; ++j) dot += ratios[j] * grad[j];
  for (int j = 0; j < k; ++j) go[j] = ratios[j] * (grad[j] - dot);
}

// Gradient of a hidden unit's pre-activation from that of its activation h: tanh' = 1 - h².
template <typename T>
EN_SEG_HOST_DEVICE T tanh_backward(T grad_h, T h) {
  return grad_h * (T(1) - h * h);
}

// Gradient of hidden unit i's pre-activation (the CUDA kernel's form):
// gu_i = (Σ_k W2_ki go_k)(1 - h_i²).
template <typename T>
EN_SEG_HOST_DEVICE T hidden_unit_backward(const Sizes& s, const T* fc2_w, const T* go, T h_i,
                                          int64_t i) {
  T gh = T(0);
  for (int k = 0; k < s.k; ++k) gh += fc2_w[k * s.hidden + i] * go[k];
  return tanh_backward(gh, h_i);
}

// Entry (a, b) of S = Gv + Gvᵀ (the CUDA kernel's form), Gv_ab = Σ_i W1_{i, aK+b} gu_i: the
// gradient of v = zᵀ z with respect to group g's z_g is then S z_g.
template <typename T>
EN_SEG_HOST_DEVICE T symmetric_gram_backward(const Sizes& s, const T* fc1_w, const T* gu,
                                             int a, int b) {
  const int kk = s.k * s.k;
  const T* w_ab = fc1_w + a * s.k + b;
  const T* w_ba = fc1_w + b * s.k + a;
  T sum = T(0);
  for (int64_t i = 0; i < s.hidden; ++i) sum += (w_ab[i * kk] + w_ba[i * kk]) * gu[i];
  return sum;
}

// Steps 2-3 backward for group g of one sample (the CUDA kernel's form), from its z_g (K),
// centred and rstds (K, C): writes the gradients of pooled, means and rstds of the group's
// channels and the sample's term of their convolution weights' gradient.
template <typename T>
EN_SEG_HOST_DEVICE void project_group_backward(const Sizes& s, const T* centred,
                                               const T* rstds, const T* conv_w, const T* sym,
                                               const T* z, int64_t g, T* g_pooled,
                                               T* g_means, T* g_rstds, T* g_conv_w) {
  const int64_t begin = g * s.r;
  const int64_t end = begin + s.r;
  EN_SEG_SIMD
  for (int64_t c = begin; c < end; ++c) {
    g_pooled[c] = T(0);
    g_conv_w[c] = T(0);
  }
  for (int k = 0; k < s.k; ++k) {
    T gz = T(0);
    for (int b = 0; b < s.k; ++b) gz += sym[k * s.k + b] * z[b];
    const T* d = centred + k * s.c;
    const T* rstd = rstds + k * s.c;
    T* g_mean = g_means + k * s.c;
    T* g_rstd = g_rstds + k * s.c;
    EN_SEG_SIMD
    for (int64_t c = begin; c < end; ++c) {
      const T g_xhat = gz * conv_w[c];
      g_conv_w[c] += gz * (d[c] * rstd[c]);
      g_pooled[c] += g_xhat * rstd[c];
      g_mean[c] = -g_xhat * rstd[c];
      g_rstd[c] = g_xhat * d[c];
    }
  }
}

}  // namespace ratio
}  // namespace en_seg
