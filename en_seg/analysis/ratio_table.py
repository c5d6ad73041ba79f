"""The ratios of every EN layer for every image of a dataset, weighted by ground truth.

:class:`RatioTable` holds them, with their tidy CSV form. Weighting is the segmentation
analogue of paper Fig. 6: the paper averages an image classifier's ratios over the images
of each class. A segmentation image holds many classes, so here image i counts towards
class c with weight w_ic, the share of its labelled pixels that belong to c.
"""
import csv
from dataclasses import dataclass
from typing import List, Tuple, Union

import numpy as np
import torch


def class_pixel_shares(label_map: Union[np.ndarray, torch.Tensor], num_classes: int,
                       ignore_index: int = 255) -> np.ndarray:
    """The share of an image's labelled pixels that each class covers.

    Args:
        label_map: integer label map of any shape, e.g. (H, W) or mmseg's (1, H, W)
            ``gt_sem_seg.data``.
        num_classes: C; labels must lie in [0, C) or equal ``ignore_index``.
        ignore_index: the label of unlabelled pixels, left out of the shares.
            Default: 255 (mmseg's, also what ``reduce_zero_label`` maps 0 to).

    Returns:
        (C,) float64 shares summing to 1, or all zero when no pixel is labelled.

    Raises:
        ValueError: for a label outside [0, C) other than ``ignore_index``, i.e. a
            label map that does not belong to these classes.
    """
    labels = torch.as_tensor(label_map).flatten().long().cpu()
    labels = labels[labels != ignore_index]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:10].tolist()
        raise ValueError(
            f'label map has label(s) {bad} outside [0, {num_classes}) that are not '
            f'ignore_index={ignore_index}: check the dataset classes and reduce_zero_label '
            'against the annotations')
    counts = torch.bincount(labels, minlength=num_classes).double().numpy()
    total = counts.sum()
    return counts / total if total else counts


def class_weighted_means(values: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Mean of per-image values for every class, each image weighted by its pixel share.

    ``mean_c = Σ_i w_ic v_i / Σ_i w_ic``.

    Args:
        values: (I, D) per-image values, e.g. ratios of every layer side by side.
        shares: (I, C) pixel shares w from :func:`class_pixel_shares`.

    Returns:
        (C, D) float64; the rows of classes that no image contains are NaN.

    Raises:
        ValueError: if ``values`` and ``shares`` are not 2-D with the same number of rows.
    """
    values, shares = np.asarray(values, np.float64), np.asarray(shares, np.float64)
    if values.ndim != 2 or shares.ndim != 2 or values.shape[0] != shares.shape[0]:
        raise ValueError(f'values (I, D) and shares (I, C) need the same I rows, got '
                         f'shapes {values.shape} and {shares.shape}')
    weight = shares.sum(0)
    with np.errstate(invalid='ignore', divide='ignore'):
        return (shares.T @ values) / weight[:, None]


def dominant_classes(shares: np.ndarray) -> np.ndarray:
    """The class with the largest pixel share of every image (paper Fig. 8 colours).

    Args:
        shares: (I, C) pixel shares.

    Returns:
        (I,) int64 class indices; -1 for an image without labelled pixels.
    """
    shares = np.asarray(shares)
    return np.where(shares.sum(1) > 0, shares.argmax(1), -1).astype(np.int64)


@dataclass(frozen=True)
class RatioTable:
    """Ratios λ (after the softmax, paper Eq. 4) of L EN layers for I images.

    Attributes:
        images: I image names, in dataset order.
        layers: L layer names as the model names them, in the order of the network.
        normalizers: per layer, the names of its K_l normalizers, e.g. ('IN', 'LN', 'BN').
        ratios: per layer, an (I, K_l) float32 array; every row sums to 1.
        class_names: the C classes of the dataset.
        pixel_shares: (I, C) float64, the share of each image's labelled pixels per class
            (:func:`class_pixel_shares`).

    Raises:
        ValueError: at construction, if the parts disagree in length or shape.
    """

    images: Tuple[str, ...]
    layers: Tuple[str, ...]
    normalizers: Tuple[Tuple[str, ...], ...]
    ratios: Tuple[np.ndarray, ...]
    class_names: Tuple[str, ...]
    pixel_shares: np.ndarray

    def __post_init__(self) -> None:
        num_images = len(self.images)
        if not num_images or not self.layers:
            raise ValueError(f'a ratio table needs at least one image and one layer, got '
                             f'{num_images} images and {len(self.layers)} layers')
        if not len(self.layers) == len(self.normalizers) == len(self.ratios):
            raise ValueError(f'{len(self.layers)} layers, {len(self.normalizers)} '
                             f'normalizer lists and {len(self.ratios)} ratio arrays differ')
        for layer, names, ratios in zip(self.layers, self.normalizers, self.ratios):
            if ratios.shape != (num_images, len(names)):
                raise ValueError(f'layer {layer!r}: ratios of shape {ratios.shape}, '
                                 f'expected ({num_images}, {len(names)}) for {names}')
        if self.pixel_shares.shape != (num_images, len(self.class_names)):
            raise ValueError(f'pixel_shares of shape {self.pixel_shares.shape}, expected '
                             f'({num_images}, {len(self.class_names)})')

    def features(self) -> np.ndarray:
        """(I, Σ_l K_l) float32: every image's ratios of all layers side by side, in
        layer order (the t-SNE input of paper Fig. 8)."""
        return np.concatenate(self.ratios, axis=1)

    def layer_means(self) -> List[np.ndarray]:
        """Per layer, the (K_l,) mean ratios over all images (paper Fig. 4)."""
        return [ratios.mean(0, dtype=np.float64) for ratios in self.ratios]

    def class_means(self, class_index: int) -> List[np.ndarray]:
        """Per layer, the (K_l,) ratios averaged over images weighted by their pixel share
        of class ``class_index`` (paper Fig. 6); NaN if no image contains the class."""
        means = class_weighted_means(self.features(),
                                     self.pixel_shares[:, [class_index]])[0]
        return np.split(means, np.cumsum([len(n) for n in self.normalizers])[:-1])


def write_ratio_csv(table: RatioTable, path: str) -> None:
    """Write the table in tidy form: columns image, layer, normalizer, ratio.

    One row per (image, layer, normalizer), images in dataset order, layers in network
    order; ratios are written with enough digits to read back the same float32.
    """
    with open(path, 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(('image', 'layer', 'normalizer', 'ratio'))
        for i, image in enumerate(table.images):
            for layer, names, ratios in zip(table.layers, table.normalizers, table.ratios):
                writer.writerows((image, layer, name, f'{ratio:.9g}')
                                 for name, ratio in zip(names, ratios[i]))


def write_share_csv(table: RatioTable, path: str) -> None:
    """Write the ground-truth pixel shares: columns image, class, share.

    Only the classes present in an image get a row, which keeps the file small for
    datasets with many classes (ADE20K has 150).
    """
    with open(path, 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(('image', 'class', 'share'))
        for image, shares in zip(table.images, table.pixel_shares):
            writer.writerows((image, table.class_names[c], f'{shares[c]:.9g}')
                             for c in np.flatnonzero(shares))
