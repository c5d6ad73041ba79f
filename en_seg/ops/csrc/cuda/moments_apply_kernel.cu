// CUDA kernels of the fused statistics / apply ops (schemas and math in
// ../moments_apply.cpp, launchers declared in moments_apply_kernel.h).
//
// Accumulation in float32 (float64 for float64 data). Every result is reduced in an order
// fixed by the shape (per-thread loops, then shuffle and shared-memory trees, then segments in
// turn), with no atomics, so results are bit-identical from run to run.
//
// Channels first, every (n, c) plane is a contiguous row of H * W values: a reduction gives
// one block to a row; an elementwise pass gives a block a chunk of one row, so the row's
// coefficients are read once. channels_last, every sample is an (H * W) x C matrix: a block
// is 32 consecutive channels (one coalesced 128-byte line per row for float32) by 8 rows,
// so a thread keeps one channel and its coefficients; reductions split the rows of a sample
// into segments whose partial results a second kernel merges in order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "moments_apply_kernel.h"

namespace en_seg {
namespace cuda {
namespace {

constexpr int kWarp = 32;
// Threads of a channels-first block.
constexpr int kThreads = 256;
// Values a thread loads per loop step (memory-level parallelism; one division per step in
// the moments).
constexpr int kUnroll = 4;
// channels_last block: kTileC channels by kTileRows rows.
constexpr int kTileC = 32;
constexpr int kTileRows = 8;
// channels_last reductions: segments per sample, at most kMaxSegments of at least
// kMinSegmentRows rows, enough blocks to fill the GPU for EN's usual shapes.
constexpr int64_t kMaxSegments = 64;
constexpr int64_t kMinSegmentRows = 128;
// Largest grid y dimension.
constexpr int64_t kMaxGridY = 65535;

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
// Reduction state and its merges

// count values' mean and sum of squared deviations m2.
template <typename acc_t>
struct Moments {
  int64_t count;
  acc_t mean, m2;
};

// Chan, Golub & LeVeque's pairwise merge: exact for any split, free of the cancellation of
// E[x²] - E[x]².
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> merge(const Moments<acc_t>& a,
                                                const Moments<acc_t>& b) {
  if (b.count == 0) return a;
  const int64_t count = a.count + b.count;
  const acc_t delta = b.mean - a.mean;
  const acc_t weight_b = acc_t(b.count) / acc_t(count);
  return {count, a.mean + delta * weight_b,
          a.m2 + b.m2 + delta * delta * acc_t(a.count) * weight_b};
}

// Moments of the first k values of v, by two passes in registers.
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> group_moments(const acc_t (&v)[kUnroll], int k) {
  acc_t sum = 0;
  for (int i = 0; i < k; ++i) sum += v[i];
  const acc_t mean = sum / acc_t(k);
  acc_t m2 = 0;
  for (int i = 0; i < k; ++i) m2 += (v[i] - mean) * (v[i] - mean);
  return {k, mean, m2};
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
          __shfl_down_sync(0xffffffffu, m.m2, offset)};
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

// Merges the kTileRows states of a channels_last block's column into thread row 0, in order.
template <typename State>
__device__ State column_reduce(State s, State (*tile)[kTileC]) {
  tile[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0) {
    for (int r = 1; r < kTileRows; ++r) s = merge(s, tile[r][threadIdx.x]);
  }
  return s;
}

// How the rows of a channels_last sample split into segments.
struct Segments {
  int64_t rows_per_segment, count;

  explicit Segments(int64_t hw) {
    rows_per_segment = std::max(kMinSegmentRows, ceil_div(hw, kMaxSegments));
    count = ceil_div(hw, rows_per_segment);
  }
};

// A channels-first block's width for rows of hw values: whole warps, at most kThreads, no
// more than the row has values for.
int rows_block_threads(int64_t hw) {
  const int64_t warps = ceil_div(ceil_div(hw, kUnroll), kWarp);
  return static_cast<int>(min64(kThreads, warps * kWarp));
}

// ------------------------------------------------------------------------------------------
// channel_moments

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    moments_rows_kernel(const scalar_t* __restrict__ x, int64_t hw,
                        acc_type<scalar_t>* __restrict__ mean,
                        acc_type<scalar_t>* __restrict__ var) {
  using acc_t = acc_type<scalar_t>;
  __shared__ Moments<acc_t> warps[kThreads / kWarp];
  const int64_t row = blockIdx.x;
  const scalar_t* x_row = x + row * hw;
  const int64_t step = blockDim.x;
  Moments<acc_t> m{0, acc_t(0), acc_t(0)};
  int64_t i = threadIdx.x;
  for (; i + (kUnroll - 1) * step < hw; i += kUnroll * step) {
    acc_t v[kUnroll];
    for (int u = 0; u < kUnroll; ++u) v[u] = to_acc(x_row[i + u * step]);
    m = merge(m, group_moments(v, kUnroll));
  }
  for (; i < hw; i += step) {
    const acc_t v[kUnroll] = {to_acc(x_row[i])};
    m = merge(m, group_moments(v, 1));
  }
  m = block_reduce(m, Moments<acc_t>{0, acc_t(0), acc_t(0)}, warps);
  if (threadIdx.x == 0) {
    mean[row] = m.mean;
    var[row] = m.m2 / acc_t(hw);
  }
}

// Grid (N * segments, channel tiles); writes per (n, segment) C means then C m2s.
template <typename scalar_t>
__global__ void __launch_bounds__(kTileC * kTileRows)
    moments_segments_kernel(const scalar_t* __restrict__ x, int64_t hw, int64_t c,
                            Segments seg, acc_type<scalar_t>* __restrict__ partial) {
  using acc_t = acc_type<scalar_t>;
  __shared__ Moments<acc_t> tile[kTileRows][kTileC];
  const int64_t task = blockIdx.x;  // n * seg.count + segment
  const int64_t n = task / seg.count, segment = task % seg.count;
  const int64_t ch = int64_t(blockIdx.y) * kTileC + threadIdx.x;
  const int64_t row0 = segment * seg.rows_per_segment;
  const int64_t row1 = min64(hw, row0 + seg.rows_per_segment);
  Moments<acc_t> m{0, acc_t(0), acc_t(0)};
  if (ch < c) {
    const scalar_t* column = x + n * hw * c + ch;
    int64_t r = row0 + threadIdx.y;
    for (; r + (kUnroll - 1) * kTileRows < row1; r += kUnroll * kTileRows) {
      acc_t v[kUnroll];
      for (int u = 0; u < kUnroll; ++u) v[u] = to_acc(column[(r + u * kTileRows) * c]);
      m = merge(m, group_moments(v, kUnroll));
    }
    for (; r < row1; r += kTileRows) {
      const acc_t v[kUnroll] = {to_acc(column[r * c])};
      m = merge(m, group_moments(v, 1));
    }
  }
  m = column_reduce(m, tile);
  if (threadIdx.y == 0 && ch < c) {
    acc_t* out = partial + task * 2 * c;
    out[ch] = m.mean;
    out[c + ch] = m.m2;
  }
}

template <typename acc_t>
__global__ void merge_moment_segments_kernel(const acc_t* __restrict__ partial, int64_t nc,
                                             int64_t c, int64_t hw, Segments seg,
                                             acc_t* __restrict__ mean,
                                             acc_t* __restrict__ var) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nc) return;
  const int64_t n = i / c, ch = i % c;
  Moments<acc_t> m{0, acc_t(0), acc_t(0)};
  for (int64_t s = 0; s < seg.count; ++s) {
    const acc_t* part = partial + (n * seg.count + s) * 2 * c;
    const int64_t rows = min64(seg.rows_per_segment, hw - s * seg.rows_per_segment);
    m = merge(m, Moments<acc_t>{rows, part[ch], part[c + ch]});
  }
  mean[i] = m.mean;
  var[i] = m.m2 / acc_t(hw);
}

// ------------------------------------------------------------------------------------------
// channel_affine_grad_sums

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_sums_rows_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                          int64_t hw, const acc_type<scalar_t>* __restrict__ center,
                          acc_type<scalar_t>* __restrict__ sum_dy,
                          acc_type<scalar_t>* __restrict__ sum_dy_xc) {
  using acc_t = acc_type<scalar_t>;
  __shared__ GradSums<acc_t> warps[kThreads / kWarp];
  const int64_t row = blockIdx.x;
  const acc_t ctr = center[row];
  GradSums<acc_t> s{acc_t(0), acc_t(0)};
  for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
    const acc_t g = to_acc(dy[row * hw + i]);
    s.dy += g;
    s.dy_xc += g * (to_acc(x[row * hw + i]) - ctr);
  }
  s = block_reduce(s, GradSums<acc_t>{acc_t(0), acc_t(0)}, warps);
  if (threadIdx.x == 0) {
    sum_dy[row] = s.dy;
    sum_dy_xc[row] = s.dy_xc;
  }
}

// Grid (N * segments, channel tiles); writes per (n, segment) C sums of dy, then C of
// dy (x - center).
template <typename scalar_t>
__global__ void __launch_bounds__(kTileC * kTileRows)
    grad_sums_segments_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                              int64_t hw, int64_t c, Segments seg,
                              const acc_type<scalar_t>* __restrict__ center,
                              acc_type<scalar_t>* __restrict__ partial) {
  using acc_t = acc_type<scalar_t>;
  __shared__ GradSums<acc_t> tile[kTileRows][kTileC];
  const int64_t task = blockIdx.x;
  const int64_t n = task / seg.count, segment = task % seg.count;
  const int64_t ch = int64_t(blockIdx.y) * kTileC + threadIdx.x;
  const int64_t row0 = segment * seg.rows_per_segment;
  const int64_t row1 = min64(hw, row0 + seg.rows_per_segment);
  GradSums<acc_t> s{acc_t(0), acc_t(0)};
  if (ch < c) {
    const acc_t ctr = center[n * c + ch];
    const int64_t base = n * hw * c + ch;
    for (int64_t r = row0 + threadIdx.y; r < row1; r += kTileRows) {
      const acc_t g = to_acc(dy[base + r * c]);
      s.dy += g;
      s.dy_xc += g * (to_acc(x[base + r * c]) - ctr);
    }
  }
  s = column_reduce(s, tile);
  if (threadIdx.y == 0 && ch < c) {
    acc_t* out = partial + task * 2 * c;
    out[ch] = s.dy;
    out[c + ch] = s.dy_xc;
  }
}

template <typename acc_t>
__global__ void add_grad_sum_segments_kernel(const acc_t* __restrict__ partial, int64_t nc,
                                             int64_t c, Segments seg,
                                             acc_t* __restrict__ sum_dy,
                                             acc_t* __restrict__ sum_dy_xc) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nc) return;
  const int64_t n = i / c, ch = i % c;
  GradSums<acc_t> s{acc_t(0), acc_t(0)};
  for (int64_t k = 0; k < seg.count; ++k) {
    const acc_t* part = partial + (n * seg.count + k) * 2 * c;
    s = merge(s, GradSums<acc_t>{part[ch], part[c + ch]});
  }
  sum_dy[i] = s.dy;
  sum_dy_xc[i] = s.dy_xc;
}

// ------------------------------------------------------------------------------------------
// channel_affine and channel_affine_input_grad: elementwise passes

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

  __device__ Coef coef(int64_t nc) const { return {center[nc], scale[nc], shift[nc]}; }
  __device__ void operator()(int64_t i, const Coef& k) const {
    y[i] = from_acc<scalar_t>(k.scale * (to_acc(x[i]) - k.center) + k.shift);
  }
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

  __device__ Coef coef(int64_t nc) const {
    return {center[nc], dy_scale[nc], x_scale[nc], shift[nc]};
  }
  __device__ void operator()(int64_t i, const Coef& k) const {
    dx[i] = from_acc<scalar_t>(k.dy_scale * to_acc(dy[i]) +
                               k.x_scale * (to_acc(x[i]) - k.center) + k.shift);
  }
};

// Grid (N * C rows, chunks of kThreads * kUnroll values of a row, grid-strided).
template <typename Op>
__global__ void __launch_bounds__(kThreads) elementwise_rows_kernel(Op op, int64_t hw) {
  const int64_t row = blockIdx.x;
  const auto k = op.coef(row);
  constexpr int64_t kChunk = int64_t(kThreads) * kUnroll;
  for (int64_t chunk = blockIdx.y; chunk * kChunk < hw; chunk += gridDim.y) {
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = chunk * kChunk + u * kThreads + threadIdx.x;
      if (j < hw) op(row * hw + j, k);
    }
  }
}

// Grid (N * row chunks, channel tiles): a thread keeps one channel of one sample.
template <typename Op>
__global__ void __launch_bounds__(kTileC * kTileRows)
    elementwise_channels_last_kernel(Op op, int64_t hw, int64_t c, int64_t chunks,
                                     int64_t rows_per_chunk) {
  const int64_t n = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t ch = int64_t(blockIdx.y) * kTileC + threadIdx.x;
  if (ch >= c) return;
  const auto k = op.coef(n * c + ch);
  const int64_t row0 = chunk * rows_per_chunk;
  const int64_t row1 = min64(hw, row0 + rows_per_chunk);
  for (int64_t r = row0 + threadIdx.y; r < row1; r += kTileRows) op((n * hw + r) * c + ch, k);
}

template <typename Op>
cudaError_t launch_elementwise(const Op& op, const Activation& s, cudaStream_t stream) {
  if (s.channels_last) {
    const int64_t rows_per_chunk = int64_t(kTileRows) * kUnroll * 4;
    const int64_t chunks = ceil_div(s.hw, rows_per_chunk);
    const dim3 grid(static_cast<unsigned>(s.n * chunks),
                    static_cast<unsigned>(ceil_div(s.c, kTileC)));
    elementwise_channels_last_kernel<<<grid, dim3(kTileC, kTileRows), 0, stream>>>(
        op, s.hw, s.c, chunks, rows_per_chunk);
  } else {
    const int64_t chunks = min64(kMaxGridY, ceil_div(s.hw, int64_t(kThreads) * kUnroll));
    const dim3 grid(static_cast<unsigned>(s.n * s.c), static_cast<unsigned>(chunks));
    elementwise_rows_kernel<<<grid, kThreads, 0, stream>>>(op, s.hw);
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

// No (n, c) pairs: nothing to launch (a grid may not be empty).
bool empty(const Activation& s) { return s.n == 0 || s.c == 0; }

// Channel tiles of a channels_last grid: its y dimension.
unsigned channel_tiles(const Activation& s) {
  return static_cast<unsigned>(ceil_div(s.c, kTileC));
}

unsigned merge_blocks(const Activation& s) {
  return static_cast<unsigned>(ceil_div(s.n * s.c, kThreads));
}

}  // namespace

int64_t reduction_workspace_bytes(const Activation& x, DType dtype) {
  if (!x.channels_last) return 0;
  const int64_t acc_bytes = dtype == DType::kFloat64 ? 8 : 4;
  return x.n * Segments(x.hw).count * 2 * x.c * acc_bytes;
}

cudaError_t launch_channel_moments(const void* x, DType dtype, const Activation& s, void* mean,
                                   void* var, void* workspace, cudaStream_t stream) {
  if (empty(s)) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const auto* data = static_cast<const scalar_t*>(x);
    auto* mean_out = static_cast<acc_t*>(mean);
    auto* var_out = static_cast<acc_t*>(var);
    if (s.channels_last) {
      const Segments seg(s.hw);
      auto* partial = static_cast<acc_t*>(workspace);
      const dim3 grid(static_cast<unsigned>(s.n * seg.count), channel_tiles(s));
      moments_segments_kernel<<<grid, dim3(kTileC, kTileRows), 0, stream>>>(data, s.hw, s.c,
                                                                             seg, partial);
      merge_moment_segments_kernel<<<merge_blocks(s), kThreads, 0, stream>>>(
          partial, s.n * s.c, s.c, s.hw, seg, mean_out, var_out);
    } else {
      moments_rows_kernel<<<static_cast<unsigned>(s.n * s.c), rows_block_threads(s.hw), 0,
                            stream>>>(data, s.hw, mean_out, var_out);
    }
    return cudaGetLastError();
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
    return launch_elementwise(op, s, stream);
  });
}

cudaError_t launch_channel_affine_grad_sums(const void* grad_y, const void* x, DType dtype,
                                            const Activation& s, const void* center,
                                            void* sum_dy, void* sum_dy_xc, void* workspace,
                                            cudaStream_t stream) {
  if (empty(s)) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const auto* dy = static_cast<const scalar_t*>(grad_y);
    const auto* data = static_cast<const scalar_t*>(x);
    const auto* ctr = static_cast<const acc_t*>(center);
    auto* s_dy = static_cast<acc_t*>(sum_dy);
    auto* s_dy_xc = static_cast<acc_t*>(sum_dy_xc);
    if (s.channels_last) {
      const Segments seg(s.hw);
      auto* partial = static_cast<acc_t*>(workspace);
      const dim3 grid(static_cast<unsigned>(s.n * seg.count), channel_tiles(s));
      grad_sums_segments_kernel<<<grid, dim3(kTileC, kTileRows), 0, stream>>>(
          dy, data, s.hw, s.c, seg, ctr, partial);
      add_grad_sum_segments_kernel<<<merge_blocks(s), kThreads, 0, stream>>>(
          partial, s.n * s.c, s.c, seg, s_dy, s_dy_xc);
    } else {
      grad_sums_rows_kernel<<<static_cast<unsigned>(s.n * s.c), rows_block_threads(s.hw), 0,
                              stream>>>(dy, data, s.hw, ctr, s_dy, s_dy_xc);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_channel_affine_input_grad(const void* grad_y, const void* x, DType dtype,
                                             const Activation& s, const void* center,
                                             const void* dy_scale, const void* x_scale,
                                             const void* shift, void* grad_x,
                                             cudaStream_t stream) {
  if (empty(s)) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const InputGradOp<scalar_t> op{
        static_cast<const scalar_t*>(grad_y), static_cast<const scalar_t*>(x),
        static_cast<const acc_t*>(center),    static_cast<const acc_t*>(dy_scale),
        static_cast<const acc_t*>(x_scale),   static_cast<const acc_t*>(shift),
        static_cast<scalar_t*>(grad_x)};
    return launch_elementwise(op, s, stream);
  });
}

}  // namespace cuda
}  // namespace en_seg
