// CUDA kernels of the fused statistics / apply ops (schemas and math in
// ../channel_op.cpp, launchers declared in channel_op_kernel.h).
//
// Accumulation in float32 (float64 for float64 data). Every result is reduced in an order
// fixed by the shape (per-thread loops, then shuffle and shared-memory trees, then segments in
// turn), with no atomics, so results are bit-identical from run to run.
//
// Channels first, every (n, c) plane is a contiguous row of H * W values: a reduction gives
// a block to a row, or, when there are too few rows to fill the GPU (a small batch of
// wide planes, such as the stem's), to a segment of a row; an elementwise pass gives a
// block a chunk of one row, so the row's coefficients are read once. Both move 16 bytes
// per load (and store) where the rows allow it, kUnroll of them in flight per thread.
// channels_last, every sample is an (H * W) x C matrix: a block is kTileC threads of a
// pack of consecutive channels each by kTileRows rows, so a thread keeps its channels and
// their coefficients; reductions split the rows of a sample into segments. The splits are
// sized from the GPU's multiprocessor count. Segments' partial results are merged, in
// order, by the last block of each row or channel tile to finish (arrival.cuh): every
// reduction is one launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "arrival.cuh"
#include "channel_op_kernel.h"

namespace en_seg {
namespace cuda {
namespace {

constexpr int kWarp = 32;
// Threads of a channels-first block.
constexpr int kThreads = 256;
// Loads a thread has in flight per loop step (memory-level parallelism).
constexpr int kUnroll = 4;
// Values group_moments takes at once.
constexpr int kGroup = 4;
// channels_last block: kTileC channels by kTileRows rows.
constexpr int kTileC = 32;
constexpr int kTileRows = 8;
// Reductions split rows into segments while the grid has fewer blocks than the GPU holds
// at once: kResidentBlocks blocks of 256 threads per multiprocessor (2048 threads). At most
// kMaxSegments segments a row (channels first) or a sample (channels_last), of at least
// kMinRowSegment values (channels first) or kMinSegmentRows rows (channels_last).
constexpr int64_t kResidentBlocks = 8;
constexpr int64_t kMaxSegments = 256;
constexpr int64_t kMinSegmentRows = 128;
constexpr int64_t kMinRowSegment = int64_t(kThreads) * kUnroll * 4;
// Grid limits.
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridY = 65535;
// Bytes a pass over rows moves per load and store where the rows allow, and the most
// values that makes (16-bit types).
constexpr int kVectorBytes = 16;
constexpr int64_t kMaxPack = kVectorBytes / 2;

// block_reduce keeps one state per warp and reduces them with a single warp.
static_assert(kThreads % kWarp == 0 && kThreads / kWarp <= kWarp,
              "block_reduce needs whole warps, at most one state per lane of one warp");
static_assert(kTileC == kWarp, "a channels_last row of a tile is one warp");

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_type = typename AccType<T>::type;

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(acc_type<T> v);
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// std::min is not a device function without nvcc's --expt-relaxed-constexpr.
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ------------------------------------------------------------------------------------------
// Packs: 16-byte loads and stores

// V consecutive values, moved by one load or store of V * sizeof(T) bytes.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Every activation a kernel loads is an input it does not write: loaded through the
// read-only (non-coherent) path, LDG.E.*.CONSTANT, as nvcc does for a `const __restrict__`
// kernel parameter. The elementwise kernels take their pointers in an Op struct, whose
// members' __restrict__ nvcc ignores; so the load says it.
template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
#if defined(__CUDA_ARCH__) && !defined(EN_SEG_CUDA_EMULATION)
  Pack<T, V> value;
  if constexpr (sizeof(value) == 16) {
    const uint4 w = __ldg(reinterpret_cast<const uint4*>(p));
    memcpy(&value, &w, sizeof w);
    return value;
  } else if constexpr (sizeof(value) == 8) {
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(p));
    memcpy(&value, &w, sizeof w);
    return value;
  } else if constexpr (sizeof(value) == 4) {
    const unsigned w = __ldg(reinterpret_cast<const unsigned*>(p));
    memcpy(&value, &w, sizeof w);
    return value;
  } else if constexpr (sizeof(value) == 2) {
    const unsigned short w = __ldg(reinterpret_cast<const unsigned short*>(p));
    memcpy(&value, &w, sizeof w);
    return value;
  }
#endif
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

// nvcc 13.0 writes a plain 8- or 16-byte Pack store in these kernels as 4-byte STG.E
// instructions, whatever alignment the source states (sm_90 SASS, tools/sass_report.py); an
// explicit vector store (a weak st.global, as the plain one) keeps each pack one STG.E.64
// or STG.E.128. The emulation, which runs no PTX, stores the pack as it is.
template <int V, typename T>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& value) {
#if defined(__CUDA_ARCH__) && !defined(EN_SEG_CUDA_EMULATION)
  const size_t address = __cvta_generic_to_global(p);
  if constexpr (sizeof(value) == 16) {
    uint4 w;
    memcpy(&w, &value, sizeof w);
    asm("st.global.v4.b32 [%0], {%1, %2, %3, %4};"
        :: "l"(address), "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w));
    return;
  } else if constexpr (sizeof(value) == 8) {
    uint2 w;
    memcpy(&w, &value, sizeof w);
    asm("st.global.v2.b32 [%0], {%1, %2};" :: "l"(address), "r"(w.x), "r"(w.y));
    return;
  }
#endif
  *reinterpret_cast<Pack<T, V>*>(p) = value;
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ------------------------------------------------------------------------------------------
// Reduction state and its merges

// count values' mean and biased variance: the variance, not the sum of squared deviations,
// so that a state overflows only where its variance does (as the CPU kernels' Moments).
template <typename acc_t>
struct Moments {
  int64_t count;
  acc_t mean, var;
};

// Chan, Golub & LeVeque's pairwise merge, in variances: exact for any split, free of the
// cancellation of E[x²] - E[x]². An empty state gives way to the other (it has no mean to
// subtract), and δ² is formed as δ (δ w_a w_b), which overflows only where the merged
// variance does.
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> merge(const Moments<acc_t>& a,
                                                const Moments<acc_t>& b) {
  if (b.count == 0) return a;
  if (a.count == 0) return b;
  const int64_t count = a.count + b.count;
  const acc_t delta = b.mean - a.mean;
  const acc_t weight_a = acc_t(a.count) / acc_t(count), weight_b = acc_t(b.count) / acc_t(count);
  return {count, a.mean + delta * weight_b,
          weight_a * a.var + weight_b * b.var + delta * (delta * (weight_a * weight_b))};
}

// Moments of the first k (1, 2 or 4) values of v, by two passes in registers: shifted by
// v[0], so a constant group is its value exactly, and scaled by 1 / k (exact) and its root
// before the sums, so no partial result exceeds the moments.
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> group_moments(const acc_t (&v)[kGroup], int k) {
  static_assert(kGroup == 4, "1 / k below is for k = 1, 2 or 4");
  const acc_t inv = k == 1 ? acc_t(1) : k == 2 ? acc_t(0.5) : acc_t(0.25);
  const acc_t root = k == 1 ? acc_t(1) : k == 2 ? acc_t(0.70710678118654752440) : acc_t(0.5);
  acc_t shift = 0;
  for (int i = 1; i < k; ++i) shift += (v[i] - v[0]) * inv;
  const acc_t mean = v[0] + shift;
  acc_t var = 0;
  for (int i = 0; i < k; ++i) {
    const acc_t d = (v[i] - mean) * root;
    var += d * d;
  }
  return {k, mean, var};
}

// Σ dy and Σ dy (x - center).
template <typename acc_t>
struct GradSums {
  acc_t dy, dy_xc;
};

template <typename acc_t>
__device__ __forceinline__ GradSums<acc_t> merge(const GradSums<acc_t>& a,
                                                 const GradSums<acc_t>& b) {
  return {a.dy + b.dy, a.dy_xc + b.dy_xc};
}

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> shuffle_down(const Moments<acc_t>& m, int offset) {
  return {__shfl_down_sync(0xffffffffu, m.count, offset),
          __shfl_down_sync(0xffffffffu, m.mean, offset),
          __shfl_down_sync(0xffffffffu, m.var, offset)};
}

template <typename acc_t>
__device__ __forceinline__ GradSums<acc_t> shuffle_down(const GradSums<acc_t>& s, int offset) {
  return {__shfl_down_sync(0xffffffffu, s.dy, offset),
          __shfl_down_sync(0xffffffffu, s.dy_xc, offset)};
}

// Tree reduction over a warp (a fixed order); the result is valid in lane 0.
template <typename State>
__device__ __forceinline__ State warp_reduce(State s) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) s = merge(s, shuffle_down(s, offset));
  return s;
}

// Reduction over a one-dimensional block of whole warps; the result is valid in thread 0.
// `identity` is the empty state, `warps` shared memory for kThreads / kWarp states.
template <typename State>
__device__ State block_reduce(State s, const State& identity, State* warps) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  s = warp_reduce(s);
  if (lane == 0) warps[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < static_cast<int>(blockDim.x / kWarp) ? warps[lane] : identity;
    s = warp_reduce(s);
  }
  return s;
}

// Merges the kTileRows states of each of a channels_last block's columns (a thread's V
// channels) into thread row 0, in order.
template <int V, typename State>
__device__ void column_reduce(State (&s)[V], State (*tile)[kTileC * V]) {
  for (int j = 0; j < V; ++j) tile[threadIdx.y][threadIdx.x * V + j] = s[j];
  __syncthreads();
  if (threadIdx.y == 0) {
    for (int r = 1; r < kTileRows; ++r) {
      for (int j = 0; j < V; ++j) s[j] = merge(s[j], tile[r][threadIdx.x * V + j]);
    }
  }
}

// Channel tiles of a channels_last grid, kTileC threads of v channels each: its y dimension.
int64_t channel_tiles(const Activation& s, int v) { return ceil_div(s.c, int64_t(kTileC) * v); }

// How the H * W positions of a sample's (channels_last) or of an (n, c) row's (channels
// first) split into segments; count == 1 is no split (channels first: no partial results).
struct Segments {
  int64_t rows_per_segment, count;

  static Segments of(int64_t rows_per_segment, int64_t hw) {
    return {rows_per_segment, ceil_div(hw, rows_per_segment)};
  }

  // Positions in segment k.
  __host__ __device__ int64_t size(int64_t k, int64_t hw) const {
    return min64(rows_per_segment, hw - k * rows_per_segment);
  }
};

// As many segments as make a grid that fills the GPU once (multiprocessors x
// kResidentBlocks blocks), within the limits above; `pack` is the dtype's 16-byte pack,
// with which the channels_last grid has the fewest channel tiles.
Segments segments(const Activation& s, int pack) {
  const int64_t fill = int64_t(s.multiprocessors) * kResidentBlocks;
  if (s.channels_last) {
    const int64_t most = min64(kMaxSegments, ceil_div(s.hw, kMinSegmentRows));
    const int64_t wanted = ceil_div(fill, s.n * channel_tiles(s, pack));
    return Segments::of(ceil_div(s.hw, std::max<int64_t>(1, min64(wanted, most))), s.hw);
  }
  const int64_t wanted = min64(min64(ceil_div(fill, s.n * s.c), ceil_div(s.hw, kMinRowSegment)),
                               kMaxSegments);
  if (wanted <= 1) return {s.hw, 1};
  // Whole 16-byte packs of every dtype a segment (reduction_pack).
  return Segments::of(ceil_div(ceil_div(s.hw, wanted), kMaxPack) * kMaxPack, s.hw);
}

int dtype_pack(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return kVectorBytes / 2;
    case DType::kFloat32:
      return kVectorBytes / 4;
    case DType::kFloat64:
      break;
  }
  return kVectorBytes / 8;
}

// A channels-first block's width for segments of `values` values: whole warps, at most
// kThreads, no more than the segment has values for.
int rows_block_threads(int64_t values) {
  const int64_t warps = ceil_div(ceil_div(values, kUnroll), kWarp);
  return static_cast<int>(min64(kThreads, warps * kWarp));
}

// Values a reduction's thread loads at once: a 16-byte pack where every row (channels
// first: of H * W values, and every segment, whole kMaxPack values; channels_last: of C)
// starts on a pack boundary of 16-byte aligned tensors, else 1.
template <typename scalar_t>
int reduction_pack(const Activation& s, std::initializer_list<const void*> tensors) {
  constexpr int kPack = kVectorBytes / sizeof(scalar_t);
  for (const void* p : tensors) {
    if (!aligned(p, kVectorBytes)) return 1;
  }
  return (s.channels_last ? s.c : s.hw) % kPack == 0 ? kPack : 1;
}

// No (n, c) pairs: nothing to launch (a grid may not be empty).
bool empty(const Activation& s) { return s.n == 0 || s.c == 0; }

// Whether a grid of x by y blocks is within CUDA's limits; a launcher returns
// cudaErrorInvalidConfiguration for one that is not, before it launches anything.
bool grid_fits(int64_t x, int64_t y) { return x <= kMaxGridX && y <= kMaxGridY; }

// ------------------------------------------------------------------------------------------
// Reductions' outputs and the merge of their segments

// A reduction's two (N, C) results (mean and var, or Σ dy and Σ dy (x - c)); `partial`, the
// segments' partial results; `arrivals`, the counters of the rows' or channel tiles' blocks
// (arrival.cuh).
template <typename acc_t>
struct ReductionOutput {
  acc_t *first, *second, *partial;
  unsigned* arrivals;
};

// A state's two stored values, and the state back from them (the tag's type) and its
// segment's number of values.
template <typename acc_t>
__device__ __forceinline__ void unpack(const Moments<acc_t>& m, acc_t& a, acc_t& b) {
  a = m.mean;
  b = m.var;
}
template <typename acc_t>
__device__ __forceinline__ void unpack(const GradSums<acc_t>& s, acc_t& a, acc_t& b) {
  a = s.dy;
  b = s.dy_xc;
}
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> repack(const Moments<acc_t>&, int64_t values, acc_t a,
                                                 acc_t b) {
  return {values, a, b};
}
template <typename acc_t>
__device__ __forceinline__ GradSums<acc_t> repack(const GradSums<acc_t>&, int64_t, acc_t a,
                                                  acc_t b) {
  return {a, b};
}

// Channels first, after block_reduce (s valid in thread 0): an unsplit row's block writes
// its results; a split row's block leaves its segment's in the row's partials
// ((N * C, segments, 2)), and the row's last block merges them, a thread per segment then
// the block's tree.
template <typename State, typename acc_t>
__device__ void finish_row(const State& s, const State& identity, State* warps, int64_t row,
                           int64_t hw, const Segments& seg, const ReductionOutput<acc_t>& out) {
  if (seg.count == 1) {
    if (threadIdx.x == 0) unpack(s, out.first[row], out.second[row]);
    return;
  }
  acc_t* partial = out.partial + row * seg.count * 2;
  if (threadIdx.x == 0) unpack(s, partial[2 * blockIdx.y], partial[2 * blockIdx.y + 1]);
  if (!last_to_arrive(out.arrivals + row, static_cast<unsigned>(seg.count))) return;
  State total = identity;
  for (int64_t k = threadIdx.x; k < seg.count; k += blockDim.x) {
    total = merge(total, repack(identity, seg.size(k, hw), partial[2 * k], partial[2 * k + 1]));
  }
  total = block_reduce(total, identity, warps);
  if (threadIdx.x == 0) unpack(total, out.first[row], out.second[row]);
}

// channels_last, after column_reduce (s valid in thread row 0): the block leaves its
// segment's results for its V channels a thread in the sample's partials ((N, segments,
// 2, C)); the channel tile's last block merges them, segments k, k + kTileRows, ... a
// thread row, then the rows in order.
template <int V, typename State, typename acc_t>
__device__ void finish_segment(const State (&s)[V], const State& identity,
                               State (*tile)[kTileC * V], int64_t n, int64_t segment,
                               int64_t ch, int64_t c, int64_t hw, const Segments& seg,
                               const ReductionOutput<acc_t>& out) {
  acc_t* partial = out.partial + n * seg.count * 2 * c;
  if (threadIdx.y == 0 && ch < c) {
    for (int j = 0; j < V; ++j) {
      unpack(s[j], partial[segment * 2 * c + ch + j], partial[segment * 2 * c + c + ch + j]);
    }
  }
  if (!last_to_arrive(out.arrivals + n * gridDim.y + blockIdx.y,
                      static_cast<unsigned>(seg.count))) {
    return;
  }
  State total[V];
  for (int j = 0; j < V; ++j) total[j] = identity;
  if (ch < c) {
    for (int64_t k = threadIdx.y; k < seg.count; k += kTileRows) {
      const acc_t* pair = partial + k * 2 * c + ch;
      for (int j = 0; j < V; ++j) {
        total[j] = merge(total[j], repack(identity, seg.size(k, hw), pair[j], pair[c + j]));
      }
    }
  }
  column_reduce(total, tile);
  if (threadIdx.y == 0 && ch < c) {
    for (int j = 0; j < V; ++j) unpack(total[j], out.first[n * c + ch + j], out.second[n * c + ch + j]);
  }
}

// ------------------------------------------------------------------------------------------
// channel_moments

// m merged with the moments of the `count` values of `values`, kGroup at a time in order.
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> merge_groups(Moments<acc_t> m, const acc_t* values,
                                                       int count) {
#pragma unroll
  for (int g = 0; g < count; g += kGroup) {
    const int k = count - g < kGroup ? count - g : kGroup;
    acc_t v[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) v[j] = j < k ? values[g + j] : acc_t(0);
    m = merge(m, group_moments(v, k));
  }
  return m;
}

// Grid (N * C rows, segments of each row); a thread takes packs of V values (16 bytes where
// the row allows, reduction_pack), kUnroll of them in flight.
template <int V, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    moments_rows_kernel(const scalar_t* __restrict__ x, int64_t hw, int64_t c, Segments seg,
                        ReductionOutput<acc_type<scalar_t>> out) {
  using acc_t = acc_type<scalar_t>;
  __shared__ Moments<acc_t> warps[kThreads / kWarp];
  const int64_t row = blockIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * seg.rows_per_segment;
  const int64_t end = min64(hw, begin + seg.rows_per_segment);
  const scalar_t* x_row = x + row * hw;
  const int64_t step = int64_t(blockDim.x) * V;
  Moments<acc_t> m{0, acc_t(0), acc_t(0)};
  int64_t i = begin + int64_t(threadIdx.x) * V;
  for (; i + (kUnroll - 1) * step < end; i += kUnroll * step) {
    Pack<scalar_t, V> p[kUnroll];
    for (int u = 0; u < kUnroll; ++u) p[u] = load<V>(x_row + i + u * step);
    acc_t v[kUnroll * V];
    for (int u = 0; u < kUnroll; ++u) {
      for (int j = 0; j < V; ++j) v[u * V + j] = to_acc(p[u].v[j]);
    }
    m = merge_groups(m, v, kUnroll * V);
  }
  for (; i < end; i += step) {
    const Pack<scalar_t, V> p = load<V>(x_row + i);
    acc_t v[V];
    for (int j = 0; j < V; ++j) v[j] = to_acc(p.v[j]);
    m = merge_groups(m, v, V);
  }
  const Moments<acc_t> identity{0, acc_t(0), acc_t(0)};
  finish_row(block_reduce(m, identity, warps), identity, warps, row, hw, seg, out);
}

// Grid (N * segments, channel tiles of kTileC * V channels); a thread takes V consecutive
// channels (a 16-byte pack where C allows) of kUnroll rows at a time; writes per
// (n, segment) C means then C variances.
template <int V, typename scalar_t>
__global__ void __launch_bounds__(kTileC * kTileRows)
    moments_segments_kernel(const scalar_t* __restrict__ x, int64_t hw, int64_t c,
                            Segments seg, ReductionOutput<acc_type<scalar_t>> out) {
  using acc_t = acc_type<scalar_t>;
  static_assert(kGroup == kUnroll, "a group is a thread's kUnroll rows of one channel");
  __shared__ Moments<acc_t> tile[kTileRows][kTileC * V];
  const int64_t task = blockIdx.x;  // n * seg.count + segment
  const int64_t n = task / seg.count, segment = task % seg.count;
  const int64_t ch = (int64_t(blockIdx.y) * kTileC + threadIdx.x) * V;
  const int64_t row0 = segment * seg.rows_per_segment;
  const int64_t row1 = min64(hw, row0 + seg.rows_per_segment);
  Moments<acc_t> m[V];
  for (int j = 0; j < V; ++j) m[j] = {0, acc_t(0), acc_t(0)};
  if (ch < c) {  // C is a multiple of V
    const scalar_t* column = x + n * hw * c + ch;
    int64_t r = row0 + threadIdx.y;
    for (; r + (kUnroll - 1) * kTileRows < row1; r += kUnroll * kTileRows) {
      Pack<scalar_t, V> p[kUnroll];
      for (int u = 0; u < kUnroll; ++u) p[u] = load<V>(column + (r + u * kTileRows) * c);
      for (int j = 0; j < V; ++j) {
        acc_t v[kGroup];
        for (int u = 0; u < kUnroll; ++u) v[u] = to_acc(p[u].v[j]);
        m[j] = merge(m[j], group_moments(v, kUnroll));
      }
    }
    for (; r < row1; r += kTileRows) {
      const Pack<scalar_t, V> p = load<V>(column + r * c);
      for (int j = 0; j < V; ++j) {
        const acc_t v[kGroup] = {to_acc(p.v[j])};
        m[j] = merge(m[j], group_moments(v, 1));
      }
    }
  }
  column_reduce(m, tile);
  finish_segment(m, Moments<acc_t>{0, acc_t(0), acc_t(0)}, tile, n, segment, ch, c, hw, seg,
                 out);
}

// ------------------------------------------------------------------------------------------
// channel_affine_grad_sums

// Grid (N * C rows, segments of each row); packs of V values as in the moments.
template <int V, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_sums_rows_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                          int64_t hw, int64_t c, Segments seg,
                          const acc_type<scalar_t>* __restrict__ center,
                          ReductionOutput<acc_type<scalar_t>> out) {
  using acc_t = acc_type<scalar_t>;
  __shared__ GradSums<acc_t> warps[kThreads / kWarp];
  const int64_t row = blockIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * seg.rows_per_segment;
  const int64_t end = min64(hw, begin + seg.rows_per_segment);
  const scalar_t* dy_row = dy + row * hw;
  const scalar_t* x_row = x + row * hw;
  const acc_t ctr = center[row];
  const int64_t step = int64_t(blockDim.x) * V;
  GradSums<acc_t> s{acc_t(0), acc_t(0)};
  int64_t i = begin + int64_t(threadIdx.x) * V;
  // kUnroll pack pairs in flight, as in the moments.
  for (; i + (kUnroll - 1) * step < end; i += kUnroll * step) {
    Pack<scalar_t, V> g[kUnroll], v[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      g[u] = load<V>(dy_row + i + u * step);
      v[u] = load<V>(x_row + i + u * step);
    }
    for (int u = 0; u < kUnroll; ++u) {
      for (int j = 0; j < V; ++j) {
        const acc_t gj = to_acc(g[u].v[j]);
        s.dy += gj;
        s.dy_xc += gj * (to_acc(v[u].v[j]) - ctr);
      }
    }
  }
  for (; i < end; i += step) {
    const Pack<scalar_t, V> g = load<V>(dy_row + i), v = load<V>(x_row + i);
    for (int j = 0; j < V; ++j) {
      const acc_t gj = to_acc(g.v[j]);
      s.dy += gj;
      s.dy_xc += gj * (to_acc(v.v[j]) - ctr);
    }
  }
  const GradSums<acc_t> identity{acc_t(0), acc_t(0)};
  finish_row(block_reduce(s, identity, warps), identity, warps, row, hw, seg, out);
}

// Grid (N * segments, channel tiles of kTileC * V channels), V channels a thread as in the
// moments; writes per (n, segment) C sums of dy, then C of dy (x - center).
template <int V, typename scalar_t>
__global__ void __launch_bounds__(kTileC * kTileRows)
    grad_sums_segments_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                              int64_t hw, int64_t c, Segments seg,
                              const acc_type<scalar_t>* __restrict__ center,
                              ReductionOutput<acc_type<scalar_t>> out) {
  using acc_t = acc_type<scalar_t>;
  __shared__ GradSums<acc_t> tile[kTileRows][kTileC * V];
  const int64_t task = blockIdx.x;
  const int64_t n = task / seg.count, segment = task % seg.count;
  const int64_t ch = (int64_t(blockIdx.y) * kTileC + threadIdx.x) * V;
  const int64_t row0 = segment * seg.rows_per_segment;
  const int64_t row1 = min64(hw, row0 + seg.rows_per_segment);
  GradSums<acc_t> s[V];
  for (int j = 0; j < V; ++j) s[j] = {acc_t(0), acc_t(0)};
  if (ch < c) {  // C is a multiple of V
    acc_t ctr[V];
    for (int j = 0; j < V; ++j) ctr[j] = center[n * c + ch + j];
    const int64_t base = n * hw * c + ch;
    int64_t r = row0 + threadIdx.y;
    for (; r + (kUnroll - 1) * kTileRows < row1; r += kUnroll * kTileRows) {
      Pack<scalar_t, V> g[kUnroll], v[kUnroll];
      for (int u = 0; u < kUnroll; ++u) {
        g[u] = load<V>(dy + base + (r + u * kTileRows) * c);
        v[u] = load<V>(x + base + (r + u * kTileRows) * c);
      }
      for (int u = 0; u < kUnroll; ++u) {
        for (int j = 0; j < V; ++j) {
          const acc_t gj = to_acc(g[u].v[j]);
          s[j].dy += gj;
          s[j].dy_xc += gj * (to_acc(v[u].v[j]) - ctr[j]);
        }
      }
    }
    for (; r < row1; r += kTileRows) {
      const Pack<scalar_t, V> g = load<V>(dy + base + r * c), v = load<V>(x + base + r * c);
      for (int j = 0; j < V; ++j) {
        const acc_t gj = to_acc(g.v[j]);
        s[j].dy += gj;
        s[j].dy_xc += gj * (to_acc(v.v[j]) - ctr[j]);
      }
    }
  }
  column_reduce(s, tile);
  finish_segment(s, GradSums<acc_t>{acc_t(0), acc_t(0)}, tile, n, segment, ch, c, hw, seg, out);
}

// ------------------------------------------------------------------------------------------
// channel_affine and channel_norm_input_grad: elementwise passes


// An elementwise op: coef(nc) reads the coefficients of row nc once; load<V>(i) reads the
// Inputs<V> of the V values from i on, and apply<V>(i, inputs, k) computes and stores them,
// value u with the coefficients k(u); aligned_to(bytes) tells whether every pointer it
// reads or writes is. Loading apart from applying lets a thread have all its loads in
// flight before its first store.

// The coefficients of a pack's V values: one row's for all (channels first), or each
// value's channel's (channels_last).
template <typename Coef>
struct SameCoef {
  Coef k;
  __device__ const Coef& operator()(int) const { return k; }
};

template <typename Coef, int V>
struct EachCoef {
  Coef k[V];
  __device__ const Coef& operator()(int u) const { return k[u]; }
};

// y = scale * (x - center) + shift.
template <typename scalar_t>
struct AffineOp {
  using acc_t = acc_type<scalar_t>;
  struct Coef {
    acc_t center, scale, shift;
  };
  const scalar_t* __restrict__ x;
  const acc_t *center, *scale, *shift;
  scalar_t* __restrict__ y;

  template <int V>
  struct Inputs {
    Pack<scalar_t, V> x;
  };

  __device__ Coef coef(int64_t nc) const { return {center[nc], scale[nc], shift[nc]}; }
  template <int V>
  __device__ Inputs<V> load(int64_t i) const {
    return {en_seg::cuda::load<V>(x + i)};
  }
  template <int V, typename Coefs>
  __device__ void apply(int64_t i, const Inputs<V>& in, const Coefs& k) const {
    Pack<scalar_t, V> out;
    for (int u = 0; u < V; ++u) {
      const Coef& c = k(u);
      out.v[u] = from_acc<scalar_t>(c.scale * (to_acc(in.x.v[u]) - c.center) + c.shift);
    }
    store<V>(y + i, out);
  }
  bool aligned_to(int bytes) const { return aligned(x, bytes) && aligned(y, bytes); }
};

// dx = dy_scale * dy + x_scale * (x - center) + shift.
template <typename scalar_t>
struct InputGradOp {
  using acc_t = acc_type<scalar_t>;
  struct Coef {
    acc_t center, dy_scale, x_scale, shift;
  };
  const scalar_t* __restrict__ dy;
  const scalar_t* __restrict__ x;
  const acc_t *center, *dy_scale, *x_scale, *shift;
  scalar_t* __restrict__ dx;

  template <int V>
  struct Inputs {
    Pack<scalar_t, V> dy, x;
  };

  __device__ Coef coef(int64_t nc) const {
    return {center[nc], dy_scale[nc], x_scale[nc], shift[nc]};
  }
  template <int V>
  __device__ Inputs<V> load(int64_t i) const {
    return {en_seg::cuda::load<V>(dy + i), en_seg::cuda::load<V>(x + i)};
  }
  template <int V, typename Coefs>
  __device__ void apply(int64_t i, const Inputs<V>& in, const Coefs& k) const {
    Pack<scalar_t, V> out;
    for (int u = 0; u < V; ++u) {
      const Coef& c = k(u);
      out.v[u] = from_acc<scalar_t>(c.dy_scale * to_acc(in.dy.v[u]) +
                                    c.x_scale * (to_acc(in.x.v[u]) - c.center) + c.shift);
    }
    store<V>(dx + i, out);
  }
  bool aligned_to(int bytes) const {
    return aligned(dy, bytes) && aligned(x, bytes) && aligned(dx, bytes);
  }
};

// channel_norm_input_grad: InputGradOp's pass with coefficients formed per row,
// dy_scale = scale, x_scale = 2 grad_var / M, shift = (grad_mean - scale * sum_dy) / M.
template <typename scalar_t>
struct NormInputGradOp {
  using acc_t = acc_type<scalar_t>;
  using Coef = typename InputGradOp<scalar_t>::Coef;
  template <int V>
  using Inputs = typename InputGradOp<scalar_t>::template Inputs<V>;
  InputGradOp<scalar_t> pass;  // its coefficient pointers unused
  const acc_t *mean, *scale, *sum_dy, *grad_mean, *grad_var;
  acc_t inv_m;

  __device__ Coef coef(int64_t nc) const {
    return {mean[nc], scale[nc], acc_t(2) * grad_var[nc] * inv_m,
            (grad_mean[nc] - scale[nc] * sum_dy[nc]) * inv_m};
  }
  template <int V>
  __device__ Inputs<V> load(int64_t i) const {
    return pass.template load<V>(i);
  }
  template <int V, typename Coefs>
  __device__ void apply(int64_t i, const Inputs<V>& in, const Coefs& k) const {
    pass.template apply<V>(i, in, k);
  }
  bool aligned_to(int bytes) const { return pass.aligned_to(bytes); }
};

// Grid (N * C rows, chunks of kThreads * kUnroll packs of V values of a row,
// grid-strided); V > 1 needs hw divisible by V.
template <int V, typename Op>
__global__ void __launch_bounds__(kThreads) elementwise_rows_kernel(Op op, int64_t hw) {
  // Blocks take the grid in reverse, as the elementwise kernels all do: GPUs start blocks
  // in index order, so the first blocks of a pass that follows a reduction of the same
  // activation (apply after the moments, dx after the grad sums) read what it read last,
  // still in L2 (50 MB on an H100) where the activation is not much larger.
  const int64_t row = gridDim.x - 1 - blockIdx.x;
  const SameCoef<typename Op::Coef> k{op.coef(row)};
  constexpr int64_t kChunk = int64_t(kThreads) * kUnroll * V;
  for (int64_t chunk = gridDim.y - 1 - blockIdx.y; chunk * kChunk < hw; chunk += gridDim.y) {
    const int64_t j0 = chunk * kChunk + threadIdx.x * V;
    typename Op::template Inputs<V> in[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + u * kThreads * V;
      if (j < hw) in[u] = op.template load<V>(row * hw + j);
    }
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + u * kThreads * V;
      if (j < hw) op.template apply<V>(row * hw + j, in[u], k);
    }
  }
}

// Grid (N * row chunks, channel tiles of kTileC * V channels): a thread keeps V consecutive
// channels of one sample (a 16-byte pack where C allows) and their coefficients, and has
// kUnroll rows' loads in flight before it stores.
template <int V, typename Op>
__global__ void __launch_bounds__(kTileC * kTileRows)
    elementwise_channels_last_kernel(Op op, int64_t hw, int64_t c, int64_t chunks,
                                     int64_t rows_per_chunk) {
  const int64_t task = gridDim.x - 1 - blockIdx.x;  // in reverse, as elementwise_rows_kernel
  const int64_t n = task / chunks, chunk = task % chunks;
  const int64_t ch = (int64_t(gridDim.y - 1 - blockIdx.y) * kTileC + threadIdx.x) * V;
  if (ch >= c) return;  // C is a multiple of V
  EachCoef<typename Op::Coef, V> k;
  for (int u = 0; u < V; ++u) k.k[u] = op.coef(n * c + ch + u);
  const int64_t row0 = chunk * rows_per_chunk;
  const int64_t row1 = min64(hw, row0 + rows_per_chunk);
  for (int64_t r0 = row0 + threadIdx.y; r0 < row1; r0 += kUnroll * kTileRows) {
    typename Op::template Inputs<V> in[kUnroll];
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = r0 + u * kTileRows;
      if (r < row1) in[u] = op.template load<V>((n * hw + r) * c + ch);
    }
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = r0 + u * kTileRows;
      if (r < row1) op.template apply<V>((n * hw + r) * c + ch, in[u], k);
    }
  }
}

template <typename scalar_t, typename Op>
cudaError_t launch_elementwise(const Op& op, const Activation& s, cudaStream_t stream) {
  // 16-byte packs where every row (channels first: of H * W values; channels_last: of C)
  // starts on a pack boundary of aligned tensors.
  constexpr int kPack = kVectorBytes / sizeof(scalar_t);
  const bool aligned_tensors = op.aligned_to(kVectorBytes);
  if (s.channels_last) {
    const bool packed = s.c % kPack == 0 && aligned_tensors;
    const int64_t rows_per_chunk = int64_t(kTileRows) * kUnroll * 4;
    const int64_t chunks = ceil_div(s.hw, rows_per_chunk);
    const int64_t tiles = channel_tiles(s, packed ? kPack : 1);
    if (!grid_fits(s.n * chunks, tiles)) return cudaErrorInvalidConfiguration;
    const dim3 grid(static_cast<unsigned>(s.n * chunks), static_cast<unsigned>(tiles));
    if (packed) {
      elementwise_channels_last_kernel<kPack><<<grid, dim3(kTileC, kTileRows), 0, stream>>>(
          op, s.hw, s.c, chunks, rows_per_chunk);
    } else {
      elementwise_channels_last_kernel<1><<<grid, dim3(kTileC, kTileRows), 0, stream>>>(
          op, s.hw, s.c, chunks, rows_per_chunk);
    }
    return cudaGetLastError();
  }
  if (!grid_fits(s.n * s.c, 1)) return cudaErrorInvalidConfiguration;
  const bool packed = s.hw % kPack == 0 && aligned_tensors;
  const int64_t values_per_chunk = int64_t(kThreads) * kUnroll * (packed ? kPack : 1);
  const dim3 grid(static_cast<unsigned>(s.n * s.c),
                  static_cast<unsigned>(min64(kMaxGridY, ceil_div(s.hw, values_per_chunk))));
  if (packed) {
    elementwise_rows_kernel<kPack><<<grid, kThreads, 0, stream>>>(op, s.hw);
  } else {
    elementwise_rows_kernel<1><<<grid, kThreads, 0, stream>>>(op, s.hw);
  }
  return cudaGetLastError();
}

// A reduction's launch: the rows kernel (channels first; a block per row or segment of a
// row) or the segments kernel (channels_last; a block per sample segment and channel tile),
// each given its pack as std::integral_constant<int, V>, its grid and block, the split
// and where to write.
template <typename scalar_t, typename RowsLaunch, typename SegmentsLaunch>
cudaError_t launch_reduction(const Activation& s, std::initializer_list<const void*> inputs,
                             void* first, void* second, void* workspace, unsigned* arrivals,
                             const RowsLaunch& rows, const SegmentsLaunch& tiles) {
  using acc_t = acc_type<scalar_t>;
  constexpr int kPack = kVectorBytes / sizeof(scalar_t);
  using Packed = std::integral_constant<int, kPack>;
  using Single = std::integral_constant<int, 1>;
  const Segments seg = segments(s, kPack);
  const ReductionOutput<acc_t> out{static_cast<acc_t*>(first), static_cast<acc_t*>(second),
                                   static_cast<acc_t*>(workspace), arrivals};
  const bool packed = reduction_pack<scalar_t>(s, inputs) == kPack;
  if (s.channels_last) {
    const int64_t channel_blocks = channel_tiles(s, packed ? kPack : 1);
    if (!grid_fits(s.n * seg.count, channel_blocks)) return cudaErrorInvalidConfiguration;
    const dim3 grid(static_cast<unsigned>(s.n * seg.count),
                    static_cast<unsigned>(channel_blocks));
    const dim3 block(kTileC, kTileRows);
    if (packed) {
      tiles(Packed{}, grid, block, seg, out);
    } else {
      tiles(Single{}, grid, block, seg, out);
    }
  } else {
    if (!grid_fits(s.n * s.c, seg.count)) return cudaErrorInvalidConfiguration;
    const dim3 grid(static_cast<unsigned>(s.n * s.c), static_cast<unsigned>(seg.count));
    if (packed) {
      rows(Packed{}, grid, dim3(rows_block_threads(seg.rows_per_segment / kPack)), seg, out);
    } else {
      rows(Single{}, grid, dim3(rows_block_threads(seg.rows_per_segment)), seg, out);
    }
  }
  return cudaGetLastError();
}

// Calls f(scalar_t{}) with the element type of dtype.
template <typename F>
cudaError_t dispatch(DType dtype, const F& f) {
  switch (dtype) {
    case DType::kFloat16:
      return f(__half{});
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat64:
      return f(double{});
  }
  return cudaErrorInvalidValue;
}


}  // namespace

ReductionScratch reduction_scratch(const Activation& x, DType dtype) {
  const Segments seg = segments(x, dtype_pack(dtype));
  const int64_t acc_bytes = dtype == DType::kFloat64 ? 8 : 4;
  if (x.channels_last) return {x.n * seg.count * 2 * x.c * acc_bytes, x.n * channel_tiles(x, 1)};
  if (seg.count == 1) return {0, 0};
  return {x.n * x.c * seg.count * 2 * acc_bytes, x.n * x.c};
}

cudaError_t launch_channel_moments(const void* x, DType dtype, const Activation& s, void* mean,
                                   void* var, void* workspace, unsigned* arrivals,
                                   cudaStream_t stream) {
  if (empty(s)) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* data = static_cast<const scalar_t*>(x);
    return launch_reduction<scalar_t>(
        s, {data}, mean, var, workspace, arrivals,
        [&](auto pack, const dim3& grid, const dim3& block, const Segments& seg,
            const auto& out) {
          constexpr int V = decltype(pack)::value;
          moments_rows_kernel<V><<<grid, block, 0, stream>>>(data, s.hw, s.c, seg, out);
        },
        [&](auto pack, const dim3& grid, const dim3& block, const Segments& seg,
            const auto& out) {
          constexpr int V = decltype(pack)::value;
          moments_segments_kernel<V><<<grid, block, 0, stream>>>(data, s.hw, s.c, seg, out);
        });
  });
}

cudaError_t launch_channel_affine(const void* x, DType dtype, const Activation& s,
                                  const void* center, const void* scale, const void* shift,
                                  void* y, cudaStream_t stream) {
  if (empty(s)) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const AffineOp<scalar_t> op{static_cast<const scalar_t*>(x),
                                static_cast<const acc_t*>(center),
                                static_cast<const acc_t*>(scale),
                                static_cast<const acc_t*>(shift), static_cast<scalar_t*>(y)};
    return launch_elementwise<scalar_t>(op, s, stream);
  });
}

cudaError_t launch_channel_affine_grad_sums(const void* grad_y, const void* x, DType dtype,
                                            const Activation& s, const void* center,
                                            void* sum_dy, void* sum_dy_xc, void* workspace,
                                            unsigned* arrivals, cudaStream_t stream) {
  if (empty(s)) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* dy = static_cast<const scalar_t*>(grad_y);
    const auto* data = static_cast<const scalar_t*>(x);
    const auto* ctr = static_cast<const acc_type<scalar_t>*>(center);
    return launch_reduction<scalar_t>(
        s, {dy, data}, sum_dy, sum_dy_xc, workspace, arrivals,
        [&](auto pack, const dim3& grid, const dim3& block, const Segments& seg,
            const auto& out) {
          constexpr int V = decltype(pack)::value;
          grad_sums_rows_kernel<V><<<grid, block, 0, stream>>>(dy, data, s.hw, s.c, seg, ctr,
                                                               out);
        },
        [&](auto pack, const dim3& grid, const dim3& block, const Segments& seg,
            const auto& out) {
          constexpr int V = decltype(pack)::value;
          grad_sums_segments_kernel<V><<<grid, block, 0, stream>>>(dy, data, s.hw, s.c, seg,
                                                                   ctr, out);
        });
  });
}

cudaError_t launch_channel_norm_input_grad(const void* grad_y, const void* x, DType dtype,
                                           const Activation& s, const void* mean,
                                           const void* scale, const void* sum_dy,
                                           const void* grad_mean, const void* grad_var,
                                           void* grad_x, cudaStream_t stream) {
  if (empty(s)) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const InputGradOp<scalar_t> pass{static_cast<const scalar_t*>(grad_y),
                                     static_cast<const scalar_t*>(x),
                                     nullptr, nullptr, nullptr, nullptr,
                                     static_cast<scalar_t*>(grad_x)};
    const NormInputGradOp<scalar_t> op{
        pass, static_cast<const acc_t*>(mean), static_cast<const acc_t*>(scale),
        static_cast<const acc_t*>(sum_dy), static_cast<const acc_t*>(grad_mean),
        static_cast<const acc_t*>(grad_var), acc_t(1) / acc_t(s.hw)};
    return launch_elementwise<scalar_t>(op, s, stream);
  });
}

}  // namespace cuda
}  // namespace en_seg
