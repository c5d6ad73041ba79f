"""Find the Exemplar Normalization layers of a model."""
from typing import List, Tuple

from torch import nn

from ..models import ExemplarNorm2d


def named_exemplar_norms(model: nn.Module) -> List[Tuple[str, ExemplarNorm2d]]:
    """Every :class:`ExemplarNorm2d` of ``model`` with its qualified name.

    Args:
        model: any module; wrappers (DDP, mmengine's) should be unwrapped first, or every
            name carries their ``module.`` prefix.

    Returns:
        ``(name, layer)`` pairs in the order ``model.named_modules()`` yields them, the
        order of registration (for mmseg backbones and heads, the order of the network),
        with names such as ``'backbone.layer1.0.bn1'``.

    Raises:
        ValueError: if the model has no EN layer.
    """
    layers = [(name, module) for name, module in model.named_modules()
              if isinstance(module, ExemplarNorm2d)]
    if not layers:
        raise ValueError(
            f'{type(model).__name__} has no ExemplarNorm2d layer, so there are no ratios '
            "to read: build it with norm_cfg=dict(type='EN') (and import en_seg, e.g. "
            "custom_imports=dict(imports=['en_seg'])) in the config")
    return layers
