// Scratch memory of the CPU kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace en_seg {

// `size` values that the kernel writes before it reads them, left uninitialized: zeroing
// tens of KiB first (as a std::vector's value-initialization does) costs as much as a
// small layer's arithmetic.
template <typename T>
std::unique_ptr<T[]> uninitialized(int64_t size) {
  return std::unique_ptr<T[]>(new T[static_cast<std::size_t>(size)]);
}

}  // namespace en_seg
