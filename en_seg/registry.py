"""EN and SN in mmengine's root ``MODELS`` registry, as ``norm_cfg`` types.

``'EN'`` and ``'SN'``, and ``'SyncEN'`` and ``'SyncSN'``, the same layers with the BN
member's statistics synchronized across processes by default (``sync_stats=True``; named
like mmcv's ``'SyncBN'``, docs/method.md#synchronization-across-processes).

Registering at the root makes ``norm_cfg=dict(type='EN')`` resolve from mmcv's
``build_norm_layer`` in every OpenMMLab toolbox and whatever the default scope (``mmseg``,
``mmpretrain`` or none), since every downstream registry falls back to the root.
"""
from mmengine.registry import MODELS

from .models import (ExemplarNorm2d, SwitchableNorm2d, SyncExemplarNorm2d,
                     SyncSwitchableNorm2d)

MODELS.register_module('EN', module=ExemplarNorm2d)
MODELS.register_module('SN', module=SwitchableNorm2d)
MODELS.register_module('SyncEN', module=SyncExemplarNorm2d)
MODELS.register_module('SyncSN', module=SyncSwitchableNorm2d)
