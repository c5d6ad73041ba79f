// arrival_counters: a zeroed buffer per (device, stream), held for the process's life.
#include "arrival_counters.h"

#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

namespace en_seg {
namespace {

// Counters a buffer holds at least: enough for every layer of the usual models, so that a
// buffer is rarely grown (each growth zeroes a new one on the stream).
constexpr int64_t kMinCounters = 4096;

}  // namespace

unsigned* arrival_counters(int64_t count) {
  static std::mutex mutex;
  // Never destroyed: tensors must not be freed after the CUDA caching allocator at exit.
  static auto* buffers =
      new std::map<std::pair<c10::DeviceIndex, cudaStream_t>, at::Tensor>();
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  const std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& buffer = (*buffers)[{stream.device_index(), stream.stream()}];
  if (!buffer.defined() || buffer.numel() < count) {
    // Enqueued on `stream`: the zeros precede every launch that uses them, and the buffer
    // it replaces is only reused by the caching allocator after this stream's earlier work.
    buffer = at::zeros({std::max(count, kMinCounters)},
                       at::TensorOptions().dtype(at::kInt).device(at::kCUDA,
                                                                  stream.device_index()));
  }
  return reinterpret_cast<unsigned*>(buffer.data_ptr<int>());
}

}  // namespace en_seg
