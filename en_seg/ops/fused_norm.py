"""Fused statistics and affine apply of the mixed normalization layers (EN, SN).

docs/method.md#statistics and #output (paper Sec. 3.1-3.3, Eq. 3). A mixed layer's output is
an affine map of X per (n, c), ``y = scale * (x - mean) + shift``, whose (N, C)
coefficients are a small differentiable function of the per-(n, c) moments (merging them
into IN / LN / BN statistics, the ratio branch, γ and β). Four compiled ops
(csrc/moments_apply.cpp; CPU and CUDA kernels) give a layer BatchNorm's memory passes:

- ``torch.ops.en_seg.channel_moments(x) -> (mean, var)``: one read of X.
- ``torch.ops.en_seg.channel_affine(x, center, scale, shift)``: one read and one write.
- ``torch.ops.en_seg.channel_affine_grad_sums(grad_y, x, center) -> (Σ dy, Σ dy (x - c))``
  and ``torch.ops.en_seg.channel_affine_input_grad(grad_y, x, center, dy_scale, x_scale,
  shift)``: the backward's one reduction pass and one elementwise pass.

This module registers the ops' fake kernels and autograd formulas (so each op is a proper
differentiable PyTorch op that ``torch.compile`` traces), and :func:`channel_affine_norm`,
which strings them together into a layer's forward and backward.
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.en_seg.*)
except ImportError:
    _LOADED = False
else:
    # An extension built before these ops existed loads but lacks them.
    _LOADED = hasattr(torch.ops.en_seg, 'channel_moments')

#: The coefficient function of :func:`channel_affine_norm`: (mean, var) -> (scale, shift).
Coefficients = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]

_DEVICES_WITH_KERNELS = frozenset(
    device for device in ('cpu', 'cuda')
    if _LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(
        'en_seg::channel_moments', device.upper()))


def fused_kernels_available(x: Tensor) -> bool:
    """Whether the fused ops have a kernel for ``x``'s device (extension built, with CUDA
    kernels for a CUDA tensor) and dtype (float16, bfloat16, float32 or float64)."""
    return (x.device.type in _DEVICES_WITH_KERNELS
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64))


def channel_affine_norm(x: Tensor, coefficients: Coefficients) -> Tensor:
    """Normalize x by an affine map per (n, c) computed from its per-(n, c) moments.

    ``mean, var = channel_moments(x)``; ``scale, shift = coefficients(mean, var)``;
    returns ``scale * (x - mean) + shift`` (paper Eq. 3 folded as in docs/method.md#output).

    Gradients flow through the moments into x and through ``coefficients`` (any
    differentiable PyTorch code, e.g. the ratio branch, γ, β) into whatever it uses, by
    ordinary autograd. The backward makes one reduction pass over (dY, X) and, after
    autograd has taken the (N, C) sums through ``coefficients``, one elementwise pass:
    ``dX = scale * dY + (2 g_var / M) (X - mean) + g_mean / M``, with g the total gradients
    of the moments and M = H * W. Saved for backward: X and (N, C) tensors only.
    First-order only (no double backward through X). Under ``torch.compile`` (and with grad
    disabled) the ops are composed directly, with their own autograd formulas, which is
    traceable but makes a few more passes over X in the backward.

    Args:
        x: (N, C, H, W) float16, bfloat16, float32 or float64 on a device for which
            :func:`fused_kernels_available`; contiguous or channels_last (other strides are
            copied first).
        coefficients: maps mean, var ((N, C), float32, float64 for a float64 x; var is the
            biased variance) to scale and shift ((N, C), same dtype). Called once per call.

    Returns:
        y shaped like x, in x's dtype and memory format.

    Raises:
        RuntimeError: from the ops, for an x that is not 4-D or has H * W = 0, or for
            coefficients of another shape, dtype or device.
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        # Nothing to differentiate, or a trace that needs the ops' own autograd formulas.
        mean, var = torch.ops.en_seg.channel_moments(x)
        scale, shift = coefficients(mean, var)
        return torch.ops.en_seg.channel_affine(x, mean, scale, shift)
    relay = _GradRelay()
    mean, var = _Moments.apply(x, relay)
    scale, shift = coefficients(mean, var)
    return _Affine.apply(x, mean, scale, shift, relay)


class _GradRelay:
    """Carries dY and scale from :class:`_Affine`'s backward to :class:`_Moments`'.

    Autograd runs _Affine's backward first (its input ``mean`` is _Moments' output) and
    _Moments' last, after the (N, C) coefficient graph between them, so _Moments' backward
    can finish dX in the one elementwise pass that needs dY and the moments' gradients.
    """

    def __init__(self) -> None:
        self.grad_y: Optional[Tensor] = None
        self.scale: Optional[Tensor] = None


class _Moments(torch.autograd.Function):
    """(mean, var) = channel_moments(x); its backward computes all of dX (see _Affine)."""

    @staticmethod
    def forward(ctx, x: Tensor, relay: _GradRelay) -> Tuple[Tensor, Tensor]:
        mean, var = torch.ops.en_seg.channel_moments(x)
        ctx.save_for_backward(x, mean)
        ctx.relay = relay
        return mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor) -> Tuple[Optional[Tensor], None]:
        x, mean = ctx.saved_tensors
        relay = ctx.relay
        grad_y, scale = relay.grad_y, relay.scale
        relay.grad_y = relay.scale = None
        inv_m = 1.0 / (x.shape[2] * x.shape[3])
        x_scale = grad_var * (2 * inv_m)
        shift = grad_mean * inv_m
        if grad_y is None:
            # y did not reach the loss: only the moments' own gradient remains.
            return torch.ops.en_seg.channel_affine(x, mean, x_scale, shift), None
        return torch.ops.en_seg.channel_affine_input_grad(grad_y, x, mean, scale, x_scale,
                                                          shift), None


class _Affine(torch.autograd.Function):
    """y = scale * (x - mean) + shift; its backward is the reduction pass.

    It returns the gradients of mean, scale and shift from Σ dY and Σ dY (X - mean), and no
    gradient for x: the direct term scale * dY joins the moments' terms in _Moments'
    backward, so dX is written once.
    """

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor,
                relay: _GradRelay) -> Tensor:
        ctx.save_for_backward(x, mean, scale)
        ctx.relay = relay
        return torch.ops.en_seg.channel_affine(x, mean, scale, shift)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor) -> Tuple[None, Tensor, Tensor, Tensor, None]:
        x, mean, scale = ctx.saved_tensors
        sum_dy, sum_dy_xc = torch.ops.en_seg.channel_affine_grad_sums(grad_y, x, mean)
        if ctx.needs_input_grad[0]:
            ctx.relay.grad_y, ctx.relay.scale = grad_y, scale
        return None, -scale * sum_dy, sum_dy_xc, sum_dy, None


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


if _LOADED:

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

    @torch.library.register_fake('en_seg::channel_affine_input_grad')
    def _channel_affine_input_grad_fake(grad_y, x, center, dy_scale, x_scale, shift):
        _check_fake_input('en_seg::channel_affine_input_grad', x)
        return _activation_like(x)

    def _moments_setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[0])

    def _moments_backward(ctx, grad_mean, grad_var):
        # mean and var are averages over M = H * W values:
        # d mean / dx = 1 / M, d var / dx = 2 (x - mean) / M.
        x, mean = ctx.saved_tensors
        inv_m = 1.0 / (x.shape[2] * x.shape[3])
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        return torch.ops.en_seg.channel_affine(x, mean, grad_var * (2 * inv_m),
                                               grad_mean * inv_m)

    torch.library.register_autograd('en_seg::channel_moments', _moments_backward,
                                    setup_context=_moments_setup_context)

    def _affine_setup_context(ctx, inputs, output):
        x, center, scale, _ = inputs
        ctx.save_for_backward(x, center, scale)

    def _affine_backward(ctx, grad_y):
        x, center, scale = ctx.saved_tensors
        sum_dy, sum_dy_xc = torch.ops.en_seg.channel_affine_grad_sums(grad_y, x, center)
        grad_x = None
        if ctx.needs_input_grad[0]:
            zeros = torch.zeros_like(scale)
            grad_x = torch.ops.en_seg.channel_affine(grad_y, zeros, scale, zeros)
        return grad_x, -scale * sum_dy, sum_dy_xc, sum_dy

    torch.library.register_autograd('en_seg::channel_affine', _affine_backward,
                                    setup_context=_affine_setup_context)
