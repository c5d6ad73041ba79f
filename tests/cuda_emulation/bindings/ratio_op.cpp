// C entry points to the launchers of ratio_op_kernel.cu (ratio_op_kernel.h),
// for ctypes (kernels.py). Sizes are ratio::Sizes' fields; the arrays of pointers hold the
// fields of ratio::Inputs, BackwardInputs and Grads in their order; pointers are host
// memory standing for device memory. Launchers return their cudaError_t,
// emu_failure_message() saying why when it is not cudaSuccess.
#include <cstdint>

#include "bindings/entry.h"
#include "ratio_op_kernel.h"

namespace ratio = en_seg::ratio;

namespace {
ratio::Sizes sizes(int64_t n, int64_t c, int64_t r, int64_t hidden, int k) {
  return {n, c, r, hidden, k};
}
}  // namespace

extern "C" {

// Floats per sample of the forward's activations (ratio::SavedLayout).
EMU_EXPORT int64_t emu_saved_values(int64_t n, int64_t c, int64_t r, int64_t hidden, int k) {
  return ratio::SavedLayout(sizes(n, c, r, hidden, k)).total;
}

EMU_EXPORT int64_t emu_exemplar_ratios_backward_workspace(int64_t n, int64_t c, int64_t r,
                                                          int64_t hidden, int k) {
  return en_seg::cuda::exemplar_ratios_backward_workspace(sizes(n, c, r, hidden, k));
}

// inputs: pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b.
EMU_EXPORT int emu_exemplar_ratios_forward(int64_t n, int64_t c, int64_t r, int64_t hidden,
                                           int k, const float* const* inputs, float* ratios,
                                           float* activations) {
  const ratio::Inputs<float> in{inputs[0], inputs[1], inputs[2], inputs[3],
                                inputs[4], inputs[5], inputs[6], inputs[7]};
  return emu::run_launcher([&] {
    return en_seg::cuda::launch_exemplar_ratios_forward(sizes(n, c, r, hidden, k), in, ratios,
                                                        activations, nullptr);
  });
}

// inputs: grad, activations, rstds, conv_w, fc1_w, fc2_w; grads: those of the forward's
// inputs in their order.
EMU_EXPORT int emu_exemplar_ratios_backward(int64_t n, int64_t c, int64_t r, int64_t hidden,
                                            int k, const float* const* inputs,
                                            float* const* grads, float* workspace) {
  const ratio::BackwardInputs<float> in{inputs[0], inputs[1], inputs[2],
                                        inputs[3], inputs[4], inputs[5]};
  const ratio::Grads<float> out{grads[0], grads[1], grads[2], grads[3],
                                grads[4], grads[5], grads[6], grads[7]};
  return emu::run_launcher([&] {
    return en_seg::cuda::launch_exemplar_ratios_backward(sizes(n, c, r, hidden, k), in, out,
                                                         workspace, nullptr);
  });
}

}  // extern "C"
