"""Settings of this process that make its timings steady: seeds, denormals, glibc malloc.

- Denormal floats are flushed to zero on the CPU (``torch.set_flush_denormal``): x86 CPUs
  take ~100x longer on them, and a randomly initialised network's gradients drift into
  them after a few training steps, unevenly between runs, which made one model iteration
  take from 5 s to 13 s.
- glibc malloc's thresholds are fixed (``mallopt``): blocks up to 32 MiB are reused from
  the heap, larger ones mapped anew (with page faults) by every variant alike. By default
  glibc adapts the thresholds to the allocation history and may hand freed activations
  back to the kernel; the next step then pays page faults, which made a step up to 2.5x
  slower depending on which variant ran before.
"""
import ctypes

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def steady(device: str, seed: int = 0) -> None:
    """Seed torch; on the CPU (``device='cpu'``) flush denormals and fix malloc's
    thresholds; on a GPU keep denormals."""
    torch.manual_seed(seed)
    # Returns False where the CPU cannot flush them.
    torch.set_flush_denormal(device == 'cpu')
    if device == 'cpu':
        fix_malloc_thresholds()


def fix_malloc_thresholds(mmap_threshold: int = 32 * 2 ** 20,
                          trim_threshold: int = 2 ** 30) -> None:
    """Blocks up to ``mmap_threshold`` bytes come from and return to the heap, which is
    trimmed only beyond ``trim_threshold`` free bytes; larger blocks are mapped and
    unmapped. A no-op without glibc."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
