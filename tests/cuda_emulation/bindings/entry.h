// What every C entry point of the bindings shares.
#pragma once

#include "emulation/runtime.h"

// The libraries are built with hidden visibility: only the entry points are exported.
#define EMU_EXPORT __attribute__((visibility("default")))

namespace emu {

// Runs a launcher as one host-side call: errors of earlier calls cleared first.
template <typename Launcher>
int run_launcher(const Launcher& launcher) {
  reset();
  return static_cast<int>(launcher());
}

}  // namespace emu
