"""Every mmseg model family trains with EN: one config from each folder of mmseg's model
zoo, every BatchNorm ``norm_cfg`` swapped for ``'EN'``, built and run for one training step
at 128×128 (README.md, "Models that are not configs"; docs/method.md#any-channel-count)."""
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData

import en_seg  # noqa: F401  (registers EN)
from en_seg.models import ExemplarNorm2d

mmseg = pytest.importorskip('mmseg')
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

CONFIGS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')
#: What each folder of mmseg's configs needs beyond mmseg and mmcv, for those that do.
NEEDS = {
    'convnext': 'mmpretrain (its ConvNeXt backbone)',
    'poolformer': 'mmpretrain (its PoolFormer backbone)',
    'mask2former': 'mmdet (its Mask2Former head)',
    'maskformer': 'mmdet (its MaskFormer head)',
    'vpd': 'diffusers and the Stable Diffusion weights',
}
#: Folders with no model: data-set configs only.
NOT_MODELS = ('_base_', 'dsdl')
#: BatchNorm's ``norm_cfg`` types in mmseg's configs.
BATCHNORM_TYPES = ('BN', 'SyncBN', 'BN2d')
SIZE = (128, 128)


def folders():
    return sorted(name for name in os.listdir(CONFIGS)
                  if osp.isdir(osp.join(CONFIGS, name)) and name not in NOT_MODELS)


def chosen_config(folder):
    """The folder's first config, preferring the lighter ResNet-18 / 50 ones."""
    names = sorted(name for name in os.listdir(osp.join(CONFIGS, folder))
                   if name.endswith('.py'))
    light = [name for name in names if 'r18' in name or 'r50' in name]
    return osp.join(CONFIGS, folder, (light or names)[0])


def swap_batchnorm(node):
    """The number of BatchNorm ``norm_cfg`` dicts under ``node`` turned into EN ones."""
    swapped = 0
    if isinstance(node, dict):
        if node.get('type') in BATCHNORM_TYPES:
            node['type'] = 'EN'
            swapped += 1
        for value in node.values():
            swapped += swap_batchnorm(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            swapped += swap_batchnorm(value)
    return swapped


def batch(n=2):
    """Images and labels as mmseg's data pipeline delivers them, for ``train_step``."""
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=SIZE, ori_shape=SIZE,
                                             pad_shape=SIZE))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, *SIZE)))
        sample.gt_edge_map = PixelData(data=torch.randint(0, 2, (1, *SIZE)))  # PIDNet
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 256, (3, *SIZE), dtype=torch.uint8)
                        for _ in range(n)], data_samples=samples)


@pytest.mark.slow
@pytest.mark.parametrize('folder', folders())
def test_each_model_family_trains_with_en(folder):
    if folder in NEEDS:
        pytest.skip(f'{folder} needs {NEEDS[folder]}, which en-seg does not install')
    cfg = Config.fromfile(chosen_config(folder))
    model_cfg: ConfigDict = cfg.model
    if not swap_batchnorm(model_cfg):
        pytest.skip(f'{osp.basename(chosen_config(folder))} has no BatchNorm layer')
    model_cfg.pop('pretrained', None)
    model_cfg.data_preprocessor.size = SIZE
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(model_cfg)
    layers = [m for m in model.modules() if isinstance(m, ExemplarNorm2d)]
    assert layers and not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    model.train()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = model.train_step(batch(), optim_wrapper)
    assert all(torch.isfinite(loss).all() for loss in losses.values()), losses
    assert any(layer.last_ratios is not None for layer in layers)
