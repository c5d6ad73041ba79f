"""Load mmengine checkpoints on torch >= 2.6 with ``weights_only`` kept on.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine 0.10.7 writes the
run's ``message_hub`` (``HistoryBuffer`` objects holding numpy arrays) into every
checkpoint and loads with a plain ``torch.load``, which then refuses the file. Instead of
switching the protection off, we allow-list exactly the globals those checkpoints hold,
only while a load runs.
"""
import contextlib
from typing import Iterator, Optional, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint as _mmengine_load_checkpoint
from torch import nn

try:  # numpy >= 2 moved its pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

#: The globals an mmengine checkpoint pickles beside tensors. ``getattr`` is needed
#: because HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, name);
#: the weights-only unpickler still calls nothing but allow-listed callables, so it can
#: only read attributes with it.
MMENGINE_CHECKPOINT_GLOBALS = [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar,
                               getattr] + [type(np.dtype(t)) for t in
                                           (np.float64, np.float32, np.int64, np.int32)]


@contextlib.contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """Within the block, ``torch.load`` accepts checkpoints written by mmengine's Runner.

    On torch < 2.6, where weights-only loading is not the default, this changes nothing.
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        yield
        return
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
        yield


def load_checkpoint(model: nn.Module, filename: str,
                    map_location: Optional[Union[str, torch.device]] = 'cpu',
                    strict: bool = False) -> dict:
    """``mmengine.runner.load_checkpoint`` under :func:`mmengine_checkpoint_globals`.

    Args:
        model: the module to load into (a BatchNorm checkpoint loads into EN layers).
        filename: local path or any URI mmengine understands.
        map_location: as ``torch.load``. Default: 'cpu'.
        strict: whether every key must match. Default: False (mmengine's default).

    Returns:
        The loaded checkpoint dict.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    with mmengine_checkpoint_globals():
        return _mmengine_load_checkpoint(model, filename, map_location=map_location,
                                         strict=strict)
