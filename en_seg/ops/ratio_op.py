"""The compiled ratio op ``torch.ops.en_seg.exemplar_ratios`` and the dispatch to it.

EN_SPEC.md, "Ratio branch", steps 2-6 (paper Sec. 3.3, Fig. 2, Eq. 4). The op is declared
in C++ (csrc/module.cpp) with CPU and CUDA kernels; this module registers its fake kernel,
so that ``torch.compile`` traces it without a graph break, and its autograd formula (the
op ``en_seg::exemplar_ratios_backward``). Where the extension is not built, the pure-PyTorch
reference :func:`~en_seg.models.ratio_branch.exemplar_ratios_reference` takes over.
"""
import warnings
from typing import Tuple

import torch
from torch import Tensor

from ..models.ratio_branch import exemplar_ratios_reference

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.en_seg.*)
except ImportError as error:
    _LOAD_ERROR = f'{type(error).__name__}: {error}'
else:
    _LOAD_ERROR = 'it was built from sources that predate en_seg::exemplar_ratios'

#: Whether the extension is built and has the op.
EXTENSION_AVAILABLE = hasattr(torch.ops.en_seg, 'exemplar_ratios')

#: Whether the op has CUDA kernels (the extension was built with CUDA).
CUDA_KERNELS_AVAILABLE = EXTENSION_AVAILABLE and (
    torch._C._dispatch_has_kernel_for_dispatch_key('en_seg::exemplar_ratios', 'CUDA'))

# (device type, dtype) pairs the kernels take: float32 and float64 on the CPU (float64 to
# check gradients), float32 on CUDA. Other inputs run the reference.
_KERNELS_OF_A_FULL_BUILD = frozenset({('cpu', torch.float32), ('cpu', torch.float64),
                                      ('cuda', torch.float32)})
_OP_KERNELS = frozenset(
    (device, dtype) for device, dtype in _KERNELS_OF_A_FULL_BUILD
    if EXTENSION_AVAILABLE and (device == 'cpu' or CUDA_KERNELS_AVAILABLE))

#: Implementations of the ratio branch :func:`exemplar_ratios` can run.
RATIO_IMPLS = ('op', 'reference')

_BUILD_HINT = ('build it with `pip install --no-build-isolation -e .` (or `make test`) in '
               'the en-seg checkout')
_warned = set()


def check_ratio_impl(impl: str) -> str:
    """Return ``impl`` if it names an implementation of the ratio branch.

    Raises:
        ValueError: if ``impl`` is not one of :data:`RATIO_IMPLS`.
    """
    if impl not in RATIO_IMPLS:
        raise ValueError(f'ratio_impl must be one of {RATIO_IMPLS}, got {impl!r}')
    return impl


def exemplar_ratios(pooled: Tensor, means: Tensor, rstds: Tensor, conv_weight: Tensor,
                    fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
                    fc2_bias: Tensor, impl: str = 'op') -> Tensor:
    """Per-sample ratios λ of K normalizers (EN_SPEC.md "Ratio branch" steps 2-6, paper
    Sec. 3.3, Eq. 4), by the compiled op or the pure-PyTorch reference.

    Args:
        pooled: (N, C) average-pooled features, the per-(n, c) means of X.
        means: (N, K, C) normalizer k's mean at every (n, c); 1 <= K <= 8.
        rstds: (N, K, C) normalizer k's 1 / sqrt(variance + eps) at every (n, c).
        conv_weight: (C / r, r, 1) grouped 1-D convolution weight, no bias.
        fc1_weight, fc1_bias: (πK, K²) and (πK,), the first fully connected layer.
        fc2_weight, fc2_bias: (K, πK) and (K,), the second fully connected layer.
        impl: ``'op'`` for ``torch.ops.en_seg.exemplar_ratios`` where it has a kernel (CPU
            float32 / float64, CUDA float32), else the reference; ``'reference'`` for
            :func:`~en_seg.models.ratio_branch.exemplar_ratios_reference`. Default: 'op'.
        All tensors share one floating dtype and device. Differentiable in every input
        (first order; the op has no double backward).

    Returns:
        (N, K) ratios in the inputs' dtype; every row is a softmax and sums to 1.

    Raises:
        ValueError: for an ``impl`` not in :data:`RATIO_IMPLS`.
        RuntimeError: from the op, for shapes other than the above, mixed dtypes or
            devices, naming the tensor, its shape and the expected shape.

    Warns:
        UserWarning: once per process and cause, when ``impl='op'`` falls back to the
            reference because the extension is not built (or built without CUDA for a
            CUDA input); the message says how to build it.
    """
    args = (pooled, means, rstds, conv_weight, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    if impl == 'op':
        # One set lookup on the hot path: the layer calls this once per forward.
        if (pooled.device.type, pooled.dtype) in _OP_KERNELS:
            return torch.ops.en_seg.exemplar_ratios.default(*args)
        _warn_if_not_built(pooled)
    else:
        check_ratio_impl(impl)
    return exemplar_ratios_reference(*args)


def _warn_if_not_built(pooled: Tensor) -> None:
    """Warn, once per cause, where a complete build would have had a kernel for pooled."""
    device = pooled.device.type
    if (device, pooled.dtype) not in _KERNELS_OF_A_FULL_BUILD:
        return
    if not EXTENSION_AVAILABLE:
        _warn_once(f'en_seg: the compiled ratio op en_seg.ops._C could not be loaded '
                   f'({_LOAD_ERROR}); ExemplarNorm2d uses the slower pure-PyTorch reference '
                   f'instead. To use the op, {_BUILD_HINT}.')
    elif device == 'cuda':
        _warn_once('en_seg: en_seg.ops._C was built without CUDA kernels (torch without CUDA '
                   'or nvcc not found at build time); ExemplarNorm2d uses the slower '
                   f'pure-PyTorch reference on the GPU. To use the op, {_BUILD_HINT} with a '
                   'CUDA torch and nvcc on the PATH.')


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


if EXTENSION_AVAILABLE:

    @torch.library.register_fake('en_seg::exemplar_ratios')
    def _exemplar_ratios_fake(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b):
        torch._check(pooled.dim() == 2 and means.dim() == 3,
                     lambda: 'en_seg::exemplar_ratios: pooled must be (N, C) and means '
                             f'(N, K, C), got {tuple(pooled.shape)} and {tuple(means.shape)}')
        return pooled.new_empty(means.shape[:2])

    @torch.library.register_fake('en_seg::exemplar_ratios_backward')
    def _exemplar_ratios_backward_fake(grad, *inputs):
        return tuple(torch.empty_like(tensor, memory_format=torch.contiguous_format)
                     for tensor in inputs)

    def _setup_context(ctx, inputs: Tuple[Tensor, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad: Tensor) -> Tuple[Tensor, ...]:
        return torch.ops.en_seg.exemplar_ratios_backward.default(grad, *ctx.saved_tensors)

    torch.library.register_autograd('en_seg::exemplar_ratios', _backward,
                                    setup_context=_setup_context)
