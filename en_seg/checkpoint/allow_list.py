"""The names a checkpoint may use beyond torch's weights-only set, each mapped to a guard.

Beside tensors, mmengine's Runner pickles its ``message_hub`` into every checkpoint:
``HistoryBuffer`` objects holding numpy arrays, whose state names the buffer's statistics
methods as ``getattr(HistoryBuffer, 'min')`` and so on, and numpy scalars in ``meta``.
torch's weights-only unpickler (the default of ``torch.load`` since torch 2.6) refuses
those globals. Allow-listing them as they are is not safe: ``builtins.getattr`` reaches
any attribute (``HistoryBuffer.__init__.__globals__['__builtins__']``), and torch's own
allow-listed ``_rebuild_from_type_v2`` calls whatever callable it is handed, so a crafted
file reaches ``exec``.

Design: every global such a checkpoint names is mapped, through
``torch.serialization.add_safe_globals`` with ``(stand-in, 'module.name')`` pairs, to a
stand-in that rebuilds exactly what mmengine writes and raises ``UnpicklingError`` for
anything else:

==============================================  =========================================
name in the file                                what the stand-in accepts
==============================================  =========================================
``builtins.getattr``                            ``HistoryBuffer`` and the name of one of
                                                its statistics methods; returns only that
                                                method
``mmengine.logging.history_buffer.HistoryBuffer``  a buffer rebuilt from its state (never
                                                called), holding only the attributes
                                                mmengine writes: numeric arrays, an int
                                                and its own statistics methods; it is a
                                                plain ``HistoryBuffer`` afterwards
``numpy.dtype``                                 bool, integer, float and complex dtypes:
                                                no object, string, void or structured one
``numpy._core.multiarray._reconstruct``         a plain ``ndarray`` (numpy 2 and 1 names)
``numpy._core.multiarray.scalar``               scalars of those numeric dtypes
``numpy.ndarray``                               nothing but the argument of
                                                ``_reconstruct``: it cannot be called
==============================================  =========================================

So a file can reach no callable beyond torch's own weights-only set, these stand-ins and
HistoryBuffer's statistics methods, and it can create no numpy object array. The
allow-list is registered process-wide by ``import en_seg`` (:func:`register`), so mmseg's
``init_model``, ``MMSegInferencer`` and its packaged tools load our checkpoints with
weights-only loading on. What the stand-ins cannot see (the state a BUILD sets on a dtype,
sizes, nesting) the scan before the load checks (:mod:`.scan`), and what comes back is
checked after it (:mod:`.plain_data`).
"""
import pickle
from typing import Any, Callable, Dict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from .errors import shown

try:  # numpy >= 2 moved its pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

#: The name a checkpoint gives mmengine's HistoryBuffer.
HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'
#: The attributes ``HistoryBuffer.__getstate__`` writes.
HISTORY_BUFFER_STATE = frozenset(
    {'max_length', '_log_history', '_count_history', 'statistics_methods'})
#: numpy's dtype kinds of bool, signed and unsigned integers, floats and complex numbers.
NUMERIC_KINDS = frozenset('biufc')


def _refuse(reason: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(reason)


def _kind(obj: Any) -> str:
    """What a refusal says of an object from the file: its type's name, never its repr
    (which may be huge, or recurse without end)."""
    return shown(type(obj).__qualname__)


def statistics_methods() -> Dict[str, Callable]:
    """HistoryBuffer's statistics methods by name: the four it sets up when its first
    instance is made, and those registered with ``HistoryBuffer.register_statistics``."""
    methods = {name: getattr(HistoryBuffer, name) for name in ('min', 'max', 'current', 'mean')}
    methods.update(HistoryBuffer._statistics_methods)
    return methods


def _history_buffer_method(owner: Any, name: Any) -> Callable:
    """Stands in for ``builtins.getattr``: only ``getattr(HistoryBuffer, statistic)``."""
    methods = statistics_methods()
    if (owner is not HistoryBuffer and owner is not _CheckedHistoryBuffer
            or type(name) is not str or name not in methods):
        target = 'HistoryBuffer' if owner is _CheckedHistoryBuffer else f'a {_kind(owner)}'
        attribute = shown(name) if type(name) is str else f'a {_kind(name)}'
        raise _refuse(f'getattr({target}, {attribute}): only the statistics methods of '
                      f'HistoryBuffer ({", ".join(sorted(methods))}) may be read')
    return methods[name]


def canonical_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is numpy's own bool, integer, float or complex dtype of its type
    code, nothing added (no fields, subarray, metadata or flags of its own)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS:
        return False
    own = np.dtype(dtype.str)
    return (dtype.fields is None and dtype.subdtype is None and dtype.metadata is None
            and not dtype.hasobject and dtype.flags == own.flags and dtype == own)


def own_statistics(methods: Any) -> bool:
    """Whether ``methods`` (a HistoryBuffer's ``statistics_methods``) maps names to
    HistoryBuffer's own statistics methods only."""
    own = statistics_methods()
    return type(methods) is dict and all(
        type(name) is str and own.get(name) is method for name, method in methods.items())


def _check_numeric_dtype(dtype: Any, what: str) -> None:
    if not canonical_dtype(dtype):
        kind = f'kind {shown(dtype.kind)}' if isinstance(dtype, np.dtype) else _kind(dtype)
        raise _refuse(f'{what} of a dtype of {kind}, or with fields or a subarray: only '
                      'bool, integer, float and complex numpy data may be loaded')


def _numeric_dtype(*args: Any) -> np.dtype:
    """Stands in for ``numpy.dtype``."""
    dtype = np.dtype(*args)
    _check_numeric_dtype(dtype, 'numpy data')
    return dtype


def _numeric_scalar(dtype: Any, *data: Any) -> Any:
    """Stands in for numpy's ``multiarray.scalar``, which returns ``data`` itself for an
    object dtype."""
    _check_numeric_dtype(dtype, 'a numpy scalar')
    return scalar(dtype, *data)


class _ArrayMarker:
    """What the name ``numpy.ndarray`` means in a file: a token for ``_reconstruct``."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _refuse('numpy.ndarray(...) called by the file: arrays are only rebuilt '
                      'from their pickled state')

    def __repr__(self) -> str:
        return 'numpy.ndarray'


_NDARRAY = _ArrayMarker()


def _reconstruct_array(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """Stands in for numpy's ``multiarray._reconstruct``: a plain ndarray, whose state
    (and its dtype, made by :func:`_numeric_dtype`) the unpickler then sets."""
    if subtype is not _NDARRAY:
        raise _refuse(f'an array of type {_kind(subtype)}: only numpy.ndarray may be loaded')
    return _reconstruct(np.ndarray, shape, typecode)


class _CheckedHistoryBuffer(HistoryBuffer):
    """Stands in for ``HistoryBuffer`` while a file is unpickled.

    The unpickler makes the object with ``__new__`` and then sets its state; this checks
    that state and turns the object into a plain ``HistoryBuffer``, so a loaded and saved
    again checkpoint names mmengine's class, not this one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A file may only rebuild a buffer from its state: HistoryBuffer(...) would make
        # arrays of whatever objects it were handed.
        raise _refuse('HistoryBuffer(...) called by the file: a buffer is only rebuilt '
                      'from its pickled state')

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not set(state) <= HISTORY_BUFFER_STATE:
            raise _refuse('a HistoryBuffer state other than the one mmengine writes '
                          f'({", ".join(sorted(HISTORY_BUFFER_STATE))})')
        for key in ('_log_history', '_count_history'):
            if key in state:
                if type(state[key]) is not np.ndarray:
                    raise _refuse(f'HistoryBuffer.{key} of type {_kind(state[key])}')
                _check_numeric_dtype(state[key].dtype, f'HistoryBuffer.{key}')
        if type(state.get('max_length', 0)) is not int:
            raise _refuse('HistoryBuffer.max_length that is not an int')
        if not own_statistics(state.get('statistics_methods', {})):
            raise _refuse('HistoryBuffer statistics methods other than its own')
        HistoryBuffer.__setstate__(self, state)
        self.__class__ = HistoryBuffer


def _build_only(cls: type) -> tuple:
    # A GLOBAL opcode reads its module and name up to a line break, so no file can name a
    # key that holds one: the type may be rebuilt (BUILD checks it), never called.
    return cls, f'en_seg.checkpoint: rebuilt only\n{cls.__module__}.{cls.__qualname__}'


def _safe_globals() -> list:
    pairs = [(_history_buffer_method, 'builtins.getattr'),
             (_CheckedHistoryBuffer, HISTORY_BUFFER),
             (_numeric_dtype, 'numpy.dtype'),
             (_NDARRAY, 'numpy.ndarray'),
             _build_only(np.ndarray)]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        pairs += [(_reconstruct_array, f'{module}._reconstruct'),
                  (_numeric_scalar, f'{module}.scalar')]
    numeric_dtypes = {type(np.dtype(code)) for code in np.typecodes['All']
                      if np.dtype(code).kind in NUMERIC_KINDS}
    pairs += [_build_only(cls) for cls in sorted(numeric_dtypes, key=str)]
    return pairs


def register() -> None:
    """Add the stand-ins to torch's weights-only allow-list, process-wide."""
    torch.serialization.add_safe_globals(_safe_globals())
