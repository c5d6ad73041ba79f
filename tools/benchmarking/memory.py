"""The peak tensor memory of a step: the largest total of tensor bytes live during it
beyond those live before it (its outputs, saved activations, gradients and temporaries;
not its inputs, parameters or optimizer state).

On the CPU it is replayed from every allocation and free that torch.profiler records with
``profile_memory=True``, in time order; on a GPU it is ``torch.cuda.max_memory_allocated``.
"""
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def peak_bytes(step: Callable[[], None], device: str) -> int:
    """Peak bytes ``step()`` allocates on ``device`` ('cpu' or 'cuda') on top of what was
    allocated before it."""
    if device == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # Every allocation (+bytes) and free (-bytes) of the CPU allocator, in time order.
    records = sorted((event.start_ns(), event.nbytes())
                     for event in prof.profiler.kineto_results.events()
                     if event.name() == '[memory]' and event.device_type().name == 'CPU')
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak
