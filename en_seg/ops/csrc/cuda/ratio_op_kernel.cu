// CUDA kernels of the ratio branch: one thread block per sample runs ratio_math.h's steps,
// its threads taking groups of channels, hidden units or K² entries in turn. The branch
// reads a few K·C values per sample, so launches dominate its cost in PyTorch; here it is
// one launch forward (which also saves what the backward needs, ratio::SavedLayout) and two
// backward (a per-sample pass, then the sum of per-sample parameter gradients in sample
// order, which keeps gradients bit-identical from run to run). Float32 throughout.
#include <cuda_runtime.h>

#include "ratio_block.cuh"
#include "ratio_op_kernel.h"

namespace en_seg {
namespace cuda {
namespace {

using ratio::BackwardInputs;
using ratio::Grads;
using ratio::Inputs;
using ratio::SavedLayout;
using ratio::Sizes;

constexpr int kThreads = ratio_block::kThreads;
constexpr int kMaxGram = ratio::kMaxNormalizers * ratio::kMaxNormalizers;

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

// Steps 2-6, a block per sample (ratio_block.cuh).
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Sizes s, Inputs<float> in, float* ratios, float* activations) {
  extern __shared__ float shared[];
  ratio_block::ratio_forward_block(s, in, blockIdx.x, ratios, activations, shared);
}

// Sample n's input gradients, and its row of partial parameter gradients in `partials`.
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Sizes s, BackwardInputs<float> in, Grads<float> out, float* partials) {
  extern __shared__ float shared[];
  const BackwardScratch scratch(shared, s);
  const int tid = threadIdx.x;
  const int64_t n = blockIdx.x;
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
__device__ float* param_grad(const ParamLayout& layout, const Grads<float>& out, int64_t p) {
  if (p >= layout.conv_w) return out.conv_w + (p - layout.conv_w);
  if (p >= layout.fc2_b) return out.fc2_b + (p - layout.fc2_b);
  if (p >= layout.fc2_w) return out.fc2_w + (p - layout.fc2_w);
  if (p >= layout.fc1_b) return out.fc1_b + (p - layout.fc1_b);
  return out.fc1_w + p;
}

// Parameter gradient p = Σ_n partials[n, p], summed in sample order.
__global__ void __launch_bounds__(kThreads)
    reduce_param_grads_kernel(Sizes s, const float* partials, Grads<float> out) {
  const ParamLayout layout(s);
  const int64_t p = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (p >= layout.total) return;
  float sum = 0.f;
  for (int64_t n = 0; n < s.n; ++n) sum += partials[n * layout.total + p];
  *param_grad(layout, out, p) = sum;
}

}  // namespace

cudaError_t launch_exemplar_ratios_forward(const Sizes& sizes, const Inputs<float>& inputs,
                                           float* ratios, float* activations,
                                           cudaStream_t stream) {
  if (sizes.n > 0) {
    const auto blocks = static_cast<unsigned>(sizes.n);
    forward_kernel<<<blocks, kThreads, ratio_block::ForwardScratch::bytes(sizes), stream>>>(
        sizes, inputs, ratios, activations);
  }
  return cudaGetLastError();
}

int64_t exemplar_ratios_backward_workspace(const Sizes& sizes) {
  return sizes.n * ParamLayout(sizes).total;
}

cudaError_t launch_exemplar_ratios_backward(const Sizes& sizes,
                                            const BackwardInputs<float>& inputs,
                                            const Grads<float>& grads, float* workspace,
                                            cudaStream_t stream) {
  if (sizes.n > 0) {
    const auto blocks = static_cast<unsigned>(sizes.n);
    backward_kernel<<<blocks, kThreads, BackwardScratch::bytes(sizes), stream>>>(
        sizes, inputs, grads, workspace);
  }
  const int64_t params = ParamLayout(sizes).total;
  const auto blocks = static_cast<unsigned>((params + kThreads - 1) / kThreads);
  reduce_param_grads_kernel<<<blocks, kThreads, 0, stream>>>(sizes, workspace, grads);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace en_seg
