"""EN as a plug-in: registry, mmcv's build_norm_layer, every config's model, BN weights."""
import glob
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmcv.cnn import build_norm_layer
from mmengine.config import Config
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope, Registry
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from en_seg.models import (ExemplarNorm2d, SwitchableNorm2d, SyncExemplarNorm2d,
                           SyncSwitchableNorm2d)
from en_seg.models.mixed_norm import _BNMemberMode
from en_seg.utils.norm_cfg_check import check_norm_cfgs

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))
EN_ADE = osp.join(REPO, 'configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py')

register_all_modules(init_default_scope=False)


@pytest.mark.parametrize('scope', [None, 'mmseg'])
@pytest.mark.parametrize('norm_type, cls', [('EN', ExemplarNorm2d), ('SN', SwitchableNorm2d),
                                             ('SyncEN', SyncExemplarNorm2d),
                                             ('SyncSN', SyncSwitchableNorm2d)])
def test_build_norm_layer_with_and_without_default_scope(scope, norm_type, cls):
    cfg = dict(type=norm_type, requires_grad=False)
    if scope is None:
        name, layer = build_norm_layer(cfg, 64, postfix=1)
    else:
        with DefaultScope.overwrite_default_scope(scope):
            name, layer = build_norm_layer(cfg, 64, postfix=1)
    assert name == 'bn1' and type(layer) is cls and layer.num_features == 64
    assert layer.sync_stats == norm_type.startswith('Sync')
    assert not any(p.requires_grad for p in layer.parameters())


def test_build_norm_layer_passes_layer_arguments():
    _, layer = build_norm_layer(dict(type='EN', reduction=8, pi=10, eps=1e-3), 64)
    assert (layer.reduction, layer.pi, layer.eps) == (8, 10, 1e-3)


def build_model(config):
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None
    return MODELS.build(cfg.model)


def test_every_config_builds_its_model():
    # The ImageNet pre-training configs build mmpretrain classifiers, in
    # tests/test_pretraining.py.
    segmentation = [config for config in CONFIGS if not config.endswith('_in1k.py')]
    assert len(segmentation) >= 8
    for config in segmentation:
        model = build_model(config)
        norm = osp.basename(config).split('_')[2]
        expected = {'en': ExemplarNorm2d, 'sn': SwitchableNorm2d,
                    'syncen': SyncExemplarNorm2d, 'syncsn': SyncSwitchableNorm2d,
                    'gn': torch.nn.GroupNorm, 'syncbn': torch.nn.SyncBatchNorm}[norm]
        # The mode child of a mixed layer is a _NormBase too, but not a layer of its own.
        norms = [m for m in model.modules()
                 if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm))
                 and not isinstance(m, _BNMemberMode)]
        assert norms and all(isinstance(m, expected) for m in norms), config
        # SyncEN and SyncSN derive from EN and SN: the flag tells them apart.
        assert all(getattr(m, 'sync_stats', False) == (norm in ('syncen', 'syncsn'))
                   for m in norms), config


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


# A norm_cfg type that is not registered -------------------------------------------------

def test_every_segmentation_config_passes_the_norm_cfg_check():
    # The ImageNet configs' types resolve in mmpretrain's scope, which imports
    # mmpretrain.models (as building them does): tests/test_pretraining.py.
    for config in CONFIGS:
        if not config.endswith('_in1k.py'):
            check_norm_cfgs(Config.fromfile(config))


def test_an_unknown_norm_cfg_type_is_named_with_where_it_sits_and_the_norm_layers():
    cfg = Config.fromfile(EN_ADE)
    cfg.model.auxiliary_head = [cfg.model.auxiliary_head, cfg.model.auxiliary_head.copy()]
    cfg.model.auxiliary_head[1].norm_cfg = dict(type='ENN', requires_grad=True)
    with pytest.raises(ValueError) as error:
        check_norm_cfgs(cfg)
    message = str(error.value)
    assert message.startswith(
        "model.auxiliary_head[1].norm_cfg: type 'ENN' is not a registered norm layer "
        "(scope 'mmseg'); registered: ")
    assert message.endswith(". Did you mean 'EN'?") and '\n' not in message
    registered = message.split('registered: ')[1].split('.')[0].split(', ')
    # mmcv's norm layers and ours, nothing else of the registry (no ResNet, no ConvModule).
    assert {'BN', 'SyncBN', 'GN', 'LN', 'IN', 'EN', 'SN'} <= set(registered)
    assert all(issubclass(MODELS.get(name), torch.nn.modules.batchnorm._NormBase)
               or MODELS.get(name) in (torch.nn.GroupNorm, torch.nn.LayerNorm)
               for name in registered)


def test_norm_cfg_types_resolve_in_the_scope_the_model_is_built_in():
    # A norm layer that only a child registry of mmengine's root holds, as mmpretrain's
    # LN2d: found in its scope, by default_scope or a _scope_ above, and nowhere else.
    scoped = Registry('model', parent=MMENGINE_MODELS, scope='en_seg_test_scope')
    scoped.register_module('LN2dOnlyHere', module=torch.nn.LayerNorm)
    model = dict(type='EncoderDecoder', backbone=dict(type='ResNet', norm_cfg=dict(
        type='LN2dOnlyHere')))
    check_norm_cfgs(Config(dict(default_scope='en_seg_test_scope', model=model)))
    scoped_backbone = dict(model['backbone'], _scope_='en_seg_test_scope')
    check_norm_cfgs(Config(dict(default_scope='mmseg',
                                model=dict(model, backbone=scoped_backbone))))
    with pytest.raises(ValueError, match=r"^model.backbone.norm_cfg: type 'LN2dOnlyHere' .*"
                                         r"\(scope 'mmseg'\); registered: (?!.*LN2dOnlyHere)"):
        check_norm_cfgs(Config(dict(default_scope='mmseg', model=model)))


def test_train_tool_exits_with_one_line_for_an_unknown_norm_cfg_type(tmp_path):
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), EN_ADE,
         '--work-dir', str(tmp_path / 'run'),
         '--cfg-options', 'model.backbone.norm_cfg.type=ENN'],
        capture_output=True, text=True)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "model.backbone.norm_cfg: type 'ENN' is not a registered norm layer")
    assert not (tmp_path / 'run').exists()
