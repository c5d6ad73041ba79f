// CUDA's __nv_bfloat16 for the emulation (tests/cuda_emulation): its storage and the
// conversions the kernels use.
#pragma once

#include "emulation/float16.h"

struct __nv_bfloat16 {
  uint16_t __x;
};

inline float __bfloat162float(__nv_bfloat16 b) { return emu::bfloat16_bits_to_float(b.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {emu::float_to_bfloat16_bits(f)}; }
