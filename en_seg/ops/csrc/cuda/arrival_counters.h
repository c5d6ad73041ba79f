// The arrival counters the one-launch reductions count their blocks at (arrival.cuh).
#pragma once

#include <cstdint>

namespace en_seg {

// `count` unsigned counters in device memory, zero, for a launch on the current device's
// current stream; the launch leaves them zero. One buffer per (device, stream), zeroed when
// first made or grown and never again: launches on one stream run one after another, and
// each leaves its counters as it found them.
unsigned* arrival_counters(int64_t count);

}  // namespace en_seg
