// The per-sample arithmetic of Exemplar Normalization's ratio branch (EN_SPEC.md "Ratio
// branch" steps 2-6; paper Sec. 3.3, Fig. 2, Eq. 4) and its gradient, written once for
// both kernels: the CPU kernel (exemplar_ratios_cpu.cpp) runs them per sample, with the
// hidden layer's sums along the P units so that they vectorize; the CUDA kernel
// (cuda/exemplar_ratios_kernel.cu) spreads a sample over a thread block, one unit or one
// group of channels per thread, using the per-unit forms below. Plain C++ (no torch, no CUDA
// headers) so that nvcc compiles the CUDA translation unit without torch.
//
// For one sample, with x̂_kc = (p_c - μ_kc) s_kc (s = 1/sqrt(σ² + ε)), g(c) = c / r:
//   z_kg = Σ_{c in group g} w_c x̂_kc          (grouped 1-D conv, C -> G = C / r)
//   v    = z zᵀ flattened row-major to K²     (v_{aK+b} = Σ_g z_ag z_bg)
//   h    = tanh(W1 v + b1)                    (P = πK hidden units)
//   λ    = softmax(W2 h + b2)                 (K ratios)
// The forward saves v and h (its second output, "activations"), so that the backward does
// not recompute them. For an upstream gradient gλ:
//   go   = λ ⊙ (gλ - <λ, gλ>)                 gW2 = go hᵀ, gb2 = go
//   gu_i = (W2ᵀ go)_i (1 - h_i²)              gW1 = gu vᵀ, gb1 = gu
//   S    = Gv + Gvᵀ, Gv = (W1ᵀ gu) as K×K     gz = S z (v is quadratic in z)
//   gx̂_kc = gz_kg(c) w_c                      gw_c = Σ_k gz_kg(c) x̂_kc
//   gp_c = Σ_k gx̂_kc s_kc,  gμ_kc = -gx̂_kc s_kc,  gs_kc = gx̂_kc (p_c - μ_kc).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define EN_SEG_HOST_DEVICE __host__ __device__ inline
#define EN_SEG_SIMD
#define EN_SEG_SIMD_SUM(...)
#else
#define EN_SEG_HOST_DEVICE inline
// The CPU build has OpenMP: these let the compiler vectorize the loops over channels and
// hidden units, including the float sums (of one or more variables) it may not reorder on
// its own (the order is fixed at compile time, so results stay deterministic). Without
// OpenMP they are ignored.
#define EN_SEG_SIMD _Pragma("omp simd")
#define EN_SEG_SIMD_SUM(...) \
  _Pragma(EN_SEG_STRINGIFY(omp simd reduction(+ : __VA_ARGS__)))
#define EN_SEG_STRINGIFY(...) #__VA_ARGS__
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
  // Values per sample of the forward's second output: v (K²), then h (P).
  EN_SEG_HOST_DEVICE int64_t activations() const { return k * k + hidden; }
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

// What the backward reads: the upstream gradient, the forward's outputs, and the inputs the
// gradients depend on (not the biases).
template <typename T>
struct BackwardInputs {
  const T* grad;         // (N, K) dL/dλ
  const T* ratios;       // (N, K) λ
  const T* activations;  // (N, K² + P) v and h of every sample
  const T* pooled;       // shapes as in Inputs
  const T* means;
  const T* rstds;
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

// One sample's statistics: pooled (C,), means and rstds (K, C).
template <typename T>
struct Sample {
  const T* pooled;
  const T* means;
  const T* rstds;

  EN_SEG_HOST_DEVICE Sample(const T* all_pooled, const T* all_means, const T* all_rstds,
                            const Sizes& s, int64_t n)
      : pooled(all_pooled + n * s.c),
        means(all_means + n * s.k * s.c),
        rstds(all_rstds + n * s.k * s.c) {}
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

// Steps 2-3 for group g: z_k = Σ_{c in g} w_c (p_c - μ_kc) s_kc for every k.
template <typename T>
EN_SEG_HOST_DEVICE void project_group(const Sizes& s, const Sample<T>& x, const T* conv_w,
                                      int64_t g, T* z) {
  const int64_t begin = g * s.r;
  const int64_t end = begin + s.r;
  for (int k = 0; k < s.k; ++k) {
    const T* mean = x.means + k * s.c;
    const T* rstd = x.rstds + k * s.c;
    T sum = T(0);
    EN_SEG_SIMD_SUM(sum)
    for (int64_t c = begin; c < end; ++c) {
      sum += conv_w[c] * ((x.pooled[c] - mean[c]) * rstd[c]);
    }
    z[k] = sum;
  }
}

// Step 4, one group's term: v += z zᵀ (K² entries, row-major).
template <typename T>
EN_SEG_HOST_DEVICE void accumulate_gram(int k, const T* z, T* v) {
  for (int a = 0; a < k; ++a) {
    for (int b = 0; b < k; ++b) v[a * k + b] += z[a] * z[b];
  }
}

// Step 5 for hidden unit i: h_i = tanh(b1_i + Σ_q W1_iq v_q).
template <typename T>
EN_SEG_HOST_DEVICE T hidden_unit(const Sizes& s, const T* fc1_w, const T* fc1_b, const T* v,
                                 int64_t i) {
  const int kk = s.k * s.k;
  T u = fc1_b[i];
  for (int q = 0; q < kk; ++q) u += fc1_w[i * kk + q] * v[q];
  return tanh_of(u);
}

// Step 6 before the softmax, logit k: b2_k + Σ_i W2_ki h_i.
template <typename T>
EN_SEG_HOST_DEVICE T logit(const Sizes& s, const T* fc2_w, const T* fc2_b, const T* h, int k) {
  const T* w = fc2_w + k * s.hidden;
  T o = fc2_b[k];
  EN_SEG_SIMD_SUM(o)
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

// Gradient of hidden unit i's pre-activation from that of its activation h_i: tanh' = 1 - h².
template <typename T>
EN_SEG_HOST_DEVICE T tanh_backward(T grad_h, T h) {
  return grad_h * (T(1) - h * h);
}

// Gradient of hidden unit i's pre-activation: gu_i = (Σ_k W2_ki go_k)(1 - h_i²).
template <typename T>
EN_SEG_HOST_DEVICE T hidden_unit_backward(const Sizes& s, const T* fc2_w, const T* go, T h_i,
                                          int64_t i) {
  T gh = T(0);
  for (int k = 0; k < s.k; ++k) gh += fc2_w[k * s.hidden + i] * go[k];
  return tanh_backward(gh, h_i);
}

// Entry (a, b) of S = Gv + Gvᵀ, Gv_ab = Σ_i W1_{i, aK+b} gu_i: the gradient of v = z zᵀ
// with respect to z is then gz = S z.
template <typename T>
EN_SEG_HOST_DEVICE T symmetric_gram_backward(const Sizes& s, const T* fc1_w, const T* gu,
                                             int a, int b) {
  const int kk = s.k * s.k;
  const T* w_ab = fc1_w + a * s.k + b;
  const T* w_ba = fc1_w + b * s.k + a;
  T sum = T(0);
  EN_SEG_SIMD_SUM(sum)
  for (int64_t i = 0; i < s.hidden; ++i) sum += (w_ab[i * kk] + w_ba[i * kk]) * gu[i];
  return sum;
}

// Steps 2-3 backward for group g of one sample: recomputes z (K·r multiply-adds, cheaper
// than saving K·C/r values per sample), then writes the gradients of pooled, means and
// rstds of the group's channels and the sample's term of their convolution weights'
// gradient.
template <typename T>
EN_SEG_HOST_DEVICE void project_group_backward(const Sizes& s, const Sample<T>& x,
                                               const T* conv_w, const T* sym, int64_t g,
                                               T* g_pooled, T* g_means, T* g_rstds,
                                               T* g_conv_w) {
  T z[kMaxNormalizers];
  project_group(s, x, conv_w, g, z);
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
    const T* mean = x.means + k * s.c;
    const T* rstd = x.rstds + k * s.c;
    T* g_mean = g_means + k * s.c;
    T* g_rstd = g_rstds + k * s.c;
    EN_SEG_SIMD
    for (int64_t c = begin; c < end; ++c) {
      const T centred = x.pooled[c] - mean[c];
      const T g_xhat = gz * conv_w[c];
      g_conv_w[c] += gz * (centred * rstd[c]);
      g_pooled[c] += g_xhat * rstd[c];
      g_mean[c] = -g_xhat * rstd[c];
      g_rstd[c] = g_xhat * centred;
    }
  }
}

}  // namespace ratio
}  // namespace en_seg
