// Launchers of the CUDA kernels of the ratio branch (ratio_op_kernel.cu). Plain
// C++ and CUDA runtime types only, so the kernels compile without torch headers; the torch
// glue is ratio_op_cuda.cpp. All pointers are device pointers to contiguous float32
// arrays shaped as in ratio_math.h; kernels run on `stream` and return its launch error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../ratio_math.h"

namespace en_seg {
namespace cuda {

// Largest P = πK the kernels take: one block keeps a sample's P hidden activations
// (forward) or their gradients (backward) in shared memory.
constexpr int64_t kMaxHidden = 4096;

// ratios (N, K) = λ and activations (N, ratio::SavedLayout::total), what the backward
// needs of every sample.
cudaError_t launch_exemplar_ratios_forward(const ratio::Sizes& sizes,
                                           const ratio::Inputs<float>& inputs, float* ratios,
                                           float* activations, cudaStream_t stream);

// Floats of scratch launch_exemplar_ratios_backward needs: N rows of per-sample partial
// parameter gradients.
int64_t exemplar_ratios_backward_workspace(const ratio::Sizes& sizes);

// Writes every gradient of `grads` from inputs.grad (N, K) = dL/dλ and the forward's
// activations.
cudaError_t launch_exemplar_ratios_backward(const ratio::Sizes& sizes,
                                            const ratio::BackwardInputs<float>& inputs,
                                            const ratio::Grads<float>& grads,
                                            float* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace en_seg
