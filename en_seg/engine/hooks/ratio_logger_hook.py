"""Log the ratios λ of every EN layer during training (paper Fig. 5, Sec. 4.6)."""
import logging
from typing import List, Tuple

import torch
from mmengine.hooks import Hook, LoggerHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...analysis.dynamics import ratio_scalar_key
from ...analysis.recording import named_exemplar_norms
from ...models import ExemplarNorm2d


@HOOKS.register_module()
class ENRatioLoggerHook(Hook):
    """Every ``interval`` training iterations, log each EN layer's ratios λ averaged over
    the samples of that iteration's batch, one scalar per (layer, normalizer).

    The scalars go to the runner's message hub as ``train/en_ratio/<layer>/<normalizer>``,
    so the next log of the ``LoggerHook`` prints them and writes them to every
    visualization backend: ``vis_data/scalars.json`` (``LocalVisBackend``, read by
    ``tools/analyze_ratios.py dynamics``), TensorBoard, etc. Layer names are those of the
    unwrapped model, in registration order. In distributed training each process
    averages its own batch; rank 0's values are logged.

    Enable it in a config with::

        custom_imports = dict(imports=['en_seg'], allow_failed_imports=False)
        custom_hooks = [dict(type='ENRatioLoggerHook', interval=50)]

    Args:
        interval: log every this many iterations. Choose a divisor of the
            ``LoggerHook``'s interval (often equal to it): the logger writes the latest
            value at its own pace, so other intervals log stale values. Default: 50.

    Raises:
        ValueError: for a non-positive ``interval``; in ``before_train``, if the model has
            no EN layer.
    """

    # LoggerHook has priority BELOW_NORMAL, so it runs after this hook and logs the
    # values of the same iteration.
    priority = 'NORMAL'

    def __init__(self, interval: int = 50) -> None:
        if not isinstance(interval, int) or interval <= 0:
            raise ValueError(f'interval must be a positive int, got {interval!r}')
        self.interval = interval
        self._layers: List[Tuple[str, ExemplarNorm2d]] = []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._layers = named_exemplar_norms(model)
        for hook in runner.hooks:
            if isinstance(hook, LoggerHook) and hook.interval % self.interval:
                print_log(
                    f'ENRatioLoggerHook measures every {self.interval} iterations but '
                    f'LoggerHook logs every {hook.interval}, so the ratios it logs can be '
                    f'up to {self.interval - 1} iterations old: set the interval of '
                    f'ENRatioLoggerHook to a divisor of {hook.interval}',
                    logger='current', level=logging.WARNING)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        # Layers that never ran (an unused head) have no ratios yet.
        ran = [(name, layer) for name, layer in self._layers
               if layer.last_ratios is not None]
        if not ran:
            return
        # One device-to-host copy for all layers instead of one per scalar.
        values = torch.cat([layer.last_ratios.mean(0) for _, layer in ran]).tolist()
        keys = [ratio_scalar_key(name, normalizer)
                for name, layer in ran for normalizer in layer.normalizers]
        for key, value in zip(keys, values):
            runner.message_hub.update_scalar(f'train/{key}', value)
