// C entry points to the launchers of coefficient_op_kernel.cu (coefficient_op_kernel.h), for
// ctypes (kernels.py). Sizes are ratio::Sizes' fields and the pool's codes; the arrays of
// pointers hold the fields of the launchers' input and gradient structs in their order;
// pointers are host memory standing for device memory. Launchers return their
// cudaError_t, emu_failure_message() saying why when it is not cudaSuccess.
#include <cstdint>

#include "bindings/entry.h"
#include "coefficient_op_kernel.h"

namespace coef = en_seg::coef;
namespace cuda = en_seg::cuda;
namespace ratio = en_seg::ratio;

namespace {

coef::Pool pool_of(const int64_t* codes, int k) {
  coef::Pool pool{k, {0, 0, 0}, -1, -1};
  for (int j = 0; j < k; ++j) {
    pool.code[j] = static_cast<int>(codes[j]);
    if (codes[j] == coef::kLN) pool.ln = j;
    if (codes[j] == coef::kBN) pool.bn = j;
  }
  return pool;
}

ratio::Sizes sizes(int64_t n, int64_t c, int64_t r, int64_t hidden, int k) {
  return {n, c, r, hidden, k};
}

cuda::StatisticsShape shape(int64_t n, int64_t c, const int64_t* codes, int k, int batch_stats,
                            float eps) {
  return {n, c, pool_of(codes, k), batch_stats != 0, eps};
}

}  // namespace

extern "C" {

EMU_EXPORT int64_t emu_exemplar_saved_values(int64_t n, int64_t c, int64_t r, int64_t hidden,
                                             int k) {
  return coef::ExemplarSavedLayout(sizes(n, c, r, hidden, k)).total;
}

EMU_EXPORT int64_t emu_exemplar_forward_workspace(int64_t n, int64_t c, int64_t r,
                                                  int64_t hidden, int k) {
  return cuda::exemplar_forward_workspace(sizes(n, c, r, hidden, k));
}

EMU_EXPORT int64_t emu_exemplar_backward_workspace(int64_t n, int64_t c, int64_t r,
                                                   int64_t hidden, int k) {
  return cuda::exemplar_backward_workspace(sizes(n, c, r, hidden, k));
}

// running: the buffers (null when absent) and the update's flags and factors, as
// cuda::RunningStatistics.
EMU_EXPORT int emu_exemplar_coefficients(int64_t n, int64_t c, int64_t r, int64_t hidden,
                                         const int64_t* codes, int k, int batch_stats,
                                         float eps, const float* const* inputs,
                                         float* running_mean, float* running_var,
                                         int64_t* num_batches_tracked, int update,
                                         int cumulative, float momentum, float unbias,
                                         float* const* outputs, float* workspace) {
  const cuda::ExemplarInputs in{inputs[0], inputs[1], inputs[2], inputs[3], inputs[4],
                                inputs[5], inputs[6], inputs[7], inputs[8]};
  const cuda::RunningStatistics running{running_mean, running_var, num_batches_tracked,
                                        update != 0,  cumulative != 0, momentum, unbias};
  return emu::run_launcher([&] {
    return cuda::launch_exemplar_coefficients(shape(n, c, codes, k, batch_stats, eps),
                                              sizes(n, c, r, hidden, k), in, running,
                                              outputs[0], outputs[1], outputs[2], outputs[3],
                                              workspace, nullptr);
  });
}

EMU_EXPORT int emu_exemplar_coefficients_backward(int64_t n, int64_t c, int64_t r,
                                                  int64_t hidden, const int64_t* codes, int k,
                                                  int batch_stats, const float* const* inputs,
                                                  float* const* grads, float* workspace,
                                                  unsigned* arrivals) {
  const cuda::ExemplarBackwardInputs in{inputs[0], inputs[1], inputs[2], inputs[3],
                                        inputs[4], inputs[5], inputs[6]};
  const cuda::ExemplarGrads out{grads[0], grads[1], grads[2], grads[3], grads[4],
                                grads[5], grads[6], grads[7], grads[8]};
  return emu::run_launcher([&] {
    return cuda::launch_exemplar_coefficients_backward(shape(n, c, codes, k, batch_stats, 0.f),
                                                       sizes(n, c, r, hidden, k), in, out,
                                                       workspace, arrivals, nullptr);
  });
}

EMU_EXPORT int64_t emu_switchable_saved_values(int64_t n, int64_t c, int k) {
  return coef::SwitchableSavedLayout(n, c, k).total;
}

EMU_EXPORT int64_t emu_switchable_backward_workspace(int64_t n, int64_t c, const int64_t* codes,
                                                     int k) {
  return cuda::switchable_backward_workspace(shape(n, c, codes, k, 1, 0.f));
}

EMU_EXPORT int emu_switchable_coefficients(int64_t n, int64_t c, const int64_t* codes, int k,
                                           int batch_stats, float eps,
                                           const float* const* inputs, float* running_mean,
                                           float* running_var, int64_t* num_batches_tracked,
                                           int update, int cumulative, float momentum,
                                           float unbias, float* const* outputs) {
  const cuda::SwitchableInputs in{inputs[0], inputs[1], inputs[2],
                                  inputs[3], inputs[4], inputs[5]};
  const cuda::RunningStatistics running{running_mean, running_var, num_batches_tracked,
                                        update != 0,  cumulative != 0, momentum, unbias};
  return emu::run_launcher([&] {
    return cuda::launch_switchable_coefficients(shape(n, c, codes, k, batch_stats, eps), in,
                                                running, outputs[0], outputs[1], outputs[2],
                                                nullptr);
  });
}

EMU_EXPORT int emu_switchable_coefficients_backward(int64_t n, int64_t c, const int64_t* codes,
                                                    int k, int batch_stats,
                                                    const float* const* inputs,
                                                    float* const* grads, float* workspace,
                                                    unsigned* arrivals) {
  const cuda::SwitchableBackwardInputs in{inputs[0], inputs[1], inputs[2], inputs[3]};
  const cuda::SwitchableGrads out{grads[0], grads[1], grads[2], grads[3], grads[4], grads[5]};
  return emu::run_launcher([&] {
    return cuda::launch_switchable_coefficients_backward(
        shape(n, c, codes, k, batch_stats, 0.f), in, out, workspace, arrivals, nullptr);
  });
}

}  // extern "C"
