"""Distributed launch on machines with or without CUDA."""
import datetime

import torch
import torch.distributed as dist
from mmengine.config import Config


def prepare_launch(cfg: Config) -> None:
    """Make a distributed config runnable on CPU-only machines; on GPUs change nothing.

    mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and pins the DDP
    wrapper to the local GPU. Without CUDA this starts the process group with ``gloo``
    from torchrun's environment, and lets DDP keep the CPU module (``device_ids=None``).
    Buffers are never broadcast (``broadcast_buffers=False``, also mmengine's default),
    so every process keeps its own running statistics: EN and SN are not synchronised
    across processes unless built with ``sync_stats=True``
    (docs/method.md#synchronization-across-processes).

    Args:
        cfg: the run's config, with ``cfg.launcher`` set; modified in place.

    Raises:
        ValueError: a launcher other than ``none`` or ``pytorch`` on a machine without
            CUDA.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(f'--launcher {launcher} needs GPUs; on a CPU-only machine start '
                         'the processes with torchrun and --launcher pytorch')
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=dist_cfg.get('timeout', 1800))
        dist.init_process_group(backend='gloo', timeout=timeout)
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper.setdefault('broadcast_buffers', False)
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
