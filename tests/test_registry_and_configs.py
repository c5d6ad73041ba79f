"""EN as a plug-in: registry, mmcv's build_norm_layer, every config's model, BN weights."""
import glob
import os.path as osp

import pytest
import torch
from mmcv.cnn import build_norm_layer
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))
EN_ADE = osp.join(REPO, 'configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py')

register_all_modules(init_default_scope=False)


@pytest.mark.parametrize('scope', [None, 'mmseg'])
@pytest.mark.parametrize('norm_type, cls', [('EN', ExemplarNorm2d), ('SN', SwitchableNorm2d)])
def test_build_norm_layer_with_and_without_default_scope(scope, norm_type, cls):
    cfg = dict(type=norm_type, requires_grad=False)
    if scope is None:
        name, layer = build_norm_layer(cfg, 64, postfix=1)
    else:
        with DefaultScope.overwrite_default_scope(scope):
            name, layer = build_norm_layer(cfg, 64, postfix=1)
    assert name == 'bn1' and isinstance(layer, cls) and layer.num_features == 64
    assert not any(p.requires_grad for p in layer.parameters())


def test_build_norm_layer_passes_layer_arguments():
    _, layer = build_norm_layer(dict(type='EN', reduction=8, pi=10, eps=1e-3), 64)
    assert (layer.reduction, layer.pi, layer.eps) == (8, 10, 1e-3)


def build_model(config):
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None
    return MODELS.build(cfg.model)


def test_every_config_builds_its_model():
    assert len(CONFIGS) >= 8
    for config in CONFIGS:
        model = build_model(config)
        norm = osp.basename(config).split('_')[2]
        expected = {'en': ExemplarNorm2d, 'sn': SwitchableNorm2d,
                    'gn': torch.nn.GroupNorm, 'syncbn': torch.nn.SyncBatchNorm}[norm]
        norms = [m for m in model.modules()
                 if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm,
                                   ExemplarNorm2d, SwitchableNorm2d))]
        assert norms and all(isinstance(m, expected) for m in norms), config


def test_paper_settings_in_the_en_configs():
    for dataset, lr in (('ade20k-512x512', 0.02), ('cityscapes-512x1024', 0.01)):
        cfg = Config.fromfile(EN_ADE.replace('ade20k-512x512', dataset))
        assert cfg.model.backbone.dilations == (1, 1, 2, 4)
        assert cfg.model.backbone.strides == (1, 2, 1, 1)
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.optim_wrapper.optimizer.lr == lr
        assert cfg.train_cfg.max_iters == 80000
        assert cfg.param_scheduler[0].type == 'PolyLR'
        assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
        for part in ('backbone', 'decode_head', 'auxiliary_head'):
            assert cfg.model[part].norm_cfg.type == 'EN'


def test_en_in_every_normalization_layer_of_deeplab():
    model = build_model(EN_ADE)
    en_layers = [m for m in model.modules() if isinstance(m, ExemplarNorm2d)]
    assert len(en_layers) > 60
    model.train()
    out = model(torch.randn(2, 3, 64, 64), mode='tensor')
    assert out.shape == (2, 150, 8, 8) and torch.isfinite(out).all()
    # mode='tensor' runs backbone and decode head; the auxiliary head only trains.
    for layer in model.backbone.modules():
        if isinstance(layer, ExemplarNorm2d):
            torch.testing.assert_close(layer.last_ratios.sum(1), torch.ones(2))


def test_batchnorm_pretrained_backbone_loads_into_en_layers(tmp_path):
    cfg = Config.fromfile(EN_ADE)
    bn_cfg = cfg.model.backbone.copy()
    bn_cfg.norm_cfg = dict(type='BN', requires_grad=True)
    bn_backbone = MODELS.build(bn_cfg)
    with torch.no_grad():
        for module in bn_backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.normal_()
    path = tmp_path / 'resnet50_v1c_bn.pth'
    torch.save({'state_dict': bn_backbone.state_dict()}, path)

    en_backbone = MODELS.build(cfg.model.backbone)
    load_checkpoint(en_backbone, str(path), strict=True)
    torch.testing.assert_close(en_backbone.layer1[0].bn1.weight[2],
                               bn_backbone.layer1[0].bn1.weight)
    torch.testing.assert_close(en_backbone.layer4[2].bn3.running_mean,
                               bn_backbone.layer4[2].bn3.running_mean)
    conv_key = 'layer3.0.conv2.weight'
    assert torch.equal(en_backbone.state_dict()[conv_key], bn_backbone.state_dict()[conv_key])
