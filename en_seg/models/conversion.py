"""BatchNorm layers of a built PyTorch model replaced by mixed layers, and back.

What ``ExemplarNorm2d.convert_batchnorm`` and ``SwitchableNorm2d.convert_batchnorm`` run,
for models held as modules rather than configs (torchvision, timm, Hugging Face), in the
manner of ``nn.SyncBatchNorm.convert_sync_batchnorm``; docs/method.md#converting-a-built-model.
"""
import logging
import re
import sys
from collections import Counter
from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .mixed_norm import _MixedNorm

logger = logging.getLogger(__name__)

#: mmengine's subclasses of torch's BatchNorm that only relax the input check: mmcv's
#: ``'SyncBN'``, and what mmengine's ``revert_sync_batchnorm`` (run by mmseg's ``init_model``
#: on the CPU) makes of a SyncBatchNorm. Found in ``sys.modules``: a model can hold them only
#: where mmengine is imported, and the layers need nothing but torch.
_MMENGINE_BATCHNORMS = (('mmengine.utils.dl_utils.parrots_wrapper', 'SyncBatchNorm'),
                        ('mmengine.model.utils', '_BatchNormXd'))


def converted_types() -> Tuple[type, ...]:
    """The layer types :func:`convert_batchnorm` replaces: exactly ``nn.BatchNorm2d``,
    ``nn.SyncBatchNorm`` and mmengine's wrappers of them. Other subclasses may add
    behaviour a mixed layer lacks (timm's ``BatchNormAct2d`` applies an activation), so
    they are left as they are, and logged."""
    wrappers = [getattr(sys.modules[name], attr) for name, attr in _MMENGINE_BATCHNORMS
                if hasattr(sys.modules.get(name), attr)]
    return (nn.BatchNorm2d, nn.SyncBatchNorm, *wrappers)


#: Arguments that each BatchNorm layer decides and a caller may not override.
_FROM_EACH_LAYER = ('num_features', 'track_running_stats', 'device', 'dtype')


def _is_norm_layer(module: nn.Module) -> bool:
    """Whether the log counts ``module`` as a normalization layer left as it was: torch's
    norm layers, and any class whose name ends in Norm, Norm1d, Norm2d or Norm3d
    (torchvision's FrozenBatchNorm2d, the LayerNorm classes of other libraries; not
    torchvision's Conv2dNormActivation, a block to look into)."""
    return (isinstance(module, (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm))
            or re.search(r'Norm[123]?d?$', type(module).__name__) is not None)


def _layer_from_batchnorm(layer_class: Type[_MixedNorm], bn: nn.Module,
                          layer_kwargs: Dict[str, Any]) -> _MixedNorm:
    """A ``layer_class`` layer that starts as ``bn``: its γ, β, running statistics,
    ``num_batches_tracked``, eps, momentum, train / eval mode, device, dtype and
    ``requires_grad``; a SyncBatchNorm's synchronization over its process group."""
    options = {'eps': bn.eps, 'momentum': bn.momentum}
    if isinstance(bn, nn.SyncBatchNorm):
        options.update(sync_stats=True, process_group=bn.process_group)
    options.update(layer_kwargs)
    reference = bn.weight if bn.affine else bn.running_mean
    factory = {} if reference is None else {'device': reference.device,
                                            'dtype': reference.dtype}
    layer = layer_class(bn.num_features, track_running_stats=bn.track_running_stats,
                        **factory, **options)
    state = bn.state_dict()
    if not bn.affine:
        # What an affine-free BatchNorm computes: γ = 1, β = 0, kept fixed below.
        state['weight'] = torch.ones(bn.num_features, **factory)
        state['bias'] = torch.zeros(bn.num_features, **factory)
    # The mixed layer's loading of BatchNorm entries (γ per normalizer, β split evenly; a
    # BatchNorm built with bias=False has none, and β stays 0).
    layer.load_state_dict(state)
    own = [p for p in (bn.weight, bn.bias) if p is not None]
    if own and not any(p.requires_grad for p in own):
        layer.requires_grad_(False)  # a frozen layer stays frozen, ratio branch too
    for name in ('weight', 'bias'):
        source = getattr(bn, name)
        getattr(layer, name).requires_grad_(source is not None and source.requires_grad)
    return layer.train(bn.training)


def _replace_layers(module: nn.Module, replace: Callable[[nn.Module], Optional[nn.Module]]
                    ) -> nn.Module:
    """``module`` after ``replace`` has seen it and its descendants, top down.

    ``replace(m)`` returns m's replacement, m itself to keep it whole, or None to look into
    m's children. A module shared by two parents gets a single replacement, as before.
    """
    seen: Dict[int, nn.Module] = {}

    def visit(child: nn.Module) -> nn.Module:
        if id(child) not in seen:
            new = replace(child)
            if new is None:
                for name, grandchild in child.named_children():
                    replacement = visit(grandchild)
                    if replacement is not grandchild:
                        setattr(child, name, replacement)
                new = child
            seen[id(child)] = new
        return seen[id(child)]

    return visit(module)


def convert_batchnorm(layer_class: Type[_MixedNorm], module: nn.Module,
                      layer_kwargs: Dict[str, Any]) -> nn.Module:
    """``module`` with every layer of :func:`converted_types` replaced by a
    ``layer_class`` layer built with ``layer_kwargs``; see
    :meth:`~en_seg.models.mixed_norm._MixedNorm.convert_batchnorm`."""
    fixed = sorted(set(layer_kwargs) & set(_FROM_EACH_LAYER))
    if fixed:
        raise TypeError(f'convert_batchnorm takes {fixed} from each BatchNorm layer; '
                        'remove them from the keyword arguments')
    types = converted_types()
    converted: Counter = Counter()
    left: Counter = Counter()

    def replace(child: nn.Module) -> Optional[nn.Module]:
        if type(child) in types:
            converted[type(child).__name__] += 1
            return _layer_from_batchnorm(layer_class, child, layer_kwargs)
        if isinstance(child, _MixedNorm):
            return child
        if _is_norm_layer(child):
            left[type(child).__name__] += 1
            return child
        return None

    result = _replace_layers(module, replace)
    logger.info('%s.convert_batchnorm: converted %d layer(s)%s; left %d normalization '
                'layer(s) as they were%s', layer_class.__name__, sum(converted.values()),
                _by_type(converted), sum(left.values()), _by_type(left))
    return result


def revert_batchnorm(layer_class: Type[_MixedNorm], module: nn.Module) -> nn.Module:
    """``module`` with every ``layer_class`` layer whose pool is ('BN',) replaced by the
    ``nn.BatchNorm2d`` (``nn.SyncBatchNorm`` with ``sync_stats``) computing the same
    function; see :meth:`~en_seg.models.mixed_norm._MixedNorm.revert_batchnorm`."""
    reverted: Counter = Counter()
    left: Counter = Counter()

    def replace(child: nn.Module) -> Optional[nn.Module]:
        if not isinstance(child, _MixedNorm):
            return None
        if not isinstance(child, layer_class) or child.normalizers != ('BN',):
            left[f'{type(child).__name__}{child.normalizers}'] += 1
            return child
        reverted[type(child).__name__] += 1
        return _batchnorm_from_layer(child)

    result = _replace_layers(module, replace)
    logger.info('%s.revert_batchnorm: reverted %d layer(s)%s; left %d mixed layer(s) as '
                'they were%s', layer_class.__name__, sum(reverted.values()),
                _by_type(reverted), sum(left.values()), _by_type(left))
    return result


def _by_type(counts: Counter) -> str:
    """' (TypeA: 2, TypeB: 1)', or '' for no counts."""
    if not counts:
        return ''
    return ' (' + ', '.join(f'{name}: {n}' for name, n in sorted(counts.items())) + ')'


def _batchnorm_from_layer(layer: _MixedNorm) -> nn.Module:
    """The BatchNorm layer computing what ``layer``, of pool ('BN',), computes."""
    weight, bias = layer._batchnorm_affine()
    if layer.sync_stats:
        bn = nn.SyncBatchNorm(layer.num_features, layer.eps, layer.momentum,
                              track_running_stats=layer.track_running_stats,
                              process_group=layer.process_group, device=weight.device,
                              dtype=weight.dtype)
    else:
        bn = nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum,
                            track_running_stats=layer.track_running_stats,
                            device=weight.device, dtype=weight.dtype)
    state = {'weight': weight, 'bias': bias}
    if layer.track_running_stats:
        state.update(running_mean=layer.running_mean, running_var=layer.running_var,
                     num_batches_tracked=layer.num_batches_tracked)
    bn.load_state_dict(state)
    bn.weight.requires_grad_(layer.weight.requires_grad)
    bn.bias.requires_grad_(layer.bias.requires_grad)
    return bn.train(layer._bn_member_training())
