// Argument checking and output allocation shared by the CPU and CUDA implementations of
// en_seg::exemplar_ratios and en_seg::exemplar_ratios_backward (schemas in module.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <tuple>
#include <utility>

#include "ratio_math.h"

namespace en_seg {

// Checks shared with the coefficient ops (coefficient_op.cpp); each raises c10::Error naming
// `op`, the tensor, its shape and the expected one.
void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim,
               const char* expected);

// `shape` is a braced list at every call: an IntArrayRef of it allocates nothing, and the
// checks run on every call of the ops.
void check_shape(const char* op, const char* name, const at::Tensor& t, c10::IntArrayRef shape,
                 const char* expected);

using NamedTensors = std::initializer_list<std::pair<const char*, const at::Tensor*>>;

// `first` has a floating dtype and every tensor of `others` has its dtype and device.
void check_like(const char* op, const char* first_name, const at::Tensor& first,
                NamedTensors others);

// conv_w (C / r, r, 1), fc1_w (P, K * K) and fc2_w (K, P) for the C and K of `sizes`,
// whose r and P they set.
void check_weights(const char* op, const at::Tensor& conv_w, const at::Tensor& fc1_w,
                   const at::Tensor& fc2_w, ratio::Sizes& sizes);

// The forward's inputs, checked and made contiguous, with the sizes they imply.
struct RatioArgs {
  at::Tensor pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b;
  ratio::Sizes sizes;

  template <typename T>
  ratio::Inputs<T> inputs() const {
    return {pooled.data_ptr<T>(), means.data_ptr<T>(), rstds.data_ptr<T>(),
            conv_w.data_ptr<T>(), fc1_w.data_ptr<T>(), fc1_b.data_ptr<T>(),
            fc2_w.data_ptr<T>(),  fc2_b.data_ptr<T>()};
  }
};

// Checks shapes (pooled (N, C), means and rstds (N, K, C), conv_w (C/r, r, 1),
// fc1_w (P, K²), fc1_b (P), fc2_w (K, P), fc2_b (K)), one floating dtype and one device,
// 1 <= K <= ratio::kMaxNormalizers; raises c10::Error naming the offending tensor, its
// shape and the expected shape. `op` prefixes the messages.
RatioArgs check_ratio_args(const char* op, const at::Tensor& pooled, const at::Tensor& means,
                           const at::Tensor& rstds, const at::Tensor& conv_w,
                           const at::Tensor& fc1_w, const at::Tensor& fc1_b,
                           const at::Tensor& fc2_w, const at::Tensor& fc2_b);

// The forward's outputs, uninitialised: ratios (N, K) and activations
// (N, ratio::SavedLayout::total).
std::tuple<at::Tensor, at::Tensor> empty_ratio_outputs(const RatioArgs& args);

// The backward's inputs, checked and made contiguous, with the sizes they imply.
struct RatioBackwardArgs {
  at::Tensor grad, activations, rstds, conv_w, fc1_w, fc2_w;
  ratio::Sizes sizes;

  template <typename T>
  ratio::BackwardInputs<T> inputs() const {
    return {grad.data_ptr<T>(),   activations.data_ptr<T>(), rstds.data_ptr<T>(),
            conv_w.data_ptr<T>(), fc1_w.data_ptr<T>(),       fc2_w.data_ptr<T>()};
  }
};

// As check_ratio_args, for grad (N, K), activations (N, ratio::SavedLayout::total), rstds
// (N, K, C) and the three weights.
RatioBackwardArgs check_ratio_backward_args(const char* op, const at::Tensor& grad,
                                            const at::Tensor& activations,
                                            const at::Tensor& rstds, const at::Tensor& conv_w,
                                            const at::Tensor& fc1_w, const at::Tensor& fc2_w);

// Gradients for every input of the forward, in schema order.
using RatioGradTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor>;

// Uninitialised gradient tensors shaped like the forward's inputs, and pointers into them.
struct RatioGradBuffers {
  RatioGradTensors tensors;

  explicit RatioGradBuffers(const RatioBackwardArgs& args);

  template <typename T>
  ratio::Grads<T> grads() const {
    return {std::get<0>(tensors).data_ptr<T>(), std::get<1>(tensors).data_ptr<T>(),
            std::get<2>(tensors).data_ptr<T>(), std::get<3>(tensors).data_ptr<T>(),
            std::get<4>(tensors).data_ptr<T>(), std::get<5>(tensors).data_ptr<T>(),
            std::get<6>(tensors).data_ptr<T>(), std::get<7>(tensors).data_ptr<T>()};
  }
};

}  // namespace en_seg
