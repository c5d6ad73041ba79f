"""The paper's pipeline: ImageNet pre-training with mmpretrain, its checkpoint as DeepLab's
backbone (configs/exemplar_norm/resnet50-v1c_*_8xb32_in1k.py; README.md, "The paper's
pipeline"). The models are real ResNet50s; the data are tiny synthetic sets in the real
ImageNet and ADE20K layouts.
"""
import os
import os.path as osp
import subprocess
import sys
from importlib.util import find_spec

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from en_seg.checkpoint import load_from_local
from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.utils.synthetic_data import write_ade20k_layout
from en_seg.utils.synthetic_imagenet import write_imagenet_layout

try:  # mmpretrain imports torchvision, which needs a build matching the installed torch
    from mmpretrain.datasets import ImageNet
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    MMPRETRAIN_ERROR = None
except ImportError as error:
    MMPRETRAIN_ERROR = f'{type(error).__name__}: {error}'

needs_mmpretrain = pytest.mark.skipif(
    MMPRETRAIN_ERROR is not None,
    reason=f"mmpretrain's models and datasets do not import ({MMPRETRAIN_ERROR}); "
           "install en-seg's 'pretrain' extra with a torchvision built for this torch; "
           '`make test-pretrain` runs these tests beside the CUDA build of torch')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
IN1K = osp.join(REPO, 'configs/exemplar_norm/resnet50-v1c_{}_8xb32_in1k.py')
DEEPLAB = osp.join(REPO,
                   'configs/exemplar_norm/deeplabv3_r50-d8_{}_8xb2-80k_ade20k-512x512.py')
#: Each ImageNet config and the DeepLab config its checkpoint starts.
PAIRS = {'bn': 'syncbn', 'sn': 'sn', 'en': 'en'}
NORMS = {'bn': torch.nn.BatchNorm2d, 'sn': SwitchableNorm2d, 'en': ExemplarNorm2d}
#: The paper's EN: K = 3 normalizers (IN, LN, BN), ratio branch width π = 50.
K, PI = 3, 50


def build_classifier(norm):
    cfg = Config.fromfile(IN1K.format(norm))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = PRETRAIN_MODELS.build(cfg.model)
    model.init_weights()
    return model


def build_deeplab_backbone(norm):
    from mmseg.registry import MODELS
    cfg = Config.fromfile(DEEPLAB.format(norm))
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg.model.backbone)


@pytest.fixture(scope='module')
def classifiers():
    return {norm: build_classifier(norm) for norm in NORMS}


def norm_layers(module):
    return [m for m in module.modules() if isinstance(m, tuple(NORMS.values()))]


@pytest.mark.skipif(find_spec('mmpretrain') is None,
                    reason='the configs inherit from mmpretrain\'s packaged ones: install '
                           "en-seg's 'pretrain' extra (`make test-pretrain` runs this test)")
def test_configs_keep_mmpretrain_imagenet_recipe():
    for norm, layer_type in (('bn', 'BN'), ('sn', 'SN'), ('en', 'EN')):
        cfg = Config.fromfile(IN1K.format(norm))
        assert cfg.default_scope == 'mmpretrain' and 'en_seg' in cfg.custom_imports.imports
        assert cfg.model.backbone.type == 'mmseg.ResNetV1c' and cfg.model.backbone.depth == 50
        assert cfg.model.backbone.norm_cfg.type == layer_type
        assert cfg.model.backbone.zero_init_residual is False
        assert cfg.train_dataloader.batch_size == 32 and cfg.optim_wrapper.optimizer.lr == 0.1
        assert cfg.param_scheduler.type == 'MultiStepLR'
        assert cfg.param_scheduler.milestones == [30, 60, 90]
        assert cfg.train_cfg.max_epochs == 100
        assert [step.type for step in cfg.test_dataloader.dataset.pipeline][1:3] == [
            'ResizeEdge', 'CenterCrop']
        assert cfg.test_dataloader.dataset.pipeline[2].crop_size == 224


@needs_mmpretrain
@pytest.mark.parametrize('norm', NORMS)
def test_configs_build_and_start_at_gamma_1_beta_0(classifiers, norm):
    model = classifiers[norm]
    layers = norm_layers(model.backbone)
    # ResNetV1c-50: 3 stem norms, 3 per bottleneck (16 of them), 4 downsample norms.
    assert len(layers) == 55 and all(isinstance(m, NORMS[norm]) for m in layers)
    names = {layer: name for name, layer in model.backbone.named_modules()}
    for layer in layers:
        assert (layer.weight == 1).all() and (layer.bias == 0).all(), names[layer]
    model.train()
    logits = model(torch.randn(2, 3, 32, 32), mode='tensor')
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    if norm == 'en':  # and every sample starts with uniform ratios
        for layer in layers:
            torch.testing.assert_close(layer.last_ratios, torch.full((2, K), 1 / K))
            assert layer.ratio_conv.weight.abs().sum() > 0


@needs_mmpretrain
def test_en_parameters_per_layer_follow_table_1(classifiers):
    """2KC for γ and β, C for the grouped convolution, Ψ(K) for the two linear layers
    (docs/method.md#output)."""
    psi = PI * K * K * K + PI * K + K * PI * K + K
    layers = norm_layers(classifiers['en'].backbone)
    for layer in layers:
        count = sum(p.numel() for p in layer.parameters())
        assert count == 2 * K * layer.num_features + layer.num_features + psi, layer
    # Nothing else in the model changes with the normalizer: EN adds exactly its layers'
    # parameters beyond BN's gamma and beta.
    extra = sum(p.numel() for p in classifiers['en'].parameters()) - sum(
        p.numel() for p in classifiers['bn'].parameters())
    assert extra == sum(2 * K * m.num_features + m.num_features + psi
                        - 2 * m.num_features for m in layers)


@needs_mmpretrain
@pytest.mark.parametrize('norm', NORMS)
def test_imagenet_backbone_loads_strictly_into_the_deeplab_backbone(classifiers, norm):
    imagenet = classifiers[norm].backbone.state_dict()
    deeplab = build_deeplab_backbone(PAIRS[norm])
    expected = deeplab.state_dict()
    assert set(imagenet) == set(expected)
    assert all(imagenet[key].shape == expected[key].shape for key in imagenet)
    # Values unlike any initialization, so that the copy below is seen to happen.
    imagenet = {key: torch.rand_like(value) if value.is_floating_point() else value + 7
                for key, value in imagenet.items()}
    deeplab.load_state_dict(imagenet, strict=True)
    loaded = deeplab.state_dict()
    assert all(torch.equal(loaded[key], imagenet[key]) for key in imagenet)


@needs_mmpretrain
def test_imagenet_layout_reads_with_mmpretrain(tmp_path):
    root = write_imagenet_layout(str(tmp_path), num_classes=3, images_per_class=2,
                                 num_val=4, size=(20, 24))
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        train = ImageNet(data_root=root, split='train', pipeline=pipeline)
        val = ImageNet(data_root=root, split='val', pipeline=pipeline)
    assert len(train.CLASSES) == 1000
    labels = [[data.get_data_info(i)['gt_label'] for i in range(len(data))]
              for data in (train, val)]
    assert labels == [[0, 0, 1, 1, 2, 2], [0, 1, 2, 0]]
    assert val[3]['inputs'].shape == (3, 20, 24)


def test_imagenet_layout_files_and_bad_arguments(tmp_path):
    root = write_imagenet_layout(str(tmp_path), num_classes=2, images_per_class=1, num_val=1)
    assert (tmp_path / 'meta' / 'train.txt').read_text().split('\n')[:2] == [
        'n00000000/n00000000_0.JPEG 0', 'n00000001/n00000001_0.JPEG 1']
    assert (tmp_path / 'val' / 'ILSVRC2012_val_00000001.JPEG').is_file()
    assert root == str(tmp_path)
    for kwargs, match in ((dict(num_classes=1001), 'between 1 and 1000'),
                          (dict(num_val=0), 'at least one'),
                          (dict(size=(4, 64)), 'too small')):
        with pytest.raises(ValueError, match=match):
            write_imagenet_layout(str(tmp_path), **kwargs)


def run_tool(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=900, env={**os.environ, 'PYTHONPATH': REPO})
    if result.returncode != 0:
        pytest.fail(f'{args} failed ({result.returncode}):\n{result.stdout[-4000:]}\n'
                    f'{result.stderr[-6000:]}')
    return result.stdout + result.stderr


@needs_mmpretrain
def test_imagenet_pretraining_then_segmentation_from_its_checkpoint(tmp_path):
    imagenet = write_imagenet_layout(str(tmp_path / 'imagenet'), num_classes=2,
                                     images_per_class=2, num_val=2)
    # The ImageNet EN config shrunk to CPU size: 4 images, batch 2, 32x32 crops, one
    # epoch = 2 iterations, then the config's validation (one centre crop per image).
    # Pipeline indices: train 1 = RandomResizedCrop; test 1 = ResizeEdge, 2 = CenterCrop.
    data = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test') for key in (
        f'dataset.data_root={imagenet}', 'batch_size=2', 'num_workers=0')]
    crops = ['train_dataloader.dataset.pipeline.1.scale=32',
             'val_dataloader.dataset.pipeline.1.scale=36',
             'val_dataloader.dataset.pipeline.2.crop_size=32',
             'test_dataloader.dataset.pipeline.1.scale=36',
             'test_dataloader.dataset.pipeline.2.crop_size=32']
    pretrain = str(tmp_path / 'pretrain')
    log = run_tool('tools/train.py', IN1K.format('en'), '--work-dir', pretrain,
                   '--cfg-options', *data, *crops, 'train_cfg.max_epochs=1',
                   'default_hooks.logger.interval=1', 'randomness.seed=0')
    assert 'Epoch(train) [1][2/2]' in log and 'accuracy/top1' in log
    checkpoint = osp.join(pretrain, 'epoch_1.pth')
    # What mmengine's Runner saved loads through en_seg's weights-only loader.
    saved = load_from_local(checkpoint)
    assert {'meta', 'state_dict', 'message_hub', 'optimizer'} <= set(saved)
    assert 'accuracy/top1' in run_tool('tools/test.py', IN1K.format('en'), checkpoint,
                                       '--work-dir', str(tmp_path / 'test'),
                                       '--cfg-options', *data[6:], *crops[3:])

    ade = write_ade20k_layout(str(tmp_path / 'ade'), num_train=4, num_val=1)
    segment = str(tmp_path / 'segment')
    log = run_tool(
        'tools/train.py', DEEPLAB.format('en'), '--work-dir', segment, '--cfg-options',
        # The documented step: the ImageNet checkpoint's backbone instead of mmseg's
        # BatchNorm one (README.md, "The paper's pipeline").
        'model.pretrained=None', 'model.backbone.init_cfg.type=Pretrained',
        f'model.backbone.init_cfg.checkpoint={checkpoint}',
        'model.backbone.init_cfg.prefix=backbone.',
        # The demo's shrinking (tools/demo.sh), validation off.
        'model.data_preprocessor.size=(64,64)', f'train_dataloader.dataset.data_root={ade}',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'train_dataloader.dataset.pipeline.2.scale=(128,96)',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)', 'train_cfg.max_iters=2',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
        'optim_wrapper.optimizer.lr=0.01', 'randomness.seed=0')
    assert f'load backbone. in model from: {checkpoint}' in log
    assert 'missing keys' not in log and 'unexpected key' not in log
    assert 'Iter(train) [2/2]' in log
    # Every buffer came along: the backbone's EN layers counted the 2 ImageNet batches
    # before the 2 segmentation ones; the heads' EN layers only the latter.
    state = load_from_local(osp.join(segment, 'iter_2.pth'))['state_dict']
    counts = {key: int(value) for key, value in state.items()
              if key.endswith('num_batches_tracked')}
    backbone = {value for key, value in counts.items() if key.startswith('backbone.')}
    heads = {value for key, value in counts.items() if not key.startswith('backbone.')}
    assert len(counts) > 55 and backbone == {4} and heads == {2}
