// CUDA kernels of the coefficient ops (launchers declared in coefficient_op_kernel.h). All
// (N, C) work. The forward is one kernel of a block per sample: each block merges the BN
// statistics of the channels over the samples itself (the same order in every block, so
// all agree; block 0 also updates the running statistics), the LN statistics over the
// channels, EN's ratio branch (ratio_block.cuh), and its sample's scale and shift. The
// backward is one kernel too: a block per sample for what merges over the channels, then
// the last block to finish (arrival.cuh), its threads a channel (and a ratio-branch
// parameter) at a time, for what merges over the samples. Every sum runs in an order fixed
// by the shape (per-thread loops, then a warp butterfly and the warps in turn), with no
// floating-point atomics, so results are bit-identical from run to run. Float32.
//
// EN forward: exemplar_forward; backward: exemplar_backward (per sample: dL/dλ, the ratio
// branch, the moments' gradients; then γ, β, BN's part, the ratio branch's parameters).
// SN forward: switchable_sample; backward: switchable_backward.
#include <cuda_runtime.h>

#include "arrival.cuh"
#include "coefficient_op_kernel.h"
#include "ratio_block.cuh"
#include "ratio_op_kernel.h"

namespace en_seg {
namespace cuda {
namespace {

using coef::Pool;
using coef::Stat;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Shared memory for one block_sum of n values: every warp's partial sums.
template <int n>
using WarpSums = float[kWarps][n];

// The block's sums of the n values v, for every thread: lane 0's butterfly sum of each
// warp, then the warps in order. Each call in a kernel takes its own `warps` (one barrier
// per call: no later call writes what this one reads).
template <int n>
__device__ void block_sum(float (&v)[n], WarpSums<n>& warps) {
  for (int j = 0; j < n; ++j) {
    for (int offset = 16; offset > 0; offset /= 2) {
      v[j] += __shfl_xor_sync(0xffffffffu, v[j], offset);
    }
  }
  if (threadIdx.x % 32 == 0) {
    for (int j = 0; j < n; ++j) warps[threadIdx.x / 32][j] = v[j];
  }
  __syncthreads();
  for (int j = 0; j < n; ++j) {
    v[j] = 0.f;
    for (int w = 0; w < kWarps; ++w) v[j] += warps[w][j];
  }
}

// The LN statistics of one sample, m and v its (C,) moments, by the whole block.
__device__ Stat<float> layer_statistics(const float* m, const float* v, int64_t c) {
  __shared__ WarpSums<1> mean_sums;
  __shared__ WarpSums<2> var_sums;
  float sum[1] = {0.f};
  for (int64_t ch = threadIdx.x; ch < c; ch += kThreads) sum[0] += m[ch];
  block_sum(sum, mean_sums);
  const float mu = sum[0] / float(c);
  float sums[2] = {0.f, 0.f};  // Σ v, Σ (m - μ)²
  for (int64_t ch = threadIdx.x; ch < c; ch += kThreads) {
    sums[0] += v[ch];
    sums[1] += (m[ch] - mu) * (m[ch] - mu);
  }
  block_sum(sums, var_sums);
  return {mu, sums[0] / float(c) + sums[1] / float(c)};
}

// Channel ch's BN statistics, from bn = (C means, C variances); zeros where BN is absent.
__device__ Stat<float> bn_at(const Pool& pool, const float* bn, int64_t c, int64_t ch) {
  return pool.bn >= 0 ? Stat<float>{bn[ch], bn[c + ch]} : Stat<float>{0.f, 0.f};
}

// ------------------------------------------------------------------------------------------
// Forward

// Channel ch's BN statistics in a forward: the batch's, merged from the samples' moments,
// or the running ones. Every block of a block-per-sample kernel merges them itself, in the
// same order, so all agree bit for bit. The block that `folds` (block 0) writes them to
// `out` (C means, C variances) where that is not null, and folds batch statistics into the
// running ones with `factor` where the running ones are updated.
__device__ Stat<float> bn_forward(const StatisticsShape& s, const float* mean, const float* var,
                                  const RunningStatistics& running, int64_t ch, bool folds,
                                  float factor, float* out) {
  if (!s.batch_stats) {
    const Stat<float> stat{running.mean[ch], running.var[ch]};
    if (folds && out != nullptr) {
      out[ch] = stat.mean;
      out[s.c + ch] = stat.var;
    }
    return stat;
  }
  float mu = 0.f;
  for (int64_t i = 0; i < s.n; ++i) mu += mean[i * s.c + ch];
  mu /= float(s.n);
  float var_sum = 0.f, dev_sum = 0.f;
  for (int64_t i = 0; i < s.n; ++i) {
    const float d = mean[i * s.c + ch] - mu;
    var_sum += var[i * s.c + ch];
    dev_sum += d * d;
  }
  const Stat<float> batch{mu, var_sum / float(s.n) + dev_sum / float(s.n)};
  if (folds) {
    if (out != nullptr) {
      out[ch] = batch.mean;
      out[s.c + ch] = batch.var;
    }
    if (running.update) {
      coef::update_running(coef::RunningUpdate<float>{factor, running.unbias}, batch,
                           running.mean + ch, running.var + ch);
    }
  }
  return batch;
}

// The running statistics' update factor, read by block 0 before it counts the batch.
__device__ float running_factor(const RunningStatistics& running) {
  if (!running.update) return 0.f;
  return running.cumulative ? float(1.0 / double(*running.num_batches_tracked + 1))
                            : running.momentum;
}

// Block 0 counts the batch, once every thread has read the count (the caller's barriers).
__device__ void count_batch(const RunningStatistics& running) {
  if (running.update && blockIdx.x == 0 && threadIdx.x == 0) *running.num_batches_tracked += 1;
}

// Block per sample i, the whole block: every normalizer's mean and ρ at every channel,
// (K, C) rows of means and rstds as the ratio branch reads them; block 0 folds BN's batch
// statistics into the running ones.
__device__ void sample_statistics(const StatisticsShape& s, const float* mean,
                                  const float* var, const RunningStatistics& running,
                                  int64_t i, float* means, float* rstds) {
  const float* m = mean + i * s.c;
  const float* v = var + i * s.c;
  const Stat<float> ln = s.pool.ln >= 0 ? layer_statistics(m, v, s.c) : Stat<float>{0.f, 0.f};
  const bool folds = i == 0;
  const float factor = folds ? running_factor(running) : 0.f;
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    const Stat<float> bn_ch =
        s.pool.bn >= 0 ? bn_forward(s, mean, var, running, ch, folds, factor, nullptr)
                       : Stat<float>{0.f, 0.f};
    for (int j = 0; j < s.pool.k; ++j) {
      const Stat<float> stat = coef::member_stat(s.pool.code[j], m[ch], v[ch], ln, bn_ch);
      const int64_t at = (i * s.pool.k + j) * s.c + ch;
      means[at] = stat.mean;
      rstds[at] = coef::rstd(stat.var, s.eps);
    }
  }
}

// Block per sample: EN's whole forward between the moments and the apply pass, in one
// launch: the statistics, the ratio branch (ratio_block.cuh) and the sample's scale and
// shift; block 0 also updates the running statistics and counts the batch.
__global__ void __launch_bounds__(kThreads)
    exemplar_forward_kernel(StatisticsShape st, ratio::Sizes s, ExemplarInputs in,
                            RunningStatistics running, float* means, float* scale,
                            float* shift, float* ratios, float* saved) {
  extern __shared__ float shared[];
  const int64_t i = blockIdx.x;
  const coef::ExemplarSavedLayout layout(s);
  float* activations = saved + layout.activations;
  float* rstds = saved + layout.rstds;
  sample_statistics(st, in.mean, in.var, running, i, means, rstds);
  __syncthreads();  // the sample's means and ρ, from every thread of the block
  const ratio::Inputs<float> ratio_inputs{in.mean,  means,    rstds,    in.conv_w,
                                          in.fc1_w, in.fc1_b, in.fc2_w, in.fc2_b};
  ratio_block::ratio_forward_block(s, ratio_inputs, i, ratios, activations, shared);
  __syncthreads();  // λ and the centred values
  const ratio::SavedLayout row(s);
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    const coef::Coefficients<float> out = coef::exemplar_coefficients(
        s.k, in.weight + ch, in.bias + ch, s.c, ratios + i * s.k, rstds + i * s.k * s.c + ch,
        activations + i * row.total + row.centred + ch, s.c);
    scale[i * s.c + ch] = out.scale;
    shift[i * s.c + ch] = out.shift;
  }
  count_batch(running);
}

// Block per sample: SN's whole forward between the moments and the apply pass, in one
// launch: scale and shift, and saved (r, m, s, the sample's LN statistics; block 0 also w,
// w', BN's statistics or zeros for an absent BN); block 0 also updates the running
// statistics and counts the batch.
__global__ void __launch_bounds__(kThreads)
    switchable_sample_kernel(StatisticsShape s, SwitchableInputs in, RunningStatistics running,
                             float* scale, float* shift, float* saved) {
  const int64_t i = blockIdx.x;
  const Pool& pool = s.pool;
  const coef::SwitchableSavedLayout layout(s.n, s.c, pool.k);
  const float* m = in.mean + i * s.c;
  const float* v = in.var + i * s.c;
  const Stat<float> ln = pool.ln >= 0 ? layer_statistics(m, v, s.c) : Stat<float>{0.f, 0.f};
  float w[coef::kMaxPool], w_var[coef::kMaxPool];
  coef::softmax(pool.k, in.mean_weight, w);
  coef::softmax(pool.k, in.var_weight, w_var);
  const bool folds = i == 0;
  const float factor = folds ? running_factor(running) : 0.f;
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    // Block 0 saves BN's statistics for the backward.
    const Stat<float> bn_ch = pool.bn >= 0 ? bn_forward(s, in.mean, in.var, running, ch, folds,
                                                        factor, saved + layout.bn_mean)
                                           : Stat<float>{0.f, 0.f};
    float mixed_mean = 0.f, mixed_var = 0.f;
    for (int j = 0; j < pool.k; ++j) {
      const Stat<float> stat = coef::member_stat(pool.code[j], m[ch], v[ch], ln, bn_ch);
      mixed_mean += w[j] * stat.mean;
      mixed_var += w_var[j] * stat.var;
    }
    const int64_t at = i * s.c + ch;
    const float r = coef::rstd(mixed_var, s.eps);
    const coef::Coefficients<float> out =
        coef::switchable_coefficients(in.weight[ch], in.bias[ch], m[ch], mixed_mean, r);
    scale[at] = out.scale;
    shift[at] = out.shift;
    saved[layout.rstd + at] = r;
    saved[layout.mean + at] = m[ch];
    saved[layout.var + at] = v[ch];
  }
  if (threadIdx.x == 0) {
    saved[layout.ln_mean + i] = ln.mean;
    saved[layout.ln_var + i] = ln.var;
  }
  if (i != 0) return;
  if (threadIdx.x < pool.k) {
    saved[layout.w + threadIdx.x] = w[threadIdx.x];
    saved[layout.w_var + threadIdx.x] = w_var[threadIdx.x];
  }
  if (pool.bn < 0) {
    for (int64_t ch = threadIdx.x; ch < 2 * s.c; ch += kThreads) saved[layout.bn_mean + ch] = 0.f;
  }
  __syncthreads();  // every thread of block 0 has read the batch count
  count_batch(running);
}

// ------------------------------------------------------------------------------------------
// Backward: the statistics' part (docs/method.md#statistics), shared by EN and SN

// Member j's gμ, gσ² at (n, c), where they go: IN's into that (n, c)'s gradients of the
// moments (g_mean, g_var), LN's into the sample's sums over the channels (ln: gμ, gσ²),
// BN's into (N, C) scratch at `at` for the channel kernel, on batch statistics only (the
// running ones take no gradient).
__device__ __forceinline__ void route_member_grad(int code, bool batch_stats, int64_t at,
                                                  float g_mu, float g_sigma, float& g_mean,
                                                  float& g_var, float* ln, float* bn_mean,
                                                  float* bn_var) {
  switch (code) {
    case coef::kIN:
      g_mean += g_mu;
      g_var += g_sigma;
      break;
    case coef::kLN:
      ln[0] += g_mu;
      ln[1] += g_sigma;
      break;
    default:
      if (batch_stats) {
        bn_mean[at] = g_mu;
        bn_var[at] = g_sigma;
      }
  }
}

// A merge of `count` values with mean μ at one of them (d = m - μ): gμ / count and
// 2 gσ² d / count to its mean, gσ² / count to its variance, from the sums of gμ, gσ².
__device__ __forceinline__ void merge_grad(float sum_mu, float sum_sigma, float d, float count,
                                           float* g_mean, float* g_var) {
  *g_mean += sum_mu / count + 2.f * sum_sigma * d / count;
  *g_var += sum_sigma / count;
}

// Thread per channel ch: BN's part of the gradients of mean and var, from BN's gμ, gσ² at
// every (n, c) and d_BN of sample i, centred(i).
template <typename Centred>
__device__ __forceinline__ void bn_merge_grad(int64_t n, int64_t c, int64_t ch,
                                              const float* bn_mean, const float* bn_var,
                                              const Centred& centred, float* g_mean,
                                              float* g_var) {
  float sum_mu = 0.f, sum_sigma = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    sum_mu += bn_mean[i * c + ch];
    sum_sigma += bn_var[i * c + ch];
  }
  for (int64_t i = 0; i < n; ++i) {
    merge_grad(sum_mu, sum_sigma, centred(i), float(n), g_mean + i * c + ch, g_var + i * c + ch);
  }
}

// ------------------------------------------------------------------------------------------
// EN backward

// Where EN's backward keeps its per-(n, c) intermediate values.
struct ExemplarScratch {
  float* grad_lambda;  // (N, K)
  float* pooled;       // (N, C): the ratio branch's gradients of its pooled input,
  float* means;        // (N, K, C) of its means
  float* rstds;        // (N, K, C) and of its rstds
  float* bn_mean;      // (N, C): BN's gμ and gσ² at every (n, c) (batch statistics only)
  float* bn_var;
  float* ratio_workspace;

  ExemplarScratch(float* base, const ratio::Sizes& s) {
    grad_lambda = base;
    pooled = grad_lambda + s.n * s.k;
    means = pooled + s.n * s.c;
    rstds = means + s.n * s.k * s.c;
    bn_mean = rstds + s.n * s.k * s.c;
    bn_var = bn_mean + s.n * s.c;
    ratio_workspace = bn_var + s.n * s.c;
  }

  static int64_t floats(const ratio::Sizes& s) {
    return s.n * (s.k + 3 * s.c + 2 * s.k * s.c) + exemplar_ratios_backward_workspace(s);
  }
};

// EN's saved values of sample i.
struct ExemplarSample {
  const float *lambda, *centred, *rstds;

  __device__ ExemplarSample(const ratio::Sizes& s, const float* saved, int64_t i) {
    const ratio::SavedLayout row(s);
    const float* activations = saved + coef::ExemplarSavedLayout(s).activations + i * row.total;
    lambda = activations + row.ratios;
    centred = activations + row.centred;
    rstds = saved + coef::ExemplarSavedLayout(s).rstds + i * s.k * s.c;
  }
};

// Sample i, the whole block: dL/dλ_j = Σ_c (gA + gS d_j) γ_j ρ_j.
__device__ void exemplar_ratio_grad(const ratio::Sizes& s, const ExemplarBackwardInputs& in,
                                    int64_t i, float* grad_lambda) {
  __shared__ WarpSums<coef::kMaxPool> warps;
  const ExemplarSample sample(s, in.saved, i);
  float sums[coef::kMaxPool] = {0.f, 0.f, 0.f};
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    for (int j = 0; j < s.k; ++j) {
      const float gt = coef::exemplar_gain_grad(in.grad_scale[i * s.c + ch],
                                                in.grad_shift[i * s.c + ch],
                                                sample.centred[j * s.c + ch]);
      sums[j] += gt * in.weight[j * s.c + ch] * sample.rstds[j * s.c + ch];
    }
  }
  block_sum(sums, warps);
  if (threadIdx.x < s.k) grad_lambda[i * s.k + threadIdx.x] = sums[threadIdx.x];
}

// Sample i, the whole block: the gradients of mean and var but BN's part, and BN's gμ, gσ²
// at every (n, c) for exemplar_channel_grad.
__device__ void exemplar_sample_grad(const StatisticsShape& st, const ratio::Sizes& s,
                                     const ExemplarBackwardInputs& in,
                                     const ExemplarScratch& scratch, const ExemplarGrads& out,
                                     int64_t i) {
  __shared__ WarpSums<2> warps;
  const Pool& pool = st.pool;
  const ExemplarSample sample(s, in.saved, i);
  float ln[2] = {0.f, 0.f};  // Σ_c of LN's gμ and gσ²
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    const int64_t at = i * s.c + ch;
    const float gs = in.grad_shift[at];
    float g_mean = scratch.pooled[at], g_var = 0.f;
    for (int j = 0; j < s.k; ++j) {
      const int64_t kc = j * s.c + ch;
      const float rho = sample.rstds[kc];
      const float gamma = in.weight[kc];
      const float t = sample.lambda[j] * gamma * rho;
      const float gt = coef::exemplar_gain_grad(in.grad_scale[at], gs, sample.centred[kc]);
      const float g_rho = gt * gamma * sample.lambda[j] + scratch.rstds[i * s.k * s.c + kc];
      const float g_mu = -gs * t + scratch.means[i * s.k * s.c + kc];
      const float g_sigma = coef::rstd_to_var_grad(g_rho, rho);
      g_mean += gs * t;
      route_member_grad(pool.code[j], st.batch_stats, at, g_mu, g_sigma, g_mean, g_var, ln,
                        scratch.bn_mean, scratch.bn_var);
    }
    out.mean[at] = g_mean;
    out.var[at] = g_var;
  }
  if (pool.ln < 0) return;
  block_sum(ln, warps);
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    const int64_t at = i * s.c + ch;
    merge_grad(ln[0], ln[1], sample.centred[pool.ln * s.c + ch], float(s.c), out.mean + at,
               out.var + at);
  }
}

// Channel ch: gγ, gβ, and BN's part of the gradients of mean and var.
__device__ void exemplar_channel_grad(const StatisticsShape& st, const ratio::Sizes& s,
                                      const ExemplarBackwardInputs& in,
                                      const ExemplarScratch& scratch, const ExemplarGrads& out,
                                      int64_t ch) {
  float g_beta = 0.f;
  for (int64_t i = 0; i < s.n; ++i) g_beta += in.grad_shift[i * s.c + ch];
  for (int j = 0; j < s.k; ++j) {
    float g_gamma = 0.f;
    for (int64_t i = 0; i < s.n; ++i) {
      const ExemplarSample sample(s, in.saved, i);
      const float gt = coef::exemplar_gain_grad(in.grad_scale[i * s.c + ch],
                                                in.grad_shift[i * s.c + ch],
                                                sample.centred[j * s.c + ch]);
      g_gamma += gt * sample.lambda[j] * sample.rstds[j * s.c + ch];
    }
    out.weight[j * s.c + ch] = g_gamma;
    out.bias[j * s.c + ch] = g_beta;
  }
  if (st.pool.bn < 0 || !st.batch_stats) return;
  bn_merge_grad(
      s.n, s.c, ch, scratch.bn_mean, scratch.bn_var,
      [&](int64_t i) { return ExemplarSample(s, in.saved, i).centred[st.pool.bn * s.c + ch]; },
      out.mean, out.var);
}

// The ratio branch's part of EN's backward, where exemplar_sample_grad and the parameter
// sums find it.
__device__ void ratio_backward_parts(const ratio::Sizes& s, const ExemplarBackwardInputs& in,
                                     const ExemplarScratch& scratch, const ExemplarGrads& out,
                                     ratio::BackwardInputs<float>& inputs,
                                     ratio::Grads<float>& grads) {
  const coef::ExemplarSavedLayout layout(s);
  inputs = {scratch.grad_lambda, in.saved + layout.activations, in.saved + layout.rstds,
            in.conv_w,           in.fc1_w,                      in.fc2_w};
  grads = {scratch.pooled, scratch.means, scratch.rstds, out.conv_w,
           out.fc1_w,      out.fc1_b,     out.fc2_w,     out.fc2_b};
}

// EN's backward in one launch. A block per sample for everything that merges over the
// channels: dL/dλ, the ratio branch's backward (ratio_block.cuh; its parameters'
// gradients as a row of per-sample partials), and the gradients of the sample's moments
// but BN's part. Then the last block to finish, for everything that merges over the
// samples: gγ, gβ, BN's part of the moments' gradients, and the sums of the parameters'
// per-sample gradients, a thread per channel and per parameter.
__global__ void __launch_bounds__(kThreads)
    exemplar_backward_kernel(StatisticsShape st, ratio::Sizes s, ExemplarBackwardInputs in,
                             ExemplarScratch scratch, ExemplarGrads out, unsigned* arrivals) {
  extern __shared__ float shared[];
  const int64_t i = blockIdx.x;
  exemplar_ratio_grad(s, in, i, scratch.grad_lambda);
  __syncthreads();  // the sample's dL/dλ
  ratio::BackwardInputs<float> inputs;
  ratio::Grads<float> grads;
  ratio_backward_parts(s, in, scratch, out, inputs, grads);
  ratio_block::ratio_backward_block(s, inputs, i, grads, scratch.ratio_workspace, shared);
  __syncthreads();  // the ratio branch's gradients of the sample's pooled input, μ and ρ
  exemplar_sample_grad(st, s, in, scratch, out, i);
  if (!last_to_arrive(arrivals, gridDim.x)) return;
  const int64_t params = ratio_block::ParamLayout(s).total;
  for (int64_t t = threadIdx.x; t < s.c || t < params; t += kThreads) {
    if (t < s.c) exemplar_channel_grad(st, s, in, scratch, out, t);
    ratio_block::reduce_param_grad(s, scratch.ratio_workspace, grads, t);
  }
}

// ------------------------------------------------------------------------------------------
// SN backward

struct SwitchableScratch {
  float* bn_mean;   // (N, C): BN's gμ and gσ² at every (n, c) (batch statistics only)
  float* bn_var;
  float* gamma;     // (N, C): every (n, c)'s term of gγ
  float* weights;   // (N, 2K): every sample's Σ_c gμ̄ μ_k, then Σ_c gσ̄² σ²_k

  SwitchableScratch(float* base, const StatisticsShape& s) {
    bn_mean = base;
    bn_var = bn_mean + s.n * s.c;
    gamma = bn_var + s.n * s.c;
    weights = gamma + s.n * s.c;
  }

  static int64_t floats(const StatisticsShape& s) { return s.n * (3 * s.c + 2 * s.pool.k); }
};

// Sample i, the whole block: the gradients of mean and var but BN's part, BN's gμ, gσ², the
// (n, c) terms of gγ and the sample's sums for the importance weights.
__device__ void switchable_sample_grad(const StatisticsShape& s,
                                       const SwitchableBackwardInputs& in,
                                       const SwitchableScratch& scratch,
                                       const SwitchableGrads& out, int64_t i) {
  // The block's sums: Σ_c of LN's gμ and gσ², then of gμ̄ μ_k and of gσ̄² σ²_k per k.
  constexpr int kSums = 2 + 2 * coef::kMaxPool;
  __shared__ WarpSums<kSums> warps;
  const Pool& pool = s.pool;
  const coef::SwitchableSavedLayout layout(s.n, s.c, pool.k);
  const float* saved = in.saved;
  const float* w = saved + layout.w;
  const float* w_var = saved + layout.w_var;
  const Stat<float> ln{saved[layout.ln_mean + i], saved[layout.ln_var + i]};
  float sums[kSums] = {};
  float* sum_w = sums + 2;
  float* sum_w_var = sums + 2 + coef::kMaxPool;
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    const int64_t at = i * s.c + ch;
    const float m = saved[layout.mean + at];
    const Stat<float> bn_ch = bn_at(pool, saved + layout.bn_mean, s.c, ch);
    Stat<float> stats[coef::kMaxPool];
    float mixed_mean = 0.f;
    for (int j = 0; j < pool.k; ++j) {
      stats[j] = coef::member_stat(pool.code[j], m, saved[layout.var + at], ln, bn_ch);
      mixed_mean += w[j] * stats[j].mean;
    }
    const coef::SwitchableGrads<float> g =
        coef::switchable_grads(in.grad_scale[at], in.grad_shift[at], in.weight[ch], m,
                               mixed_mean, saved[layout.rstd + at]);
    scratch.gamma[at] = g.gamma;
    float g_mean = g.m, g_var = 0.f;
    for (int j = 0; j < pool.k; ++j) {
      sum_w[j] += g.mixed_mean * stats[j].mean;
      sum_w_var[j] += g.mixed_var * stats[j].var;
      const float g_mu = w[j] * g.mixed_mean;
      const float g_sigma = w_var[j] * g.mixed_var;
      route_member_grad(pool.code[j], s.batch_stats, at, g_mu, g_sigma, g_mean, g_var, sums,
                        scratch.bn_mean, scratch.bn_var);
    }
    out.mean[at] = g_mean;
    out.var[at] = g_var;
  }
  block_sum(sums, warps);
  if (threadIdx.x < pool.k) {
    scratch.weights[i * 2 * pool.k + threadIdx.x] = sum_w[threadIdx.x];
    scratch.weights[i * 2 * pool.k + pool.k + threadIdx.x] = sum_w_var[threadIdx.x];
  }
  if (pool.ln < 0) return;
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    const int64_t at = i * s.c + ch;
    merge_grad(sums[0], sums[1], saved[layout.mean + at] - ln.mean, float(s.c), out.mean + at,
               out.var + at);
  }
}

// Channel ch: gγ, gβ, and BN's part of the gradients of mean and var.
__device__ void switchable_channel_grad(const StatisticsShape& s,
                                        const SwitchableBackwardInputs& in,
                                        const SwitchableScratch& scratch,
                                        const SwitchableGrads& out, int64_t ch) {
  const coef::SwitchableSavedLayout layout(s.n, s.c, s.pool.k);
  float g_gamma = 0.f, g_beta = 0.f;
  for (int64_t i = 0; i < s.n; ++i) {
    g_gamma += scratch.gamma[i * s.c + ch];
    g_beta += in.grad_shift[i * s.c + ch];
  }
  out.weight[ch] = g_gamma;
  out.bias[ch] = g_beta;
  if (s.pool.bn < 0 || !s.batch_stats) return;
  const float mu = in.saved[layout.bn_mean + ch];
  bn_merge_grad(
      s.n, s.c, ch, scratch.bn_mean, scratch.bn_var,
      [&](int64_t i) { return in.saved[layout.mean + i * s.c + ch] - mu; }, out.mean, out.var);
}

// One thread: the importance weights' gradients through their softmax.
__device__ void switchable_weights_grad(const StatisticsShape& s, const float* saved,
                                        const SwitchableScratch& scratch,
                                        const SwitchableGrads& out) {
  const int k = s.pool.k;
  const coef::SwitchableSavedLayout layout(s.n, s.c, k);
  float grad_w[coef::kMaxPool] = {0.f, 0.f, 0.f}, grad_w_var[coef::kMaxPool] = {0.f, 0.f, 0.f};
  for (int64_t i = 0; i < s.n; ++i) {
    for (int j = 0; j < k; ++j) {
      grad_w[j] += scratch.weights[i * 2 * k + j];
      grad_w_var[j] += scratch.weights[i * 2 * k + k + j];
    }
  }
  coef::softmax_backward(k, saved + layout.w, grad_w, out.mean_weight);
  coef::softmax_backward(k, saved + layout.w_var, grad_w_var, out.var_weight);
}

// SN's backward in one launch: a block per sample (switchable_sample_grad), then the last
// block to finish, a thread per channel (and thread 0 the importance weights), for what
// merges over the samples: gγ, gβ, BN's part of the moments' gradients.
__global__ void __launch_bounds__(kThreads)
    switchable_backward_kernel(StatisticsShape s, SwitchableBackwardInputs in,
                               SwitchableScratch scratch, SwitchableGrads out,
                               unsigned* arrivals) {
  switchable_sample_grad(s, in, scratch, out, blockIdx.x);
  if (!last_to_arrive(arrivals, gridDim.x)) return;
  if (threadIdx.x == 0) switchable_weights_grad(s, in.saved, scratch, out);
  for (int64_t ch = threadIdx.x; ch < s.c; ch += kThreads) {
    switchable_channel_grad(s, in, scratch, out, ch);
  }
}

}  // namespace

int64_t exemplar_forward_workspace(const ratio::Sizes& s) { return s.n * s.k * s.c; }

cudaError_t launch_exemplar_coefficients(const StatisticsShape& shape,
                                         const ratio::Sizes& sizes, const ExemplarInputs& in,
                                         const RunningStatistics& running, float* scale,
                                         float* shift, float* ratios, float* saved,
                                         float* workspace, cudaStream_t stream) {
  if (sizes.n == 0) return cudaSuccess;
  exemplar_forward_kernel<<<static_cast<unsigned>(sizes.n), kThreads,
                            ratio_block::ForwardScratch::bytes(sizes), stream>>>(
      shape, sizes, in, running, workspace, scale, shift, ratios, saved);
  return cudaGetLastError();
}

int64_t exemplar_backward_workspace(const ratio::Sizes& sizes) {
  return ExemplarScratch::floats(sizes);
}

cudaError_t launch_exemplar_coefficients_backward(const StatisticsShape& shape,
                                                  const ratio::Sizes& sizes,
                                                  const ExemplarBackwardInputs& in,
                                                  const ExemplarGrads& out, float* workspace,
                                                  unsigned* arrivals, cudaStream_t stream) {
  if (sizes.n == 0) return cudaSuccess;
  const ExemplarScratch scratch(workspace, sizes);
  exemplar_backward_kernel<<<static_cast<unsigned>(sizes.n), kThreads,
                             ratio_block::BackwardScratch::bytes(sizes), stream>>>(
      shape, sizes, in, scratch, out, arrivals);
  return cudaGetLastError();
}

cudaError_t launch_switchable_coefficients(const StatisticsShape& shape,
                                           const SwitchableInputs& in,
                                           const RunningStatistics& running, float* scale,
                                           float* shift, float* saved, cudaStream_t stream) {
  if (shape.n == 0) return cudaSuccess;
  switchable_sample_kernel<<<static_cast<unsigned>(shape.n), kThreads, 0, stream>>>(
      shape, in, running, scale, shift, saved);
  return cudaGetLastError();
}

int64_t switchable_backward_workspace(const StatisticsShape& shape) {
  return SwitchableScratch::floats(shape);
}

cudaError_t launch_switchable_coefficients_backward(const StatisticsShape& shape,
                                                    const SwitchableBackwardInputs& in,
                                                    const SwitchableGrads& out,
                                                    float* workspace, unsigned* arrivals,
                                                    cudaStream_t stream) {
  if (shape.n == 0) return cudaSuccess;
  const SwitchableScratch scratch(workspace, shape);
  switchable_backward_kernel<<<static_cast<unsigned>(shape.n), kThreads, 0, stream>>>(
      shape, in, scratch, out, arrivals);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace en_seg
