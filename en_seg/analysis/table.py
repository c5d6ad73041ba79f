"""The ratios of every EN layer for every image of a dataset, and their tidy CSV form."""
import csv
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .weighting import class_weighted_means


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
            (:func:`~en_seg.analysis.weighting.class_pixel_shares`).

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

