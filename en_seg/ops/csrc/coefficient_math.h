// The (N, C) arithmetic of the coefficient ops (docs/method.md#statistics,
// #running-statistics, #output and #switchable-normalization), shared by the CPU kernels
// (coefficient_op_cpu.cpp) and the CUDA kernels (cuda/coefficient_op_kernel.cu) where their
// loops agree: how a normalizer's statistics follow from the merged ones, the running
// statistics' update, and the per-(n, c) terms of the forward and the backward. The
// reductions (over C for LN, over N for BN and the parameters) are each kernel's own.
// Plain C++ (no torch, no CUDA headers), like ratio_math.h.
//
// Notation, for sample n and channel c: m, s the moments (mean, biased variance); μ_k,
// σ²_k, ρ_k = 1 / sqrt(σ²_k + ε) normalizer k's statistics; d_k = m - μ_k.
//   EN:  t_k = γ_k λ_k ρ_k,  A = Σ_k t_k,  S = Σ_k β_k + Σ_k t_k d_k.
//   SN:  μ̄ = Σ_k w_k μ_k,  σ̄² = Σ_k w'_k σ²_k,  r = 1 / sqrt(σ̄² + ε),  A = γ r,
//        S = β + A (m - μ̄),  w = softmax(mean_weight),  w' = softmax(var_weight).
// Backward, from gA = dL/dA and gS = dL/dS, to gμ_k, gσ²_k (which the statistics' chain
// rule then takes to m and s) and to the direct gradient of m (its place in d_k or m - μ̄).
#pragma once

#include "ratio_math.h"

namespace en_seg {
namespace coef {

// Normalizer codes of the ops' `normalizers` argument.
enum Normalizer : int { kIN = 0, kLN = 1, kBN = 2 };
// A pool names each normalizer once.
constexpr int kMaxPool = 3;

// The pool: K normalizers in order, and where LN and BN sit in it (-1: absent).
struct Pool {
  int k;
  int code[kMaxPool];
  int ln, bn;
};

// Where EN's saved values sit (one flat tensor): every sample's row of the ratio branch's
// activations (ratio::SavedLayout), then the normalizers' ρ (N, K, C).
struct ExemplarSavedLayout {
  int64_t activations, rstds, total;

  EN_SEG_HOST_DEVICE explicit ExemplarSavedLayout(const ratio::Sizes& s)
      : activations(0),
        rstds(s.n * ratio::SavedLayout(s).total),
        total(rstds + s.n * s.k * s.c) {}
};

// Where SN's saved values sit (one flat tensor): r = 1 / sqrt(σ̄² + ε), the moments m and
// s (each (N, C)), the LN statistics (mean (N), var (N)), the BN ones (mean (C), var (C)),
// w = softmax(mean_weight) and w' = softmax(var_weight) (each (K,)).
struct SwitchableSavedLayout {
  int64_t rstd, mean, var, ln_mean, ln_var, bn_mean, bn_var, w, w_var, total;

  EN_SEG_HOST_DEVICE SwitchableSavedLayout(int64_t n, int64_t c, int k)
      : rstd(0),
        mean(n * c),
        var(2 * n * c),
        ln_mean(3 * n * c),
        ln_var(ln_mean + n),
        bn_mean(ln_var + n),
        bn_var(bn_mean + c),
        w(bn_var + c),
        w_var(w + k),
        total(w_var + k) {}
};

// A normalizer's mean and biased variance.
template <typename T>
struct Stat {
  T mean, var;
};

// Normalizer `code`'s statistics at one (n, c), from the moments there and the sample's LN
// and the channel's BN statistics.
template <typename T>
EN_SEG_HOST_DEVICE Stat<T> member_stat(int code, T m, T s, const Stat<T>& ln,
                                       const Stat<T>& bn) {
  return code == kIN ? Stat<T>{m, s} : code == kLN ? ln : bn;
}

// ρ = 1 / sqrt(σ² + ε), in the statistics' own precision.
EN_SEG_HOST_DEVICE float rstd(float var, float eps) { return 1.f / sqrtf(var + eps); }
EN_SEG_HOST_DEVICE double rstd(double var, double eps) { return 1.0 / sqrt(var + eps); }

// Finite (neither NaN nor infinite), in arithmetic that every compiler keeps as written.
template <typename T>
EN_SEG_HOST_DEVICE bool is_finite(T v) {
  return v - v == T(0);
}

// torch.lerp: start + weight (end - start), from the end for weights of 1/2 or more.
template <typename T>
EN_SEG_HOST_DEVICE T lerp(T start, T end, T weight) {
  return weight < T(0.5) ? start + weight * (end - start)
                         : end - (end - start) * (T(1) - weight);
}

// How one forward folds the BN member's batch statistics into the running ones
// (docs/method.md#running-statistics): factor f (momentum, or 1 / num_batches_tracked
// after its increment) and the unbiasing factor L / (L - 1) (1 for L = 1).
template <typename T>
struct RunningUpdate {
  T factor, unbias;
};

// Channel c's update: unchanged where the batch statistic is not finite.
template <typename T>
EN_SEG_HOST_DEVICE void update_running(const RunningUpdate<T>& u, const Stat<T>& batch,
                                       T* running_mean, T* running_var) {
  const T unbiased = batch.var * u.unbias;
  const bool finite = is_finite(batch.mean) && is_finite(unbiased);
  *running_mean = lerp(*running_mean, finite ? batch.mean : *running_mean, u.factor);
  *running_var = lerp(*running_var, finite ? unbiased : *running_var, u.factor);
}

// Softmax of k values, shifted by the largest.
template <typename T>
EN_SEG_HOST_DEVICE void softmax(int k, const T* logits, T* out) {
  for (int j = 0; j < k; ++j) out[j] = logits[j];
  ratio::softmax(k, out);
}

// EN's forward at one (n, c): A and S from γ_k, β_k (column c of (K, C)), λ_k, ρ_k, d_k
// (strided by `stride` along k).
template <typename T>
struct Coefficients {
  T scale, shift;
};

template <typename T>
EN_SEG_HOST_DEVICE Coefficients<T> exemplar_coefficients(int k, const T* gamma,
                                                         const T* beta, int64_t param_stride,
                                                         const T* lambda, const T* rho,
                                                         const T* d, int64_t stride) {
  T scale = T(0), shift = T(0), beta_sum = T(0);
  for (int j = 0; j < k; ++j) {
    const T t = lambda[j] * gamma[j * param_stride] * rho[j * stride];
    scale += t;
    shift += t * d[j * stride];
    beta_sum += beta[j * param_stride];
  }
  return {scale, beta_sum + shift};
}

// SN's forward at one (n, c), from the mixed statistics.
template <typename T>
EN_SEG_HOST_DEVICE Coefficients<T> switchable_coefficients(T gamma, T beta, T m, T mixed_mean,
                                                           T r) {
  const T scale = gamma * r;
  return {scale, beta + scale * (m - mixed_mean)};
}

// EN's backward at one (n, c) for normalizer j: with gt = gA + gS d_j (dL/dt_j),
//   gλ_j += gt γ_j ρ_j (summed over c by the caller),
//   gμ_j = -gS t_j (+ the ratio branch's), gρ_j = gt γ_j λ_j (+ the ratio branch's),
//   gγ_j += gt λ_j ρ_j (summed over n by the caller), and m's direct gradient gS t_j.
template <typename T>
EN_SEG_HOST_DEVICE T exemplar_gain_grad(T grad_scale, T grad_shift, T d) {
  return grad_scale + grad_shift * d;
}

// dL/dσ² from dL/dρ for ρ = (σ² + ε)^(-1/2).
template <typename T>
EN_SEG_HOST_DEVICE T rstd_to_var_grad(T grad_rstd, T rstd) {
  return T(-0.5) * rstd * rstd * rstd * grad_rstd;
}

// SN's backward at one (n, c): the gradients of the mixed mean and variance, m's direct
// gradient, and the (n, c) terms of gγ (summed over n by the caller).
template <typename T>
struct SwitchableGrads {
  T mixed_mean, mixed_var, m, gamma;
};

template <typename T>
EN_SEG_HOST_DEVICE SwitchableGrads<T> switchable_grads(T grad_scale, T grad_shift, T gamma,
                                                       T m, T mixed_mean, T r) {
  const T scale = gamma * r;
  const T grad_scale_total = grad_scale + grad_shift * (m - mixed_mean);
  const T grad_r = grad_scale_total * gamma;
  return {-grad_shift * scale, rstd_to_var_grad(grad_r, r), grad_shift * scale,
          grad_scale_total * r};
}

// The softmax's backward: dL/dlogits from dL/dw for w = softmax(logits).
template <typename T>
EN_SEG_HOST_DEVICE void softmax_backward(int k, const T* w, const T* grad_w, T* grad_logits) {
  ratio::softmax_backward(k, w, grad_w, grad_logits);
}

}  // namespace coef
}  // namespace en_seg
