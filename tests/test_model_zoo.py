"""Every mmseg model family trains with EN and SN: one config from each folder of mmseg's
model zoo, every BatchNorm ``norm_cfg`` swapped for ``'EN'`` (``'SN'``), built and run for
one training step at 128×128 (README.md, "Models that are not configs";
docs/method.md#converting-a-built-model)."""
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData

import en_seg  # noqa: F401  (registers EN)
from en_seg.models import ExemplarNorm2d, SwitchableNorm2d

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
#: Families whose mmseg code builds some nn.BatchNorm2d itself, whatever the ``norm_cfg``:
#: ``convert_batchnorm`` converts those after the build.
BUILT_IN_BATCHNORM = ('bisenetv1', 'bisenetv2', 'ddrnet', 'erfnet', 'pidnet', 'stdc')
SIZE = (128, 128)
#: LR-ASPP pools its 1/8 features with a 49×49 kernel.
SIZES = {'mobilenet_v3': (400, 400)}


def folders():
    return sorted(name for name in os.listdir(CONFIGS)
                  if osp.isdir(osp.join(CONFIGS, name)) and name not in NOT_MODELS)


def chosen_config(folder):
    """The folder's first config, preferring the lighter ResNet-18 / 50 ones."""
    names = sorted(name for name in os.listdir(osp.join(CONFIGS, folder))
                   if name.endswith('.py'))
    light = [name for name in names if 'r18' in name or 'r50' in name]
    return osp.join(CONFIGS, folder, (light or names)[0])


def swap_batchnorm(node, norm_type):
    """The number of BatchNorm ``norm_cfg`` dicts under ``node`` given ``norm_type``."""
    swapped = 0
    if isinstance(node, dict):
        if node.get('type') in BATCHNORM_TYPES:
            node['type'] = norm_type
            swapped += 1
        for value in node.values():
            swapped += swap_batchnorm(value, norm_type)
    elif isinstance(node, (list, tuple)):
        for value in node:
            swapped += swap_batchnorm(value, norm_type)
    return swapped


def batch(size, n=2):
    """Images and labels (classes 0 and 1, which every model has) as mmseg's data pipeline
    delivers them, for ``train_step``."""
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 2, (1, *size)))
        sample.gt_edge_map = PixelData(data=torch.randint(0, 2, (1, *size)))  # PIDNet
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 256, (3, *size), dtype=torch.uint8)
                        for _ in range(n)], data_samples=samples)


@pytest.mark.slow
@pytest.mark.parametrize('norm_type, layer_class',
                         [('EN', ExemplarNorm2d), ('SN', SwitchableNorm2d)])
@pytest.mark.parametrize('folder', folders())
def test_each_model_family_trains_with_en_and_sn(folder, norm_type, layer_class):
    if folder in NEEDS:
        pytest.skip(f'{folder} needs {NEEDS[folder]}, which en-seg does not install')
    cfg = Config.fromfile(chosen_config(folder))
    model_cfg: ConfigDict = cfg.model
    if not swap_batchnorm(model_cfg, norm_type):
        pytest.skip(f'{osp.basename(chosen_config(folder))} has no BatchNorm layer')
    size = SIZES.get(folder, SIZE)
    model_cfg.pop('pretrained', None)
    model_cfg.data_preprocessor.size = size
    if 'img_size' in model_cfg.backbone:  # ViT-style position embeddings
        model_cfg.backbone.img_size = size
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(model_cfg)
    built_in = sum(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    assert bool(built_in) == (folder in BUILT_IN_BATCHNORM), built_in
    model = layer_class.convert_batchnorm(model)
    layers = [m for m in model.modules() if isinstance(m, layer_class)]
    assert layers and not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    model.train()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = model.train_step(batch(size), optim_wrapper)
    assert all(torch.isfinite(loss).all() for loss in losses.values()), losses
    unused = [name for name, m in model.named_modules()
              if isinstance(m, layer_class) and m.num_batches_tracked == 0]
    assert not unused, unused
