"""Normalization layers: PyTorch modules that need nothing but torch.

``import en_seg`` registers them in mmengine's root ``MODELS`` registry where mmengine is
installed (:mod:`en_seg.registry`).
"""
from .exemplar_norm import ExemplarNorm2d, SyncExemplarNorm2d
from .switchable_norm import SwitchableNorm2d, SyncSwitchableNorm2d

__all__ = ['ExemplarNorm2d', 'SwitchableNorm2d', 'SyncExemplarNorm2d', 'SyncSwitchableNorm2d']
