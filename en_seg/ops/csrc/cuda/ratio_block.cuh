// The ratio branch's forward for one sample, by a whole block of ratio_block::kThreads
// threads: what ratio_op_kernel.cu's forward kernel runs, and the EN coefficient kernel
// within its own block per sample (coefficient_op_kernel.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../ratio_math.h"

namespace en_seg {
namespace cuda {
namespace ratio_block {

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

}  // namespace ratio_block
}  // namespace cuda
}  // namespace en_seg
