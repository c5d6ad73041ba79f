"""The figures of the ratio analysis (paper Figs. 4-8), PNG and SVG, and the t-SNE they plot.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure`` built without pyplot, so
no GUI backend or global state is involved; :func:`save_figure` writes it. A normalizer
has the same colour in every figure. :func:`tsne_embedding` embeds every image's ratios of
all EN layers (paper Fig. 8).
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.manifold import TSNE

from ..models.mixed_norm import NORMALIZERS
from .dynamics import RatioDynamics
from .ratio_table import RatioTable, dominant_classes


def tsne_embedding(features: np.ndarray, perplexity: Optional[float] = None,
                   seed: int = 0) -> np.ndarray:
    """Embed per-image ratio vectors in 2-D with scikit-learn's t-SNE.

    Args:
        features: (I, D) per-image features, e.g. :meth:`RatioTable.features` (the
            ratios of all layers side by side).
        perplexity: t-SNE perplexity, must be below I. Default: None, which takes
            ``min(30, max(1, (I - 1) / 3))``, scikit-learn's 30 shrunk for small splits.
        seed: random state; the same seed gives the same embedding. Default: 0.

    Returns:
        (I, 2) float64 coordinates. When all rows are equal (one image, or a ratio
        branch that ignores its input) every point is at the origin: t-SNE is undefined
        for a set without distances, and scikit-learn crashes on it.

    Raises:
        ValueError: if ``features`` is not 2-D, or ``perplexity`` is not in (0, I).
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f'features must be (I, D), got shape {features.shape}')
    num_images = features.shape[0]
    if perplexity is None:
        perplexity = min(30.0, max(1.0, (num_images - 1) / 3))
    elif not 0 < perplexity < num_images:
        raise ValueError(f'perplexity must lie in (0, {num_images}) for {num_images} '
                         f'images, got {perplexity}')
    if np.all(features == features[:1]):
        return np.zeros((num_images, 2))
    tsne = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed)
    return tsne.fit_transform(features).astype(np.float64)


#: Colours of t-SNE's most frequent dominant classes: tab20 without its two greys,
#: which mark the other classes and the images without labelled pixels.
TSNE_COLORS = tuple(colormaps['tab20'](i) for i in range(20) if i not in (14, 15))


def normalizer_color(name: str) -> str:
    """The matplotlib colour of a normalizer, fixed by its place in ('IN', 'LN', 'BN')."""
    return f'C{NORMALIZERS.index(name)}'


def save_figure(fig: Figure, out_dir: str, name: str) -> List[str]:
    """Write ``out_dir/name.png`` (150 dpi) and ``out_dir/name.svg``, creating
    ``out_dir`` if needed; returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [osp.join(out_dir, f'{name}.{ext}') for ext in ('png', 'svg')]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def _stacked_bars(ax: Axes, labels: Sequence[str], normalizers: Sequence[Sequence[str]],
                  values: Sequence[Sequence[float]]) -> None:
    """One bar per label, its ratios stacked bottom-up in the order of its normalizers."""
    names = list(dict.fromkeys(name for bar in normalizers for name in bar))
    heights = {name: np.zeros(len(labels)) for name in names}
    bottoms = {name: np.zeros(len(labels)) for name in names}
    for j, (bar_names, bar_values) in enumerate(zip(normalizers, values)):
        bottoms_j = np.concatenate([[0.0], np.cumsum(bar_values)[:-1]])
        for name, value, bottom in zip(bar_names, bar_values, bottoms_j):
            heights[name][j], bottoms[name][j] = value, bottom
    x = np.arange(len(labels))
    for name in names:
        ax.bar(x, heights[name], bottom=bottoms[name], width=0.8, label=name,
               color=normalizer_color(name))
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylim(0, 1)


def _bar_width(num_bars: int) -> float:
    return max(6.0, 0.22 * num_bars + 2.0)


def plot_layer_means(table: RatioTable) -> Figure:
    """Mean ratios of every EN layer over all images, stacked bars, layers in network
    order (paper Fig. 4)."""
    fig = Figure(figsize=(_bar_width(len(table.layers)), 4.5), layout='constrained')
    ax = fig.add_subplot()
    _stacked_bars(ax, table.layers, table.normalizers, table.layer_means())
    ax.set_ylabel('mean ratio λ')
    ax.set_title(f'EN ratios per layer, mean over {len(table.images)} images '
                 '(cf. paper Fig. 4)')
    ax.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_class_means(table: RatioTable, class_indices: Sequence[int]) -> Figure:
    """Per chosen class, every layer's ratios averaged over images weighted by their
    pixel share of the class (segmentation's analogue of paper Fig. 6).

    Raises:
        ValueError: if ``class_indices`` is empty.
    """
    if not class_indices:
        raise ValueError('choose at least one class to plot')
    fig = Figure(figsize=(_bar_width(len(table.layers)), 1.5 + 2.2 * len(class_indices)),
                 layout='constrained')
    axes = fig.subplots(len(class_indices), 1, sharex=True, squeeze=False)[:, 0]
    for ax, c in zip(axes, class_indices):
        shares = table.pixel_shares[:, c]
        _stacked_bars(ax, table.layers, table.normalizers, table.class_means(c))
        ax.set_title(f'{table.class_names[c]}: in {np.count_nonzero(shares)} of '
                     f'{len(shares)} images, mean pixel share {shares.mean():.1%}',
                     fontsize=9)
        ax.set_ylabel('ratio λ')
    axes[0].legend(loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.suptitle('EN ratios per class, images weighted by pixel share (cf. paper Fig. 6)')
    return fig


def depth_positions(num_layers: int) -> List[Tuple[str, int]]:
    """``(label, index)`` of the bottom, middle and top EN layer; fewer when layers
    coincide (fewer than three layers)."""
    positions = {}
    for label, index in (('bottom', 0), ('middle', (num_layers - 1) // 2),
                         ('top', num_layers - 1)):
        positions.setdefault(index, label)
    return [(label, index) for index, label in positions.items()]


def plot_image_ratios(table: RatioTable, image_indices: Sequence[int]) -> Figure:
    """Ratios of chosen images in the bottom, middle and top EN layers (paper Fig. 7).

    Raises:
        ValueError: if ``image_indices`` is empty.
    """
    if not image_indices:
        raise ValueError('choose at least one image to plot')
    positions = depth_positions(len(table.layers))
    fig = Figure(figsize=(1.5 + len(positions) * max(2.5, 0.35 * len(image_indices) + 1),
                          4.5), layout='constrained')
    axes = fig.subplots(1, len(positions), sharey=True, squeeze=False)[0]
    names = [table.images[i] for i in image_indices]
    for ax, (label, layer) in zip(axes, positions):
        _stacked_bars(ax, names, [table.normalizers[layer]] * len(names),
                      table.ratios[layer][list(image_indices)])
        ax.set_title(f'{label}: {table.layers[layer]}', fontsize=9)
    axes[0].set_ylabel('ratio λ')
    axes[-1].legend(loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.suptitle('EN ratios of single images across depth (cf. paper Fig. 7)')
    return fig


def plot_tsne(table: RatioTable, embedding: np.ndarray) -> Figure:
    """t-SNE of every image's ratios of all layers, one point per image, coloured by the
    class with the largest pixel share (paper Fig. 8).

    Args:
        table: the images' ratios and pixel shares.
        embedding: (I, 2) coordinates from :func:`tsne_embedding`.

    The most frequent dominant classes get the colours of :data:`TSNE_COLORS`; the
    others are grey, images without labelled pixels light grey crosses.

    Raises:
        ValueError: if ``embedding`` is not (I, 2).
    """
    if embedding.shape != (len(table.images), 2):
        raise ValueError(f'embedding must be ({len(table.images)}, 2), got '
                         f'{embedding.shape}')
    dominant = dominant_classes(table.pixel_shares)
    classes, counts = np.unique(dominant[dominant >= 0], return_counts=True)
    shown = classes[np.argsort(-counts, kind='stable')][:len(TSNE_COLORS)]
    fig = Figure(figsize=(8.0, 5.5), layout='constrained')
    ax = fig.add_subplot()
    others = (dominant >= 0) & ~np.isin(dominant, shown)
    groups = [(dominant == c, table.class_names[c], dict(color=color, zorder=2))
              for c, color in zip(shown, TSNE_COLORS)]
    # Below the coloured classes, so that the many grey points do not hide them.
    groups += [(others, 'other classes', dict(color='0.6', zorder=1)),
               (dominant < 0, 'no labelled pixel', dict(color='0.8', marker='x', zorder=1))]
    for mask, label, style in groups:
        if mask.any():
            ax.scatter(embedding[mask, 0], embedding[mask, 1], s=18, label=label, **style)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f't-SNE of {len(table.images)} images\' ratios in {len(table.layers)} '
                 'EN layers,\ncoloured by dominant class (cf. paper Fig. 8)')
    ax.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=8,
              title='dominant class')
    return fig


def plot_dynamics(dynamics: RatioDynamics, columns: int = 4) -> Figure:
    """Batch-mean ratios of every EN layer over training iterations, one panel per layer
    in network order (paper Fig. 5).

    Args:
        dynamics: from :func:`~en_seg.analysis.dynamics.read_ratio_dynamics`.
        columns: panels per row. Default: 4.
    """
    count = len(dynamics.layers)
    columns = min(columns, count)
    rows = -(-count // columns)
    fig = Figure(figsize=(1.0 + 3.2 * columns, 1.0 + 2.4 * rows), layout='constrained')
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    for ax, layer, names, steps, ratios in zip(axes, dynamics.layers, dynamics.normalizers,
                                                dynamics.steps, dynamics.ratios):
        for k, name in enumerate(names):
            ax.plot(steps, ratios[:, k], marker='.', label=name,
                    color=normalizer_color(name))
        ax.set_title(layer, fontsize=8)
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[count:]:
        ax.set_axis_off()
    for ax in axes[max(0, count - columns):count]:
        ax.set_xlabel('iteration')
    axes[0].legend(fontsize=8)
    fig.suptitle('EN ratios during training, mean over each logged batch '
                 '(cf. paper Fig. 5)')
    return fig
