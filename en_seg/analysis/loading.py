"""Build an mmseg segmentor and a dataset split from a config, load a checkpoint."""
import copy
import os.path as osp
from typing import Optional

from mmengine.config import Config
from mmengine.runner import Runner, load_checkpoint
from mmseg.apis import init_model
from torch import nn
from torch.utils.data import DataLoader

#: Splits whose dataloader the analysis reads: ``<split>_dataloader`` in the config.
SPLITS = ('val', 'test')


def init_segmentor(config: str, checkpoint: str, device: str = 'cpu',
                   cfg_options: Optional[dict] = None) -> nn.Module:
    """The config's segmentor in evaluation mode with a ``tools/train.py`` checkpoint.

    The model is built by ``mmseg.apis.init_model`` (no pretrained backbone weights),
    then the checkpoint (mmengine format, weights under ``state_dict``) is loaded
    strictly, weights-only (:mod:`en_seg.checkpoint`).

    Args:
        config: path of the config file.
        checkpoint: path of the checkpoint file.
        device: where the model runs, e.g. ``'cpu'`` or ``'cuda:0'``. Default: 'cpu'.
        cfg_options: config overrides, as ``--cfg-options`` of the tools.

    Returns:
        The model, with its merged config as ``model.cfg``.

    Raises:
        FileNotFoundError: for a missing config or checkpoint.
        en_seg.checkpoint.CheckpointError: the checkpoint is unreadable or refused.
        ValueError: if the checkpoint has no EN layer (no ``*.ratio_fc2.weight``), e.g. a
            BatchNorm one: the EN layers would keep their initial, uniform ratios.
        RuntimeError: if the checkpoint's weights do not match the config's model.
    """
    for what, path in (('config', config), ('checkpoint', checkpoint)):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file {path!r} does not exist')
    model = init_model(config, checkpoint=None, device='cpu', cfg_options=cfg_options)
    state = load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    state = state.get('state_dict', state)
    # EN layers load BatchNorm weights (docs/method.md#loading-a-batchnorm-checkpoint), keeping their initial ratio branch,
    # so the strict load alone does not notice a checkpoint without ratio branches.
    if not any(key.endswith('ratio_fc2.weight') for key in state):
        raise ValueError(
            f'checkpoint {checkpoint!r} holds no EN layer (no *.ratio_fc2.weight key), so '
            'its ratios would be the initial 1/K: pass a checkpoint trained with '
            "norm_cfg=dict(type='EN'), together with that training's config")
    return model.to(device)


def build_split_dataloader(cfg: Config, split: str = 'val') -> DataLoader:
    """The dataloader of ``cfg.<split>_dataloader``, one image per batch.

    Batches hold one image because mmseg pads the images of a batch to a common size,
    and padding would change the IN and LN statistics, hence the ratios.

    Args:
        cfg: a full mmseg config (``model.cfg`` of :func:`init_segmentor`), whose
            default scope is set (``init_model`` does it).
        split: 'val' or 'test'. Default: 'val'.

    Raises:
        ValueError: for another split, or a config without that dataloader.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    key = f'{split}_dataloader'
    if cfg.get(key) is None:
        raise ValueError(f'the config has no {key}: choose another split, or inherit a '
                         'dataset config (e.g. configs/_base_/datasets/ade20k.py)')
    dataloader = copy.deepcopy(cfg[key])
    dataloader['batch_size'] = 1
    return Runner.build_dataloader(dataloader)
