// Loop pragmas of the CPU kernels. The CPU build has OpenMP: these let the compiler
// vectorize loops along channels, hidden units or H * W, including the float sums (of one
// or more variables) it may not reorder on its own; the order is fixed at compile time, so
// results stay deterministic. Without OpenMP, and in CUDA translation units, they are
// nothing.
#pragma once

#if defined(__CUDACC__)
#define EN_SEG_SIMD
#define EN_SEG_SIMD_SUM(...)
#else
#define EN_SEG_SIMD _Pragma("omp simd")
#define EN_SEG_SIMD_SUM(...) \
  _Pragma(EN_SEG_STRINGIFY(omp simd reduction(+ : __VA_ARGS__)))
#define EN_SEG_STRINGIFY(...) #__VA_ARGS__
#endif
