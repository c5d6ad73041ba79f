"""Write a tiny classification dataset that mmpretrain's ``ImageNet`` class reads unchanged.

The layout is ImageNet's as mmpretrain prepares it: ``train/<wnid>/<wnid>_<i>.JPEG``,
``val/ILSVRC2012_val_<8 digits>.JPEG`` and the label files ``meta/train.txt`` /
``meta/val.txt`` (``<path> <class index>`` per line), which mmpretrain's ``ImageNet``
reads for the ``train`` and ``val`` splits. Class folders are named ``n<index, 8 digits>``
like WordNet ids (they are not real ones); each class is an own colour with a lighter
square at a random place, so a classifier can tell the classes apart. Used by the
pre-training tests: our machines have no internet and no real data.
"""
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

#: mmpretrain's ``ImageNet`` names its 1000 classes; a label indexes them.
IMAGENET_NUM_CLASSES = 1000


def _image(rng: np.random.Generator, size: Tuple[int, int], colour: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 BGR image of a class: its colour, a lighter square, noise."""
    height, width = size
    image = np.empty((height, width, 3), np.float64)
    image[:] = colour
    extent = int(rng.integers(min(height, width) // 4, min(height, width) // 2 + 1))
    y0, x0 = rng.integers(0, height - extent + 1), rng.integers(0, width - extent + 1)
    image[y0:y0 + extent, x0:x0 + extent] = (colour + 255) / 2
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_imagenet_layout(root: str, num_classes: int = 4, images_per_class: int = 2,
                          num_val: int = 4, size: Tuple[int, int] = (40, 48),
                          seed: int = 0) -> str:
    """Write ``root/train/<wnid>/*.JPEG``, ``root/val/*.JPEG``, ``root/meta/{train,val}.txt``.

    The classes are ImageNet's first ``num_classes`` indices (0, 1, ...); validation image
    i belongs to class ``i % num_classes``.

    Args:
        root: the dataset directory, created if missing (existing files are overwritten).
        num_classes: classes used, 1 to 1000. Default: 4.
        images_per_class: training images per class. Default: 2.
        num_val: validation images. Default: 4.
        size: (height, width) in pixels. Default: (40, 48).
        seed: random seed; the same seed writes the same files.

    Returns:
        ``root``.

    Raises:
        ValueError: for ``num_classes`` outside 1-1000, an empty split, or a side under
            8 pixels.
    """
    if not 1 <= num_classes <= IMAGENET_NUM_CLASSES:
        raise ValueError(f'num_classes must be between 1 and {IMAGENET_NUM_CLASSES} '
                         f'(the ImageNet classes), got {num_classes}')
    if images_per_class < 1 or num_val < 1:
        raise ValueError(f'need at least one training image per class and one validation '
                         f'image, got images_per_class={images_per_class}, num_val={num_val}')
    if min(size) < 8:
        raise ValueError(f'size={tuple(size)} is too small: use at least 8 pixels a side')
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 192, (num_classes, 3)).astype(np.float64)
    meta = Path(root, 'meta')
    meta.mkdir(parents=True, exist_ok=True)
    train_lines = []
    for label in range(num_classes):
        wnid = f'n{label:08d}'
        Path(root, 'train', wnid).mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            name = f'{wnid}/{wnid}_{i}.JPEG'
            cv2.imwrite(str(Path(root, 'train', name)), _image(rng, size, colours[label]))
            train_lines.append(f'{name} {label}\n')
    Path(root, 'val').mkdir(parents=True, exist_ok=True)
    val_lines = []
    for i in range(num_val):
        name = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
        label = i % num_classes
        cv2.imwrite(str(Path(root, 'val', name)), _image(rng, size, colours[label]))
        val_lines.append(f'{name} {label}\n')
    (meta / 'train.txt').write_text(''.join(train_lines))
    (meta / 'val.txt').write_text(''.join(val_lines))
    return root
