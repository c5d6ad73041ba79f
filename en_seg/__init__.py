"""en-seg: Exemplar Normalization as a plug-in for OpenMMLab's mmsegmentation.

``import en_seg`` (or ``custom_imports = dict(imports=['en_seg'])`` in a config)
registers the ``EN`` and ``SN`` normalization layers.
"""
from .models import ExemplarNorm2d, SwitchableNorm2d

__version__ = '0.1.0'

__all__ = ['ExemplarNorm2d', 'SwitchableNorm2d', '__version__']
