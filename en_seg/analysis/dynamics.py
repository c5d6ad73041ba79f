"""The scalars ``ENRatioLoggerHook`` logs during training, and reading them back (paper Fig. 5)."""
import glob
import json
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: First part of every scalar the hook logs: ``en_ratio/<layer>/<normalizer>``.
SCALAR_PREFIX = 'en_ratio'


def ratio_scalar_key(layer: str, normalizer: str) -> str:
    """The scalar name of one layer's mean ratio of one normalizer, e.g.
    ``'en_ratio/backbone.layer1.0.bn1/BN'`` (module names never contain '/')."""
    return f'{SCALAR_PREFIX}/{layer}/{normalizer}'


def parse_ratio_scalar_key(key: str) -> Optional[Tuple[str, str]]:
    """``(layer, normalizer)`` of a scalar name written by :func:`ratio_scalar_key`,
    with or without the ``train/`` prefix of ``log_processor.log_with_hierarchy``;
    ``None`` for any other scalar."""
    parts = key.split('/')
    if parts[0] == 'train':
        parts = parts[1:]
    if len(parts) != 3 or parts[0] != SCALAR_PREFIX:
        return None
    return parts[1], parts[2]


@dataclass(frozen=True)
class RatioDynamics:
    """Batch-mean ratios of L EN layers over training.

    Attributes:
        layers: L layer names, in the order the log first lists them (the model's).
        normalizers: per layer, its K_l normalizer names in logged order.
        steps: per layer, a (T_l,) int64 array of the iterations logged, increasing.
        ratios: per layer, a (T_l, K_l) float64 array, row t the ratios at ``steps[t]``.
    """

    layers: Tuple[str, ...]
    normalizers: Tuple[Tuple[str, ...], ...]
    steps: Tuple[np.ndarray, ...]
    ratios: Tuple[np.ndarray, ...]


def find_scalar_logs(work_dir: str) -> List[str]:
    """The ``vis_data/scalars.json`` of every run of an mmengine work directory.

    Args:
        work_dir: the ``work_dir`` of ``tools/train.py``, holding one ``<timestamp>/``
            folder per run (a resumed training adds one), or one ``scalars.json`` file.

    Returns:
        Paths, oldest run first (timestamps sort by name).

    Raises:
        FileNotFoundError: if there is no such file.
    """
    if osp.isfile(work_dir):
        return [work_dir]
    paths = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not paths:
        raise FileNotFoundError(
            f'no <timestamp>/vis_data/scalars.json under {work_dir!r}: pass the work_dir '
            'of a training run whose visualizer has a LocalVisBackend (the default), or '
            'the path of a scalars.json')
    return paths


def read_ratio_dynamics(paths: Sequence[str]) -> RatioDynamics:
    """Gather the ``en_ratio/<layer>/<normalizer>`` scalars of mmengine JSON-lines logs.

    Args:
        paths: ``scalars.json`` files, oldest first; a step logged twice (a resumed run
            repeats iterations after its checkpoint) keeps the value of the later file.

    Returns:
        A :class:`RatioDynamics`; a step where a layer lacks some normalizer is dropped
        for that layer.

    Raises:
        ValueError: if no line of the logs holds an EN ratio, or a line is not JSON.
    """
    values: Dict[str, Dict[str, Dict[int, float]]] = {}  # layer -> normalizer -> step
    for path in paths:
        with open(path) as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f'{path}:{number} is not a JSON line: {error}; is '
                                     'it an mmengine scalars.json?') from error
                for key, value in record.items():
                    parsed = parse_ratio_scalar_key(key)
                    if parsed is not None:
                        layer, normalizer = parsed
                        values.setdefault(layer, {}).setdefault(normalizer, {})[
                            int(record['step'])] = float(value)
    if not values:
        raise ValueError(
            f'no en_ratio/<layer>/<normalizer> scalar in {list(paths)}: train with '
            "custom_hooks = [dict(type='ENRatioLoggerHook', interval=N)] in the config")
    layers, normalizers, steps, ratios = [], [], [], []
    for layer, by_normalizer in values.items():
        common = sorted(set.intersection(*(set(s) for s in by_normalizer.values())))
        layers.append(layer)
        normalizers.append(tuple(by_normalizer))
        steps.append(np.array(common, np.int64))
        ratios.append(np.array([[by_normalizer[n][step] for n in by_normalizer]
                                for step in common], np.float64).reshape(len(common), -1))
    return RatioDynamics(tuple(layers), tuple(normalizers), tuple(steps), tuple(ratios))
