"""The fused forward of a mixed layer: moments, one coefficient op, one apply op.

docs/method.md#statistics, #running-statistics, #ratio-branch, #output and
#switchable-normalization. :func:`exemplar_norm` and :func:`switchable_norm` compute
ExemplarNorm2d's and SwitchableNorm2d's output with one call into the library, the layer op
``torch.ops.en_seg.exemplar_norm`` (``switchable_norm``), which runs three compiled ops
forward and three backward, whatever the pool (csrc/coefficient_op.cpp explains the chain):

- ``torch.ops.en_seg.channel_moments(x) -> (mean, var)`` (:mod:`en_seg.ops.channel_op`);
- ``torch.ops.en_seg.exemplar_coefficients(mean, var, weight, bias, conv_w, fc1_w, fc1_b,
  fc2_w, fc2_b, running_mean, running_var, num_batches_tracked, normalizers, batch_stats,
  momentum, eps, count) -> (scale, shift, ratios, saved)``: every normalizer's statistics,
  the running statistics' update (in place, as ``nn.BatchNorm2d``'s), the ratio branch and
  Eq. 3 folded into the (N, C) affine map; ``torch.ops.en_seg.switchable_coefficients``
  likewise for SN, without ratios;
- ``torch.ops.en_seg.exemplar_norm_apply(x, mean, scale, shift, saved, <parameters>,
  normalizers, batch_stats) -> y`` (``switchable_norm_apply`` for SN), whose backward is
  the layer's: ``channel_affine_grad_sums``, the coefficient op's backward
  (``exemplar_coefficients_backward``, ``switchable_coefficients_backward``: the gradients
  of mean, var and every parameter from those of scale and shift) and
  ``channel_norm_input_grad``. With gradients disabled, ``channel_affine`` instead.

The moments and the coefficients run with gradients disabled; the layer ops and every
autograd kernel are C++ (csrc/coefficient_op.cpp): a small layer's arithmetic costs less
than a call from Python. This module registers the inner ops' fake kernels, so that
``torch.compile`` traces the layer in one graph (the layer ops are composite: tracers see
the ops inside).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .channel_op import _activation_like
from .library import EXTENSION_AVAILABLE

#: The ops' codes of the pool's normalizers (their ``normalizers`` argument).
NORMALIZER_CODES = {'IN': 0, 'LN': 1, 'BN': 2}


def normalizer_codes(normalizers: Tuple[str, ...]) -> Tuple[int, ...]:
    """The ops' ``normalizers`` argument for a pool of names (a tuple), e.g. (0, 1, 2) for
    ('IN', 'LN', 'BN'); a layer asks once, when it is built."""
    return tuple(NORMALIZER_CODES[name] for name in normalizers)


def exemplar_norm(x: Tensor, weight: Tensor, bias: Tensor, conv_w: Tensor, fc1_w: Tensor,
                  fc1_b: Tensor, fc2_w: Tensor, fc2_b: Tensor,
                  running_mean: Optional[Tensor], running_var: Optional[Tensor],
                  num_batches_tracked: Optional[Tensor], normalizers: Sequence[int],
                  batch_stats: bool, momentum: Optional[float],
                  eps: float) -> Tuple[Tensor, Tensor]:
    """Exemplar Normalization of x (paper Eq. 3) by the compiled ops.

    Args:
        x: (N, C, H, W) float16, bfloat16, float32 or float64, where the ops run it
            (:func:`~en_seg.ops.library.available`).
        weight, bias: γ and β, (K, C); conv_w (C / r, r, 1), fc1_w (P, K²), fc1_b (P,),
            fc2_w (K, P), fc2_b (K,): the ratio branch. All in the statistics' dtype
            (float64 for a float64 x, else float32).
        running_mean, running_var: (C,) in the statistics' dtype, contiguous, or None;
            num_batches_tracked: int64 scalar or None. Updated in place, as by
            ``nn.BatchNorm2d``, when the pool has BN and ``batch_stats``
            (docs/method.md#running-statistics).
        normalizers: the pool as codes (:func:`normalizer_codes`).
        batch_stats: BN normalizes by the batch's statistics (else by the running ones,
            which must then be given).
        momentum: of the running statistics; None for their cumulative average.
        eps: added to every variance.

    Returns:
        ``(y, ratios)``: y like x (dtype and layout); the ratios λ (N, K) in the statistics'
        dtype, not differentiable. y is differentiable in x and in the seven parameters,
        first order: a gradient taken with ``create_graph=True`` refuses to be
        differentiated again (RuntimeError naming ``impl='reference'``).

    Raises:
        RuntimeError: from the ops, naming the argument, for shapes, dtypes or devices
            other than the above.
    """
    return _EXEMPLAR_NORM(x, weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b, running_mean,
                          running_var, num_batches_tracked, normalizers, batch_stats,
                          momentum, eps)


def switchable_norm(x: Tensor, weight: Tensor, bias: Tensor, mean_weight: Tensor,
                    var_weight: Tensor, running_mean: Optional[Tensor],
                    running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor],
                    normalizers: Sequence[int], batch_stats: bool,
                    momentum: Optional[float], eps: float) -> Tensor:
    """Switchable Normalization of x (docs/method.md#switchable-normalization) by the
    compiled ops.

    Args:
        x: as for :func:`exemplar_norm`.
        weight, bias: γ and β, (C,); mean_weight, var_weight: (K,), the importance weights
            before their softmax. In the statistics' dtype.
        running_mean, running_var, num_batches_tracked, normalizers, batch_stats, momentum,
            eps: as for :func:`exemplar_norm`; eps is added to the mixed variance.

    Returns:
        y like x, differentiable in x and the four parameters, first order, as for
        :func:`exemplar_norm`.

    Raises:
        RuntimeError: from the ops, as for :func:`exemplar_norm`.
    """
    return _SWITCHABLE_NORM(x, weight, bias, mean_weight, var_weight, running_mean,
                            running_var, num_batches_tracked, normalizers, batch_stats,
                            momentum, eps)


def _like(tensor: Tensor) -> Tensor:
    return torch.empty_like(tensor, memory_format=torch.contiguous_format)


def _pool_size(normalizers: Sequence[int]) -> int:
    torch._check(1 <= len(normalizers) <= 3,
                 lambda: f'normalizers must name 1 to 3 normalizers, got {list(normalizers)}')
    return len(normalizers)


def _exemplar_saved_values(n: int, c: int, k: int, conv_w: Tensor, fc1_w: Tensor) -> int:
    # csrc/coefficient_op.h, ExemplarSavedLayout: the ratio branch's activations per sample
    # (λ, v, h, z, d: K + K² + P + K·C/r + K·C), then ρ (K·C).
    return n * (k + k * k + fc1_w.shape[0] + k * conv_w.shape[0] + 2 * k * c)


if EXTENSION_AVAILABLE:
    # The overloads the layer functions call: one attribute lookup less per call.
    _EXEMPLAR_NORM = torch.ops.en_seg.exemplar_norm.default
    _SWITCHABLE_NORM = torch.ops.en_seg.switchable_norm.default

    @torch.library.register_fake('en_seg::exemplar_coefficients')
    def _exemplar_coefficients_fake(mean, var, weight, bias, conv_w, fc1_w, fc1_b, fc2_w,
                                    fc2_b, running_mean, running_var, num_batches_tracked,
                                    normalizers, batch_stats, momentum, eps, count):
        torch._check(mean.dim() == 2 and conv_w.dim() == 3 and fc1_w.dim() == 2,
                     lambda: 'en_seg::exemplar_coefficients: mean must be (N, C), conv_w '
                             f'(C / r, r, 1) and fc1_w (P, K * K), got {tuple(mean.shape)}, '
                             f'{tuple(conv_w.shape)} and {tuple(fc1_w.shape)}')
        n, c = mean.shape
        k = _pool_size(normalizers)
        saved = mean.new_empty(_exemplar_saved_values(n, c, k, conv_w, fc1_w))
        return mean.new_empty(n, c), mean.new_empty(n, c), mean.new_empty(n, k), saved

    @torch.library.register_fake('en_seg::exemplar_coefficients_backward')
    def _exemplar_coefficients_backward_fake(grad_scale, grad_shift, saved, weight, conv_w,
                                             fc1_w, fc2_w, normalizers, batch_stats):
        k = _pool_size(normalizers)
        return (_like(grad_scale), _like(grad_scale), _like(weight), _like(weight),
                _like(conv_w), _like(fc1_w), fc1_w.new_empty(fc1_w.shape[0]), _like(fc2_w),
                fc2_w.new_empty(k))

    @torch.library.register_fake('en_seg::exemplar_norm_apply')
    def _exemplar_norm_apply_fake(x, mean, scale, shift, saved, weight, bias, conv_w, fc1_w,
                                  fc1_b, fc2_w, fc2_b, normalizers, batch_stats):
        return _activation_like(x)

    @torch.library.register_fake('en_seg::switchable_coefficients')
    def _switchable_coefficients_fake(mean, var, weight, bias, mean_weight, var_weight,
                                      running_mean, running_var, num_batches_tracked,
                                      normalizers, batch_stats, momentum, eps, count):
        torch._check(mean.dim() == 2, lambda: 'en_seg::switchable_coefficients: mean must be '
                                              f'(N, C), got {tuple(mean.shape)}')
        n, c = mean.shape
        k = _pool_size(normalizers)
        # csrc/coefficient_op.h, SwitchableSavedLayout: r, m, s (N, C each), the LN and BN
        # statistics (2N + 2C), w and w' (2K).
        saved = mean.new_empty(3 * n * c + 2 * n + 2 * c + 2 * k)
        return mean.new_empty(n, c), mean.new_empty(n, c), saved

    @torch.library.register_fake('en_seg::switchable_coefficients_backward')
    def _switchable_coefficients_backward_fake(grad_scale, grad_shift, saved, weight,
                                               normalizers, batch_stats):
        k = _pool_size(normalizers)
        return (_like(grad_scale), _like(grad_scale), _like(weight), _like(weight),
                weight.new_empty(k), weight.new_empty(k))

    @torch.library.register_fake('en_seg::switchable_norm_apply')
    def _switchable_norm_apply_fake(x, mean, scale, shift, saved, weight, bias, mean_weight,
                                    var_weight, normalizers, batch_stats):
        return _activation_like(x)
