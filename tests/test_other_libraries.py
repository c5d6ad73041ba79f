"""EN in models of other libraries: torchvision, timm and segmentation_models_pytorch models
built with ``weights=None`` (nothing is downloaded) and converted by
``ExemplarNorm2d.convert_batchnorm``, and an mmpretrain classifier built from mmpretrain's
own config with ``norm_cfg=dict(type='EN')`` (README.md, "Models that are not configs").

torchvision from PyPI needs PyPI's CUDA build of torch, so `make test-other-libraries`
runs these tests in that environment, on the CPU.
"""
import copy
import io
from importlib.util import find_spec

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from en_seg.models import ExemplarNorm2d
from en_seg.models.conversion import converted_types

torchvision = pytest.importorskip(
    'torchvision', reason='torchvision is not installed beside this torch; '
    '`make test-other-libraries` runs these tests beside PyPI\'s CUDA torch')
from torchvision import models  # noqa: E402

CLASSES = 4
#: The paper's EN: K = 3, π = 50; Ψ(K), the ratio branch's fully connected parameters.
K, PI = 3, 50
PSI = K * K * PI * K + PI * K + PI * K * K + K


def needs(package):
    return pytest.mark.skipif(find_spec(package) is None,
                              reason=f'{package} is not installed (`make '
                                     'test-other-libraries` installs it)')


def torchvision_segmentation(name):
    return getattr(models.segmentation, name)(weights=None, weights_backbone=None,
                                              num_classes=CLASSES)


def timm_model(name):
    import timm
    return timm.create_model(name, pretrained=False, num_classes=CLASSES)


def smp_unet():
    import segmentation_models_pytorch as smp
    return smp.Unet('resnet18', encoder_weights=None, classes=CLASSES)


#: name: (builder, segmentation model, marks)
MODELS = {
    'torchvision.resnet50': (lambda: models.resnet50(num_classes=CLASSES), False, ()),
    'torchvision.mobilenet_v3_large': (
        lambda: models.mobilenet_v3_large(num_classes=CLASSES), False, ()),
    'torchvision.deeplabv3_resnet50': (
        lambda: torchvision_segmentation('deeplabv3_resnet50'), True, ()),
    'torchvision.fcn_resnet50': (lambda: torchvision_segmentation('fcn_resnet50'), True, ()),
    'timm.resnet50': (lambda: timm_model('resnet50'), False, (needs('timm'),)),
    # C = 18, 36, 72, 144: the default reduction 32 divides none of them.
    'timm.hrnet_w18_small': (lambda: timm_model('hrnet_w18_small'), False, (needs('timm'),)),
    'smp.Unet': (smp_unet, True, (needs('segmentation_models_pytorch'),)),
}
CASES = [pytest.param(name, marks=marks) for name, (_, _, marks) in MODELS.items()]


def logits(model, x):
    out = model(x)
    return out['out'] if isinstance(out, dict) else out  # torchvision's segmentation


def batch(name, n=4, size=64):
    """Images and targets to learn: a class per image, or per 8×8 block of pixels, which
    models of output stride 8 can resolve."""
    x = torch.randn(n, 3, size, size)
    if not MODELS[name][1]:
        return x, torch.randint(0, CLASSES, (n,))
    blocks = torch.randint(0, CLASSES, (n, 1, size // 8, size // 8)).float()
    return x, F.interpolate(blocks, size=(size, size), mode='nearest')[:, 0].long()


def build(name, **layer_kwargs):
    """The model, converted, and the number of BatchNorm layers it had."""
    model = MODELS[name][0]()
    batchnorms = sum(type(m) in converted_types() for m in model.modules())
    return ExemplarNorm2d.convert_batchnorm(model, **layer_kwargs), batchnorms


@pytest.mark.parametrize('name', CASES)
def test_a_converted_model_learns_reloads_and_compiles(name):
    model, batchnorms = build(name)
    layers = [m for m in model.modules() if isinstance(m, ExemplarNorm2d)]
    assert len(layers) == batchnorms > 0
    assert not any(type(m) in converted_types() for m in model.modules())
    x, target = batch(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(logits(model, x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()
    with torch.no_grad():
        expected = logits(model, x)
    assert torch.isfinite(expected).all()

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    reloaded, _ = build(name)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(logits(reloaded.eval(), x), expected)
        compiled = torch.compile(reloaded)  # inductor, generating C++ on the CPU
        torch.testing.assert_close(logits(compiled, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', [case for case in CASES if case.values[0] in (
    'torchvision.deeplabv3_resnet50', 'timm.hrnet_w18_small')])
def test_a_batchnorm_checkpoint_gives_the_same_output_through_a_bn_pool(name):
    model = MODELS[name][0]()
    with torch.no_grad():  # running statistics and affine parameters of a trained model
        for m in model.modules():
            if type(m) in converted_types():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        x, _ = batch(name)
        logits(model.train(), x)
        expected = logits(model.eval(), x)
    saved = copy.deepcopy(model.state_dict())
    converted, _ = build(name, normalizers=('BN',))
    converted.load_state_dict(saved)
    with torch.no_grad():
        torch.testing.assert_close(logits(converted.eval(), x), expected)
    ExemplarNorm2d.revert_batchnorm(converted)
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_converted_resnet50_has_the_paper_s_parameter_count():
    # Paper Table 1: an EN layer has 2KC + C + Ψ(K) parameters where BatchNorm has 2C.
    bn_model = models.resnet50()
    channels = [m.num_features for m in bn_model.modules() if type(m) is nn.BatchNorm2d]
    en_model = ExemplarNorm2d.convert_batchnorm(models.resnet50())
    count = sum(p.numel() for p in en_model.parameters())
    bn_count = sum(p.numel() for p in bn_model.parameters())
    assert count == bn_count + sum(2 * K * c + c + PSI - 2 * c for c in channels)
    print(f'torchvision resnet50: BN {bn_count / 1e6:.2f} M, EN {count / 1e6:.2f} M '
          f'parameters ({len(channels)} layers)')


def test_converted_deeplabv3_exports_to_onnx_with_onnxruntime_parity(tmp_path):
    pytest.importorskip('onnxruntime')
    from en_seg.utils.onnx_export import export_onnx, onnxruntime_logits

    class Logits(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)['out']

    model, _ = build('torchvision.deeplabv3_resnet50')
    x, _ = batch('torchvision.deeplabv3_resnet50', n=2)
    logits(model, x)  # running statistics
    wrapped = Logits(model).eval()
    path = str(tmp_path / 'deeplabv3.onnx')
    export_onnx(wrapped, x, path, dynamo=False)
    actual, = onnxruntime_logits(path, x)
    with torch.no_grad():
        torch.testing.assert_close(actual, wrapped(x), rtol=1e-4, atol=1e-4)


@needs('mmpretrain')
def test_mmpretrain_s_own_resnet50_config_trains_with_en():
    from mmengine.hub import get_config
    from mmengine.optim import OptimWrapper
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    from mmpretrain.structures import DataSample

    import en_seg  # noqa: F401  (registers EN)
    cfg = get_config('mmpretrain::resnet/resnet50_8xb32_in1k.py')  # mmpretrain's own
    cfg.model.backbone.norm_cfg = dict(type='EN', requires_grad=True)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = PRETRAIN_MODELS.build(cfg.model)
    model.init_weights()
    assert sum(isinstance(m, ExemplarNorm2d) for m in model.modules()) == 53
    data = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
                        for _ in range(2)],
                data_samples=[DataSample().set_gt_label(label) for label in (3, 7)])
    losses = model.train_step(data, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1)))
    assert torch.isfinite(losses['loss'])


@needs('mmdet')
def test_mmdet_s_own_faster_rcnn_config_trains_with_en():
    from mmdet.registry import MODELS as DET_MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmengine.optim import OptimWrapper
    from mmengine.registry import DefaultScope
    from mmengine.structures import InstanceData

    import en_seg  # noqa: F401  (registers EN)
    cfg = get_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')  # mmdet's own
    cfg.model.backbone.norm_cfg = dict(type='EN', requires_grad=True)
    cfg.model.backbone.init_cfg = None  # no ImageNet download
    with DefaultScope.overwrite_default_scope('mmdet'):
        register_all_modules(init_default_scope=False)
        model = DET_MODELS.build(cfg.model)
    model.init_weights()
    assert sum(isinstance(m, ExemplarNorm2d) for m in model.modules()) == 53
    shape = (128, 128)
    samples = []
    for label in (0, 1):
        sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape,
                                             batch_input_shape=shape, scale_factor=(1., 1.)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[10., 20., 80., 90.]]),
                                           labels=torch.tensor([label]))
        samples.append(sample)
    data = dict(inputs=[torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
                        for _ in samples], data_samples=samples)
    losses = model.train().train_step(
        data, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
    assert all(torch.isfinite(loss) for loss in losses.values()), losses
