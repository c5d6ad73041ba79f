"""The ratio branch alone (docs/method.md#ratio-branch, steps 2-6, paper Sec. 3.3):
forward + backward, the gradients of all 8 inputs as in training, by the compiled op
``torch.ops.en_seg.exemplar_ratios`` (``impl='op'``) and by the pure-PyTorch reference
(``impl='reference'``), through the dispatch ExemplarNorm2d uses
(:func:`en_seg.ops.exemplar_ratios`); K = 3 (IN, LN, BN), r = min(32, C), π = 50.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from en_seg.models import ExemplarNorm2d
from en_seg.ops import exemplar_ratios

from .timing import Step, Timing, fastest

IMPLS = ('reference', 'op')


@dataclass
class RatioCase:
    """Seconds per forward + backward of each of :data:`IMPLS` at N samples, C channels."""
    threads: int
    n: int
    c: int
    seconds: Dict[str, float]


def ratio_inputs(n: int, c: int, device: str, seed: int = 0) -> List[torch.Tensor]:
    """The ratio branch's inputs as ExemplarNorm2d(C) passes them in training: pooled
    (N, C), means (N, K, C) and rstds (N, K, C) of order 1, and the layer's initial
    parameters, all float32 and requiring grad."""
    torch.manual_seed(seed)
    layer = ExemplarNorm2d(c)
    k = layer.num_normalizers
    stats = [torch.randn(n, c), torch.randn(n, k, c), torch.rand(n, k, c) + 0.5]
    params = [layer.ratio_conv.weight, layer.ratio_fc1.weight, layer.ratio_fc1.bias,
              layer.ratio_fc2.weight, layer.ratio_fc2.bias]
    return [t.detach().to(device).requires_grad_() for t in (*stats, *params)]


def measure(ns: Sequence[int], cs: Sequence[int], device: str, threads: Sequence[int],
            timing: Timing) -> List[RatioCase]:
    """Both implementations at every thread count, N and C, timed in turn."""
    cases = []
    for thread_count in threads:
        torch.set_num_threads(thread_count)
        for n in ns:
            for c in cs:
                inputs = ratio_inputs(n, c, device)
                grad = torch.randn(n, 3, device=device)
                steps = {impl: _step(inputs, grad, impl) for impl in IMPLS}
                cases.append(RatioCase(thread_count, n, c,
                                       fastest(steps, thread_count, timing)))
    return cases


def _step(inputs: List[torch.Tensor], grad: torch.Tensor, impl: str) -> Step:
    def step() -> None:
        torch.autograd.grad(exemplar_ratios(*inputs, impl=impl), inputs, grad)

    return step
