"""The compiled ratio op ``torch.ops.en_seg.exemplar_ratios`` and the dispatch to it.

docs/method.md#ratio-branch, steps 2-6 (paper Sec. 3.3, Fig. 2, Eq. 4). The op is declared
in C++ (csrc/module.cpp) with CPU and CUDA kernels; this module registers its fake kernel,
so that ``torch.compile`` traces it without a graph break, and its autograd formula (the
op ``en_seg::exemplar_ratios_backward``). Where the extension is not built, the pure-PyTorch
reference :func:`~en_seg.models.ratio_branch.exemplar_ratios_reference` takes over.

``torch.ops.en_seg.exemplar_ratios(pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w,
fc2_b)`` returns ``(ratios, activations)``: the ratios λ (N, K) and, not differentiable,
what its backward needs of every sample, so that the backward recomputes nothing and saves
5 tensors rather than 8: activations (N, K + K² + πK + K·C/r + K·C) holds λ, v = zᵀ z,
h = tanh(W1 v + b1), z (C/r, K) and pooled - means (K, C) (csrc/ratio_math.h, SavedLayout).
``torch.ops.en_seg.exemplar_ratios_backward(grad, activations, rstds, conv_w, fc1_w,
fc2_w)`` returns the gradients of the forward's 8 inputs.
"""
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..models.ratio_branch import exemplar_ratios_reference
from .export import is_exporting

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.en_seg.*)
except ImportError as error:
    _LOAD_ERROR = f'{type(error).__name__}: {error}'
else:
    _LOAD_ERROR = ('it was built from older sources, without en_seg::exemplar_ratios or '
                   'with an older schema of it')


def _has_current_ops() -> bool:
    """Whether the loaded library declares the ops as this module registers them (an
    extension built from older sources may lack them, or declare an older schema)."""
    if not (hasattr(torch.ops.en_seg, 'exemplar_ratios')
            and hasattr(torch.ops.en_seg, 'exemplar_ratios_backward')):
        return False
    forward = torch.ops.en_seg.exemplar_ratios.default._schema
    backward = torch.ops.en_seg.exemplar_ratios_backward.default._schema
    return ([r.name for r in forward.returns] == ['ratios', 'activations']
            and [a.name for a in backward.arguments]
            == ['grad', 'activations', 'rstds', 'conv_w', 'fc1_w', 'fc2_w'])


#: Whether the extension is built and has the op.
EXTENSION_AVAILABLE = _has_current_ops()

#: Whether the op has CUDA kernels (the extension was built with CUDA).
CUDA_KERNELS_AVAILABLE = EXTENSION_AVAILABLE and (
    torch._C._dispatch_has_kernel_for_dispatch_key('en_seg::exemplar_ratios', 'CUDA'))

# The dtypes a full build has kernels for: float32 and float64 on the CPU (float64 to check
# gradients), float32 on CUDA. Other inputs run the reference.
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32,)
# Those this build has kernels for.
_OP_CPU_DTYPES = _CPU_DTYPES if EXTENSION_AVAILABLE else ()
_OP_CUDA_DTYPES = _CUDA_DTYPES if CUDA_KERNELS_AVAILABLE else ()

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
    """Per-sample ratios λ of K normalizers (docs/method.md#ratio-branch, steps 2-6, paper
    Sec. 3.3, Eq. 4), by the compiled op or the pure-PyTorch reference.

    Args:
        pooled: (N, C) average-pooled features, the per-(n, c) means of X.
        means: (N, K, C) normalizer k's mean at every (n, c); 1 <= K <= 8.
        rstds: (N, K, C) normalizer k's 1 / sqrt(variance + eps) at every (n, c).
        conv_weight: (C / r, r, 1) grouped 1-D convolution weight, no bias.
        fc1_weight, fc1_bias: (πK, K²) and (πK,), the first fully connected layer.
        fc2_weight, fc2_bias: (K, πK) and (K,), the second fully connected layer.
        impl: ``'op'`` for ``torch.ops.en_seg.exemplar_ratios`` where it has a kernel (CPU
            float32 / float64, CUDA float32) and no exporter traces
            (:func:`~en_seg.ops.export.is_exporting`), else the reference; ``'reference'`` for
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
    if impl == 'op' and not is_exporting():
        # At small N the op's cost is nearly all fixed per-call overhead
        # (docs/benchmark_ratio.md), so the dispatch test is the cheapest one available:
        # Tensor.is_cpu / is_cuda rather than comparing (device.type, dtype).
        if pooled.dtype in _dtypes_for_device(pooled, _OP_CPU_DTYPES, _OP_CUDA_DTYPES):
            return _OP(*args)[0]
        _warn_if_not_built(pooled)
    else:
        check_ratio_impl(impl)
    return exemplar_ratios_reference(*args)


def _dtypes_for_device(pooled: Tensor, cpu: Tuple[torch.dtype, ...],
                       cuda: Tuple[torch.dtype, ...]) -> Tuple[torch.dtype, ...]:
    """``cpu`` or ``cuda`` after pooled's device; none for other devices."""
    return cpu if pooled.is_cpu else cuda if pooled.is_cuda else ()


def _warn_if_not_built(pooled: Tensor) -> None:
    """Warn, once per cause, where a complete build would have had a kernel for pooled."""
    if pooled.dtype not in _dtypes_for_device(pooled, _CPU_DTYPES, _CUDA_DTYPES):
        return
    if not EXTENSION_AVAILABLE:
        _warn_once(f'en_seg: the compiled ratio op en_seg.ops._C could not be loaded '
                   f'({_LOAD_ERROR}); ExemplarNorm2d uses the slower pure-PyTorch reference '
                   f'instead. To use the op, {_BUILD_HINT}.')
    elif pooled.is_cuda:
        _warn_once('en_seg: en_seg.ops._C was built without CUDA kernels (torch without CUDA '
                   'or nvcc not found at build time); ExemplarNorm2d uses the slower '
                   f'pure-PyTorch reference on the GPU. To use the op, {_BUILD_HINT} with a '
                   'CUDA torch and nvcc on the PATH.')


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


if EXTENSION_AVAILABLE:
    # The overloads the dispatch and the backward call.
    _OP = torch.ops.en_seg.exemplar_ratios.default
    _BACKWARD_OP = torch.ops.en_seg.exemplar_ratios_backward.default

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

    def _setup_context(ctx, inputs: Tuple[Tensor, ...],
                       output: Tuple[Tensor, Tensor]) -> None:
        # The activations hold everything the backward needs besides rstds and the three
        # weights. Every saved tensor adds to the fixed per-call cost that dominates at
        # small N (docs/benchmark_ratio.md), so 5 rather than the 8 inputs are saved. Nothing
        # flows back through the activations: marking them non-differentiable, without
        # materialized gradients, spares the engine a zero tensor per backward.
        _, _, rstds, conv_w, fc1_w, _, fc2_w, _ = inputs
        activations = output[1]
        ctx.mark_non_differentiable(activations)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(activations, rstds, conv_w, fc1_w, fc2_w)

    def _backward(ctx, grad: Optional[Tensor], _: None) -> Tuple[Optional[Tensor], ...]:
        if grad is None:  # an undefined gradient of the ratios: nothing flows back
            return (None,) * 8
        return _BACKWARD_OP(grad, *ctx.saved_tensors)

    torch.library.register_autograd('en_seg::exemplar_ratios', _backward,
                                    setup_context=_setup_context)
