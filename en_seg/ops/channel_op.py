"""The channel ops: the per-(n, c) passes over X of the mixed normalization layers (EN, SN).

docs/method.md#statistics and #output (paper Sec. 3.1-3.3, Eq. 3). A mixed layer's output is
an affine map of X per (n, c), ``y = scale * (x - mean) + shift``, whose (N, C)
coefficients are a small differentiable function of the per-(n, c) moments (merging them
into IN / LN / BN statistics, the ratio branch, γ and β). Four compiled ops
(csrc/channel_op.cpp; CPU and CUDA kernels) give a layer BatchNorm's memory passes:

- ``torch.ops.en_seg.channel_moments(x) -> (mean, var)``: one read of X.
- ``torch.ops.en_seg.channel_affine(x, center, scale, shift)``: one read and one write.
- ``torch.ops.en_seg.channel_affine_grad_sums(grad_y, x, center) -> (Σ dy, Σ dy (x - c))``:
  a backward's reduction pass.
- ``torch.ops.en_seg.channel_norm_input_grad(grad_y, x, mean, scale, sum_dy, grad_mean,
  grad_var)``: a mixed layer's whole input gradient in one elementwise pass, given the
  gradients that reach its moments.

This module registers their fake kernels, so that ``torch.compile`` traces them (the
autograd formulas of the moments and the affine map are C++, csrc/channel_op.cpp), and gives
:func:`channel_affine_norm`, a layer from a coefficient function written in PyTorch; the
coefficient ops (:mod:`.coefficient_op`) chain these ops into a layer with one backward
pass over X.
"""
import contextlib
from typing import Callable, Tuple

import torch
from torch import Tensor

from . import reference
from .library import EXTENSION_AVAILABLE, use_ops

#: The coefficient function of :func:`channel_affine_norm`: (mean, var) -> (scale, shift).
Coefficients = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


def channel_affine_norm(x: Tensor, coefficients: Coefficients, impl: str = 'op') -> Tensor:
    """Normalize x by an affine map per (n, c) computed from its per-(n, c) moments.

    ``mean, var = channel_moments(x)``; ``scale, shift = coefficients(mean, var)``;
    returns ``scale * (x - mean) + shift`` (paper Eq. 3 folded as in docs/method.md#output).

    Gradients flow through the moments into x and through ``coefficients`` (any
    differentiable PyTorch code, e.g. the ratio branch, γ, β, an all-reduce) into whatever it
    uses, by the ops' own autograd formulas: the backward makes a reduction pass and three
    elementwise passes over X (the affine map's dX, the moments' and their sum), where
    :mod:`en_seg.ops.coefficient_op` makes one of each. Saved for backward: X and (N, C)
    tensors only. First-order only. Runs with autocast disabled.

    Args:
        x: (N, C, H, W) float16, bfloat16, float32 or float64; contiguous or channels_last
            (the ops copy other strides first).
        coefficients: maps mean, var ((N, C), float32, float64 for a float64 x; var is the
            biased variance) to scale and shift ((N, C), same dtype). Called once per call.
        impl: ``'op'``: the compiled ops where they run x
            (:func:`~en_seg.ops.library.use_ops`), else
            :func:`~en_seg.ops.reference.channel_affine_norm`; ``'reference'``: the latter.
            Default: 'op'.

    Returns:
        y shaped like x, in x's dtype and memory format.

    Raises:
        ValueError: for an ``impl`` not in :data:`~en_seg.ops.library.IMPLS`.
        RuntimeError: from the ops, for an x that is not 4-D or has H * W = 0, or for
            coefficients of another shape, dtype or device.

    Warns:
        UserWarning: as :func:`~en_seg.ops.library.use_ops`.
    """
    # Devices without autocast (meta) have nothing to disable, and refuse the context.
    no_autocast = (torch.autocast(x.device.type, enabled=False)
                   if torch.amp.is_autocast_available(x.device.type) else contextlib.nullcontext())
    with no_autocast:
        if not use_ops(impl, x):
            return reference.channel_affine_norm(x, coefficients)
        mean, var = torch.ops.en_seg.channel_moments(x)
        scale, shift = coefficients(mean, var)
        return torch.ops.en_seg.channel_affine(x, mean, scale, shift)


def _stats_like(x: Tensor) -> Tensor:
    """An empty (N, C) tensor in the statistics dtype of x (float64 for float64 x, else
    float32)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(x.shape[:2], dtype=dtype)


def _check_fake_input(op: str, x: Tensor) -> None:
    torch._check(x.dim() == 4,
                 lambda: f'{op}: expects a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}')


def _activation_like(x: Tensor) -> Tensor:
    """An empty tensor like x in the layout the kernels write (channels_last or
    contiguous)."""
    channels_last = (not x.is_contiguous()
                     and x.is_contiguous(memory_format=torch.channels_last))
    return torch.empty_like(x, memory_format=torch.channels_last if channels_last
                            else torch.contiguous_format)


if EXTENSION_AVAILABLE:

    @torch.library.register_fake('en_seg::channel_moments')
    def _channel_moments_fake(x):
        _check_fake_input('en_seg::channel_moments', x)
        return _stats_like(x), _stats_like(x)

    @torch.library.register_fake('en_seg::channel_affine')
    def _channel_affine_fake(x, center, scale, shift):
        _check_fake_input('en_seg::channel_affine', x)
        return _activation_like(x)

    @torch.library.register_fake('en_seg::channel_affine_grad_sums')
    def _channel_affine_grad_sums_fake(grad_y, x, center):
        _check_fake_input('en_seg::channel_affine_grad_sums', x)
        return _stats_like(x), _stats_like(x)

    @torch.library.register_fake('en_seg::channel_norm_input_grad')
    def _channel_norm_input_grad_fake(grad_y, x, mean, scale, sum_dy, grad_mean, grad_var):
        _check_fake_input('en_seg::channel_norm_input_grad', x)
        return _activation_like(x)
