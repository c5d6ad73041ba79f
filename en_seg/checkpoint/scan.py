"""A torch.save archive checked before anything in it is unpickled, within set bounds.

torch's weights-only unpickler decides which callables a file may name; it does not bound
what the allowed ones build. A file of a few KB can ask for a ``bytearray(2**34)``, a
numpy array of 2³⁷ elements, a 1 GiB record compressed to 1 MB, tuples nested 10⁶ deep
(hashing them overflows the C stack) or 64 deep with every level repeated (hashing them
takes hours), or a numpy dtype whose pickled state gives it fields that contain itself.
Static pickle scanners (picklescan, modelscan, fickling, modelaudit) list the globals a
pickle names; none bounds sizes, nesting or memo expansion. So :func:`scan` runs the
pickle's opcodes (``pickletools.genops``, the standard library's parser, which builds
nothing) on stand-in values that carry only what the bounds need: a value's size counts
every memo reference as the value it repeats, unfolded, and its depth its nesting. It
refuses, with the reason:

- an archive whose records' uncompressed size is out of proportion to the file, and a
  storage whose declared size differs from its record's;
- a pickle larger, deeper or with more values than :class:`LoadLimits` allows;
- an opcode torch.save does not write, and a call to any callable but those a plain
  checkpoint uses (dense tensors, mmengine's buffers and numpy scalars, containers);
- numpy data other than numpy writes it: a dtype whose state is not its canonical one,
  or that is set twice; an array not made as ``_reconstruct(ndarray, (0,), b'b')`` with a
  state whose bytes fill its shape;
- a ``bytearray(n)`` from a number, and a tensor view beyond its storage.

What the scan passes, torch's weights-only unpickler then loads (with the stand-ins of
:mod:`.allow_list`), and :mod:`.plain_data` checks what comes back.
"""
import math
import pickletools
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .allow_list import HISTORY_BUFFER, NUMERIC_KINDS
from .errors import shown


@dataclass(frozen=True)
class LoadLimits:
    """What loading a checkpoint may cost; a file beyond any limit is refused unread.

    The defaults pass a checkpoint of the paper's DeepLab R50-D8 run with optimizer state
    (about 1 GB; nesting 6, about 6·10⁴ values, a 0.2 MB pickle). Raise them for a larger
    file you trust.

    Attributes:
        max_depth: nesting of containers and calls in the pickle. Default: 100.
        max_values: values the pickle builds, a memo reference counted as the value it
            repeats, unfolded (so a DAG of shared tuples counts as its tree). Default: 10⁷.
        max_pickle_bytes: size of the pickle (data.pkl), uncompressed. Default: 1 GiB.
        max_expansion: the archive's records, uncompressed, over the file's size (torch.save
            stores records uncompressed: a ratio below 1). Default: 4.
    """
    max_depth: int = 100
    max_values: int = 10 ** 7
    max_pickle_bytes: int = 2 ** 30
    max_expansion: float = 4.0


class Refusal(Exception):
    """Why a file is refused; the loader turns it into a CheckpointError naming the file."""


# ------------------------------------------------------------------------------------------
# The archive


def check_archive(archive: zipfile.ZipFile, file_size: int, limits: LoadLimits) -> str:
    """The name of the archive's pickle, once its records are within bounds.

    Raises:
        Refusal: records out of proportion to the file, or no data.pkl.
    """
    records = archive.infolist()
    unpacked = sum(record.file_size for record in records)
    if unpacked > limits.max_expansion * max(file_size, 1):
        raise Refusal(f'its records unpack to {unpacked} bytes, {unpacked / max(file_size, 1):.0f} '
                      f'times the file (at most {limits.max_expansion:g}: '
                      'LoadLimits.max_expansion)')
    pickles = [record for record in records if record.filename.endswith('/data.pkl')]
    if len(pickles) != 1:
        raise Refusal('the zip archive holds no data.pkl (or several): it was not written by '
                      'torch.save')
    if pickles[0].file_size > limits.max_pickle_bytes:
        raise Refusal(f'its pickle is {pickles[0].file_size} bytes (at most '
                      f'{limits.max_pickle_bytes}: LoadLimits.max_pickle_bytes)')
    return pickles[0].filename


# ------------------------------------------------------------------------------------------
# The pickle, run on stand-in values


class _Value:
    """What the scan knows of a value the pickle builds.

    kind: 'literal' (value: the Python value, a str capped, or None for one too long),
    'tuple', 'list', 'dict', 'set' (items: the values, for tuples only), 'global' (value:
    'module.name'), 'storage' (value: its element count), 'tensor', 'dtype' (value: its
    type code), 'array', 'buffer' (a HistoryBuffer), 'ordered' (an OrderedDict), 'other'.
    size: the values it holds, unfolded, itself included; depth: its nesting.
    """
    __slots__ = ('kind', 'value', 'items', 'size', 'depth', 'built')

    def __init__(self, kind: str, value: Any = None, items: Tuple['_Value', ...] = (),
                 built: bool = False) -> None:
        self.kind, self.value, self.items, self.built = kind, value, items, built
        if items:
            self.size = 1 + sum(item.size for item in items)
            self.depth = 1 + max(item.depth for item in items)
        else:  # most values: literals
            self.size = self.depth = 1


class _Blob:
    """Text or bytes of a known length whose content the scan does not keep."""
    __slots__ = ('length',)

    def __init__(self, length: int) -> None:
        self.length = length


def _literal(value: Any) -> _Value:
    if isinstance(value, (str, bytes)) and len(value) > 4096:
        value = _Blob(len(value))  # long text is kept as its length only
    return _Value('literal', value)


def _length(value: _Value) -> Optional[int]:
    """The length of a str or bytes literal, else None."""
    if value.kind != 'literal':
        return None
    if isinstance(value.value, _Blob):
        return value.value.length
    return len(value.value) if isinstance(value.value, (str, bytes)) else None


def _ints(value: _Value) -> Optional[Tuple[int, ...]]:
    """A tuple value of non-negative ints as Python ints, else None."""
    if value.kind != 'tuple':
        return None
    ints = tuple(item.value for item in value.items)
    if all(item.kind == 'literal' and type(item.value) is int and item.value >= 0
           for item in value.items):
        return ints
    return None


def _canonical_dtype_states() -> Dict[str, tuple]:
    """The state numpy pickles for each numeric dtype, by the code it pickles it with."""
    states = {}
    for code in np.typecodes['All']:
        dtype = np.dtype(code)
        if dtype.kind in NUMERIC_KINDS:
            _, args, state = dtype.__reduce__()
            states[args[0]] = state
    return states


_DTYPE_STATES = _canonical_dtype_states()

#: Element sizes of torch's storage types, by the name torch.save writes.
_STORAGE_SIZES = {f'torch.{name}': dtype.itemsize
                  for dtype, name in torch.storage._dtype_to_storage_type_map().items()}
_STORAGE_SIZES['torch.UntypedStorage'] = 1

_NUMPY = ('numpy._core.multiarray', 'numpy.core.multiarray')


class _Machine:
    """The pickle machine of torch's weights-only unpickler, on stand-in values."""

    def __init__(self, records: Dict[str, int], prefix: str, limits: LoadLimits) -> None:
        self.records, self.prefix, self.limits = records, prefix, limits
        self.stack: List[_Value] = []
        self.marks: List[List[_Value]] = []
        self.memo: Dict[int, _Value] = {}
        self.values = 0
        self.unset: List[_Value] = []  # dtypes, arrays and buffers, until BUILD sets them
        self.calls: Dict[str, Callable[[Tuple[_Value, ...]], _Value]] = {
            'collections.OrderedDict': self._ordered_dict,
            'collections.Counter': self._counter,
            'torch._utils._rebuild_tensor_v2': self._tensor,
            'torch._utils._rebuild_parameter': self._parameter,
            'builtins.set': lambda args: self._made('set', args),
            'builtins.complex': lambda args: self._made('literal', args),
            'builtins.bytearray': self._bytearray,
            '_codecs.encode': self._encode,
            'torch.device': lambda args: self._made('literal', args),
            'torch.Size': lambda args: self._made('tuple', args),
            'torch.serialization._get_layout': lambda args: self._made('literal', args),
            'numpy.dtype': self._dtype,
            'builtins.getattr': lambda args: self._made('other', args),
            **{f'{module}._reconstruct': self._reconstruct for module in _NUMPY},
            **{f'{module}.scalar': self._scalar for module in _NUMPY},
        }

    # -- bookkeeping

    def check(self, value: _Value) -> None:
        if value.size > self.limits.max_values or self.values > self.limits.max_values:
            raise Refusal(f'its pickle builds more than {self.limits.max_values} values, '
                          'counting shared ones as often as they are referenced '
                          '(LoadLimits.max_values)')
        if value.depth > self.limits.max_depth or len(self.marks) > self.limits.max_depth:
            raise Refusal(f'its pickle nests deeper than {self.limits.max_depth} levels '
                          '(LoadLimits.max_depth)')

    def push(self, value: _Value) -> None:
        self.values += 1
        self.check(value)
        if value.kind in ('dtype', 'array', 'buffer'):
            self.unset.append(value)
        self.stack.append(value)

    def stop(self) -> Any:
        """STOP: every dtype, array and buffer made must have had its state set (one left
        unset is not what numpy or mmengine write, and slips past their checks)."""
        for value in self.unset:
            if not value.built:
                raise Refusal(f'it makes a {value.kind} and never sets its state')
        return StopIteration

    def pop(self) -> _Value:
        if not self.stack:
            raise Refusal('its pickle is malformed (it takes from an empty stack)')
        return self.stack.pop()

    def pop_mark(self) -> List[_Value]:
        if not self.marks:
            raise Refusal('its pickle is malformed (no mark to return to)')
        items, self.stack = self.stack, self.marks.pop()
        return items

    def grow(self, kinds: Tuple[str, ...], opcode: str, items: List[_Value]) -> None:
        """Adds items to the list, dict or set on top of the stack, in place."""
        if not self.stack or self.stack[-1].kind not in kinds:
            raise Refusal(f'its pickle applies {opcode} to a value that is not a '
                          f'{" or ".join(kinds)}')
        container = self.stack[-1]
        container.size += sum(item.size for item in items)
        container.depth = max([container.depth, *(1 + item.depth for item in items)])
        self.check(container)

    @staticmethod
    def _made(kind: str, args: Tuple[_Value, ...]) -> _Value:
        return _Value(kind, items=args)

    # -- the calls a plain checkpoint makes

    @staticmethod
    def _ordered_dict(args: Tuple[_Value, ...]) -> _Value:
        if args:
            raise Refusal('it makes an OrderedDict from arguments (torch.save writes none)')
        return _Value('ordered')

    @staticmethod
    def _counter(args: Tuple[_Value, ...]) -> _Value:
        # A Counter pickles as Counter(dict) (mmengine's epoch-based loops keep one).
        if len(args) > 1 or args and args[0].kind != 'dict':
            raise Refusal('it makes a Counter from something other than a dict')
        return _Value('dict', items=args)

    @staticmethod
    def _tensor(args: Tuple[_Value, ...]) -> _Value:
        if len(args) < 4 or args[0].kind != 'storage':
            raise Refusal('it rebuilds a tensor from something other than a storage')
        offset, size, stride = args[1].value, _ints(args[2]), _ints(args[3])
        if (type(offset) is not int or offset < 0 or size is None or stride is None
                or len(size) != len(stride)):
            raise Refusal('it rebuilds a tensor with a malformed offset, size or stride')
        if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= max(
                args[0].value, 1):
            raise Refusal(f'a tensor of size {shown(str(size))} reaches beyond its storage of '
                          f'{args[0].value} elements')
        return _Value('tensor', items=args)

    @staticmethod
    def _parameter(args: Tuple[_Value, ...]) -> _Value:
        if not args or args[0].kind != 'tensor':
            raise Refusal('it rebuilds a parameter from something other than a tensor')
        return _Value('tensor', items=args)

    @staticmethod
    def _bytearray(args: Tuple[_Value, ...]) -> _Value:
        if any(arg.kind == 'literal' and type(arg.value) is int for arg in args):
            raise Refusal('it asks for bytearray(n), n zero bytes: a checkpoint writes its '
                          'bytes')
        return _Value('literal', items=args)

    @staticmethod
    def _encode(args: Tuple[_Value, ...]) -> _Value:
        # How protocol 2 pickles bytes: _codecs.encode(text, 'latin1'), a byte a character.
        if len(args) != 2 or _length(args[0]) is None or args[1].value != 'latin1':
            raise Refusal('it encodes something other than text to bytes')
        text = args[0].value
        return _Value('literal', text.encode('latin1') if isinstance(text, str) else
                      _Blob(text.length))

    @staticmethod
    def _dtype(args: Tuple[_Value, ...]) -> _Value:
        code = args[0].value if args and args[0].kind == 'literal' else None
        if type(code) is not str or code not in _DTYPE_STATES:
            raise Refusal('it makes a numpy dtype other than a bool, integer, float or '
                          'complex one')
        return _Value('dtype', code, items=args)

    @staticmethod
    def _reconstruct(args: Tuple[_Value, ...]) -> _Value:
        if (len(args) != 3 or args[0].kind != 'global' or args[0].value != 'numpy.ndarray'
                or _ints(args[1]) != (0,) or args[2].value != b'b'):
            raise Refusal('it makes a numpy array otherwise than numpy pickles one '
                          "(_reconstruct(ndarray, (0,), b'b'))")
        return _Value('array', items=args)

    @staticmethod
    def _scalar(args: Tuple[_Value, ...]) -> _Value:
        if (len(args) != 2 or args[0].kind != 'dtype' or not args[0].built
                or _length(args[1]) != np.dtype(args[0].value).itemsize):
            raise Refusal('it makes a numpy scalar otherwise than numpy pickles one')
        return _Value('literal', items=args)

    # -- BUILD: the states a plain checkpoint sets

    def build(self, target: _Value, state: _Value) -> None:
        if target.built:
            raise Refusal(f'it sets the state of a {target.kind} twice')
        if target.kind == 'dtype':
            expected = _DTYPE_STATES[target.value]
            if (state.kind != 'tuple' or len(state.items) != len(expected) or any(
                    item.kind != 'literal' or type(item.value) is not type(want)
                    or item.value != want for item, want in zip(state.items, expected))):
                raise Refusal(f'it gives a numpy dtype ({shown(target.value)}) a state other '
                              'than its own')
        elif target.kind == 'array':
            items = state.items if state.kind == 'tuple' else ()
            shape = _ints(items[1]) if len(items) == 5 else None
            if (shape is None or items[2].kind != 'dtype' or not items[2].built
                    or _length(items[4]) != math.prod(shape)
                    * np.dtype(items[2].value).itemsize):
                raise Refusal('it gives a numpy array a state other than numeric data that '
                              'fills its shape')
        elif target.kind == 'buffer':
            if state.kind != 'dict':
                raise Refusal('it gives a HistoryBuffer a state that is not a dict')
        elif target.kind == 'ordered':
            if state.kind != 'dict':
                raise Refusal('it gives an OrderedDict attributes that are not a dict')
        else:
            raise Refusal(f'it sets the state of a {target.kind}, which checkpoints do not')
        target.built = True
        target.size += state.size
        target.depth = max(target.depth, 1 + state.depth)

    # -- the opcodes torch's weights-only unpickler runs

    def run(self, data: bytes) -> None:
        handlers = self._handlers()
        try:
            for opcode, arg, _ in pickletools.genops(data):
                handler = handlers.get(opcode.name)
                if handler is None:
                    raise Refusal(f'its pickle has the opcode {opcode.name}, which torch.save '
                                  'does not write: it was not written by torch.save')
                if handler(arg) is StopIteration:
                    return
        except ValueError as error:  # genops: truncated or unknown bytes
            raise Refusal(f'its pickle is malformed ({shown(str(error))})') from None
        raise Refusal('its pickle is malformed (it does not end with STOP)')

    def _handlers(self) -> Dict[str, Callable[[Any], Any]]:
        def literal(arg: Any) -> None:
            self.push(_literal(arg))

        def constant(value: Any) -> Callable[[Any], None]:
            return lambda arg: self.push(_literal(value))

        def empty(kind: str) -> Callable[[Any], None]:
            return lambda arg: self.push(_Value(kind))

        def tuple_of(count: int) -> Callable[[Any], None]:
            def make(arg: Any) -> None:
                items = [self.pop() for _ in range(count)][::-1]
                self.push(_Value('tuple', items=tuple(items)))
            return make

        def mark_tuple(arg: Any) -> None:
            self.push(_Value('tuple', items=tuple(self.pop_mark())))

        def mark(arg: Any) -> None:
            self.marks.append(self.stack)
            self.stack = []

        def append(arg: Any) -> None:
            self.grow(('list',), 'APPEND', [self.pop()])

        def appends(arg: Any) -> None:
            self.grow(('list',), 'APPENDS', self.pop_mark())

        def setitem(arg: Any) -> None:
            value, key = self.pop(), self.pop()
            self.grow(('dict', 'ordered'), 'SETITEM', [key, value])

        def setitems(arg: Any) -> None:
            self.grow(('dict', 'ordered'), 'SETITEMS', self.pop_mark())

        def global_(arg: str) -> None:
            # Protocol 2 writes Python 2's names; unpicklers map them as pickle does.
            module, name = arg.split(' ', 1)
            module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module),
                                                             name))
            self.push(_Value('global', f'{module}.{name}'))

        def reduce(arg: Any) -> None:
            args, func = self.pop(), self.pop()
            if func.kind != 'global' or args.kind != 'tuple':
                raise Refusal('its pickle calls something other than a named global')
            call = self.calls.get(func.value)
            if call is None:
                raise Refusal(f'it calls {shown(func.value)}, which the checkpoints en_seg '
                              'loads do not use')
            self.push(call(args.items))

        def newobj(arg: Any) -> None:
            args, cls = self.pop(), self.pop()
            if cls.kind == 'global' and cls.value == HISTORY_BUFFER and args.kind == 'tuple' \
                    and not args.items:
                self.push(_Value('buffer'))
            elif cls.kind == 'global' and cls.value == 'torch.nn.parameter.Parameter':
                self.push(self._parameter(args.items))
            else:
                raise Refusal('it makes an object other than a HistoryBuffer or a Parameter')

        def build(arg: Any) -> None:
            state = self.pop()
            if not self.stack:
                raise Refusal('its pickle is malformed (BUILD without a target)')
            self.build(self.stack[-1], state)

        def persistent(arg: Any) -> None:
            self.push(self.storage(self.pop()))

        def get(arg: int) -> None:
            if arg not in self.memo:
                raise Refusal('its pickle is malformed (it reads an empty memo slot)')
            self.push(self.memo[arg])

        def protocol(arg: int) -> None:
            if arg != 2:
                raise Refusal(f'its pickle is of protocol {arg}; torch.save writes protocol 2')

        def put(arg: int) -> None:
            if not self.stack:
                raise Refusal('its pickle is malformed (it memoizes from an empty stack)')
            self.memo[arg] = self.stack[-1]

        return {
            'PROTO': protocol, 'STOP': lambda arg: self.stop(),
            'GLOBAL': global_, 'REDUCE': reduce, 'NEWOBJ': newobj, 'BUILD': build,
            'MARK': mark, 'TUPLE': mark_tuple, 'TUPLE1': tuple_of(1), 'TUPLE2': tuple_of(2),
            'TUPLE3': tuple_of(3), 'EMPTY_TUPLE': tuple_of(0),
            'EMPTY_LIST': empty('list'), 'EMPTY_DICT': empty('dict'),
            'EMPTY_SET': empty('set'), 'APPEND': append, 'APPENDS': appends,
            'SETITEM': setitem, 'SETITEMS': setitems,
            'NONE': constant(None), 'NEWTRUE': constant(True), 'NEWFALSE': constant(False),
            'BININT': literal, 'BININT1': literal, 'BININT2': literal, 'LONG1': literal,
            'BINFLOAT': literal, 'BINUNICODE': literal, 'SHORT_BINSTRING': literal,
            'BINPERSID': persistent, 'BINGET': get, 'LONG_BINGET': get,
            'BINPUT': put, 'LONG_BINPUT': put,
        }

    def storage(self, pid: _Value) -> _Value:
        """BINPERSID's ('storage', type, key, location, count): its record must exist and
        hold exactly count elements of its type."""
        items = pid.items if pid.kind == 'tuple' else ()
        if (len(items) != 5 or items[0].value not in ('storage', b'storage')
                or items[1].kind != 'global' or type(items[2].value) is not str
                or type(items[4].value) is not int):
            raise Refusal('its pickle refers to data other than a storage')
        element = _STORAGE_SIZES.get(items[1].value)
        if element is None:
            raise Refusal(f'a storage of type {shown(items[1].value)}')
        key, count = items[2].value, items[4].value
        record = self.records.get(f'{self.prefix}data/{key}')
        if record is None or count < 0 or count * element != record:
            raise Refusal(f'a storage ({shown(key)}) declares {count} elements of {element} '
                          f'bytes, but its record holds '
                          f'{"nothing" if record is None else f"{record} bytes"}')
        return _Value('storage', count)


def scan(archive: zipfile.ZipFile, file_size: int, limits: LoadLimits) -> None:
    """Check ``archive`` (a torch.save zip file of ``file_size`` bytes) against ``limits``
    before it is unpickled.

    Raises:
        Refusal: the first problem found, in words.
    """
    name = check_archive(archive, file_size, limits)
    prefix = name[:-len('data.pkl')]
    records = {record.filename: record.file_size for record in archive.infolist()}
    _Machine(records, prefix, limits).run(archive.read(name))
