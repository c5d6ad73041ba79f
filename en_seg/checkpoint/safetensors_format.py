"""Weights for sharing: a model's state dict as a ``.safetensors`` file.

safetensors holds tensors and a string-to-string header, parsed within bounds by its own
library: no code, no pickle. A checkpoint of ours becomes one with
``tools/export_safetensors.py`` (weights and buffers, and the config's ``dataset_meta`` as
JSON in the header's ``en_seg.dataset_meta``; no optimizer, message hub or schedulers),
and :func:`~en_seg.checkpoint.load_from_local` reads one wherever a checkpoint path is
taken (``init_model``, ``MMSegInferencer``, ``tools/test.py``, ``load_from``,
``init_cfg=dict(type='Pretrained')``).
"""
import json
from typing import Any, Dict, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import shown
from .scan import Refusal

#: The header key that holds the dataset's metadata (class names, palette) as JSON.
DATASET_META_KEY = 'en_seg.dataset_meta'


def save_safetensors(state_dict: Mapping[str, torch.Tensor], filename: str,
                     dataset_meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``state_dict`` to ``filename`` in safetensors' format.

    Args:
        state_dict: name -> tensor (weights and buffers); each is written as a contiguous
            copy, so tensors that share memory are written apart.
        filename: the path to write, conventionally ending in ``.safetensors``.
        dataset_meta: mmseg's ``dataset_meta`` (``classes``, ``palette``), stored as JSON
            in the header. Default: None (not stored).

    Raises:
        TypeError: for a value that is not a tensor, or dataset_meta JSON cannot hold.
    """
    tensors = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f'state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor')
        tensors[name] = tensor.detach().cpu().contiguous().clone()
    metadata = {'format': 'pt'}
    if dataset_meta is not None:
        metadata[DATASET_META_KEY] = json.dumps(dataset_meta)
    save_file(tensors, filename, metadata=metadata)


def load_safetensors(filename: str, map_location: Any = None) -> Dict[str, Any]:
    """``{'state_dict': ..., 'meta': {...}}`` from a safetensors file, as mmengine's loaders
    expect a checkpoint; ``meta`` holds ``dataset_meta`` where the file has one.

    Raises:
        Refusal: the file is not a valid safetensors file, or its dataset_meta not JSON.
    """
    device = 'cpu' if map_location is None else map_location
    if not isinstance(device, (str, torch.device)):
        raise Refusal('a safetensors file loads onto a device: map_location must name one')
    try:
        with safe_open(filename, framework='pt', device=str(device)) as weights:
            state_dict = {name: weights.get_tensor(name) for name in weights.keys()}
            metadata = weights.metadata() or {}
    except (SafetensorError, ValueError, OSError) as error:
        raise Refusal(f'it is not a valid safetensors file ({shown(str(error))})') from None
    meta = {}
    text = metadata.get(DATASET_META_KEY)
    if text is not None:
        try:
            meta['dataset_meta'] = json.loads(text)
        except ValueError:
            raise Refusal(f'its {DATASET_META_KEY} is not JSON') from None
    return {'state_dict': state_dict, 'meta': meta}
