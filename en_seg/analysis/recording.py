"""Record the ratios λ of every EN layer: find the layers, hook them, run a dataset split.

:func:`named_exemplar_norms` finds a model's EN layers, :class:`RatioRecorder` records
their ratios with forward hooks (the model is unchanged), and :func:`collect_ratios` runs
an mmseg segmentor over a dataloader into a :class:`~.ratio_table.RatioTable`.
"""
import os.path as osp
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.utils import ProgressBar
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..models import ExemplarNorm2d
from .ratio_table import RatioTable, class_pixel_shares


def named_exemplar_norms(model: nn.Module) -> List[Tuple[str, ExemplarNorm2d]]:
    """Every :class:`ExemplarNorm2d` of ``model`` with its qualified name.

    Args:
        model: any module; wrappers (DDP, mmengine's) should be unwrapped first, or every
            name carries their ``module.`` prefix.

    Returns:
        ``(name, layer)`` pairs in the order ``model.named_modules()`` yields them, the
        order of registration (for mmseg backbones and heads, the order of the network),
        with names such as ``'backbone.layer1.0.bn1'``.

    Raises:
        ValueError: if the model has no EN layer.
    """
    layers = [(name, module) for name, module in model.named_modules()
              if isinstance(module, ExemplarNorm2d)]
    if not layers:
        raise ValueError(
            f'{type(model).__name__} has no ExemplarNorm2d layer, so there are no ratios '
            "to read: build it with norm_cfg=dict(type='EN') (and import en_seg, e.g. "
            "custom_imports=dict(imports=['en_seg'])) in the config")
    return layers


class RatioRecorder:
    """Context manager that hooks every :class:`~en_seg.models.ExemplarNorm2d` of a model.

    Each forward of an EN layer appends its ``last_ratios`` (the softmax ratios λ of paper
    Eq. 4, (N, K) float32, detached) to that layer's record; :meth:`pop` hands the record
    over and clears it. Inside the ``with`` block the model runs as usual; leaving it
    removes the hooks.

    Args:
        model: the network, unwrapped (layer names are taken from it as they are).

    Raises:
        ValueError: at construction, if the model has no EN layer.

    Example:
        >>> with RatioRecorder(model) as recorder:
        ...     model(images)
        ...     ratios = recorder.pop()    # {'backbone.layer1.0.bn1': (N, K) tensor, ...}
    """

    def __init__(self, model: nn.Module) -> None:
        self._layers = named_exemplar_norms(model)
        self._calls: Dict[str, List[Tensor]] = {}
        self._handles: List[torch.utils.hooks.RemovableHandle] = []

    @property
    def normalizers(self) -> Dict[str, Tuple[str, ...]]:
        """Every hooked layer's normalizer names (K of them), by layer name."""
        return {name: layer.normalizers for name, layer in self._layers}

    def __enter__(self) -> 'RatioRecorder':
        for name, layer in self._layers:
            self._handles.append(layer.register_forward_hook(partial(self._record, name)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._calls.clear()

    def _record(self, name: str, layer: nn.Module, inputs, output) -> None:
        self._calls.setdefault(name, []).append(layer.last_ratios)

    def pop(self) -> Dict[str, Tensor]:
        """The ratios recorded since the last call, then forget them.

        A layer that ran several times (sliding-window inference runs every layer once
        per crop, test-time augmentation once per view) gets the mean over its runs, so
        each sample has one ratio vector per layer.

        Returns:
            ``{layer name: (N, K) float32 CPU tensor}``, in the order the layers first
            ran, which is the order of the network; layers that did not run are absent.
            Rows still sum to 1.

        Raises:
            RuntimeError: if a layer's runs had different batch sizes N, so that they
                cannot be matched sample by sample.
        """
        ratios = {}
        for name, calls in self._calls.items():
            sizes = {call.shape[0] for call in calls}
            if len(sizes) > 1:
                raise RuntimeError(
                    f'EN layer {name!r} ran {len(calls)} times on batches of sizes '
                    f'{sorted(sizes)} since the last pop(); pop() after every batch so '
                    'that each run sees the same samples')
            ratios[name] = torch.stack(calls).mean(0).cpu()
        self._calls.clear()
        return ratios


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
