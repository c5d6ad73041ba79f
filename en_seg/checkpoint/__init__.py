"""Loading checkpoints as untrusted input: no code runs, the cost is bounded, plain data
comes back, and every bad file gets one :class:`CheckpointError` naming it and the reason.

``import en_seg`` registers :func:`load_from_local` as mmengine's loader for local paths
(``CheckpointLoader`` scheme ``''``), so the Runner (``load_from``, ``resume``),
``load_checkpoint``, ``init_cfg=dict(type='Pretrained')``, mmseg's ``init_model``,
``MMSegInferencer`` and both projects' tools load through it, and it registers the
allow-list of :mod:`.allow_list` with torch's weights-only unpickler, process-wide. A load:

1. a ``.safetensors`` file: read by safetensors (:mod:`.safetensors_format`);
2. a torch.save archive: checked before anything in it is unpickled (:mod:`.scan`, within
   :class:`LoadLimits`), then loaded by torch's weights-only unpickler with the allow-list's
   guarded stand-ins, whatever the torch version or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``;
3. what came back is checked to be plain data (:mod:`.plain_data`).

docs/checkpoints.md tells what is refused and why, and how to share weights as safetensors.
"""
import os
import os.path as osp
import pickle
import zipfile
from typing import Any, Callable, Optional, Union

import torch
from mmengine.runner import CheckpointLoader

from . import allow_list
from .errors import CheckpointError, shown
from .plain_data import check_plain
from .safetensors_format import load_safetensors, save_safetensors
from .scan import LoadLimits, Refusal, scan

__all__ = ['CheckpointError', 'LoadLimits', 'load_from_local', 'load_limits',
           'set_load_limits', 'save_safetensors', 'register']

_limits = LoadLimits()


def load_limits() -> LoadLimits:
    """The limits :func:`load_from_local` applies when its caller gives none."""
    return _limits


def set_load_limits(limits: LoadLimits) -> None:
    """Set the limits every load of this process applies when its caller gives none (e.g.
    before a Runner loads a checkpoint larger than the defaults allow)."""
    global _limits
    if not isinstance(limits, LoadLimits):
        raise TypeError(f'limits must be a LoadLimits, got {type(limits).__name__}')
    _limits = limits


class _Unreadable(Exception):
    """The file is not a checkpoint at all (empty, truncated, another format)."""


def _read_error(filename: str) -> Optional[str]:
    """Why the file cannot be a torch.save archive, from its first bytes; None if it may."""
    with open(filename, 'rb') as file:
        head = file.read(4)
    if not head:
        return 'the file is empty'
    if head == b'PK\x03\x04':
        return None if zipfile.is_zipfile(filename) else (
            'the zip archive is truncated or corrupted (no central directory)')
    if head[:1] == b'\x80':
        return ('it is a bare pickle: the format of torch < 1.6, or not written by torch.save '
                'at all. Load a trusted one with torch.load and save it again')
    return 'it is not a file written by torch.save (neither a zip archive nor a pickle)'


def _refusal(error: pickle.UnpicklingError) -> str:
    """The unpickler's own words, capped, without torch's advice to load with
    weights_only=False or to allow-list what was refused."""
    if error.__context__ is not None:  # torch re-raises the unpickler's error `from None`
        error = error.__context__
    message = str(error).split(' Please use `torch.serialization.add_safe_globals')[0]
    return shown(message.strip().rstrip('.'), 300)


def _load_torch(filename: str, map_location: Any, limits: LoadLimits) -> Any:
    problem = _read_error(filename)
    if problem is not None:
        raise _Unreadable(problem)
    try:
        with zipfile.ZipFile(filename) as archive:
            scan(archive, osp.getsize(filename), limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as error:
        raise _Unreadable(f'the zip archive is truncated or corrupted ({shown(str(error))})')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise Refusal(_refusal(error)) from None
    except (MemoryError, RecursionError):
        raise
    except Exception as error:  # torch's zip reader: RuntimeError, EOFError, ...
        raise _Unreadable(f'{type(error).__name__}: {shown(str(error).split(". ")[0], 200)}. '
                          'It is truncated or corrupted, or was not written by torch.save')


def load_from_local(filename: str,
                    map_location: Optional[Union[str, torch.device, Callable]] = None,
                    limits: Optional[LoadLimits] = None) -> Any:
    """Load a local checkpoint: a torch.save file or a ``.safetensors`` file.

    Registered as mmengine's ``CheckpointLoader`` scheme for local paths, so every loader
    built on mmengine uses it (the module docstring lists them).

    Args:
        filename: path of the file; ``~`` is expanded. A name ending in ``.safetensors`` is
            read as safetensors, any other as torch.save's format.
        map_location: as ``torch.load`` (a device, or a name of one, for safetensors).
            Default: None (where the tensors were saved; the CPU for safetensors).
        limits: what the load may cost. Default: :func:`load_limits` (:class:`LoadLimits`'
            defaults unless :func:`set_load_limits` changed them).

    Returns:
        Plain data (:mod:`.plain_data`): for mmengine's checkpoints a dict with ``meta``,
        ``state_dict`` and, after training, ``message_hub``, ``optimizer`` and
        ``param_schedulers``; for a safetensors file, ``state_dict`` and ``meta`` (with
        ``dataset_meta`` where the file has it).

    Raises:
        CheckpointError: naming the file and the reason, for a missing file or a directory;
            a file that is empty, truncated, corrupted or in another format; one refused by
            the scan, the weights-only unpickler or the plain-data check; and a load that ran
            out of memory or recursion depth anyway.
    """
    filename = osp.expanduser(filename)
    limits = limits or _limits
    try:
        if osp.isdir(filename):
            raise _Unreadable('it is a directory, not a file')
        if not osp.exists(filename):
            raise _Unreadable('there is no such file')
        if filename.endswith('.safetensors'):
            checkpoint = load_safetensors(filename, map_location)
        else:
            checkpoint = _load_torch(filename, map_location, limits)
        check_plain(checkpoint, limits.max_depth)
        return checkpoint
    except _Unreadable as error:
        raise CheckpointError(f'checkpoint {filename} cannot be read: {error}') from None
    except Refusal as error:
        raise CheckpointError(
            f'checkpoint {filename} was refused, and nothing in it was run: {error}. '
            'Weights-only loading accepts tensors, containers and what mmengine\'s Runner '
            'saves (see en_seg.checkpoint)') from None
    except MemoryError:
        raise CheckpointError(f'checkpoint {filename} was refused: loading it ran out of '
                              'memory') from None
    except RecursionError:
        raise CheckpointError(f'checkpoint {filename} was refused: it nests too deeply to '
                              'load') from None
    except OSError as error:
        raise CheckpointError(f'checkpoint {filename} cannot be read: '
                              f'{shown(os.strerror(error.errno) if error.errno else str(error))}'
                              ) from None


def register() -> None:
    """Register the allow-list and :func:`load_from_local`; ``import en_seg`` calls it."""
    allow_list.register()
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
