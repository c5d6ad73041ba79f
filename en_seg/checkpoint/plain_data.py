"""What a checkpoint load returns, checked to be plain data before anyone uses it.

The scan (:mod:`.scan`) bounds what the unpickler may build; this walks what it built, once
per object (shared and cyclic references included), and refuses anything but:

- a ``torch.Tensor`` or ``nn.Parameter``, a ``torch.Size``, dtype or device;
- a numpy ndarray or scalar of a canonical bool, integer, float or complex dtype (no
  fields, subarray, metadata or flags of its own);
- a ``HistoryBuffer`` holding only what mmengine writes;
- a ``dict`` or ``Counter``, or an ``OrderedDict`` whose only attribute is a state dict's
  ``_metadata`` (a dict or OrderedDict);
- a ``list``, ``tuple``, ``set`` or ``frozenset``, and ``str``, ``bytes``, ``bytearray``,
  ``int``, ``float``, ``complex``, ``bool`` or ``None``;

nested no deeper than the limit. Nothing is repaired: the first object that fails is named
by its type and place.
"""
from collections import Counter, OrderedDict
from typing import Any, Iterable, List, Tuple

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from .allow_list import HISTORY_BUFFER_STATE, canonical_dtype, own_statistics
from .errors import shown
from .scan import Refusal

_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype,
          torch.device)
_SEQUENCES = (list, tuple, set, frozenset, torch.Size)


def _children(value: Any, where: str) -> Iterable[Tuple[Any, str]]:
    """The objects ``value`` holds, with their places; refuses what is not plain data."""
    kind = type(value)
    if kind in _ATOMS or kind in (torch.Tensor, torch.nn.Parameter):
        return ()
    if kind is np.ndarray or isinstance(value, np.generic):
        if not canonical_dtype(value.dtype) or (kind is not np.ndarray and
                                               kind is not value.dtype.type):
            raise Refusal(f'{where} is numpy data of a dtype that is not a plain numeric one')
        return ()
    if kind is dict or kind is Counter:
        return _items(value, where)
    if kind is OrderedDict:
        attributes = vars(value)
        if set(attributes) - {'_metadata'} or type(attributes.get('_metadata', {})) not in (
                dict, OrderedDict):
            raise Refusal(f'{where} is an OrderedDict with attributes other than a state '
                          "dict's _metadata")
        return [*_items(value, where), *((v, f'{where}._metadata') for v in attributes.values())]
    if kind in _SEQUENCES:
        return ((item, f'{where}[{i}]') for i, item in enumerate(value))
    if kind is HistoryBuffer:
        state = vars(value)
        if set(state) - HISTORY_BUFFER_STATE or not own_statistics(
                state.get('statistics_methods', {})):
            raise Refusal(f'{where} is a HistoryBuffer with attributes mmengine does not write')
        return ((state[name], f'{where}.{name}') for name in ('_log_history', '_count_history',
                                                            'max_length') if name in state)
    raise Refusal(f'{where} is a {shown(kind.__module__ + "." + kind.__qualname__)}, which is '
                  'not plain data (tensors, numeric numpy data, HistoryBuffers, builtin '
                  'containers and scalars)')


def _items(mapping: dict, where: str) -> List[Tuple[Any, str]]:
    pairs = []
    for key, value in mapping.items():
        name = shown(key, 40) if type(key) is str else f'<{type(key).__name__} key>'
        pairs += [(key, f'{where} key'), (value, f'{where}[{name}]')]
    return pairs


def check_plain(value: Any, max_depth: int) -> None:
    """Refuse ``value`` unless it and everything in it is plain data (the module's list),
    nested at most ``max_depth`` deep.

    Raises:
        Refusal: naming the first object that fails, by type and place.
    """
    seen = set()
    pending = [(value, 'the checkpoint', 0)]
    while pending:
        item, where, depth = pending.pop()
        if depth > max_depth:
            raise Refusal(f'{where} is nested deeper than {max_depth} levels '
                          '(LoadLimits.max_depth)')
        if id(item) in seen:
            continue
        seen.add(id(item))
        pending += [(child, place, depth + 1) for child, place in _children(item, where)]
