// C entry points to the launchers of channel_op_kernel.cu (channel_op_kernel.h), for
// ctypes (kernels.py). Every pointer is host memory standing for device memory; `dtype` is
// a cuda::DType and every entry returns the launcher's cudaError_t, emu_failure_message()
// saying why when it is not cudaSuccess. The emulated GPU has an H100 SXM's 132
// multiprocessors (which size the reductions' splits).
#include <cstdint>

#include "channel_op_kernel.h"
#include "bindings/entry.h"

using en_seg::cuda::Activation;
using en_seg::cuda::DType;

namespace {
constexpr int kMultiprocessors = 132;

Activation shape(int64_t n, int64_t c, int64_t hw, int channels_last) {
  return {n, c, hw, channels_last != 0, kMultiprocessors};
}
}  // namespace

extern "C" {

// The reductions' scratch: workspace bytes, then arrival counters.
EMU_EXPORT void emu_reduction_scratch(int dtype, int64_t n, int64_t c, int64_t hw,
                                      int channels_last, int64_t* sizes) {
  const en_seg::cuda::ReductionScratch scratch =
      en_seg::cuda::reduction_scratch(shape(n, c, hw, channels_last), static_cast<DType>(dtype));
  sizes[0] = scratch.workspace_bytes;
  sizes[1] = scratch.arrivals;
}

EMU_EXPORT int emu_channel_moments(const void* x, int dtype, int64_t n, int64_t c, int64_t hw,
                                   int channels_last, void* mean, void* var, void* workspace,
                                   unsigned* arrivals) {
  return emu::run_launcher([&] {
    return en_seg::cuda::launch_channel_moments(x, static_cast<DType>(dtype),
                                                shape(n, c, hw, channels_last), mean, var,
                                                workspace, arrivals, nullptr);
  });
}

EMU_EXPORT int emu_channel_affine(const void* x, int dtype, int64_t n, int64_t c, int64_t hw,
                                  int channels_last, const void* center, const void* scale,
                                  const void* shift, void* y) {
  return emu::run_launcher([&] {
    return en_seg::cuda::launch_channel_affine(x, static_cast<DType>(dtype),
                                               shape(n, c, hw, channels_last), center, scale,
                                               shift, y, nullptr);
  });
}

EMU_EXPORT int emu_channel_affine_grad_sums(const void* grad_y, const void* x, int dtype,
                                            int64_t n, int64_t c, int64_t hw,
                                            int channels_last, const void* center,
                                            void* sum_dy, void* sum_dy_xc, void* workspace,
                                            unsigned* arrivals) {
  return emu::run_launcher([&] {
    return en_seg::cuda::launch_channel_affine_grad_sums(
        grad_y, x, static_cast<DType>(dtype), shape(n, c, hw, channels_last), center, sum_dy,
        sum_dy_xc, workspace, arrivals, nullptr);
  });
}

EMU_EXPORT int emu_channel_norm_input_grad(const void* grad_y, const void* x, int dtype,
                                           int64_t n, int64_t c, int64_t hw, int channels_last,
                                           const void* mean, const void* scale,
                                           const void* sum_dy, const void* grad_mean,
                                           const void* grad_var, void* grad_x) {
  return emu::run_launcher([&] {
    return en_seg::cuda::launch_channel_norm_input_grad(
        grad_y, x, static_cast<DType>(dtype), shape(n, c, hw, channels_last), mean, scale,
        sum_dy, grad_mean, grad_var, grad_x, nullptr);
  });
}

}  // extern "C"
