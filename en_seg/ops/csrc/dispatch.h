// Calling en_seg ops through the dispatcher from C++. The Autograd kernels of every op
// family (channel_op.cpp, ratio_op.cpp, coefficient_op.cpp) call their op below autograd and
// their backward ops by name, so that each backend's kernel, and a tracer such as
// torch.compile's, is reached exactly as from Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>

#include <initializer_list>

namespace en_seg {

// The typed handle of op `name` ("en_seg::..."), overload "". Callers keep it in a static.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Whether a call records a graph: gradients enabled and some input requires grad. Where not,
// an Autograd kernel calls its op below autograd directly, without an autograd node.
inline bool records_graph(std::initializer_list<const at::Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : inputs) {
    if (t->requires_grad()) return true;
  }
  return false;
}

}  // namespace en_seg
