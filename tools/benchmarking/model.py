"""One training iteration (forward, backward, SGD step with momentum) of DeepLabV3
ResNet-50 at output stride 8, with EN, BN or GN(32) as every norm layer.

The segmentor comes from mmsegmentation (its DeepLabV3 R50-D8 ADE20K config, through
``norm_cfg`` in backbone, decode and auxiliary heads) or, without OpenMMLab,
torchvision's ``deeplabv3_resnet50`` (which dilates the last two stages: output stride 8)
with every ``BatchNorm2d`` swapped. Both are randomly initialised (nothing is downloaded).
Only torch and torchvision are imported unless mmseg is used.
"""
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from en_seg.models import ExemplarNorm2d

from .flops import gflops
from .memory import peak_bytes
from .timing import Step, Timing, fastest

DEEPLAB_CONFIG = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py'
NUM_CLASSES = 150  # ADE20K's, as in the mmseg config

#: Where the segmentor may come from; 'auto' is mmseg where it is installed.
SOURCES = ('auto', 'mmseg', 'torchvision')

#: The norms ``--norms`` may name: mmcv's ``norm_cfg`` for each, and the layer that
#: replaces torchvision's ``BatchNorm2d(C)``.
MMSEG_NORM_CFGS = {
    'BN': dict(type='BN', requires_grad=True),
    'GN(32)': dict(type='GN', num_groups=32, requires_grad=True),
    'EN': dict(type='EN', requires_grad=True),
}
TORCHVISION_NORMS: Dict[str, Callable[[int], nn.Module]] = {
    'BN': nn.BatchNorm2d,
    'GN(32)': lambda c: nn.GroupNorm(32, c),
    'EN': ExemplarNorm2d,
}
NORMS = tuple(MMSEG_NORM_CFGS)


@dataclass
class ModelRun:
    """The results of :func:`measure`.

    Attributes:
        source: 'mmseg' or 'torchvision'.
        parameters: per norm, the segmentor's parameter count.
        gflops: per norm, GFLOPs of one image (:mod:`.flops`), or None without mmseg.
        seconds, peak_bytes: per thread count, per norm: seconds per iteration and the
            peak tensor bytes it allocates on top of the model, its gradients and the
            optimizer state.
    """
    source: str
    batch: int
    size: int
    parameters: Dict[str, int] = field(default_factory=dict)
    gflops: Dict[str, Optional[float]] = field(default_factory=dict)
    seconds: Dict[int, Dict[str, float]] = field(default_factory=dict)
    peak_bytes: Dict[int, Dict[str, int]] = field(default_factory=dict)


def resolve_source(requested: str) -> str:
    """``requested`` from :data:`SOURCES`, with 'auto' resolved."""
    if requested != 'auto':
        return requested
    return 'mmseg' if importlib.util.find_spec('mmseg') else 'torchvision'


def measure(source: str, norms: Sequence[str], batch: int, size: int, device: str,
            threads: Sequence[int], timing: Timing) -> ModelRun:
    """A segmentor per norm; their iterations timed in turn at every thread count.

    Args:
        source: 'mmseg' or 'torchvision'.
        norms: names in :data:`NORMS`.
        batch, size: images per batch, square crop side in pixels.
        device: 'cpu' or 'cuda'.
        threads: intra-op thread counts.
        timing: how steps are timed.
    """
    run = ModelRun(source, batch, size)
    if source == 'mmseg':
        models = {norm: build_mmseg(norm, size, device) for norm in norms}
        data = mmseg_batch(batch, size)
        steps = {norm: mmseg_step(model, data) for norm, model in models.items()}
    else:
        models = {norm: build_torchvision(norm, device) for norm in norms}
        steps = {norm: torchvision_step(model, batch, size, device)
                 for norm, model in models.items()}
    for step in steps.values():
        step()  # creates the SGD momentum buffers, part of the baseline
    for thread_count in threads:
        torch.set_num_threads(thread_count)
        run.seconds[thread_count] = fastest(steps, thread_count, timing)
        run.peak_bytes[thread_count] = {norm: peak_bytes(step, device)
                                        for norm, step in steps.items()}
        seconds, memory = run.seconds[thread_count], run.peak_bytes[thread_count]
        print(f'{thread_count} thread(s): ' + '; '.join(
            f'{norm} {seconds[norm] / seconds["BN"]:.2f}x BN time, '
            f'{memory[norm] / memory["BN"]:.2f}x BN memory' for norm in norms),
            file=sys.stderr, flush=True)
    for norm, model in models.items():
        run.parameters[norm] = sum(p.numel() for p in model.parameters())
        run.gflops[norm] = gflops(model, size, device) if source == 'mmseg' else None
    return run


def build_mmseg(norm: str, size: int, device: str) -> nn.Module:
    """DeepLabV3 R50-D8 from mmsegmentation's ADE20K config with ``norm`` everywhere
    (backbone, decode and auxiliary heads), randomly initialised, its data preprocessor
    padding to ``size``."""
    import en_seg  # noqa: F401  (registers EN with mmengine)
    from mmengine.hub import get_config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = get_config(DEEPLAB_CONFIG)
    cfg.model.pretrained = None
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        cfg.model[part].norm_cfg = dict(MMSEG_NORM_CFGS[norm])
    cfg.model.data_preprocessor.size = (size, size)
    return MODELS.build(cfg.model).to(device)


def mmseg_batch(batch: int, size: int) -> dict:
    """A batch in the form mmseg's ``train_step`` takes: uint8 images, label maps."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, NUM_CLASSES, (1, size, size), generator=gen))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)
              for _ in range(batch)]
    return dict(inputs=images, data_samples=samples)


def mmseg_step(model: nn.Module, data: dict) -> Step:
    """One iteration of mmseg training: ``model.train_step`` (data preprocessing, forward
    with both losses, backward, SGD step with momentum)."""
    from mmengine.optim import OptimWrapper

    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                                 weight_decay=5e-4))
    model.train()

    def step() -> None:
        model.train_step(data, optim_wrapper)

    return step


def build_torchvision(norm: str, device: str) -> nn.Module:
    """torchvision's DeepLabV3 ResNet-50 with an auxiliary FCN head and
    :data:`NUM_CLASSES` classes, every ``BatchNorm2d`` (backbone and heads) replaced by
    ``TORCHVISION_NORMS[norm]`` of its width."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                               aux_loss=True)
    if norm != 'BN':
        _swap_batchnorm(model, TORCHVISION_NORMS[norm])
    return model.to(device)


def _swap_batchnorm(module: nn.Module, build: Callable[[int], nn.Module]) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, build(child.num_features))
        else:
            _swap_batchnorm(child, build)


def torchvision_step(model: nn.Module, batch: int, size: int, device: str) -> Step:
    """One training iteration as mmseg's: cross-entropy of the decode head plus 0.4 times
    the auxiliary head's, backward, SGD step with momentum; on standard-normal images and
    uniformly random labels."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> None:
        out = model(images)
        loss = (F.cross_entropy(out['out'], labels)
                + 0.4 * F.cross_entropy(out['aux'], labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step
