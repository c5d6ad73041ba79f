"""EN and SN are norm layers to OpenMMLab: mmengine's param-wise rules, mmseg ResNet's
norm_eval, and SyncBatchNorm conversion treat them as they treat BatchNorm."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/exemplar_norm/deeplabv3_r50-d8_{}_8xb2-80k_ade20k-512x512.py')
LAYERS = {'en': ExemplarNorm2d, 'sn': SwitchableNorm2d}

register_all_modules()


def build_segmentor(norm):
    cfg = Config.fromfile(CONFIG.format(norm))
    cfg.model.pretrained = None
    return MODELS.build(cfg.model)


def param_settings(model):
    """{parameter name: (lr, weight_decay)} under the param-wise rules of the issue."""
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01, momentum=0.9,
                                                 weight_decay=5e-4)),
        dict(norm_decay_mult=0.0, bias_decay_mult=0.0, bias_lr_mult=2.0))
    groups = constructor(model).optimizer.param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(g['params'][0])]: (g['lr'], g['weight_decay']) for g in groups}


@pytest.fixture(scope='module')
def bn_settings():
    return param_settings(build_segmentor('syncbn'))


@pytest.mark.parametrize('norm', ['en', 'sn'])
def test_paramwise_rules_treat_the_layers_as_batchnorm(bn_settings, norm):
    model = build_segmentor(norm)
    settings = param_settings(model)
    norm_names = [name for name, m in model.named_modules() if isinstance(m, LAYERS[norm])]
    assert len(norm_names) == 62
    for name in norm_names:
        for param in ('weight', 'bias'):
            key = f'{name}.{param}'
            assert settings[key] == bn_settings[key] == (0.01, 0.0), key
        if norm == 'sn':  # importance weights are the norm layer's own: no weight decay
            assert settings[f'{name}.mean_weight'] == (0.01, 0.0)
        else:  # the ratio branch: ordinary weights and biases
            assert settings[f'{name}.ratio_conv.weight'] == (0.01, 5e-4)
            assert settings[f'{name}.ratio_fc1.weight'] == (0.01, 5e-4)
            assert settings[f'{name}.ratio_fc2.bias'] == (0.02, 0.0)
    # Everything else is treated as in the BN model.
    for key, value in bn_settings.items():
        if key in settings:
            assert settings[key] == value, key


def build_resnet(norm, norm_eval):
    return MODELS.build(dict(type='ResNetV1c', depth=18, num_stages=2, out_indices=(1,),
                             strides=(1, 2), dilations=(1, 1),
                             norm_cfg=dict(type=norm.upper()), norm_eval=norm_eval))


@pytest.mark.parametrize('norm', ['en', 'sn'])
def test_norm_eval_freezes_the_bn_member(norm):
    torch.manual_seed(0)
    backbone = build_resnet(norm, norm_eval=True)
    backbone.train()
    layers = [m for m in backbone.modules() if isinstance(m, LAYERS[norm])]
    before = {id(m): (m.running_mean.clone(), m.running_var.clone()) for m in layers}
    out = backbone(torch.randn(2, 3, 32, 32) * 3 + 1)[0]
    out.mean().backward()
    for m in layers:
        mean, var = before[id(m)]
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == 0
        assert m.weight.grad is not None  # still trained
    # Frozen means evaluated with the running statistics: as the layers in eval mode.
    x = torch.randn(2, 3, 32, 32)
    frozen = backbone(x)[0]
    reference = build_resnet(norm, norm_eval=False)
    reference.load_state_dict(backbone.state_dict())
    reference.eval()  # mmseg's ResNet.train returns None
    torch.testing.assert_close(frozen, reference(x)[0])

    # Without norm_eval the BN member trains.
    backbone = build_resnet(norm, norm_eval=False)
    backbone.train()
    backbone(torch.randn(2, 3, 32, 32) * 3 + 1)
    layers = [m for m in backbone.modules() if isinstance(m, LAYERS[norm])]
    assert all(int(m.num_batches_tracked) == 1 for m in layers)


@pytest.mark.parametrize('norm', ['en', 'sn'])
def test_sync_batchnorm_conversion_keeps_the_layers(norm):
    torch.manual_seed(0)
    backbone = build_resnet(norm, norm_eval=False)
    backbone(torch.randn(2, 3, 32, 32))  # running statistics that differ from the init
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    names = [n for n, m in backbone.named_modules() if isinstance(m, LAYERS[norm])]
    for convert in (convert_sync_batchnorm,
                    revert_sync_batchnorm,
                    torch.nn.SyncBatchNorm.convert_sync_batchnorm):
        backbone = convert(backbone)
        modules = dict(backbone.named_modules())
        assert all(isinstance(modules[n], LAYERS[norm]) for n in names)
        converted = backbone.state_dict()
        assert converted.keys() == state.keys()
        assert all(torch.equal(converted[k], v) for k, v in state.items())
    backbone = revert_sync_batchnorm(backbone)
    backbone.eval()
    assert backbone(torch.randn(1, 3, 32, 32))[0].isfinite().all()


def test_en_configs_trained_from_scratch_keep_a_live_ratio_branch():
    """zero_init_residual would zero every bottleneck's last EN with its ratio branch."""
    model = build_segmentor('en')
    model.init_weights()
    last_norms = [m.bn3 for layer in (model.backbone.layer1, model.backbone.layer4)
                  for m in layer]
    for norm in last_norms:
        assert norm.ratio_conv.weight.abs().sum() > 0
        assert norm.ratio_fc1.weight.abs().sum() > 0
