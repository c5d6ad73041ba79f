// The en_seg operator library: the Python module en_seg.ops._C and every op's schema.
// Kernels register themselves per backend with TORCH_LIBRARY_IMPL in their own files;
// autograd kernels are C++ too; fake (meta) kernels are registered from Python (en_seg/ops).
#include <Python.h>
#include <torch/library.h>

// The version of the schemas below. Bump it with any change to them: en_seg/ops/library.py
// uses the library only where its version is the one the Python side registers for, so an
// extension built from older sources falls back to the references instead of failing.
constexpr long kSchemaVersion = 6;

extern "C" {
// A module holding only SCHEMA_VERSION: importing en_seg.ops._C loads this library, whose
// static initialisers register the ops below with the dispatcher (torch.ops.en_seg.*).
PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                               nullptr, nullptr, nullptr, nullptr};
  PyObject* created = PyModule_Create(&module);
  if (created != nullptr &&
      PyModule_AddIntConstant(created, "SCHEMA_VERSION", kSchemaVersion) < 0) {
    Py_DECREF(created);
    return nullptr;
  }
  return created;
}
}

TORCH_LIBRARY(en_seg, m) {
  // Tells a user of these ops without their fake kernels which Python module registers them.
  m.set_python_module("en_seg.ops.ratio_op");
  // docs/method.md#ratio-branch, steps 2-6: ratios λ (N, K) from pooled (N, C), means and
  // rstds (N, K, C), conv_w (C / r, r, 1), fc1_w (P, K * K), fc1_b (P), fc2_w (K, P),
  // fc2_b (K). Also returns activations (N, K + K * K + P + K * C / r + K * C), not
  // differentiable: every sample's λ, v = zᵀ z, h, z and p - μ_k, what the backward needs
  // (ratio_math.h, SavedLayout).
  m.def(
      "exemplar_ratios(Tensor pooled, Tensor means, Tensor rstds, Tensor conv_w, "
      "Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b) -> "
      "(Tensor ratios, Tensor activations)",
      {at::Tag::pt2_compliant_tag});
  // Gradients of every input of exemplar_ratios, in its order, from grad = dL/dλ (N, K),
  // the forward's activations, rstds and the three weights.
  m.def(
      "exemplar_ratios_backward(Tensor grad, Tensor activations, Tensor rstds, "
      "Tensor conv_w, Tensor fc1_w, Tensor fc2_w) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

// The coefficient ops of the mixed layers and their apply ops (coefficient_op.cpp has their
// math and how a layer chains them). `normalizers` lists the pool's codes in order, IN = 0,
// LN = 1, BN = 2; mean and var are the (N, C) moments of channel_moments, float32 or
// float64, and every other tensor has their dtype. batch_stats: BN normalizes by the batch
// statistics (else by running_mean and running_var); with batch_stats and the running
// statistics given (BN in the pool), they are updated in place like nn.BatchNorm2d's, with
// `momentum` (None: the cumulative average) and count = N * H * W values per channel.
TORCH_LIBRARY_FRAGMENT(en_seg, m) {
  m.set_python_module("en_seg.ops.coefficient_op");
  // EN: scale, shift (N, C) of y = scale * (x - mean) + shift (paper Eq. 3), the ratios λ
  // (N, K), and saved, what the backward needs (not differentiable).
  m.def(
      "exemplar_coefficients(Tensor mean, Tensor var, Tensor weight, Tensor bias, "
      "Tensor conv_w, Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, "
      "int[] normalizers, bool batch_stats, float? momentum, float eps, SymInt count) -> "
      "(Tensor scale, Tensor shift, Tensor ratios, Tensor saved)",
      {at::Tag::pt2_compliant_tag});
  // The gradients of mean, var, weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b from those
  // of scale and shift.
  m.def(
      "exemplar_coefficients_backward(Tensor grad_scale, Tensor grad_shift, Tensor saved, "
      "Tensor weight, Tensor conv_w, Tensor fc1_w, Tensor fc2_w, int[] normalizers, "
      "bool batch_stats) -> (Tensor grad_mean, Tensor grad_var, Tensor grad_weight, "
      "Tensor grad_bias, Tensor grad_conv_w, Tensor grad_fc1_w, Tensor grad_fc1_b, "
      "Tensor grad_fc2_w, Tensor grad_fc2_b)",
      {at::Tag::pt2_compliant_tag});
  // y = scale * (x - mean) + shift, whose backward is the whole EN layer's: the gradients
  // of x and of the seven parameters, for mean = channel_moments(x)[0] and scale, shift,
  // saved from exemplar_coefficients of the same parameters.
  m.def(
      "exemplar_norm_apply(Tensor x, Tensor mean, Tensor scale, Tensor shift, Tensor saved, "
      "Tensor weight, Tensor bias, Tensor conv_w, Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, "
      "Tensor fc2_b, int[] normalizers, bool batch_stats) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // SN: scale, shift (N, C) and saved.
  m.def(
      "switchable_coefficients(Tensor mean, Tensor var, Tensor weight, Tensor bias, "
      "Tensor mean_weight, Tensor var_weight, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, int[] normalizers, "
      "bool batch_stats, float? momentum, float eps, SymInt count) -> "
      "(Tensor scale, Tensor shift, Tensor saved)",
      {at::Tag::pt2_compliant_tag});
  // The gradients of mean, var, weight, bias, mean_weight, var_weight.
  m.def(
      "switchable_coefficients_backward(Tensor grad_scale, Tensor grad_shift, Tensor saved, "
      "Tensor weight, int[] normalizers, bool batch_stats) -> (Tensor grad_mean, "
      "Tensor grad_var, Tensor grad_weight, Tensor grad_bias, Tensor grad_mean_weight, "
      "Tensor grad_var_weight)",
      {at::Tag::pt2_compliant_tag});
  // As exemplar_norm_apply, for SN's four parameters.
  m.def(
      "switchable_norm_apply(Tensor x, Tensor mean, Tensor scale, Tensor shift, Tensor saved, "
      "Tensor weight, Tensor bias, Tensor mean_weight, Tensor var_weight, int[] normalizers, "
      "bool batch_stats) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // A whole EN layer in one call: channel_moments, exemplar_coefficients (gradients disabled,
  // count = N * H * W) and exemplar_norm_apply, or channel_affine where gradients are
  // disabled. y like x, the ratios λ (N, K) not differentiable.
  m.def(
      "exemplar_norm(Tensor x, Tensor weight, Tensor bias, Tensor conv_w, Tensor fc1_w, "
      "Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, int[] normalizers, "
      "bool batch_stats, float? momentum, float eps) -> (Tensor y, Tensor ratios)",
      {at::Tag::pt2_compliant_tag});
  // As exemplar_norm, for SN.
  m.def(
      "switchable_norm(Tensor x, Tensor weight, Tensor bias, Tensor mean_weight, "
      "Tensor var_weight, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "Tensor(c!)? num_batches_tracked, int[] normalizers, bool batch_stats, float? momentum, "
      "float eps) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}
