"""The time of a step: a median of ``torch.utils.benchmark.Timer.blocked_autorange`` (which
synchronizes CUDA), and the lowest of the medians of several measuring rounds.

The steps of one comparison are measured in turn, ``repeats`` times, and each keeps its
lowest median: other processes on a shared machine only ever add time. The clock is the
wall clock or, with ``clock='cpu'``, the CPU time of this process (``time.process_time``),
which other processes change little; it adds up the time of every thread, spinning
included, so it measures one thread's work only.
"""
import time
from dataclasses import dataclass
from typing import Callable, Dict

from torch.utils.benchmark import Timer

#: The clocks a :class:`Timing` may name.
CLOCKS = ('wall', 'cpu')

Step = Callable[[], None]


@dataclass(frozen=True)
class Timing:
    """How steps are timed.

    Attributes:
        clock: ``'wall'``, or ``'cpu'`` for the CPU time of this process (with one thread;
            CPU work only). Default: 'wall'.
        min_run_time: seconds of timing per median. Default: 0.3.
        repeats: measuring rounds; each step keeps its lowest median. Default: 3.
    """
    clock: str = 'wall'
    min_run_time: float = 0.3
    repeats: int = 3


def median_seconds(step: Step, threads: int, timing: Timing) -> float:
    """Median seconds per call of ``step()`` with ``threads`` intra-op threads."""
    clock = {'timer': time.process_time} if timing.clock == 'cpu' else {}
    timer = Timer('step()', globals={'step': step}, num_threads=threads, **clock)
    return timer.blocked_autorange(min_run_time=timing.min_run_time).median


def fastest(steps: Dict[str, Step], threads: int, timing: Timing) -> Dict[str, float]:
    """Seconds per call of every step: the lowest of its medians over ``timing.repeats``
    rounds, each of which measures all steps in turn."""
    best = {name: float('inf') for name in steps}
    for _ in range(timing.repeats):
        for name, step in steps.items():
            best[name] = min(best[name], median_seconds(step, threads, timing))
    return best
