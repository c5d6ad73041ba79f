// IEEE binary16 and bfloat16 as 16-bit patterns, with CUDA's conversions: exact to float,
// round-to-nearest-even from float. A NaN becomes CUDA's canonical NaN, 0x7fff.
#pragma once

#include <cstdint>
#include <cstring>

namespace emu {

inline uint32_t float_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float bits_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// value >> shift rounded to nearest, ties to even (1 <= shift < 32).
inline uint32_t shift_round_even(uint32_t value, int shift) {
  const uint32_t kept = value >> shift;
  const uint32_t rest = value & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  return kept + (rest > half || (rest == half && (kept & 1)));
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t bits = float_bits(f);
  const uint16_t sign = (bits >> 16) & 0x8000;
  const uint32_t magnitude = bits & 0x7fffffff;
  if (magnitude > 0x7f800000) return 0x7fff;
  // From 65520, halfway between the largest half 65504 and 2^16, on: infinity.
  if (magnitude >= 0x477ff000) return sign | 0x7c00;
  if (magnitude >= 0x38800000) {  // a normal half (2^-14 and up): rebias 127 -> 15
    return sign | shift_round_even(magnitude - (112u << 23), 13);
  }
  // A subnormal half: the value in units of 2^-24, from the float's significand; below
  // 2^-25 (half a unit, a tie that rounds to the even 0) it is 0.
  if (magnitude <= 0x33000000) return sign;
  const uint32_t significand = (magnitude & 0x7fffff) | 0x800000;
  return sign | shift_round_even(significand, 126 - static_cast<int>(magnitude >> 23));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f;
  const uint32_t fraction = h & 0x3ff;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000 | (fraction << 13));
  if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (fraction << 13));
  // Zero or subnormal: fraction * 2^-24, exact in float.
  const float value = static_cast<float>(fraction) * 0x1p-24f;
  return sign ? -value : value;
}

inline uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t bits = float_bits(f);
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fff;
  // Rounding up past the largest finite bfloat16 carries into the exponent: infinity.
  return static_cast<uint16_t>(shift_round_even(bits, 16));
}

inline float bfloat16_bits_to_float(uint16_t b) { return bits_float(uint32_t(b) << 16); }

}  // namespace emu
