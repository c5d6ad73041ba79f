"""The compiled ratio op ``torch.ops.en_seg.exemplar_ratios`` and the dispatch to it.

docs/method.md#ratio-branch, steps 2-6 (paper Sec. 3.3, Fig. 2, Eq. 4). The op (csrc/ratio_op*,
CPU and CUDA kernels) serves the layers whose coefficients are PyTorch code, e.g. with
synchronized BN statistics; the coefficient ops (:mod:`.coefficient_op`) compute the ratios
inside. This module registers its fake kernels, so that ``torch.compile`` traces it without
a graph break; its autograd formula, the op ``en_seg::exemplar_ratios_backward``, is C++
(csrc/ratio_op.cpp).

``torch.ops.en_seg.exemplar_ratios(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w,
fc2_b)`` returns ``(ratios, activations)``: the ratios λ (N, K) and, not differentiable,
what its backward needs of every sample, so that the backward recomputes nothing and saves
5 tensors rather than 8: activations (N, K + K² + πK + K·C/r + K·C) holds λ, v = zᵀ z,
h = tanh(W1 v + b1), z (C/r, K) and pooled - means (K, C) (csrc/ratio_math.h, SavedLayout).
``torch.ops.en_seg.exemplar_ratios_backward(grad, activations, rstds, conv_w, fc1_w,
fc2_w)`` returns the gradients of the forward's 8 inputs.
"""

import torch
from torch import Tensor

from . import reference
from .library import EXTENSION_AVAILABLE, use_ops


def exemplar_ratios(pooled: Tensor, means: Tensor, rstds: Tensor, conv_weight: Tensor,
                    fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
                    fc2_bias: Tensor, impl: str = 'op') -> Tensor:
    """Per-sample ratios λ of K normalizers (docs/method.md#ratio-branch, steps 2-6, paper
    Sec. 3.3, Eq. 4), by the compiled op or the pure-PyTorch reference.

    Args:
        pooled: (N, C) average-pooled features, the per-(n, c) means of X.
        means: (N, K, C) normalizer k's mean at every (n, c); 1 <= K <= 8.
        rstds: (N, K, C) normalizer k's 1 / sqrt(variance + eps) at every (n, c).
        conv_weight: (C / r, r, 1) grouped 1-D convolution weight, no bias.
        fc1_weight, fc1_bias: (πK, K²) and (πK,), the first fully connected layer.
        fc2_weight, fc2_bias: (K, πK) and (K,), the second fully connected layer.
        impl: ``'op'`` for ``torch.ops.en_seg.exemplar_ratios`` where the ops run pooled
            (:func:`~en_seg.ops.library.use_ops`: CPU float32 / float64, CUDA float32, not
            while exporting), else :func:`~en_seg.ops.reference.exemplar_ratios`;
            ``'reference'`` for the latter. Default: 'op'.
        All tensors share one floating dtype and device. Differentiable in every input
        (first order; the op has no double backward).

    Returns:
        (N, K) ratios in the inputs' dtype; every row is a softmax and sums to 1.

    Raises:
        ValueError: for an ``impl`` not in :data:`~en_seg.ops.library.IMPLS`.
        RuntimeError: from the op, for shapes other than the above, mixed dtypes or
            devices, naming the tensor, its shape and the expected shape.

    Warns:
        UserWarning: as :func:`~en_seg.ops.library.use_ops`.
    """
    args = (pooled, means, rstds, conv_weight, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    if use_ops(impl, pooled):
        return _OP(*args)[0]
    return reference.exemplar_ratios(*args)


if EXTENSION_AVAILABLE:
    # The overload the dispatch calls: one attribute lookup less per call.
    _OP = torch.ops.en_seg.exemplar_ratios.default

    @torch.library.register_fake('en_seg::exemplar_ratios')
    def _exemplar_ratios_fake(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b):
        torch._check(means.dim() == 3 and conv_w.dim() == 3 and fc1_w.dim() == 2,
                     lambda: 'en_seg::exemplar_ratios: means must be (N, K, C), conv_w '
                             f'(C / r, r, 1) and fc1_w (P, K * K), got {tuple(means.shape)}, '
                             f'{tuple(conv_w.shape)} and {tuple(fc1_w.shape)}')
        n, k, c = means.shape
        saved = k + k * k + fc1_w.shape[0] + k * conv_w.shape[0] + k * c
        return pooled.new_empty(n, k), pooled.new_empty(n, saved)

    @torch.library.register_fake('en_seg::exemplar_ratios_backward')
    def _exemplar_ratios_backward_fake(grad, activations, rstds, conv_w, fc1_w, fc2_w):
        def like(tensor):
            return torch.empty_like(tensor, memory_format=torch.contiguous_format)

        n, k, c = rstds.shape
        return (rstds.new_empty(n, c), like(rstds), like(rstds), like(conv_w), like(fc1_w),
                fc1_w.new_empty(fc1_w.shape[0]), like(fc2_w), fc2_w.new_empty(k))
