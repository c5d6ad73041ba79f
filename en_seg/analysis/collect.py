"""Run an mmseg segmentor over a dataset split and gather every image's EN ratios."""
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.utils import ProgressBar
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .recorder import RatioRecorder
from .table import RatioTable
from .weighting import class_pixel_shares


def collect_ratios(model: nn.Module, dataloader: DataLoader, class_names: Sequence[str],
                   ignore_index: int = 255, max_images: Optional[int] = None) -> RatioTable:
    """Ratios λ of every EN layer for every image, as the model computes them at test time.

    Each batch goes through ``model.test_step`` (the path of ``tools/test.py``, including
    the model's ``test_cfg``: with sliding-window inference a layer's ratios are the mean
    over the crops, see :meth:`RatioRecorder.pop`). EN layers that never run at test
    time, e.g. in an auxiliary head, are left out.

    Args:
        model: an mmseg segmentor in evaluation mode, not wrapped (its module names are
            the table's layer names).
        dataloader: a DataLoader of an mmseg dataset yielding batches
            ``dict(inputs=[...], data_samples=[...])`` whose data samples carry
            ``img_path`` and ``gt_sem_seg`` (the test pipeline's ``LoadAnnotations``).
            Use batches of one image unless all images have the same size: padding a
            batch changes the IN and LN statistics, hence the ratios.
        class_names: the dataset's C classes; ground-truth labels index them.
        ignore_index: label left out of the pixel shares. Default: 255.
        max_images: stop after this many images. Default: None, the whole split.

    Returns:
        A :class:`RatioTable`; images are named by their path relative to the folder all
        image files share, without the extension (e.g. ``ADE_val_00000001``).

    Raises:
        ValueError: if the model has no EN layer, the dataloader yields nothing, a data
            sample lacks its ground truth, a label lies outside the classes, or
            ``max_images`` is not positive.
        RuntimeError: if no EN layer runs at test time, or the EN layers that run change
            from one batch to the next.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f'max_images must be positive, got {max_images}')
    num_images = len(dataloader.dataset)
    if max_images is not None:
        num_images = min(num_images, max_images)
    layer_ratios: Dict[str, List[Tensor]] = {}
    paths: List[str] = []
    shares: List[np.ndarray] = []
    progress = ProgressBar(num_images)
    recorder = RatioRecorder(model)
    with recorder, torch.no_grad():
        for batch in dataloader:
            model.test_step(batch)
            ratios = recorder.pop()
            if layer_ratios and set(ratios) != set(layer_ratios):
                raise RuntimeError(
                    f'the EN layers that ran changed between batches: '
                    f'{sorted(set(ratios) ^ set(layer_ratios))}; ratios per image need '
                    'the same layers for every image')
            for name, value in ratios.items():
                layer_ratios.setdefault(name, []).append(value)
            for sample in batch['data_samples']:
                paths.append(sample.img_path)
                shares.append(class_pixel_shares(_ground_truth(sample), len(class_names),
                                                 ignore_index))
                progress.update()
            if len(paths) >= num_images:
                break
    progress.file.write('\n')  # the bar leaves the cursor at the end of its line
    if not paths:
        raise ValueError('the dataloader yielded no image: check the dataset of the split')
    if not layer_ratios:
        raise RuntimeError(
            f'none of the EN layers {list(recorder.normalizers)} ran in test_step: mmseg '
            'runs no auxiliary head at test time; put EN layers in the backbone or the '
            'decode head')
    count = min(len(paths), num_images)
    layers = tuple(layer_ratios)
    return RatioTable(
        images=tuple(image_names(paths[:count])),
        layers=layers,
        normalizers=tuple(recorder.normalizers[name] for name in layers),
        ratios=tuple(torch.cat(layer_ratios[name])[:count].numpy() for name in layers),
        class_names=tuple(class_names),
        pixel_shares=np.stack(shares[:count]))


def _ground_truth(sample) -> Tensor:
    if 'gt_sem_seg' not in sample:
        raise ValueError(
            f'the data sample of {sample.img_path} has no gt_sem_seg, which the per-class '
            "ratios need: add dict(type='LoadAnnotations') to the dataset's pipeline "
            '(before PackSegInputs)')
    return sample.gt_sem_seg.data


def image_names(paths: Sequence[str]) -> List[str]:
    """Names of images in tables and figures: their paths relative to the deepest folder
    all of them share, without extension; unique because the paths are.

    Raises:
        ValueError: for an empty ``paths``.
    """
    root = osp.commonpath([osp.dirname(osp.abspath(path)) for path in paths])
    return [osp.splitext(osp.relpath(osp.abspath(path), root))[0] for path in paths]
