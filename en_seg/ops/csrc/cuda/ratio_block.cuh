// The ratio branch for one sample, forward and backward, by a whole block of
// ratio_block::kThreads threads, and the sum of its parameters' per-sample gradients: what
// ratio_op_kernel.cu's kernels run, and what the EN coefficient kernels run within their
// own block per sample (coefficient_op_kernel.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../ratio_math.h"

namespace en_seg {
namespace cuda {
namespace ratio_block {

using ratio::BackwardInputs;
using ratio::Grads;
using ratio::Inputs;
using ratio::SavedLayout;
using ratio::Sizes;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Shared-memory layout of one forward block (one sample), in floats.
struct ForwardScratch {
  float* v;       // (K²) v = zᵀ z
  float* h;       // (P) hidden activations
  float* ratios;  // (K) logits, then λ
  float* warp_v;  // (kWarps, K²) per-warp partial sums of v

  __device__ ForwardScratch(float* base, const Sizes& s) {
    v = base;
    h = v + s.k * s.k;
    ratios = h + s.hidden;
    warp_v = ratios + s.k;
  }

  static size_t bytes(const Sizes& s) {
    return sizeof(float) * (s.k * s.k * (1 + kWarps) + s.hidden + s.k);
  }
};

// Steps 2-6 for sample n by the whole block: writes λ (ratios, (N, K)) and the sample's
// row of activations. `shared` holds ForwardScratch::bytes(s) of dynamic shared memory.
// Every thread must call it (it has barriers).
__device__ inline void ratio_forward_block(const Sizes& s, const Inputs<float>& in, int64_t n,
                                           float* ratios, float* activations, float* shared) {
  constexpr int kMaxGram = ratio::kMaxNormalizers * ratio::kMaxNormalizers;
  const ForwardScratch scratch(shared, s);
  const SavedLayout layout(s);
  const int tid = threadIdx.x;
  const float* pooled = in.pooled + n * s.c;
  const float* means = in.means + n * s.k * s.c;
  const float* rstds = in.rstds + n * s.k * s.c;
  float* saved = activations + n * layout.total;
  float* centred = saved + layout.centred;
  const int kk = s.k * s.k;
  float v[kMaxGram];
  for (int q = 0; q < kk; ++q) v[q] = 0.f;
  for (int64_t g = tid; g < s.groups(); g += kThreads) {
    // This thread writes the group's d = p - μ and reads it back: no other thread's data.
    ratio::center(s, pooled, means, g * s.r, (g + 1) * s.r, centred);
    float* z = saved + layout.z + g * s.k;
    ratio::project_group(s, centred, rstds, in.conv_w, g, z);
    ratio::accumulate_gram(s.k, z, v);
  }
  // Block sum of v in a fixed order (butterfly within each warp, then warps in turn),
  // so that it is the same from run to run.
  const int lane = tid % 32;
  const int warp = tid / 32;
  for (int q = 0; q < kk; ++q) {
    float sum = v[q];
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) scratch.warp_v[warp * kk + q] = sum;
  }
  __syncthreads();
  if (tid < kk) {
    float sum = 0.f;
    for (int w = 0; w < kWarps; ++w) sum += scratch.warp_v[w * kk + tid];
    scratch.v[tid] = sum;
    saved[layout.gram + tid] = sum;
  }
  __syncthreads();
  for (int64_t i = tid; i < s.hidden; i += kThreads) {
    const float h = ratio::hidden_unit(s, in.fc1_w, in.fc1_b, scratch.v, i);
    scratch.h[i] = h;
    saved[layout.hidden + i] = h;
  }
  __syncthreads();
  if (tid < s.k) {
    scratch.ratios[tid] = ratio::logit(s, in.fc2_w, in.fc2_b, scratch.h, tid);
  }
  __syncthreads();
  if (tid == 0) ratio::softmax(s.k, scratch.ratios);
  __syncthreads();
  if (tid < s.k) {
    ratios[n * s.k + tid] = scratch.ratios[tid];
    saved[layout.ratios + tid] = scratch.ratios[tid];
  }
}

// Where each parameter's gradient sits in one sample's row of partial gradients. The
// backward writes per-sample partials and sums them over samples in a fixed order, which
// makes parameter gradients bit-identical from run to run (no float atomics).
struct ParamLayout {
  int64_t fc1_w, fc1_b, fc2_w, fc2_b, conv_w, total;

  __host__ __device__ explicit ParamLayout(const Sizes& s)
      : fc1_w(0),
        fc1_b(s.hidden * s.k * s.k),
        fc2_w(fc1_b + s.hidden),
        fc2_b(fc2_w + s.k * s.hidden),
        conv_w(fc2_b + s.k),
        total(conv_w + s.c) {}
};

// Shared-memory layout of one backward block (one sample), in floats.
struct BackwardScratch {
  float* go;   // (K) gradient of the logits
  float* gu;   // (P) gradient of the hidden pre-activations
  float* sym;  // (K²) S = Gv + Gvᵀ

  __device__ BackwardScratch(float* base, const Sizes& s) {
    go = base;
    gu = go + s.k;
    sym = gu + s.hidden;
  }

  static size_t bytes(const Sizes& s) { return sizeof(float) * (s.k + s.hidden + s.k * s.k); }
};

// Sample n's input gradients, and its row of partial parameter gradients in `partials`
// (N rows of ParamLayout::total), by the whole block; `shared` holds
// BackwardScratch::bytes(s). Every thread must call it (it has barriers).
__device__ inline void ratio_backward_block(const Sizes& s, const BackwardInputs<float>& in,
                                            int64_t n, const Grads<float>& out,
                                            float* partials, float* shared) {
  const BackwardScratch scratch(shared, s);
  const int tid = threadIdx.x;
  const ParamLayout layout(s);
  const SavedLayout saved_layout(s);
  const int kk = s.k * s.k;
  const float* saved = in.activations + n * saved_layout.total;
  const float* v = saved + saved_layout.gram;
  const float* h = saved + saved_layout.hidden;
  float* partial = partials + n * layout.total;
  if (tid == 0) {
    ratio::softmax_backward(s.k, saved + saved_layout.ratios, in.grad + n * s.k, scratch.go);
  }
  __syncthreads();
  for (int64_t i = tid; i < s.hidden; i += kThreads) {
    const float gu = ratio::hidden_unit_backward(s, in.fc2_w, scratch.go, h[i], i);
    scratch.gu[i] = gu;
    partial[layout.fc1_b + i] = gu;
    for (int q = 0; q < kk; ++q) partial[layout.fc1_w + i * kk + q] = gu * v[q];
    for (int k = 0; k < s.k; ++k) {
      partial[layout.fc2_w + k * s.hidden + i] = scratch.go[k] * h[i];
    }
  }
  if (tid < s.k) partial[layout.fc2_b + tid] = scratch.go[tid];
  __syncthreads();
  if (tid < kk) {
    scratch.sym[tid] =
        ratio::symmetric_gram_backward(s, in.fc1_w, scratch.gu, tid / s.k, tid % s.k);
  }
  __syncthreads();
  const float* centred = saved + saved_layout.centred;
  const float* rstds = in.rstds + n * s.k * s.c;
  for (int64_t g = tid; g < s.groups(); g += kThreads) {
    ratio::project_group_backward(s, centred, rstds, in.conv_w, scratch.sym,
                                  saved + saved_layout.z + g * s.k, g, out.pooled + n * s.c,
                                  out.means + n * s.k * s.c, out.rstds + n * s.k * s.c,
                                  partial + layout.conv_w);
  }
}

// The gradient of flat parameter index p of ParamLayout.
__device__ inline float* param_grad(const ParamLayout& layout, const Grads<float>& out, int64_t p) {
  if (p >= layout.conv_w) return out.conv_w + (p - layout.conv_w);
  if (p >= layout.fc2_b) return out.fc2_b + (p - layout.fc2_b);
  if (p >= layout.fc2_w) return out.fc2_w + (p - layout.fc2_w);
  if (p >= layout.fc1_b) return out.fc1_b + (p - layout.fc1_b);
  return out.fc1_w + p;
}

// Parameter gradient p (a flat index of ParamLayout) = Σ_n partials[n, p], summed in
// sample order, which keeps it bit-identical from run to run (no float atomics); nothing for
// p past the last parameter.
__device__ inline void reduce_param_grad(const Sizes& s, const float* partials,
                                         const Grads<float>& out, int64_t p) {
  const ParamLayout layout(s);
  if (p >= layout.total) return;
  float sum = 0.f;
  for (int64_t n = 0; n < s.n; ++n) sum += partials[n * layout.total + p];
  *param_grad(layout, out, p) = sum;
}

}  // namespace ratio_block
}  // namespace cuda
}  // namespace en_seg
