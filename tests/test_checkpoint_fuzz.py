"""Fuzzing the checkpoint loader: mutated real checkpoints and generated opcode streams.

Every case is a torch.save archive whose pickle is either a real mmengine-style checkpoint's
with bytes flipped, inserted, deleted or spliced, or a stream of the opcodes torch's
weights-only unpickler runs, with generated arguments. Each goes through
``en_seg.checkpoint.load_from_local``, the loader behind every entry point (mmengine's
CheckpointLoader scheme for local paths). A case passes when the load returns plain data
or raises ``CheckpointError``; anything else fails: another exception, a crash, a hang, more
than 4 GiB, or a marker file written by code in the file.

The cases run in one forked child (tests/isolated.py), which writes each case to disk
before loading it, so a crash names its case. ``EN_SEG_FUZZ_EXAMPLES`` sets the number of
cases (default 2000, about 30 s on 2 cores); docs/checkpoints.md records a run of 10⁶.
"""
import io
import os
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmengine.logging import HistoryBuffer

from en_seg.checkpoint import CheckpointError, load_from_local
from en_seg.checkpoint.plain_data import check_plain
from isolated import run_isolated

EXAMPLES = int(os.environ.get('EN_SEG_FUZZ_EXAMPLES', '2000'))


def _seed_archive() -> dict:
    """The records of a small checkpoint shaped as mmengine's Runner writes one."""
    buffer = HistoryBuffer()
    for value in (1.5, 0.5, 0.25):
        buffer.update(value)
    state = OrderedDict(weight=torch.randn(2, 3), bias=torch.zeros(2),
                        num_batches_tracked=torch.tensor(3))
    state._metadata = OrderedDict({'': {'version': 2}})
    checkpoint = {'meta': {'iter': 2, 'seed': np.int64(7), 'lr': np.float64(0.01),
                           'dataset_meta': {'classes': ('a', 'b'), 'palette': [[1, 2, 3]]}},
                  'state_dict': state,
                  'message_hub': {'log_scalars': {'train/loss': buffer},
                                  'runtime_info': {'iter': 2}},
                  'optimizer': {'state': {0: {'momentum_buffer': torch.ones(2)}},
                                'param_groups': [{'lr': 0.01, 'params': [0]}]}}
    data = io.BytesIO()
    torch.save(checkpoint, data)
    with zipfile.ZipFile(data) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


RECORDS = _seed_archive()
PICKLE = next(name for name in RECORDS if name.endswith('data.pkl'))

# Opcodes torch's weights-only unpickler runs, with generated arguments.
_GLOBALS = ['collections OrderedDict', 'torch._utils _rebuild_tensor_v2', 'torch FloatStorage',
            'numpy dtype', 'numpy.core.multiarray _reconstruct', 'numpy ndarray',
            'numpy.core.multiarray scalar', '_codecs encode', '__builtin__ getattr',
            '__builtin__ bytearray', '__builtin__ set', 'mmengine.logging.history_buffer '
            'HistoryBuffer', 'torch.nn.parameter Parameter', 'torch device', 'os system']
_TEXT = st.text(max_size=8).map(lambda text: text.encode('utf-8', 'surrogatepass'))
_OPCODE = st.one_of(
    st.sampled_from([b'(', b't', b'\x85', b'\x86', b'\x87', b')', b']', b'}', b'\x8f', b'a',
                     b'e', b's', b'u', b'R', b'\x81', b'b', b'Q', b'N', b'\x88', b'\x89']),
    st.sampled_from(_GLOBALS).map(lambda name: b'c' + name.replace(' ', '\n').encode() + b'\n'),
    st.integers(0, 255).map(lambda i: b'K' + bytes([i])),
    st.integers(-2 ** 31, 2 ** 31 - 1).map(lambda i: b'J' + struct.pack('<i', i)),
    st.integers(-2 ** 63, 2 ** 63 - 1).map(lambda i: b'\x8a\x08' + struct.pack('<q', i)),
    st.floats(allow_nan=True).map(lambda f: b'G' + struct.pack('>d', f)),
    _TEXT.map(lambda data: b'X' + struct.pack('<I', len(data)) + data),
    st.integers(0, 8).map(lambda i: b'q' + bytes([i])),
    st.integers(0, 8).map(lambda i: b'h' + bytes([i])),
)


@st.composite
def _mutated(draw) -> bytes:
    """The seed's pickle with a few bytes flipped, inserted, deleted or a span repeated."""
    data = bytearray(RECORDS[PICKLE])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(['flip', 'insert', 'delete', 'repeat']))
        if action == 'flip':
            data[at] = draw(st.integers(0, 255))
        elif action == 'insert':
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == 'delete':
            del data[at:at + draw(st.integers(1, 8))]
        else:
            end = min(len(data), at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end] * draw(st.integers(1, 8))
    return bytes(data)


_GENERATED = st.lists(_OPCODE, max_size=40).map(lambda ops: b'\x80\x02' + b''.join(ops) + b'.')


def _fuzz(directory: Path) -> dict:
    """Runs the cases; returns how many loaded and how many were refused."""
    case = directory / 'case.pth'
    marker = directory / 'case.ran'
    outcomes = {'loaded': 0, 'refused': 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(_mutated(), _GENERATED))
    def load_case(data_pkl: bytes) -> None:
        with zipfile.ZipFile(case, 'w') as archive:
            for name, data in RECORDS.items():
                archive.writestr(name, data_pkl if name == PICKLE else data)
        try:
            check_plain(load_from_local(str(case)), 100)
            outcomes['loaded'] += 1
        except CheckpointError as error:
            assert str(error).startswith(f'checkpoint {case} '), error
            outcomes['refused'] += 1
        assert not marker.exists()

    load_case()
    return outcomes


def test_fuzzed_checkpoints_load_as_plain_data_or_get_one_clear_error(tmp_path):
    outcome = run_isolated(lambda: _fuzz(tmp_path), timeout=max(120, EXAMPLES / 20))
    last = tmp_path / 'case.pth'
    assert outcome[0] == 'returned', (
        outcome, f'the last case written: {last} ({last.stat().st_size} bytes)'
        if last.exists() else '')
    # Both outcomes occur: the mutations keep some files loadable, and the guards refuse.
    assert outcome[1]['loaded'] > 0 and outcome[1]['refused'] > 0, outcome
