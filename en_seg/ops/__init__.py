"""The compiled ops of en-seg and their pure-PyTorch references: a leaf package, which
imports torch only.

One family, one rule (:mod:`.library`): the library ``en_seg.ops._C`` (csrc/, built by
setup.py) runs an input where it is built, current and has kernels for the input's device
and dtype, and no exporter traces; everywhere else :mod:`.reference` computes the same
function. Each family's Python module shares its name with its csrc files:

- :mod:`.channel_op`: moments and affine passes over X (``channel_moments``,
  ``channel_affine``, their gradients);
- :mod:`.ratio_op`: the ratio branch ``exemplar_ratios``;
- :mod:`.coefficient_op`: a whole layer's coefficients and apply (``exemplar_norm``,
  ``switchable_norm``).

Every function that can run either takes ``impl='op' | 'reference'``.
"""
from . import reference
from .channel_op import channel_affine_norm
from .coefficient_op import exemplar_norm, normalizer_codes, switchable_norm
from .library import (CUDA_KERNELS_AVAILABLE, EXTENSION_AVAILABLE, IMPLS, available,
                      check_impl, use_ops)
from .ratio_op import exemplar_ratios

__all__ = ['CUDA_KERNELS_AVAILABLE', 'EXTENSION_AVAILABLE', 'IMPLS', 'available',
           'channel_affine_norm', 'check_impl', 'exemplar_norm', 'exemplar_ratios',
           'normalizer_codes', 'reference', 'switchable_norm', 'use_ops']
