"""ENNonFiniteHook names the first EN/SN layer that sees a NaN, in a real training run."""
import re

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from en_seg.engine.hooks import ENNonFiniteHook
from en_seg.models import ExemplarNorm2d, SwitchableNorm2d

register_all_modules(init_default_scope=False)

BAD_SAMPLE = 3  # the fourth image of the data set: sample 1 of the second batch of 2


class TinySegmentationBackbone(BaseModel):
    """mmseg's ResNetV1c (deep stem, as in the paper's configs) with EN or SN layers,
    trained to shrink its output."""

    def __init__(self, norm_type):
        super().__init__()
        # _scope_: whatever default scope an earlier Runner of the session left behind.
        self.backbone = MODELS.build(dict(
            _scope_='mmseg', type='ResNetV1c', depth=18, num_stages=1, stem_channels=8,
            base_channels=8, strides=(1, ), dilations=(1, ), out_indices=(0, ),
            norm_cfg=dict(type=norm_type, requires_grad=True)))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=self.backbone(inputs)[0].square().mean())


class ImagesWithOneNaN(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(index))
        if index == BAD_SAMPLE:
            image[1, 5, 7] = float('nan')
        return dict(inputs=image)


def train(tmp_path, norm_type, hooks):
    model = TinySegmentationBackbone(norm_type)
    runner = Runner(
        model=model, work_dir=str(tmp_path / 'run'),
        train_dataloader=dict(dataset=ImagesWithOneNaN(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=100)),
        custom_hooks=hooks, default_scope='mmseg',
        # mmengine names a run's logger by the second it starts: a run of its own in the
        # same second would log into the earlier run's file.
        experiment_name=tmp_path.name)
    runner.train()
    (log,) = (tmp_path / 'run').glob('*/*.log')
    return model, log.read_text()


@pytest.mark.parametrize('norm_type, cls', [('EN', ExemplarNorm2d), ('SN', SwitchableNorm2d)])
def test_hook_names_the_stem_norm_for_a_nan_in_one_image(tmp_path, norm_type, cls):
    model, log = train(tmp_path, norm_type, [dict(type='ENNonFiniteHook')])
    names = [name for name, m in model.named_modules() if isinstance(m, cls)]
    assert names[0] == 'backbone.stem.1'  # after the first convolution
    warnings = re.findall(r'ENNonFiniteHook: .*', log)
    # Once, for the second iteration only, although every later layer sees NaN too. The
    # first convolution (3 x 3, stride 2, padding 1, 4 channels of 8 x 8) carries the NaN
    # pixel at (5, 7) into output rows 2-3 and columns 3-4 of each channel: 16 values.
    assert warnings == [
        'ENNonFiniteHook: iteration 2: backbone.stem.1 is the first EN/SN layer with a '
        'non-finite input: 16 of 512 values (16 NaN, 0 infinite), in samples [1] of 2']
    for _, layer in model.named_modules():
        if isinstance(layer, cls):
            assert torch.isfinite(layer.running_mean).all()
            assert torch.isfinite(layer.running_var).all()
            assert not layer._forward_pre_hooks  # removed after training


def test_without_the_hook_nothing_is_checked_or_logged(tmp_path):
    _, log = train(tmp_path, 'EN', [])
    assert 'ENNonFiniteHook' not in log


def test_hook_is_registered_and_refuses_a_model_without_en_or_sn(tmp_path):
    assert HOOKS.get('ENNonFiniteHook') is ENNonFiniteHook

    class NoMixedNorm(BaseModel):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))

        def forward(self, inputs, data_samples=None, mode='loss'):
            return dict(loss=self.net(inputs).mean())

    runner = Runner(
        model=NoMixedNorm(), work_dir=str(tmp_path / 'run'),
        train_dataloader=dict(dataset=ImagesWithOneNaN(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=1),
        custom_hooks=[dict(type='ENNonFiniteHook')], default_scope='mmseg')
    with pytest.raises(ValueError, match="has none: build it with norm_cfg=dict"):
        runner.train()
