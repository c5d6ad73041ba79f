// The en_seg operator library: the Python module en_seg.ops._C and every op's schema.
// Kernels register themselves per backend with TORCH_LIBRARY_IMPL in their own files;
// fake (meta) kernels and autograd formulas are registered from Python (en_seg/ops).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module: importing en_seg.ops._C loads this library, whose static initialisers
// register the ops below with the dispatcher (torch.ops.en_seg.*).
PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                               nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(en_seg, m) {
  // Tells a user of torch.ops.en_seg.exemplar_ratios without its fake kernel which Python
  // module registers it.
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
