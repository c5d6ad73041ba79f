// CPU kernels of the coefficient ops (en_seg::exemplar_coefficients, switchable_coefficients
// and their backward ops) and the CPU registration of the apply ops (coefficient_op.cpp).
//
// Everything is (N, C) work, small next to a pass over X: loops along the channels, a
// normalizer at a time, on the calling thread, compiled per instruction set (simd.h). EN
// runs the ratio branch through the ratio op's own CPU kernel (ratio_op_cpu.h, which
// spreads samples over threads) on the statistics laid out as that kernel reads them.
// Every sum runs in an order fixed by the shape, so results do not depend on the number of
// threads.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <memory>
#include <utility>
#include <vector>

#include "coefficient_op.h"
#include "ratio_op_cpu.h"
#include "scratch.h"

namespace en_seg {
namespace {

using coef::Pool;
using coef::Stat;

// The LN statistics of every sample (N means, then N variances) and the BN ones of every
// channel (C means, then C variances): the batch's, folded into the running statistics
// when the forward updates them, or the running ones.
template <typename T>
EN_SEG_INLINE
void merged_statistics(const StatisticsArgs& a, T* ln, T* bn) {
  const T* m = a.mean.const_data_ptr<T>();
  const T* v = a.var.const_data_ptr<T>();
  const int64_t n = a.n, c = a.c;
  if (a.pool.ln >= 0) {
    for (int64_t i = 0; i < n; ++i) {
      const T* mi = m + i * c;
      const T* vi = v + i * c;
      T sum = T(0);
      EN_SEG_SIMD_SUM(sum)
      for (int64_t j = 0; j < c; ++j) sum += mi[j];
      const T mu = sum / T(c);
      T var_sum = T(0), dev_sum = T(0);
      EN_SEG_SIMD_SUM(var_sum, dev_sum)
      for (int64_t j = 0; j < c; ++j) {
        var_sum += vi[j];
        dev_sum += (mi[j] - mu) * (mi[j] - mu);
      }
      ln[i] = mu;
      ln[n + i] = var_sum / T(c) + dev_sum / T(c);
    }
  }
  if (a.pool.bn < 0) return;
  T* mu = bn;
  T* var = bn + c;
  if (!a.batch_stats) {
    std::copy_n(a.running.mean.const_data_ptr<T>(), c, mu);
    std::copy_n(a.running.var.const_data_ptr<T>(), c, var);
    return;
  }
  std::fill(mu, mu + 2 * c, T(0));
  std::vector<T> dev(c, T(0));
  for (int64_t i = 0; i < n; ++i) {
    EN_SEG_SIMD
    for (int64_t j = 0; j < c; ++j) mu[j] += m[i * c + j];
  }
  EN_SEG_SIMD
  for (int64_t j = 0; j < c; ++j) mu[j] /= T(n);
  for (int64_t i = 0; i < n; ++i) {
    EN_SEG_SIMD
    for (int64_t j = 0; j < c; ++j) {
      var[j] += v[i * c + j];
      dev[j] += (m[i * c + j] - mu[j]) * (m[i * c + j] - mu[j]);
    }
  }
  EN_SEG_SIMD
  for (int64_t j = 0; j < c; ++j) var[j] = var[j] / T(n) + dev[j] / T(n);
  const RunningArgs& r = a.running;
  if (!r.update) return;
  int64_t& tracked = *r.num_batches_tracked.data_ptr<int64_t>();
  tracked += 1;
  const coef::RunningUpdate<T> u{
      static_cast<T>(r.cumulative ? 1.0 / static_cast<double>(tracked) : r.momentum),
      static_cast<T>(r.count > 1 ? static_cast<double>(r.count) / (r.count - 1) : 1.0)};
  T* run_mean = r.mean.data_ptr<T>();
  T* run_var = r.var.data_ptr<T>();
  for (int64_t j = 0; j < c; ++j) {
    coef::update_running(u, Stat<T>{mu[j], var[j]}, run_mean + j, run_var + j);
  }
}

// Normalizer `code`'s mean and ρ along the channels of sample i: IN's are the sample's
// moments, LN's one value, BN's the channels' (bn_rstd holds BN's ρ).
template <typename T>
EN_SEG_INLINE
void member_rows(int code, const T* m, const T* v, const T* ln, const T* bn,
                 const T* bn_rstd, int64_t n, int64_t c, int64_t i, T eps, T* mean_row,
                 T* rstd_row) {
  if (code == coef::kIN) {
    std::copy_n(m + i * c, c, mean_row);
    for (int64_t j = 0; j < c; ++j) rstd_row[j] = coef::rstd(v[i * c + j], eps);
  } else if (code == coef::kLN) {
    std::fill(mean_row, mean_row + c, ln[i]);
    std::fill(rstd_row, rstd_row + c, coef::rstd(ln[n + i], eps));
  } else {
    std::copy_n(bn, c, mean_row);
    std::copy_n(bn_rstd, c, rstd_row);
  }
}

// The statistics' part of a backward (docs/method.md#statistics), shared by EN and SN: the
// normalizers' gμ, gσ² on their way into the gradients of the moments. Member j's rows of
// sample i (C values each) are written where rows(code, i) says, then fold() takes them:
// IN's go to the sample's gradients of m and s as they are, LN's are summed over the
// channels (`ln`: N sums of gμ, then N of gσ²), BN's stay (N, C) for merge().
template <typename T>
struct StatisticsGrads {
  int64_t n, c;
  // One IN or LN row pair (2C), ln (2N), BN's rows (N, C each); each written before read.
  std::unique_ptr<T[]> buffer;
  T *member, *ln, *bn_mean, *bn_var;

  StatisticsGrads(int64_t n, int64_t c)
      : n(n),
        c(c),
        buffer(uninitialized<T>(2 * c + 2 * n + 2 * n * c)),
        member(buffer.get()),
        ln(member + 2 * c),
        bn_mean(ln + 2 * n),
        bn_var(bn_mean + n * c) {}

  // Where normalizer `code`'s gμ (first) and gσ² (second) rows of sample i go.
  std::pair<T*, T*> rows(int code, int64_t i) {
    if (code == coef::kBN) return {bn_mean + i * c, bn_var + i * c};
    return {member, member + c};
  }

  // Takes the rows just written for normalizer `code` of sample i; gm, gv are the sample's
  // rows of the gradients of m and s. A pool has LN at most once: its sums start at 0.
  EN_SEG_INLINE
  void fold(int code, int64_t i, T* gm, T* gv) {
    const T* mu_row = member;
    const T* var_row = member + c;
    if (code == coef::kIN) {
      EN_SEG_SIMD
      for (int64_t ch = 0; ch < c; ++ch) {
        gm[ch] += mu_row[ch];
        gv[ch] += var_row[ch];
      }
    } else if (code == coef::kLN) {
      T ln_mean = T(0), ln_var = T(0);
      EN_SEG_SIMD_SUM(ln_mean, ln_var)
      for (int64_t ch = 0; ch < c; ++ch) {
        ln_mean += mu_row[ch];
        ln_var += var_row[ch];
      }
      ln[i] = ln_mean;
      ln[n + i] = ln_var;
    }
  }

  // Adds the merged normalizers' part to g_mean, g_var (N, C): a merge of G values with
  // mean μ passes gμ / G to each mean and gσ² / G to each variance, and 2 gσ² (m - μ) / G
  // to each mean. d_LN = m - μ_LN of sample i is ln_centred(i) (C values), d_BN
  // bn_centred(i); BN takes a gradient on batch statistics only.
  template <typename LnCentred, typename BnCentred>
  EN_SEG_INLINE
  void merge(const Pool& pool, bool batch_stats, const LnCentred& ln_centred,
             const BnCentred& bn_centred, T* g_mean, T* g_var) const {
    if (pool.ln >= 0) {
      for (int64_t i = 0; i < n; ++i) {
        const T a = ln[i] / T(c), b = T(2) * ln[n + i] / T(c), e = ln[n + i] / T(c);
        const T* d = ln_centred(i);
        T* gm = g_mean + i * c;
        T* gv = g_var + i * c;
        EN_SEG_SIMD
        for (int64_t j = 0; j < c; ++j) {
          gm[j] += a + b * d[j];
          gv[j] += e;
        }
      }
    }
    if (pool.bn < 0 || !batch_stats) return;
    std::vector<T> sums(2 * c, T(0));
    T* mu = sums.data();
    T* var = mu + c;
    for (int64_t i = 0; i < n; ++i) {
      EN_SEG_SIMD
      for (int64_t j = 0; j < c; ++j) {
        mu[j] += bn_mean[i * c + j];
        var[j] += bn_var[i * c + j];
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const T* d = bn_centred(i);
      T* gm = g_mean + i * c;
      T* gv = g_var + i * c;
      EN_SEG_SIMD
      for (int64_t j = 0; j < c; ++j) {
        gm[j] += mu[j] / T(n) + T(2) * var[j] * d[j] / T(n);
        gv[j] += var[j] / T(n);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------
// EN

template <typename T>
EN_SEG_CPU_DISPATCH
void exemplar_forward(const ExemplarArgs& a, T* scale, T* shift, T* ratios, T* saved) {
  const StatisticsArgs& st = a.stats;
  const ratio::Sizes& s = a.sizes;
  const int64_t n = s.n, c = s.c, k = s.k;
  const Pool& pool = st.pool;
  const T eps = static_cast<T>(st.eps);
  // ln (2N), bn (2C), BN's ρ (C), Σ_k β_k (C), every normalizer's mean (N, K, C).
  const auto scratch = uninitialized<T>(2 * n + 4 * c + n * k * c);
  T* ln = scratch.get();
  T* bn = ln + 2 * n;
  T* bn_rstd = bn + 2 * c;
  T* beta_sum = bn_rstd + c;
  T* means = beta_sum + c;
  merged_statistics(st, ln, bn);
  if (pool.bn >= 0) {
    for (int64_t j = 0; j < c; ++j) bn_rstd[j] = coef::rstd(bn[c + j], eps);
  }
  const T* m = st.mean.const_data_ptr<T>();
  const T* v = st.var.const_data_ptr<T>();
  const coef::ExemplarSavedLayout layout(s);
  T* activations = saved + layout.activations;
  T* rstds = saved + layout.rstds;
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < k; ++j) {
      member_rows(pool.code[j], m, v, ln, bn, bn_rstd, n, c, i, eps, means + (i * k + j) * c,
                  rstds + (i * k + j) * c);
    }
  }
  const ratio::Inputs<T> inputs{m,
                                means,
                                rstds,
                                a.conv_w.const_data_ptr<T>(),
                                a.fc1_w.const_data_ptr<T>(),
                                a.fc1_b.const_data_ptr<T>(),
                                a.fc2_w.const_data_ptr<T>(),
                                a.fc2_b.const_data_ptr<T>()};
  cpu::exemplar_ratios_forward(s, inputs, ratios, activations);
  // A = Σ_k t_k, S = Σ_k β_k + Σ_k t_k d_k with t_k = γ_k λ_k ρ_k (coefficient_math.h),
  // along the channels.
  const ratio::SavedLayout row(s);
  const T* gamma = a.weight.const_data_ptr<T>();
  const T* beta = a.bias.const_data_ptr<T>();
  std::fill(beta_sum, beta_sum + c, T(0));
  for (int j = 0; j < k; ++j) {
    EN_SEG_SIMD
    for (int64_t ch = 0; ch < c; ++ch) beta_sum[ch] += beta[j * c + ch];
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* d = activations + i * row.total + row.centred;
    const T* rho = rstds + i * k * c;
    T* a_row = scale + i * c;
    T* s_row = shift + i * c;
    std::fill(a_row, a_row + c, T(0));
    std::fill(s_row, s_row + c, T(0));
    for (int j = 0; j < k; ++j) {
      const T lambda = ratios[i * k + j];
      EN_SEG_SIMD
      for (int64_t ch = 0; ch < c; ++ch) {
        const T t = lambda * gamma[j * c + ch] * rho[j * c + ch];
        a_row[ch] += t;
        s_row[ch] += t * d[j * c + ch];
      }
    }
    EN_SEG_SIMD
    for (int64_t ch = 0; ch < c; ++ch) s_row[ch] += beta_sum[ch];
  }
}

template <typename T>
EN_SEG_CPU_DISPATCH
void exemplar_backward(const ExemplarBackwardArgs& a, const ExemplarGradTensors& grads) {
  const ratio::Sizes& s = a.sizes;
  const int64_t n = s.n, c = s.c, k = s.k;
  const Pool& pool = a.pool;
  const T* g_scale = a.grad_scale.const_data_ptr<T>();
  const T* g_shift = a.grad_shift.const_data_ptr<T>();
  const T* gamma = a.weight.const_data_ptr<T>();
  const coef::ExemplarSavedLayout layout(s);
  const ratio::SavedLayout row(s);
  const T* activations = a.saved.const_data_ptr<T>() + layout.activations;
  const T* rstds = a.saved.const_data_ptr<T>() + layout.rstds;
  auto lambda = [&](int64_t i, int j) { return activations[i * row.total + row.ratios + j]; };
  auto centred = [&](int64_t i, int j) {
    return activations + i * row.total + row.centred + j * c;
  };
  // g_lambda (N, K), the ratio branch's gradients of pooled (N, C), means and rstds
  // (N, K, C).
  const auto scratch = uninitialized<T>(n * k + n * c + 2 * n * k * c +
                                        cpu::exemplar_ratios_backward_workspace(s));
  T* g_lambda = scratch.get();
  T* ratio_pooled = g_lambda + n * k;
  T* ratio_means = ratio_pooled + n * c;
  T* ratio_rstds = ratio_means + n * k * c;
  T* workspace = ratio_rstds + n * k * c;
  StatisticsGrads<T> stats(n, c);
  // dL/dλ_k = Σ_c (gA + gS d_k) γ_k ρ_k, then the ratio branch's backward.
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < k; ++j) {
      const T* d = centred(i, j);
      const T* rho = rstds + (i * k + j) * c;
      const T* ga = g_scale + i * c;
      const T* gs = g_shift + i * c;
      const T* gk = gamma + j * c;
      T sum = T(0);
      EN_SEG_SIMD_SUM(sum)
      for (int64_t ch = 0; ch < c; ++ch) {
        sum += coef::exemplar_gain_grad(ga[ch], gs[ch], d[ch]) * gk[ch] * rho[ch];
      }
      g_lambda[i * k + j] = sum;
    }
  }
  T* g_mean = std::get<0>(grads).data_ptr<T>();
  T* g_var = std::get<1>(grads).data_ptr<T>();
  const ratio::Grads<T> ratio_grads{ratio_pooled,
                                    ratio_means,
                                    ratio_rstds,
                                    std::get<4>(grads).data_ptr<T>(),
                                    std::get<5>(grads).data_ptr<T>(),
                                    std::get<6>(grads).data_ptr<T>(),
                                    std::get<7>(grads).data_ptr<T>(),
                                    std::get<8>(grads).data_ptr<T>()};
  const ratio::BackwardInputs<T> ratio_inputs{g_lambda, activations, rstds,
                                              a.conv_w.const_data_ptr<T>(),
                                              a.fc1_w.const_data_ptr<T>(),
                                              a.fc2_w.const_data_ptr<T>()};
  cpu::exemplar_ratios_backward(s, ratio_inputs, ratio_grads, workspace);
  // Per (n, c), with t_k = γ_k λ_k ρ_k: m's direct gradient (the ratio branch's pooled
  // input and the centre of every d_k) gS Σ_k t_k, gμ_k = -gS t_k (+ the branch's),
  // gρ_k = gt_k γ_k λ_k (+ the branch's), gσ²_k from gρ_k; gγ_k = Σ_n gt_k λ_k ρ_k.
  T* g_gamma = std::get<2>(grads).data_ptr<T>();
  T* g_beta = std::get<3>(grads).data_ptr<T>();
  std::fill(g_gamma, g_gamma + k * c, T(0));
  std::fill(g_beta, g_beta + c, T(0));
  for (int64_t i = 0; i < n; ++i) {
    const T* ga = g_scale + i * c;
    const T* gs = g_shift + i * c;
    T* gm = g_mean + i * c;
    T* gv = g_var + i * c;
    std::copy_n(ratio_pooled + i * c, c, gm);
    std::fill(gv, gv + c, T(0));
    for (int j = 0; j < k; ++j) {
      const T lam = lambda(i, j);
      const T* d = centred(i, j);
      const T* rho = rstds + (i * k + j) * c;
      const T* gk = gamma + j * c;
      const T* r_mean = ratio_means + (i * k + j) * c;
      const T* r_rstd = ratio_rstds + (i * k + j) * c;
      T* g_gk = g_gamma + j * c;
      const int code = pool.code[j];
      const auto [mu_row, var_row] = stats.rows(code, i);
      EN_SEG_SIMD
      for (int64_t ch = 0; ch < c; ++ch) {
        const T t = lam * gk[ch] * rho[ch];
        const T g_t = coef::exemplar_gain_grad(ga[ch], gs[ch], d[ch]);
        gm[ch] += gs[ch] * t;
        g_gk[ch] += g_t * lam * rho[ch];
        mu_row[ch] = -gs[ch] * t + r_mean[ch];
        var_row[ch] = coef::rstd_to_var_grad(g_t * gk[ch] * lam + r_rstd[ch], rho[ch]);
      }
      stats.fold(code, i, gm, gv);
    }
    EN_SEG_SIMD
    for (int64_t ch = 0; ch < c; ++ch) g_beta[ch] += gs[ch];
  }
  for (int j = 1; j < k; ++j) std::copy_n(g_beta, c, g_beta + j * c);
  stats.merge(
      pool, a.batch_stats, [&](int64_t i) { return centred(i, pool.ln); },
      [&](int64_t i) { return centred(i, pool.bn); }, g_mean, g_var);
}

ExemplarOutputs exemplar_coefficients_cpu(const ExemplarArgs& args) {
  ExemplarOutputs outputs = empty_exemplar_outputs(args);
  auto& [scale, shift, ratios, saved] = outputs;
  AT_DISPATCH_FLOATING_TYPES(args.stats.mean.scalar_type(), "exemplar_coefficients_cpu", [&] {
    exemplar_forward(args, scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(),
                     ratios.data_ptr<scalar_t>(), saved.data_ptr<scalar_t>());
  });
  return outputs;
}

ExemplarGradTensors exemplar_coefficients_backward_cpu(const ExemplarBackwardArgs& args) {
  ExemplarGradTensors grads = empty_exemplar_grads(args);
  AT_DISPATCH_FLOATING_TYPES(args.grad_scale.scalar_type(),
                             "exemplar_coefficients_backward_cpu",
                             [&] { exemplar_backward<scalar_t>(args, grads); });
  return grads;
}

// ---------------------------------------------------------------------------------------
// SN

// Normalizer `code`'s mean and variance along the channels of sample i (LN's constant
// rows written into `ln_rows`, 2C values).
template <typename T>
EN_SEG_INLINE
std::pair<const T*, const T*> stat_rows(int code, const T* m, const T* v, const T* ln,
                                        const T* bn, int64_t n, int64_t c, int64_t i,
                                        T* ln_rows) {
  if (code == coef::kIN) return {m + i * c, v + i * c};
  if (code == coef::kBN) return {bn, bn + c};
  std::fill(ln_rows, ln_rows + c, ln[i]);
  std::fill(ln_rows + c, ln_rows + 2 * c, ln[n + i]);
  return {ln_rows, ln_rows + c};
}

template <typename T>
EN_SEG_CPU_DISPATCH
void switchable_forward(const SwitchableArgs& a, T* scale, T* shift, T* saved) {
  const StatisticsArgs& st = a.stats;
  const int64_t n = st.n, c = st.c;
  const Pool& pool = st.pool;
  const coef::SwitchableSavedLayout layout(n, c, pool.k);
  T* ln = saved + layout.ln_mean;
  T* bn = saved + layout.bn_mean;
  std::fill(ln, ln + 2 * n + 2 * c, T(0));  // absent normalizers' entries stay defined
  merged_statistics(st, ln, bn);
  T* w = saved + layout.w;
  T* w_var = saved + layout.w_var;
  coef::softmax(pool.k, a.mean_weight.const_data_ptr<T>(), w);
  coef::softmax(pool.k, a.var_weight.const_data_ptr<T>(), w_var);
  const T* m = st.mean.const_data_ptr<T>();
  const T* v = st.var.const_data_ptr<T>();
  const T* gamma = a.weight.const_data_ptr<T>();
  const T* beta = a.bias.const_data_ptr<T>();
  const T eps = static_cast<T>(st.eps);
  std::copy_n(m, n * c, saved + layout.mean);
  std::copy_n(v, n * c, saved + layout.var);
  // The mixed mean and variance of one sample, LN's rows.
  std::vector<T> scratch(4 * c);
  T* mixed_mean = scratch.data();
  T* mixed_var = mixed_mean + c;
  T* ln_rows = mixed_var + c;
  for (int64_t i = 0; i < n; ++i) {
    std::fill(mixed_mean, mixed_mean + 2 * c, T(0));
    for (int j = 0; j < pool.k; ++j) {
      const auto [mu, var] = stat_rows(pool.code[j], m, v, ln, bn, n, c, i, ln_rows);
      EN_SEG_SIMD
      for (int64_t ch = 0; ch < c; ++ch) {
        mixed_mean[ch] += w[j] * mu[ch];
        mixed_var[ch] += w_var[j] * var[ch];
      }
    }
    T* r = saved + layout.rstd + i * c;
    for (int64_t ch = 0; ch < c; ++ch) r[ch] = coef::rstd(mixed_var[ch], eps);
    EN_SEG_SIMD
    for (int64_t ch = 0; ch < c; ++ch) {
      const coef::Coefficients<T> out = coef::switchable_coefficients(
          gamma[ch], beta[ch], m[i * c + ch], mixed_mean[ch], r[ch]);
      scale[i * c + ch] = out.scale;
      shift[i * c + ch] = out.shift;
    }
  }
}

template <typename T>
EN_SEG_CPU_DISPATCH
void switchable_backward(const SwitchableBackwardArgs& a, const SwitchableGradTensors& grads) {
  const int64_t n = a.n, c = a.c;
  const Pool& pool = a.pool;
  const coef::SwitchableSavedLayout layout(n, c, pool.k);
  const T* saved = a.saved.const_data_ptr<T>();
  const T* m = saved + layout.mean;
  const T* v = saved + layout.var;
  const T* ln_stats = saved + layout.ln_mean;
  const T* bn_stats = saved + layout.bn_mean;
  const T* w = saved + layout.w;
  const T* w_var = saved + layout.w_var;
  const T* g_scale = a.grad_scale.const_data_ptr<T>();
  const T* g_shift = a.grad_shift.const_data_ptr<T>();
  const T* gamma = a.weight.const_data_ptr<T>();
  T* g_mean = std::get<0>(grads).data_ptr<T>();
  T* g_var = std::get<1>(grads).data_ptr<T>();
  T* g_gamma = std::get<2>(grads).data_ptr<T>();
  T* g_beta = std::get<3>(grads).data_ptr<T>();
  std::fill(g_gamma, g_gamma + c, T(0));
  std::fill(g_beta, g_beta + c, T(0));
  // One sample's mixed mean and the gradients of the mixed statistics, LN's rows; d_LN and
  // d_BN (N, C each).
  std::vector<T> scratch(5 * c + 2 * n * c);
  T* mixed_mean = scratch.data();
  T* g_mixed_mean = mixed_mean + c;
  T* g_mixed_var = g_mixed_mean + c;
  T* ln_rows = g_mixed_var + c;
  T* ln_centred = ln_rows + 2 * c;
  T* bn_centred = ln_centred + n * c;
  StatisticsGrads<T> stats(n, c);
  T g_w[coef::kMaxPool] = {T(0), T(0), T(0)};
  T g_w_var[coef::kMaxPool] = {T(0), T(0), T(0)};
  for (int64_t i = 0; i < n; ++i) {
    const T* mi = m + i * c;
    const T* ga = g_scale + i * c;
    const T* gs = g_shift + i * c;
    const T* r = saved + layout.rstd + i * c;
    T* gm = g_mean + i * c;
    T* gv = g_var + i * c;
    std::fill(mixed_mean, mixed_mean + c, T(0));
    for (int j = 0; j < pool.k; ++j) {
      const T* mu = stat_rows(pool.code[j], m, v, ln_stats, bn_stats, n, c, i, ln_rows).first;
      EN_SEG_SIMD
      for (int64_t ch = 0; ch < c; ++ch) mixed_mean[ch] += w[j] * mu[ch];
    }
    EN_SEG_SIMD
    for (int64_t ch = 0; ch < c; ++ch) {
      const coef::SwitchableGrads<T> g =
          coef::switchable_grads(ga[ch], gs[ch], gamma[ch], mi[ch], mixed_mean[ch], r[ch]);
      g_mixed_mean[ch] = g.mixed_mean;
      g_mixed_var[ch] = g.mixed_var;
      gm[ch] = g.m;
      gv[ch] = T(0);
      g_gamma[ch] += g.gamma;
      g_beta[ch] += gs[ch];
    }
    for (int j = 0; j < pool.k; ++j) {
      const int code = pool.code[j];
      const auto [mu, var] = stat_rows(code, m, v, ln_stats, bn_stats, n, c, i, ln_rows);
      T sum_w = T(0), sum_w_var = T(0);
      EN_SEG_SIMD_SUM(sum_w, sum_w_var)
      for (int64_t ch = 0; ch < c; ++ch) {
        sum_w += g_mixed_mean[ch] * mu[ch];
        sum_w_var += g_mixed_var[ch] * var[ch];
      }
      g_w[j] += sum_w;
      g_w_var[j] += sum_w_var;
      const auto [mu_row, var_row] = stats.rows(code, i);
      EN_SEG_SIMD
      for (int64_t ch = 0; ch < c; ++ch) {
        mu_row[ch] = w[j] * g_mixed_mean[ch];
        var_row[ch] = w_var[j] * g_mixed_var[ch];
      }
      if (code != coef::kIN) {
        T* d = (code == coef::kBN ? bn_centred : ln_centred) + i * c;
        EN_SEG_SIMD
        for (int64_t ch = 0; ch < c; ++ch) d[ch] = mi[ch] - mu[ch];
      }
      stats.fold(code, i, gm, gv);
    }
  }
  coef::softmax_backward(pool.k, w, g_w, std::get<4>(grads).data_ptr<T>());
  coef::softmax_backward(pool.k, w_var, g_w_var, std::get<5>(grads).data_ptr<T>());
  stats.merge(
      pool, a.batch_stats, [&](int64_t i) { return ln_centred + i * c; },
      [&](int64_t i) { return bn_centred + i * c; }, g_mean, g_var);
}

SwitchableOutputs switchable_coefficients_cpu(const SwitchableArgs& args) {
  SwitchableOutputs outputs = empty_switchable_outputs(args);
  auto& [scale, shift, saved] = outputs;
  AT_DISPATCH_FLOATING_TYPES(args.stats.mean.scalar_type(), "switchable_coefficients_cpu", [&] {
    switchable_forward(args, scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(),
                       saved.data_ptr<scalar_t>());
  });
  return outputs;
}

SwitchableGradTensors switchable_coefficients_backward_cpu(const SwitchableBackwardArgs& args) {
  SwitchableGradTensors grads = empty_switchable_grads(args);
  AT_DISPATCH_FLOATING_TYPES(args.grad_scale.scalar_type(),
                             "switchable_coefficients_backward_cpu",
                             [&] { switchable_backward<scalar_t>(args, grads); });
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CPU, m) {
  register_coefficient_kernels<exemplar_coefficients_cpu, exemplar_coefficients_backward_cpu,
                               switchable_coefficients_cpu,
                               switchable_coefficients_backward_cpu>(m);
}

}  // namespace en_seg
