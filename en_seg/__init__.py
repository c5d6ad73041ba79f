"""en-seg: Exemplar Normalization as a plug-in for OpenMMLab's mmsegmentation.

``import en_seg`` (or ``custom_imports = dict(imports=['en_seg'])`` in a config)
registers the ``EN`` and ``SN`` normalization layers, the ``PerClassIoUMetric`` used by
``tools/test.py``, the ``ENRatioLoggerHook``, and the weights-only loading of mmengine
checkpoints (:mod:`en_seg.checkpoint`).
"""
from . import checkpoint
from .analysis.hook import ENRatioLoggerHook
from .evaluation import PerClassIoUMetric
from .models import ExemplarNorm2d, SwitchableNorm2d

checkpoint.register()

__version__ = '0.1.0'

__all__ = ['ENRatioLoggerHook', 'ExemplarNorm2d', 'PerClassIoUMetric', 'SwitchableNorm2d',
           '__version__']
