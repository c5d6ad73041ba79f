"""Weight images by their ground truth: the segmentation analogue of paper Fig. 6.

The paper averages an image classifier's ratios over the images of each class. A
segmentation image holds many classes, so here image i counts towards class c with
weight w_ic, the share of its labelled pixels that belong to c.
"""
from typing import Union

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
