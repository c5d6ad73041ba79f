// Launchers of the CUDA kernels of the coefficient ops (coefficient_op_kernel.cu; schemas in
// ../module.cpp, math in ../coefficient_op.cpp and ../coefficient_math.h). Plain C++ and CUDA
// runtime types only, so the kernels compile without torch headers; the torch glue is
// coefficient_op_cuda.cpp. All pointers are device pointers to contiguous float32 arrays
// shaped as the ops take them; launchers enqueue on `stream` and return its launch error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../coefficient_math.h"

namespace en_seg {
namespace cuda {

// What a forward's statistics depend on besides its tensors. N >= 1, C >= 1.
struct StatisticsShape {
  int64_t n, c;
  coef::Pool pool;
  bool batch_stats;  // BN on the batch statistics, else on the running ones
  float eps;
};

// The running statistics (null where absent) and their update: factor `momentum`, or
// 1 / num_batches_tracked after its increment when `cumulative`; unbias = L / (L - 1).
struct RunningStatistics {
  float* mean;
  float* var;
  int64_t* num_batches_tracked;
  bool update, cumulative;
  float momentum, unbias;
};

struct ExemplarInputs {
  const float *mean, *var, *weight, *bias;              // (N, C), (N, C), (K, C), (K, C)
  const float *conv_w, *fc1_w, *fc1_b, *fc2_w, *fc2_b;  // as exemplar_ratios takes them
};

// Floats of scratch launch_exemplar_coefficients needs.
int64_t exemplar_forward_workspace(const ratio::Sizes& sizes);

// scale, shift (N, C), ratios (N, K) and saved (coef::ExemplarSavedLayout).
cudaError_t launch_exemplar_coefficients(const StatisticsShape& shape,
                                         const ratio::Sizes& sizes, const ExemplarInputs& in,
                                         const RunningStatistics& running, float* scale,
                                         float* shift, float* ratios, float* saved,
                                         float* workspace, cudaStream_t stream);

struct ExemplarBackwardInputs {
  const float *grad_scale, *grad_shift, *saved, *weight, *conv_w, *fc1_w, *fc2_w;
};

struct ExemplarGrads {
  float *mean, *var, *weight, *bias, *conv_w, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
};

int64_t exemplar_backward_workspace(const ratio::Sizes& sizes);

// One launch; `arrivals` is one counter, zero, left zero (arrival.cuh). shape.eps is not
// read.
cudaError_t launch_exemplar_coefficients_backward(const StatisticsShape& shape,
                                                  const ratio::Sizes& sizes,
                                                  const ExemplarBackwardInputs& in,
                                                  const ExemplarGrads& out, float* workspace,
                                                  unsigned* arrivals, cudaStream_t stream);

struct SwitchableInputs {
  const float *mean, *var, *weight, *bias, *mean_weight, *var_weight;
};

// scale, shift (N, C) and saved (coef::SwitchableSavedLayout).
cudaError_t launch_switchable_coefficients(const StatisticsShape& shape,
                                           const SwitchableInputs& in,
                                           const RunningStatistics& running, float* scale,
                                           float* shift, float* saved, cudaStream_t stream);

struct SwitchableBackwardInputs {
  const float *grad_scale, *grad_shift, *saved, *weight;
};

struct SwitchableGrads {
  float *mean, *var, *weight, *bias, *mean_weight, *var_weight;
};

int64_t switchable_backward_workspace(const StatisticsShape& shape);

// One launch; `arrivals` as for launch_exemplar_coefficients_backward.
cudaError_t launch_switchable_coefficients_backward(const StatisticsShape& shape,
                                                    const SwitchableBackwardInputs& in,
                                                    const SwitchableGrads& out,
                                                    float* workspace, unsigned* arrivals,
                                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace en_seg
