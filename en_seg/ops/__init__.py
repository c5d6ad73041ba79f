"""Compiled ops of en-seg (C++ CPU and CUDA kernels in ``csrc/``, built by setup.py into
``en_seg.ops._C``) and their dispatch, with the pure-PyTorch references as fallback and
while exporting (:mod:`.export`); may import torch and :mod:`en_seg.models`' references
only."""
from .ratio_op import (CUDA_KERNELS_AVAILABLE, EXTENSION_AVAILABLE, RATIO_IMPLS,
                       check_ratio_impl, exemplar_ratios)

__all__ = ['CUDA_KERNELS_AVAILABLE', 'EXTENSION_AVAILABLE', 'RATIO_IMPLS', 'check_ratio_impl',
           'exemplar_ratios']
