"""mmengine extensions, today the hooks of :mod:`.hooks`; may import mmengine,
:mod:`en_seg.models` and :mod:`en_seg.analysis`, never mmseg or the tools' CLI glue."""
from .hooks import ENNonFiniteHook, ENRatioLoggerHook

__all__ = ['ENNonFiniteHook', 'ENRatioLoggerHook']
