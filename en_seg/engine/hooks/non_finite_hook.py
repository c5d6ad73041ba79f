"""Name the first EN or SN layer that sees a non-finite input in a training iteration."""
from typing import List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ...models import ExemplarNorm2d, SwitchableNorm2d


@HOOKS.register_module()
class ENNonFiniteHook(Hook):
    """Log which EN / SN layer first receives a NaN or an infinity in a training iteration.

    One non-finite value in one image makes the whole batch's output non-finite after the
    first EN layer (its BN statistics reach every sample's ratio branch; with SN, the
    channel in every sample): the loss shows that something broke, not where. This hook
    checks the input of every :class:`~en_seg.models.ExemplarNorm2d` and
    :class:`~en_seg.models.SwitchableNorm2d` as the layers run, with forward pre-hooks
    (the model is unchanged), and for the first one in an iteration that holds a
    non-finite value logs a warning, then checks no further layer until the next
    iteration::

        ENNonFiniteHook: iteration 2: backbone.stem.1 is the first EN/SN layer with a
        non-finite input: 16 of 512 values (16 NaN, 0 infinite), in samples [1] of 2

    The values came from the data or the layers before the named one. The running
    statistics are already protected (docs/method.md#running-statistics). Each check reads
    a result back to the host, one synchronization per layer and iteration on a GPU, so
    the hook is off by default: add it while looking for a NaN. Validation and testing are
    not checked. In distributed training each process checks its own batch; mmengine's
    logger prints rank 0's warnings.

    Enable it in a config with::

        custom_imports = dict(imports=['en_seg'], allow_failed_imports=False)
        custom_hooks = [dict(type='ENNonFiniteHook')]

    Raises:
        ValueError: in ``before_train``, if the model has no EN or SN layer.
    """

    def __init__(self) -> None:
        self._handles: List[RemovableHandle] = []
        self._iteration: Optional[int] = None  # set while a training iteration runs
        self._logger = None

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        layers = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, (ExemplarNorm2d, SwitchableNorm2d))]
        if not layers:
            raise ValueError(
                'ENNonFiniteHook checks the inputs of EN and SN layers, and '
                f'{type(model).__name__} has none: build it with '
                "norm_cfg=dict(type='EN') or dict(type='SN'), or remove the hook")
        self._logger = runner.logger
        self._handles = [layer.register_forward_pre_hook(self._pre_hook(name))
                         for name, layer in layers]

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._iteration = runner.iter + 1  # as mmengine's log counts iterations

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        self._iteration = None

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pre_hook(self, name: str):
        def check(module: nn.Module, args) -> None:
            if self._iteration is None:
                return
            x: Tensor = args[0]
            non_finite = ~torch.isfinite(x)
            count = int(non_finite.sum())  # the host synchronization
            if not count:
                return
            samples = non_finite.flatten(1).any(1).nonzero().flatten().tolist()
            nan = int(torch.isnan(x).sum())
            self._logger.warning(
                f'ENNonFiniteHook: iteration {self._iteration}: {name} is the first EN/SN '
                f'layer with a non-finite input: {count} of {x.numel()} values ({nan} NaN, '
                f'{count - nan} infinite), in samples {samples} of {x.shape[0]}')
            self._iteration = None
        return check
