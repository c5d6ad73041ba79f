"""Record the ratios λ of every EN layer with forward hooks; the model is unchanged."""
from functools import partial
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from .layers import named_exemplar_norms


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
