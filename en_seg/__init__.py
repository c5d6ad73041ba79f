"""en-seg: Exemplar Normalization as a plug-in for OpenMMLab's mmsegmentation.

The layers (:mod:`en_seg.models`) and the compiled ops with their autograd
(:mod:`en_seg.ops`) need only torch. ``import en_seg`` (or ``custom_imports =
dict(imports=['en_seg'])`` in a config) registers into the OpenMMLab libraries that are
installed:

- with mmengine: the ``EN`` and ``SN`` norm layers (:mod:`en_seg.registry`), the hooks
  ``ENRatioLoggerHook`` and ``ENNonFiniteHook``, the weights-only loading of mmengine
  checkpoints (:mod:`en_seg.checkpoint`), and ``en_seg::`` config paths
  (:mod:`en_seg.config_scope`);
- with mmsegmentation: the ``PerClassIoUMetric`` used by ``tools/test.py``.

A library that is installed but fails to import raises as usual.
"""
from importlib.util import find_spec

from .models import ExemplarNorm2d, SwitchableNorm2d

__version__ = '0.1.0'
__all__ = ['ExemplarNorm2d', 'SwitchableNorm2d', '__version__']

if find_spec('mmengine') is not None:
    from . import checkpoint, config_scope, registry  # noqa: F401  (registration on import)
    from .engine.hooks import ENNonFiniteHook, ENRatioLoggerHook
    checkpoint.register()
    __all__ += ['ENNonFiniteHook', 'ENRatioLoggerHook']

if find_spec('mmseg') is not None:
    from .evaluation.metrics import PerClassIoUMetric
    __all__ += ['PerClassIoUMetric']
