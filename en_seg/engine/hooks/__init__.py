"""mmengine hooks registered in ``HOOKS``; may import mmengine, :mod:`en_seg.models` and
:mod:`en_seg.analysis`."""
from .non_finite_hook import ENNonFiniteHook
from .ratio_logger_hook import ENRatioLoggerHook

__all__ = ['ENNonFiniteHook', 'ENRatioLoggerHook']
