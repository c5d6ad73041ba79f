"""Where an EN layer's time goes: its passes over X against GroupNorm's, which make the
same memory passes, and what the layer costs beyond them.

At each shape and thread count, timed in turn in one run (:func:`.timing.fastest`):

- ``EN`` and ``GN(32)``: the whole layer's forward + backward (:func:`.layers.layer_step`);
- ``EN passes forward``: ``channel_moments`` then ``channel_affine``, the forward's two
  passes over X; ``EN passes backward``: ``channel_affine_grad_sums`` then
  ``channel_norm_input_grad``, the backward's two;
- ``GN(32) kernels forward`` / ``backward``: ATen's ``native_group_norm`` and
  ``native_group_norm_backward``, GroupNorm's whole forward and backward below autograd.

A layer's time less its passes' (kernels') is what it spends on everything else: for EN
the coefficient ops (the IN / LN / BN statistics, the ratio branch and their backward),
dispatch, autograd and Python; for GroupNorm the last three. Inputs are float32 NCHW,
standard normal; the (N, C) coefficients the passes take are too, since their values do
not change the passes' work.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

from en_seg.models import ExemplarNorm2d

from .layers import Shape, layer_input, layer_step
from .timing import Step, Timing, fastest

#: The steps of a case, in the order they are timed.
STEPS = ('EN', 'GN(32)', 'EN passes forward', 'EN passes backward', 'GN(32) kernels forward',
         'GN(32) kernels backward')


@dataclass
class PassesCase:
    """Seconds per call of every :data:`STEPS` step at one thread count and shape."""
    threads: int
    shape: Shape
    seconds: Dict[str, float] = field(default_factory=dict)


def _en_passes(x: Tensor, grad: Tensor) -> Dict[str, Step]:
    ops = torch.ops.en_seg
    n, c = x.shape[:2]
    mean, _ = ops.channel_moments(x)
    scale, shift, grad_mean, grad_var = torch.randn(4, n, c, device=x.device).unbind(0)

    def forward() -> None:
        moments = ops.channel_moments(x)
        ops.channel_affine(x, moments[0], scale, shift)

    def backward() -> None:
        sums = ops.channel_affine_grad_sums(grad, x, mean)
        ops.channel_norm_input_grad(grad, x, mean, scale, sums[0], grad_mean, grad_var)

    return {'EN passes forward': forward, 'EN passes backward': backward}


def _group_norm_kernels(x: Tensor, grad: Tensor, layer: nn.GroupNorm) -> Dict[str, Step]:
    aten = torch.ops.aten
    n, c, h, w = x.shape
    args = (n, c, h * w, layer.num_groups)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    _, mean, rstd = aten.native_group_norm(x, weight, bias, *args, layer.eps)

    def forward() -> None:
        aten.native_group_norm(x, weight, bias, *args, layer.eps)

    def backward() -> None:
        aten.native_group_norm_backward(grad, x, mean, rstd, weight, *args, [True, True, True])

    return {'GN(32) kernels forward': forward, 'GN(32) kernels backward': backward}


def measure(shapes: Sequence[Shape], device: str, threads: Sequence[int],
            timing: Timing) -> List[PassesCase]:
    """Every :data:`STEPS` step at every intra-op thread count of ``threads`` and every
    (N, C, H, W) of ``shapes`` (C divisible by 32), on ``device`` ('cpu' or 'cuda'), timed
    as ``timing`` says."""
    cases = []
    for thread_count in threads:
        torch.set_num_threads(thread_count)
        for shape in shapes:
            x = layer_input(shape, 'float32', 'nchw', device, True)
            grad = layer_input(shape, 'float32', 'nchw', device, False)
            en = ExemplarNorm2d(shape[1]).to(device).train()
            gn = nn.GroupNorm(32, shape[1]).to(device)
            steps = {'EN': layer_step(en, x, grad), 'GN(32)': layer_step(gn, x, grad)}
            # Below autograd: no input of theirs requires a gradient.
            steps.update(_en_passes(x.detach(), grad))
            steps.update(_group_norm_kernels(x.detach(), grad, gn))
            for step in steps.values():
                step()
            case = PassesCase(thread_count, shape)
            case.seconds = fastest(steps, thread_count, timing)
            cases.append(case)
    return cases
