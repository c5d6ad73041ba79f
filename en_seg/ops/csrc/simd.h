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

// The CPU kernels' hot loops, compiled for three x86-64 levels and chosen once, when the
// library loads, for the CPU it runs on (GCC's function multi-versioning): AVX-512
// (x86-64-v4), AVX2 + FMA (x86-64-v3), and the baseline every x86-64 CPU runs. libtorch's
// kernels, GroupNorm's and BatchNorm's among them, dispatch the same way, and without this
// the loops run SSE2 beside them. Elsewhere (other compilers or CPUs, CUDA translation
// units) the loops are compiled once, for the build's target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__CUDACC__) && defined(__linux__)
#define EN_SEG_CPU_DISPATCH \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EN_SEG_CPU_DISPATCH
#endif

// A helper of those loops, inlined into each clone so that it is compiled for the clone's
// instruction set.
#define EN_SEG_INLINE __attribute__((always_inline)) inline

