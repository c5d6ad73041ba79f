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
using ratio::Sizes;

constexpr int kThreads = ratio_block::kThreads;

// Steps 2-6, a block per sample (ratio_block.cuh).
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Sizes s, Inputs<float> in, float* ratios, float* activations) {
  extern __shared__ float shared[];
  ratio_block::ratio_forward_block(s, in, blockIdx.x, ratios, activations, shared);
}

// Sample n's input gradients and its row of partial parameter gradients, a block per
// sample (ratio_block.cuh).
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Sizes s, BackwardInputs<float> in, Grads<float> out, float* partials) {
  extern __shared__ float shared[];
  ratio_block::ratio_backward_block(s, in, blockIdx.x, out, partials, shared);
}

// Parameter gradient p = Σ_n partials[n, p], summed in sample order.
__global__ void __launch_bounds__(kThreads)
    reduce_param_grads_kernel(Sizes s, const float* partials, Grads<float> out) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  ratio_block::reduce_param_grad(s, partials, out, p);
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
  return sizes.n * ratio_block::ParamLayout(sizes).total;
}

cudaError_t launch_exemplar_ratios_backward(const Sizes& sizes,
                                            const BackwardInputs<float>& inputs,
                                            const Grads<float>& grads, float* workspace,
                                            cudaStream_t stream) {
  if (sizes.n > 0) {
    const auto blocks = static_cast<unsigned>(sizes.n);
    backward_kernel<<<blocks, kThreads, ratio_block::BackwardScratch::bytes(sizes), stream>>>(
        sizes, inputs, grads, workspace);
  }
  const int64_t params = ratio_block::ParamLayout(sizes).total;
  const auto blocks = static_cast<unsigned>((params + kThreads - 1) / kThreads);
  reduce_param_grads_kernel<<<blocks, kThreads, 0, stream>>>(sizes, workspace, grads);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace en_seg
