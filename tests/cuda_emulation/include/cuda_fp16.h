// CUDA's __half for the emulation (tests/cuda_emulation): its storage and the conversions
// the kernels use.
#pragma once

#include "emulation/float16.h"

struct __half {
  uint16_t __x;
};

inline float __half2float(__half h) { return emu::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float f) { return {emu::float_to_half_bits(f)}; }
