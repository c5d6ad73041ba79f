// The CPU kernels of the ratio branch (ratio_op_cpu.cpp) on raw arrays, for the
// other CPU ops that run the branch inside them (coefficient_op_cpu.cpp). Float32 and
// float64; pointers and shapes as in ratio_math.h.
#pragma once

#include <cstdint>

#include "ratio_math.h"

namespace en_seg {
namespace cpu {

// ratios (N, K) = λ and activations (N, ratio::SavedLayout::total).
template <typename T>
void exemplar_ratios_forward(const ratio::Sizes& sizes, const ratio::Inputs<T>& inputs,
                             T* ratios, T* activations);

// Values of scratch exemplar_ratios_backward needs.
int64_t exemplar_ratios_backward_workspace(const ratio::Sizes& sizes);

// Every gradient of `grads` from inputs.grad (N, K) = dL/dλ and the forward's activations.
template <typename T>
void exemplar_ratios_backward(const ratio::Sizes& sizes, const ratio::BackwardInputs<T>& inputs,
                              const ratio::Grads<T>& grads, T* workspace);

}  // namespace cpu
}  // namespace en_seg
