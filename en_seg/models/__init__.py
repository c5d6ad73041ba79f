"""Normalization layers, registered in mmengine's root ``MODELS`` registry.

Registering at the root makes ``norm_cfg=dict(type='EN')`` resolve from mmcv's
``build_norm_layer`` whatever the default scope (``mmseg`` or none), since every
downstream registry falls back to the root.
"""
from mmengine.registry import MODELS

from .exemplar_norm import ExemplarNorm2d
from .ratio_branch import exemplar_ratios_reference
from .switchable_norm import SwitchableNorm2d

MODELS.register_module('EN', module=ExemplarNorm2d)
MODELS.register_module('SN', module=SwitchableNorm2d)

__all__ = ['ExemplarNorm2d', 'SwitchableNorm2d', 'exemplar_ratios_reference']
