// CPU kernels of en_seg::channel_moments, channel_affine, channel_affine_grad_sums and
// channel_norm_input_grad (schemas and math in channel_op.cpp).
//
// Memory-bound passes spread over threads with at::parallel_for: loops along a row that the
// compiler vectorizes (simd.h; plain loops come out faster than at::vec::Vectorized, whose
// extension build has only its portable fallback), and at::vec::Vectorized across the
// channels of channels_last tiles. Accumulation is in at::opmath_type (float32 for half
// precision and float32, float64 for float64); half-precision data are converted block by
// block into a small buffer that stays in L1.
//
// Layouts. Contiguous (N, C, H, W): every (n, c) plane is one contiguous row of H * W
// values; rows go to threads whole, and a row is reduced in fixed blocks. channels_last:
// every sample is an (H * W) x C matrix with contiguous channels; reductions vectorize
// across channels, split the H * W rows of a sample into a number of segments fixed by the
// shape, and merge the segments' partial results in order. Either way every result is
// computed in an order that depends on the shape only, so results are bit-identical for any
// number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "channel_op.h"
#include "simd.h"

namespace en_seg {
namespace {

using at::vec::Vectorized;

// Values per parallel task, as ATen's TensorIterator grain: smaller loops stay on the
// calling thread.
constexpr int64_t kGrain = 32768;
// Values of a (n, c) row reduced as one block: two passes over a block hit L1 only.
constexpr int64_t kBlock = 1024;
// Upper bound on the segments a channels_last sample is split into: enough tasks for the
// threads, few enough that the (N, segments, C) partial results stay small next to X.
constexpr int64_t kMaxSegments = 16;

// count values' mean and biased variance. The variance, not the sum of squared deviations,
// so that a state overflows only where its variance does (float32 data of order 1e19 have a
// finite variance and a sum of squares past FLT_MAX).
template <typename acc_t>
struct Moments {
  int64_t count = 0;
  acc_t mean = 0;
  acc_t var = 0;

  // Chan, Golub & LeVeque's pairwise merge, in variances: exact for any split of the data,
  // free of the cancellation of E[x²] - E[x]². The first state is taken as it is (an empty
  // one has no mean to subtract), and δ² is formed as δ (δ w_a w_b), which overflows only
  // where the merged variance does.
  void merge(int64_t count_b, acc_t mean_b, acc_t var_b) {
    if (count_b == 0) return;
    if (count == 0) {
      *this = {count_b, mean_b, var_b};
      return;
    }
    const int64_t total = count + count_b;
    const acc_t delta = mean_b - mean;
    const acc_t weight_a = acc_t(count) / acc_t(total), weight_b = acc_t(count_b) / acc_t(total);
    mean += delta * weight_b;
    var = weight_a * var + weight_b * var_b + delta * (delta * (weight_a * weight_b));
    count = total;
  }
};

// Moments of len values whose plain sums in block_moments overflowed: shifted by the first
// value and scaled before they are summed, so that no partial result exceeds the moments
// themselves (a constant block stays exactly its value, variance 0). Scalar and slower;
// reached only where a sum was not finite (|x| of order FLT_MAX / len, or NaN / Inf data).
template <typename acc_t>
Moments<acc_t> scaled_moments(const acc_t* x, int64_t stride, int64_t len) {
  const acc_t inv = acc_t(1) / acc_t(len), root = std::sqrt(inv);
  acc_t shift = 0;
  for (int64_t i = 0; i < len; ++i) shift += (x[i * stride] - x[0]) * inv;
  const acc_t mean = x[0] + shift;
  acc_t var = 0, residual = 0;
  for (int64_t i = 0; i < len; ++i) {
    const acc_t d = x[i * stride] - mean, scaled = d * root;
    var += scaled * scaled;
    residual += d * inv;
  }
  // residual² <= var exactly; where var overflowed, so may residual², and inf - inf is
  // NaN: the variance is then var's inf, as torch.var_mean gives.
  const acc_t corrected = var - residual * residual;
  return {len, mean + residual, std::isnan(corrected) ? var : std::max(acc_t(0), corrected)};
}

// `len` values of `src` as acc_t: `src` itself when it already has that type, else a
// converted copy in `buf`.
template <typename acc_t, typename scalar_t>
const acc_t* as_acc(const scalar_t* src, int64_t len, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    at::vec::convert(src, buf, len);
    return buf;
  }
}

// Where to compute `len` outputs of type acc_t destined for `dst`: `dst` itself when the
// types agree, else `buf`, which store_acc then converts into `dst`.
template <typename acc_t, typename scalar_t>
acc_t* out_acc(scalar_t* dst, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return dst;
  } else {
    return buf;
  }
}

template <typename acc_t, typename scalar_t>
void store_acc(const acc_t* buf, int64_t len, scalar_t* dst) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) at::vec::convert(buf, dst, len);
}

// Whether a kernel walks x as rows of C channels, one per pixel: x channels_last, or
// contiguous with H * W = 1, the same memory, whose planes would be rows of one value.
bool pixel_rows(const Activation& x) { return x.channels_last || x.hw == 1; }

// Per-(n, c) coefficients as the row loops read them: one value for a whole row (channels
// first) or one value per element of the row (channels_last, the row spans the channels).
template <typename acc_t>
struct RowConstant {
  acc_t value;
  acc_t at(int64_t) const { return value; }
};

template <typename acc_t>
struct PerElement {
  const acc_t* values;
  acc_t at(int64_t i) const { return values[i]; }
};

// Long rows are summed in kLanes partial sums, one per i mod kLanes (four AVX-512 vectors
// of float32), added up by a fixed pairwise tree: one running sum makes every vector add
// wait for the previous one (4 cycles), which bounds a pass over L1 well below its
// bandwidth. Rows shorter than kLaneRows are summed by omp simd, for which the tree costs
// more than it saves. Either way the order depends on the length only.
constexpr int64_t kLanes = 64;
constexpr int64_t kLaneRows = 4 * kLanes;

// Below this many lanes the fold goes on in scalar registers: halving a stored vector by
// loads of its narrower parts makes loads the CPU cannot forward from the store, which on
// rows of a few hundred values cost more than the sums.
constexpr int64_t kScalarLanes = 16;

// The sum of the kLanes values of `lanes` (overwritten), pairwise: lane j gets lane
// j + width for width = kLanes / 2, ..., 1.
template <typename acc_t>
EN_SEG_INLINE acc_t fold_lanes(acc_t* lanes) {
  for (int64_t width = kLanes / 2; width >= kScalarLanes; width /= 2) {
    EN_SEG_SIMD
    for (int64_t j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  }
  acc_t tail[kScalarLanes / 2];
  for (int64_t j = 0; j < kScalarLanes / 2; ++j) tail[j] = lanes[j] + lanes[j + kScalarLanes / 2];
  for (int64_t width = kScalarLanes / 4; width >= 1; width /= 2) {
    for (int64_t j = 0; j < width; ++j) tail[j] += tail[j + width];
  }
  return tail[0];
}

// ---------------------------------------------------------------------------------------
// channel_moments

// Moments of one block in L1 by the corrected two-pass algorithm: the mean first, then
// the squared deviations from it and their sum, which is the rounding error of that mean
// times len and corrects both.
template <typename acc_t>
EN_SEG_CPU_DISPATCH
Moments<acc_t> block_moments(const acc_t* x, int64_t len) {
  acc_t sum = 0, m2 = 0, residual = 0;
  if (len < kLaneRows) {
    EN_SEG_SIMD_SUM(sum)
    for (int64_t i = 0; i < len; ++i) sum += x[i];
  } else {
    acc_t lanes[kLanes] = {};
    const int64_t body = len - len % kLanes;
    for (int64_t i = 0; i < body; i += kLanes) {
      EN_SEG_SIMD
      for (int64_t j = 0; j < kLanes; ++j) lanes[j] += x[i + j];
    }
    sum = fold_lanes(lanes);
    for (int64_t i = body; i < len; ++i) sum += x[i];
  }
  const acc_t mean = sum / acc_t(len);
  if (len < kLaneRows) {
    EN_SEG_SIMD_SUM(m2, residual)
    for (int64_t i = 0; i < len; ++i) {
      const acc_t d = x[i] - mean;
      m2 += d * d;
      residual += d;
    }
  } else {
    acc_t squares[kLanes] = {}, deviations[kLanes] = {};
    const int64_t body = len - len % kLanes;
    for (int64_t i = 0; i < body; i += kLanes) {
      EN_SEG_SIMD
      for (int64_t j = 0; j < kLanes; ++j) {
        const acc_t d = x[i + j] - mean;
        squares[j] += d * d;
        deviations[j] += d;
      }
    }
    m2 = fold_lanes(squares);
    residual = fold_lanes(deviations);
    for (int64_t i = body; i < len; ++i) {
      const acc_t d = x[i] - mean;
      m2 += d * d;
      residual += d;
    }
  }
  if (!std::isfinite(sum) || !std::isfinite(m2)) return scaled_moments(x, 1, len);
  // (Σ d)² <= len Σ d², but rounding may leave a constant block a tiny negative m2.
  return {len, mean + residual / acc_t(len),
          std::max(acc_t(0), m2 - residual * residual / acc_t(len)) / acc_t(len)};
}

template <typename scalar_t, typename acc_t>
void moments_channels_first(const Activation& x, acc_t* mean, acc_t* var) {
  const scalar_t* data = x.tensor.const_data_ptr<scalar_t>();
  const int64_t hw = x.hw;
  at::parallel_for(0, x.n * x.c, kGrain / hw + 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(std::is_same_v<scalar_t, acc_t> ? 0 : kBlock);
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* x_row = data + row * hw;
      Moments<acc_t> total;
      for (int64_t start = 0; start < hw; start += kBlock) {
        const int64_t len = std::min(kBlock, hw - start);
        const Moments<acc_t> b = block_moments(as_acc(x_row + start, len, buf.data()), len);
        total.merge(b.count, b.mean, b.var);
      }
      mean[row] = total.mean;
      var[row] = total.var;
    }
  });
}

// How a channels_last sample's H * W rows split into segments: a count fixed by the shape,
// each segment carrying about kGrain values.
struct Segments {
  int64_t rows_per_segment, count;

  Segments(int64_t hw, int64_t c) {
    const int64_t wanted = std::clamp<int64_t>(hw * c / kGrain, 1, kMaxSegments);
    rows_per_segment = (hw + wanted - 1) / wanted;
    count = (hw + rows_per_segment - 1) / rows_per_segment;
  }
};

// A channels_last segment is reduced in tiles of kTileRows rows by kTileChannels channels:
// 16 KiB of float32, so the two passes over a tile hit L1, and the segment's moments see one
// merge per kTileRows rows.
constexpr int64_t kTileRows = 64;
constexpr int64_t kTileChannels = 64;

// One segment of a channels_last sample (num_rows rows of c channels): per channel, the
// moments of every tile by two passes, the first shifted by the tile's first row (a constant
// column keeps its value exactly, variance 0), merged in row order by Moments' formula,
// vectorized across channels (all channels of a tile share one count). Writes the segment's
// per-channel mean and variance; `buf` holds a converted tile for half precision.
template <typename scalar_t, typename acc_t>
void segment_moments(const scalar_t* rows, int64_t num_rows, int64_t c, acc_t* buf,
                     acc_t* mean, acc_t* var) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  acc_t tile_mean[kTileChannels], tile_var[kTileChannels];
  for (int64_t c0 = 0; c0 < c; c0 += kTileChannels) {
    const int64_t width = std::min(kTileChannels, c - c0);
    acc_t* run_mean = mean + c0;
    acc_t* run_var = var + c0;
    int64_t count = 0;
    for (int64_t r0 = 0; r0 < num_rows; r0 += kTileRows) {
      const int64_t height = std::min(kTileRows, num_rows - r0);
      // The tile: `height` rows of `width` values, `stride` apart.
      const acc_t* tile;
      int64_t stride;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        tile = rows + r0 * c + c0;
        stride = c;
      } else {
        for (int64_t r = 0; r < height; ++r) {
          at::vec::convert(rows + (r0 + r) * c + c0, buf + r * width, width);
        }
        tile = buf;
        stride = width;
      }
      const acc_t inv_height = acc_t(1) / acc_t(height);
      int64_t i = 0;
      for (; i + V <= width; i += V) {
        const Vec first = Vec::loadu(tile + i);
        Vec shift(acc_t(0));
        for (int64_t r = 1; r < height; ++r) shift += Vec::loadu(tile + r * stride + i) - first;
        const Vec m = at::vec::fmadd(shift, Vec(inv_height), first);
        Vec sq(acc_t(0));
        for (int64_t r = 0; r < height; ++r) {
          const Vec d = Vec::loadu(tile + r * stride + i) - m;
          sq = at::vec::fmadd(d, d, sq);
        }
        m.store(tile_mean + i);
        (sq * Vec(inv_height)).store(tile_var + i);
      }
      for (; i < width; ++i) {
        acc_t shift = 0;
        for (int64_t r = 1; r < height; ++r) shift += tile[r * stride + i] - tile[i];
        const acc_t m = tile[i] + shift * inv_height;
        acc_t sq = 0;
        for (int64_t r = 0; r < height; ++r) {
          const acc_t d = tile[r * stride + i] - m;
          sq += d * d;
        }
        tile_mean[i] = m;
        tile_var[i] = sq * inv_height;
      }
      for (int64_t j = 0; j < width; ++j) {
        if (!std::isfinite(tile_mean[j]) || !std::isfinite(tile_var[j])) {
          const Moments<acc_t> m = scaled_moments(tile + j, stride, height);
          tile_mean[j] = m.mean;
          tile_var[j] = m.var;
        }
      }
      if (count == 0) {
        std::copy(tile_mean, tile_mean + width, run_mean);
        std::copy(tile_var, tile_var + width, run_var);
        count = height;
        continue;
      }
      // Moments::merge of (count, run) with (height, tile), across channels.
      const acc_t weight_a = acc_t(count) / acc_t(count + height);
      const acc_t weight_b = acc_t(height) / acc_t(count + height);
      const acc_t weight_ab = weight_a * weight_b;
      i = 0;
      for (; i + V <= width; i += V) {
        const Vec run = Vec::loadu(run_mean + i);
        const Vec delta = Vec::loadu(tile_mean + i) - run;
        at::vec::fmadd(delta, Vec(weight_b), run).store(run_mean + i);
        const Vec spread = Vec(weight_a) * Vec::loadu(run_var + i) +
                           Vec(weight_b) * Vec::loadu(tile_var + i);
        at::vec::fmadd(delta, delta * Vec(weight_ab), spread).store(run_var + i);
      }
      for (; i < width; ++i) {
        const acc_t delta = tile_mean[i] - run_mean[i];
        run_mean[i] += delta * weight_b;
        run_var[i] = weight_a * run_var[i] + weight_b * tile_var[i] +
                     delta * (delta * weight_ab);
      }
      count += height;
    }
  }
}

template <typename scalar_t, typename acc_t>
void moments_channels_last(const Activation& x, acc_t* mean, acc_t* var) {
  const scalar_t* data = x.tensor.const_data_ptr<scalar_t>();
  const int64_t c = x.c, hw = x.hw;
  const Segments seg(hw, c);
  // Per (n, segment): C means then C variances.
  std::vector<acc_t> partial(x.n * seg.count * 2 * c);
  at::parallel_for(0, x.n * seg.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(std::is_same_v<scalar_t, acc_t> ? 0 : kTileRows * kTileChannels);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / seg.count, s = task % seg.count;
      const int64_t row0 = s * seg.rows_per_segment;
      const int64_t rows = std::min(seg.rows_per_segment, hw - row0);
      acc_t* out = partial.data() + task * 2 * c;
      segment_moments(data + (n * hw + row0) * c, rows, c, buf.data(), out, out + c);
    }
  });
  at::parallel_for(0, x.n * c, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / c, ch = nc % c;
      Moments<acc_t> total;
      for (int64_t s = 0; s < seg.count; ++s) {
        const acc_t* part = partial.data() + (n * seg.count + s) * 2 * c;
        const int64_t rows = std::min(seg.rows_per_segment, hw - s * seg.rows_per_segment);
        total.merge(rows, part[ch], part[c + ch]);
      }
      mean[nc] = total.mean;
      var[nc] = total.var;
    }
  });
}

// H * W = 1 (DeepLabV3's image pool): every plane is one value, its own mean, with
// variance 0; a copy rather than the segments of a channels_last reduction.
template <typename scalar_t, typename acc_t>
void moments_of_points(const Activation& x, acc_t* mean, acc_t* var) {
  const scalar_t* data = x.tensor.const_data_ptr<scalar_t>();
  const int64_t count = x.n * x.c;
  for (int64_t i = 0; i < count; ++i) mean[i] = static_cast<acc_t>(data[i]);
  std::fill(var, var + count, acc_t(0));
}

std::tuple<at::Tensor, at::Tensor> channel_moments_cpu(const at::Tensor& input) {
  const Activation x = check_activation("en_seg::channel_moments", input);
  at::Tensor mean = empty_stats(x), var = empty_stats(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.tensor.scalar_type(),
                                  "channel_moments_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (x.hw == 1) {
      moments_of_points<scalar_t>(x, mean.data_ptr<acc_t>(), var.data_ptr<acc_t>());
    } else if (pixel_rows(x)) {
      moments_channels_last<scalar_t>(x, mean.data_ptr<acc_t>(), var.data_ptr<acc_t>());
    } else {
      moments_channels_first<scalar_t>(x, mean.data_ptr<acc_t>(), var.data_ptr<acc_t>());
    }
  });
  return {mean, var};
}

// ---------------------------------------------------------------------------------------
// channel_affine and channel_norm_input_grad: one elementwise pass

// y = scale * (x - center) + shift over one row.
template <typename acc_t, typename Coef>
EN_SEG_CPU_DISPATCH
void affine_row(const acc_t* x, int64_t len, const Coef& center, const Coef& scale,
                const Coef& shift, acc_t* y) {
  EN_SEG_SIMD
  for (int64_t i = 0; i < len; ++i) y[i] = scale.at(i) * (x[i] - center.at(i)) + shift.at(i);
}

// dx = dy_scale * dy + x_scale * (x - center) + shift over one row.
template <typename acc_t, typename Coef>
EN_SEG_CPU_DISPATCH
void input_grad_row(const acc_t* dy, const acc_t* x, int64_t len, const Coef& center,
                    const Coef& dy_scale, const Coef& x_scale, const Coef& shift,
                    acc_t* dx) {
  EN_SEG_SIMD
  for (int64_t i = 0; i < len; ++i) {
    dx[i] = dy_scale.at(i) * dy[i] + x_scale.at(i) * (x[i] - center.at(i)) + shift.at(i);
  }
}

// Calls f(in, out, len, coef_offset, row_coef) over every row of x: rows are (n, c) planes
// (channels first, coefficients constant along a row) or (n, h, w) pixels (channels_last,
// one coefficient per element). `in` holds one pointer per activation input, `out` the
// output row; half precision is converted to acc_t around f in blocks of kBlock.
template <typename scalar_t, typename acc_t, int kInputs, typename F>
void for_each_row(const Activation& x, const scalar_t* const (&in)[kInputs], scalar_t* out,
                  const F& f) {
  const bool pixels = pixel_rows(x);
  const int64_t row_len = pixels ? x.c : x.hw;
  const int64_t num_rows = x.tensor.numel() / row_len;
  at::parallel_for(0, num_rows, kGrain / row_len + 1, [&](int64_t begin, int64_t end) {
    constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
    std::vector<acc_t> buf(kConvert ? (kInputs + 1) * kBlock : 0);
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t start = 0; start < row_len; start += kBlock) {
        const int64_t len = std::min(kBlock, row_len - start);
        const int64_t offset = row * row_len + start;
        const acc_t* args[kInputs];
        for (int i = 0; i < kInputs; ++i) {
          args[i] = as_acc(in[i] + offset, len, buf.data() + i * kBlock);
        }
        acc_t* y = out_acc(out + offset, buf.data() + kInputs * kBlock);
        // Coefficient index: the (n, c) row (channels first) or n * C + first channel.
        const int64_t coef = pixels ? (row / x.hw) * x.c + start : row;
        f(args, y, len, coef, !pixels);
        store_acc(y, len, out + offset);
      }
    }
  });
}

at::Tensor channel_affine_cpu(const at::Tensor& input, const at::Tensor& center,
                              const at::Tensor& scale, const at::Tensor& shift) {
  const AffineArgs args = check_affine_args(input, center, scale, shift);
  const Activation& x = args.x;
  at::Tensor y = empty_activation(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.tensor.scalar_type(),
                                  "channel_affine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* ctr = args.center.const_data_ptr<acc_t>();
    const acc_t* a = args.scale.const_data_ptr<acc_t>();
    const acc_t* b = args.shift.const_data_ptr<acc_t>();
    const scalar_t* const in[1] = {x.tensor.const_data_ptr<scalar_t>()};
    for_each_row<scalar_t, acc_t, 1>(
        x, in, y.data_ptr<scalar_t>(),
        [&](const acc_t* const* args, acc_t* out, int64_t len, int64_t k, bool row_const) {
          if (row_const) {
            affine_row(args[0], len, RowConstant<acc_t>{ctr[k]}, RowConstant<acc_t>{a[k]},
                       RowConstant<acc_t>{b[k]}, out);
          } else {
            affine_row(args[0], len, PerElement<acc_t>{ctr + k}, PerElement<acc_t>{a + k},
                       PerElement<acc_t>{b + k}, out);
          }
        });
  });
  return y;
}

// dx = dy_scale * dy + x_scale * (x - center) + shift, the (N, C) coefficients in acc_t.
template <typename scalar_t, typename acc_t>
void input_grad_pass(const Activation& x, const at::Tensor& grad_y, const acc_t* ctr,
                     const acc_t* a, const acc_t* k1, const acc_t* b, at::Tensor& dx) {
  const scalar_t* const in[2] = {grad_y.const_data_ptr<scalar_t>(),
                                 x.tensor.const_data_ptr<scalar_t>()};
  for_each_row<scalar_t, acc_t, 2>(
      x, in, dx.data_ptr<scalar_t>(),
      [&](const acc_t* const* args, acc_t* out, int64_t len, int64_t k, bool row_const) {
        if (row_const) {
          input_grad_row(args[0], args[1], len, RowConstant<acc_t>{ctr[k]},
                         RowConstant<acc_t>{a[k]}, RowConstant<acc_t>{k1[k]},
                         RowConstant<acc_t>{b[k]}, out);
        } else {
          input_grad_row(args[0], args[1], len, PerElement<acc_t>{ctr + k},
                         PerElement<acc_t>{a + k}, PerElement<acc_t>{k1 + k},
                         PerElement<acc_t>{b + k}, out);
        }
      });
}

// dx = dy_scale * dy + x_scale * (x - mean) + shift, an input_grad_pass with dy_scale =
// scale, x_scale = 2 grad_var / M and shift = (grad_mean - scale * sum_dy) / M
// (channel_op.cpp).
at::Tensor channel_norm_input_grad_cpu(const at::Tensor& grad_y, const at::Tensor& input,
                                       const at::Tensor& mean, const at::Tensor& scale,
                                       const at::Tensor& sum_dy, const at::Tensor& grad_mean,
                                       const at::Tensor& grad_var) {
  const NormInputGradArgs args =
      check_norm_input_grad_args(grad_y, input, mean, scale, sum_dy, grad_mean, grad_var);
  const Activation& x = args.x;
  at::Tensor dx = empty_activation(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.tensor.scalar_type(),
                                  "channel_norm_input_grad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* a = args.scale.const_data_ptr<acc_t>();
    const acc_t* s_dy = args.sum_dy.const_data_ptr<acc_t>();
    const acc_t* g_mean = args.grad_mean.const_data_ptr<acc_t>();
    const acc_t* g_var = args.grad_var.const_data_ptr<acc_t>();
    const int64_t nc = x.n * x.c;
    const acc_t inv_m = acc_t(1) / acc_t(x.hw);
    std::vector<acc_t> x_scale(nc), shift(nc);
    for (int64_t i = 0; i < nc; ++i) {
      x_scale[i] = acc_t(2) * g_var[i] * inv_m;
      shift[i] = (g_mean[i] - a[i] * s_dy[i]) * inv_m;
    }
    input_grad_pass<scalar_t>(x, args.grad_y, args.mean.const_data_ptr<acc_t>(), a,
                              x_scale.data(), shift.data(), dx);
  });
  return dx;
}

// ---------------------------------------------------------------------------------------
// channel_affine_grad_sums: one reduction pass over (dy, x)

// Adds Σ dy and Σ dy * (x - center) of one block to the running sums.
template <typename acc_t>
EN_SEG_CPU_DISPATCH
void block_grad_sums(const acc_t* dy, const acc_t* x, int64_t len, acc_t center,
                     acc_t& sum_dy, acc_t& sum_dy_xc) {
  acc_t block_s = 0, block_p = 0;
  int64_t start = 0;
  if (len >= kLaneRows) {
    acc_t s[kLanes] = {}, p[kLanes] = {};
    start = len - len % kLanes;
    for (int64_t i = 0; i < start; i += kLanes) {
      EN_SEG_SIMD
      for (int64_t j = 0; j < kLanes; ++j) {
        s[j] += dy[i + j];
        p[j] += dy[i + j] * (x[i + j] - center);
      }
    }
    block_s = fold_lanes(s);
    block_p = fold_lanes(p);
  }
  EN_SEG_SIMD_SUM(block_s, block_p)
  for (int64_t i = start; i < len; ++i) {
    block_s += dy[i];
    block_p += dy[i] * (x[i] - center);
  }
  // Summing per block first keeps each running sum's error independent of H * W.
  sum_dy += block_s;
  sum_dy_xc += block_p;
}

template <typename scalar_t, typename acc_t>
void grad_sums_channels_first(const scalar_t* dy, const Activation& x, const acc_t* center,
                              acc_t* sum_dy, acc_t* sum_dy_xc) {
  const scalar_t* data = x.tensor.const_data_ptr<scalar_t>();
  const int64_t hw = x.hw;
  at::parallel_for(0, x.n * x.c, kGrain / hw + 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(std::is_same_v<scalar_t, acc_t> ? 0 : 2 * kBlock);
    for (int64_t row = begin; row < end; ++row) {
      acc_t s = 0, p = 0;
      for (int64_t start = 0; start < hw; start += kBlock) {
        const int64_t len = std::min(kBlock, hw - start);
        const int64_t offset = row * hw + start;
        block_grad_sums(as_acc(dy + offset, len, buf.data()),
                        as_acc(data + offset, len, buf.data() + kBlock), len, center[row],
                        s, p);
      }
      sum_dy[row] = s;
      sum_dy_xc[row] = p;
    }
  });
}

// One segment of a channels_last sample: per-channel Σ dy and Σ dy * (x - center),
// vectorized across channels.
template <typename scalar_t, typename acc_t>
void segment_grad_sums(const scalar_t* dy, const scalar_t* x, int64_t num_rows, int64_t c,
                       const acc_t* center, acc_t* buf, acc_t* sum_dy, acc_t* sum_dy_xc) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  std::fill(sum_dy, sum_dy + c, acc_t(0));
  std::fill(sum_dy_xc, sum_dy_xc + c, acc_t(0));
  for (int64_t r = 0; r < num_rows; ++r) {
    const acc_t* g = as_acc(dy + r * c, c, buf);
    const acc_t* v = as_acc(x + r * c, c, buf + c);
    int64_t i = 0;
    for (; i + V <= c; i += V) {
      const Vec gv = Vec::loadu(g + i);
      (Vec::loadu(sum_dy + i) + gv).store(sum_dy + i);
      at::vec::fmadd(gv, Vec::loadu(v + i) - Vec::loadu(center + i),
                     Vec::loadu(sum_dy_xc + i))
          .store(sum_dy_xc + i);
    }
    for (; i < c; ++i) {
      sum_dy[i] += g[i];
      sum_dy_xc[i] += g[i] * (v[i] - center[i]);
    }
  }
}

template <typename scalar_t, typename acc_t>
void grad_sums_channels_last(const scalar_t* dy, const Activation& x, const acc_t* center,
                             acc_t* sum_dy, acc_t* sum_dy_xc) {
  const scalar_t* data = x.tensor.const_data_ptr<scalar_t>();
  const int64_t c = x.c, hw = x.hw;
  const Segments seg(hw, c);
  // Per (n, segment): C sums of dy then C sums of dy * (x - center).
  std::vector<acc_t> partial(x.n * seg.count * 2 * c);
  at::parallel_for(0, x.n * seg.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(std::is_same_v<scalar_t, acc_t> ? 0 : 2 * c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / seg.count, s = task % seg.count;
      const int64_t row0 = s * seg.rows_per_segment;
      const int64_t rows = std::min(seg.rows_per_segment, hw - row0);
      const int64_t offset = (n * hw + row0) * c;
      acc_t* out = partial.data() + task * 2 * c;
      segment_grad_sums(dy + offset, data + offset, rows, c, center + n * c, buf.data(), out,
                        out + c);
    }
  });
  at::parallel_for(0, x.n * c, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / c, ch = nc % c;
      acc_t s = 0, p = 0;
      for (int64_t k = 0; k < seg.count; ++k) {
        const acc_t* part = partial.data() + (n * seg.count + k) * 2 * c;
        s += part[ch];
        p += part[c + ch];
      }
      sum_dy[nc] = s;
      sum_dy_xc[nc] = p;
    }
  });
}

// H * W = 1: the sums over a plane are its one term.
template <typename scalar_t, typename acc_t>
void grad_sums_of_points(const scalar_t* dy, const Activation& x, const acc_t* center,
                         acc_t* sum_dy, acc_t* sum_dy_xc) {
  const scalar_t* data = x.tensor.const_data_ptr<scalar_t>();
  const int64_t count = x.n * x.c;
  for (int64_t i = 0; i < count; ++i) {
    const acc_t g = static_cast<acc_t>(dy[i]);
    sum_dy[i] = g;
    sum_dy_xc[i] = g * (static_cast<acc_t>(data[i]) - center[i]);
  }
}

std::tuple<at::Tensor, at::Tensor> channel_affine_grad_sums_cpu(const at::Tensor& grad_y,
                                                                const at::Tensor& input,
                                                                const at::Tensor& center) {
  const GradSumsArgs args = check_grad_sums_args(grad_y, input, center);
  const Activation& x = args.x;
  at::Tensor sum_dy = empty_stats(x), sum_dy_xc = empty_stats(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.tensor.scalar_type(),
                                  "channel_affine_grad_sums_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto sums = x.hw == 1       ? &grad_sums_of_points<scalar_t, acc_t>
                      : pixel_rows(x) ? &grad_sums_channels_last<scalar_t, acc_t>
                                      : &grad_sums_channels_first<scalar_t, acc_t>;
    sums(args.grad_y.const_data_ptr<scalar_t>(), x, args.center.const_data_ptr<acc_t>(),
         sum_dy.data_ptr<acc_t>(), sum_dy_xc.data_ptr<acc_t>());
  });
  return {sum_dy, sum_dy_xc};
}

}  // namespace

TORCH_LIBRARY_IMPL(en_seg, CPU, m) {
  m.impl("channel_moments", &channel_moments_cpu);
  m.impl("channel_affine", &channel_affine_cpu);
  m.impl("channel_affine_grad_sums", &channel_affine_grad_sums_cpu);
  m.impl("channel_norm_input_grad", &channel_norm_input_grad_cpu);
}

}  // namespace en_seg
