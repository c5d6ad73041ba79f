"""Write every output of the ratio analysis: table, summary and figures."""
import json
import os
import os.path as osp
from difflib import get_close_matches
from typing import Dict, List, Optional, Sequence

import numpy as np

from .dynamics import find_scalar_logs, read_ratio_dynamics
from .figures import (plot_class_means, plot_dynamics, plot_image_ratios, plot_layer_means,
                      plot_tsne, save_figure, tsne_embedding)
from .ratio_table import RatioTable, write_ratio_csv, write_share_csv

#: Classes and images the figures show when none are chosen.
DEFAULT_COUNT = 4


def lookup_names(names: Sequence[str], wanted: Sequence[str], what: str) -> List[int]:
    """Indices of ``wanted`` in ``names``.

    Args:
        names: the known names, e.g. a dataset's classes.
        wanted: names to find.
        what: what a name is, for the error message, e.g. 'class'.

    Raises:
        ValueError: for a name not in ``names``, suggesting the closest known ones.
    """
    index = {name: i for i, name in enumerate(names)}
    for name in wanted:
        if name not in index:
            close = get_close_matches(name, names, n=5)
            hint = f'did you mean {close}?' if close else f'some known: {list(names)[:8]}'
            raise ValueError(f'unknown {what} {name!r}; {hint}')
    return [index[name] for name in wanted]


def choose_classes(table: RatioTable, names: Optional[Sequence[str]] = None,
                   count: int = DEFAULT_COUNT) -> List[int]:
    """Indices of the classes to plot per class.

    Args:
        table: the collected ratios.
        names: class names as the dataset spells them. Default: None, the ``count``
            classes with the largest summed pixel share (the most weight in Fig. 6).
        count: how many classes to choose by default. Default: 4.

    Raises:
        ValueError: for an unknown class name (the closest names are suggested) or a
            class without a labelled pixel in the images analysed.
    """
    weight = table.pixel_shares.sum(0)
    if names is None:
        ranked = np.argsort(-weight, kind='stable')
        return [int(c) for c in ranked[:count] if weight[c] > 0]
    indices = lookup_names(table.class_names, names, 'class')
    for name, c in zip(names, indices):
        if weight[c] == 0:
            present = [table.class_names[i] for i in np.argsort(-weight)[:8] if weight[i]]
            raise ValueError(f'class {name!r} has no labelled pixel in the '
                             f'{len(table.images)} images analysed, so it has no ratios; '
                             f'choose a class present in them, e.g. {present}')
    return indices


def choose_images(table: RatioTable, names: Optional[Sequence[str]] = None,
                  count: int = DEFAULT_COUNT) -> List[int]:
    """Indices of the images to plot one by one.

    Args:
        table: the collected ratios.
        names: image names as in the table (``ratios.csv``'s image column). Default:
            None, ``count`` images evenly spread over the split.
        count: how many images to choose by default. Default: 4.

    Raises:
        ValueError: for an unknown image name (the closest names are suggested).
    """
    if names is None:
        spread = np.linspace(0, len(table.images) - 1, min(count, len(table.images)))
        return sorted({int(round(i)) for i in spread})
    return lookup_names(table.images, names, 'image')


def _by_normalizer(names: Sequence[str], values: Sequence[float]) -> Dict[str, float]:
    return {name: float(value) for name, value in zip(names, values)}


def summarize(table: RatioTable, class_indices: Sequence[int],
              image_indices: Sequence[int]) -> dict:
    """The JSON summary: per-layer mean and standard deviation over images, the mean
    over layers of each normalizer, and the chosen classes' and images' ratios."""
    overall: Dict[str, List[float]] = {}
    layers = []
    for layer, names, ratios, mean in zip(table.layers, table.normalizers, table.ratios,
                                          table.layer_means()):
        for name, value in zip(names, mean):
            overall.setdefault(name, []).append(float(value))
        layers.append(dict(name=layer, normalizers=list(names),
                           mean=_by_normalizer(names, mean),
                           std=_by_normalizer(names, ratios.std(0, dtype=np.float64))))
    classes = {}
    for c in class_indices:
        shares = table.pixel_shares[:, c]
        classes[table.class_names[c]] = dict(
            num_images=int(np.count_nonzero(shares)), mean_pixel_share=float(shares.mean()),
            layers={layer: _by_normalizer(names, means) for layer, names, means in
                    zip(table.layers, table.normalizers, table.class_means(c))})
    layer_parts = list(zip(table.layers, table.normalizers, table.ratios))
    images = {table.images[i]: {layer: _by_normalizer(names, ratios[i])
                                for layer, names, ratios in layer_parts}
              for i in image_indices}
    return dict(num_images=len(table.images), num_layers=len(table.layers),
                mean_over_layers={name: float(np.mean(v)) for name, v in overall.items()},
                layers=layers, classes=classes, images=images)


def write_report(table: RatioTable, out_dir: str, classes: Optional[Sequence[str]] = None,
                 images: Optional[Sequence[str]] = None,
                 meta: Optional[dict] = None) -> Dict[str, List[str]]:
    """Write the ratio analysis of one dataset split into ``out_dir``.

    Files: ``ratios.csv`` (image, layer, normalizer, ratio), ``pixel_shares.csv``
    (image, class, share), ``summary.json`` (:func:`summarize` plus ``meta`` and the
    file list) and the figures, each as PNG and SVG: ``layer_means`` (paper Fig. 4),
    ``class_means`` (Fig. 6), ``image_ratios`` (Fig. 7) and ``tsne`` (Fig. 8).

    Args:
        table: the collected ratios.
        out_dir: created if missing; existing files of these names are overwritten.
        classes, images: what to show per class and per image; see
            :func:`choose_classes` and :func:`choose_images` for the defaults.
        meta: extra entries for the summary, e.g. config and checkpoint paths.

    Returns:
        ``{'table': [...], 'summary': [...], '<figure>': [png, svg], ...}``.

    Raises:
        ValueError: as :func:`choose_classes` and :func:`choose_images`; also when no
            image has a labelled pixel, so no class can be plotted.
    """
    class_indices = choose_classes(table, classes)
    if not class_indices:
        raise ValueError('no image analysed has a labelled pixel, so there are no '
                         'per-class ratios: check the ground truth and its ignore_index')
    image_indices = choose_images(table, images)
    os.makedirs(out_dir, exist_ok=True)
    outputs = {'table': [osp.join(out_dir, 'ratios.csv'),
                         osp.join(out_dir, 'pixel_shares.csv')]}
    write_ratio_csv(table, outputs['table'][0])
    write_share_csv(table, outputs['table'][1])
    figures = {
        'layer_means': plot_layer_means(table),
        'class_means': plot_class_means(table, class_indices),
        'image_ratios': plot_image_ratios(table, image_indices),
        'tsne': plot_tsne(table, tsne_embedding(table.features())),
    }
    for name, fig in figures.items():
        outputs[name] = save_figure(fig, out_dir, name)
    outputs['summary'] = [osp.join(out_dir, 'summary.json')]
    summary = dict(meta or {}, **summarize(table, class_indices, image_indices),
                   files=outputs)
    with open(outputs['summary'][0], 'w') as file:
        json.dump(summary, file, indent=2)
    return outputs


def write_dynamics_report(work_dir: str, out_dir: str) -> Dict[str, List[str]]:
    """Plot the ratios :class:`~en_seg.engine.hooks.ENRatioLoggerHook` logged during
    the training runs in ``work_dir`` (paper Fig. 5) to ``out_dir/dynamics.{png,svg}``.

    Raises:
        FileNotFoundError, ValueError: as :func:`find_scalar_logs` and
            :func:`read_ratio_dynamics`, for a work dir without the hook's scalars.
    """
    dynamics = read_ratio_dynamics(find_scalar_logs(work_dir))
    return {'dynamics': save_figure(plot_dynamics(dynamics), out_dir, 'dynamics')}
