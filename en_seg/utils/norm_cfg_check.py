"""Check the ``norm_cfg`` types of a config's model before anything is built.

mmcv's ``build_norm_layer`` reports an unknown type as "Cannot find None in registry", from
deep inside a model's constructor. :func:`check_norm_cfgs` names the type, where it sits
and the norm layers that are registered, before the model is built.
"""
import difflib
from typing import Any, Iterator, List, Optional, Tuple

from mmengine.config import Config
from mmengine.registry import MODELS, Registry
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

#: What a norm layer derives from: the bases by which mmcv's ``build_norm_layer`` names a
#: layer after its kind (``infer_abbr`` in mmcv/cnn/bricks/norm.py). These cover the types
#: mmcv registers there (BN, SyncBN, GN, LN, IN and their 1d/2d/3d forms) and EN and SN,
#: which derive from ``_InstanceNorm``.
NORM_LAYER_BASES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def registered_norm_layers(registry: Registry) -> List[str]:
    """The names of the norm layers (:data:`NORM_LAYER_BASES`) that ``registry`` finds
    without a scope prefix, its own and its ancestors' (up to mmengine's root), sorted."""
    names = set()
    while registry is not None:
        names.update(name for name, cls in registry.module_dict.items()
                     if isinstance(cls, type) and issubclass(cls, NORM_LAYER_BASES))
        registry = registry.parent
    return sorted(names)


def _norm_cfgs(node: Any, where: str,
               scope: Optional[str]) -> Iterator[Tuple[str, dict, Optional[str]]]:
    """Every ``norm_cfg`` dict under ``node`` as ``(where, norm_cfg, scope)``; a dict's
    ``_scope_`` is the scope of what it holds, as when the model is built."""
    if isinstance(node, dict):
        scope = node.get('_scope_', scope)
        for key, value in node.items():
            if key == 'norm_cfg' and isinstance(value, dict):
                yield f'{where}.{key}', value, scope
            else:
                yield from _norm_cfgs(value, f'{where}.{key}', scope)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _norm_cfgs(value, f'{where}[{index}]', scope)


def check_norm_cfgs(cfg: Config) -> None:
    """Check that every ``norm_cfg`` in ``cfg.model`` names a registered type.

    A type resolves as mmcv's ``build_norm_layer`` resolves it: in mmengine's ``MODELS``
    under the scope the model is built in, the nearest ``_scope_`` above the ``norm_cfg``
    or else the config's ``default_scope``. A ``norm_cfg`` without a string ``type`` (a
    class, or no type, which mmcv reports itself) is left to mmcv.

    Args:
        cfg: a loaded config, its ``custom_imports`` imported (``Config.fromfile`` does).

    Raises:
        ValueError: for the first unknown type, in one line: where it sits, the scope,
            the registered norm layers and the nearest of their names, if one is near.
    """
    for where, norm_cfg, scope in _norm_cfgs(cfg.get('model'), 'model',
                                             cfg.get('default_scope')):
        layer_type = norm_cfg.get('type')
        if not isinstance(layer_type, str):
            continue
        with MODELS.switch_scope_and_registry(scope) as registry:
            if registry.get(layer_type) is not None:
                continue
            registered = registered_norm_layers(registry)
        near = difflib.get_close_matches(layer_type, registered, n=1)
        hint = f' Did you mean {near[0]!r}?' if near else ''
        raise ValueError(
            f'{where}: type {layer_type!r} is not a registered norm layer (scope '
            f'{registry.scope!r}); registered: {", ".join(registered)}.{hint}')
