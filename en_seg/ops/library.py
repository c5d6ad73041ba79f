"""The compiled library ``en_seg.ops._C`` and the one rule for where its ops run.

Every op of the family (csrc/module.cpp declares them all) runs an input, or none does:

- the library loaded and was built from these sources (its ``SCHEMA_VERSION`` is
  :data:`SCHEMA_VERSION`; an extension built from older sources is not used at all);
- the input is on the CPU, or on a GPU where the library was built with CUDA kernels;
- its statistics' dtype (float64 for a float64 input, else float32) has kernels there:
  float32 and float64 on the CPU, float32 on CUDA; activations may also be float16 or
  bfloat16, whose statistics are float32;
- no exporter is tracing the model (:mod:`.export`): no ONNX runtime knows our ops;
- no torch.func transform (``vmap``, ``grad``, ``jacrev``, ...) is running: the ops'
  autograd formulas are C++ autograd Functions, which functorch does not take, and the ops
  have no batching rules.

Elsewhere the pure-PyTorch references (:mod:`.reference`) compute the same function.
:func:`use_ops` applies the rule to an ``impl`` switch and warns once per cause where a
complete build would have run the ops.
"""
import warnings

import torch
from torch import Tensor

from .export import is_exporting

#: The schema version these Python modules register fake kernels and autograd for; bumped
#: with ``kSchemaVersion`` in csrc/module.cpp.
SCHEMA_VERSION = 6

#: The implementations an ``impl`` argument may name: the compiled ops, or plain PyTorch.
IMPLS = ('op', 'reference')

try:
    from . import _C
except ImportError as error:
    _C = None
    _UNAVAILABLE = f'it could not be loaded ({type(error).__name__}: {error})'
else:
    _UNAVAILABLE = ('it was built from older sources (schema version '
                    f'{getattr(_C, "SCHEMA_VERSION", "unknown")}, expected {SCHEMA_VERSION})')

#: Whether the library is loaded and current: its CPU kernels run.
EXTENSION_AVAILABLE = getattr(_C, 'SCHEMA_VERSION', None) == SCHEMA_VERSION

#: Whether the library also has CUDA kernels (it was built with a CUDA torch and nvcc).
CUDA_KERNELS_AVAILABLE = EXTENSION_AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key(
    'en_seg::channel_moments', 'CUDA')

_STATISTICS_DTYPES = {'cpu': (torch.float32, torch.float64), 'cuda': (torch.float32,)}
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_BUILT_DEVICES = (('cpu',) if EXTENSION_AVAILABLE else ()) + (
    ('cuda',) if CUDA_KERNELS_AVAILABLE else ())
_BUILD_HINT = ('build it with `pip install --no-build-isolation -e .` (or `make install`) '
               'in the en-seg checkout')
_warned = set()


def check_impl(impl: str) -> str:
    """Return ``impl`` if it is one of :data:`IMPLS`.

    Raises:
        ValueError: naming the accepted values, for any other ``impl``.
    """
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    return impl


def _has_kernels(x: Tensor) -> bool:
    """Whether a complete build has kernels for x's device and dtype."""
    device = x.device.type
    dtypes = _STATISTICS_DTYPES.get(device, ())
    return x.dtype in dtypes or (bool(dtypes) and x.dtype in _HALF_DTYPES)


def available(x: Tensor) -> bool:
    """Whether the compiled ops run ``x`` (an activation (N, C, H, W), or (N, C)
    statistics), by the rule of this module. Cheap: layers ask at every forward."""
    return (x.device.type in _BUILT_DEVICES and _has_kernels(x) and not is_exporting()
            and not torch._C._are_functorch_transforms_active())


def use_ops(impl: str, x: Tensor) -> bool:
    """Whether a caller with ``impl`` runs the compiled ops on ``x``: for ``'op'`` where
    :func:`available`, for ``'reference'`` never.

    Raises:
        ValueError: for an ``impl`` not in :data:`IMPLS`.

    Warns:
        UserWarning: once per process and cause, where ``impl='op'`` runs the references
            because this build lacks what a complete one has (the library, or its CUDA
            kernels); the message says how to build it.
    """
    if impl == 'op':
        if available(x):
            return True
        if (_has_kernels(x) and x.device.type not in _BUILT_DEVICES and not is_exporting()):
            _warn_not_built(x.device.type)
        return False
    check_impl(impl)
    return False


def _warn_not_built(device: str) -> None:
    if not EXTENSION_AVAILABLE:
        message = (f'en_seg: the compiled ops en_seg.ops._C are not used: {_UNAVAILABLE}; '
                   f'the layers run the slower pure-PyTorch references. To use the ops, '
                   f'{_BUILD_HINT}.')
    else:
        message = (f'en_seg: en_seg.ops._C has no {device} kernels (built with a torch '
                   'without CUDA, or without nvcc on the PATH); the layers run the slower '
                   f'pure-PyTorch references there. To use the ops, {_BUILD_HINT} with a '
                   'CUDA torch and nvcc on the PATH.')
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)
