"""Write tiny segmentation datasets that mmseg's own dataset classes read unchanged.

Each image is a textured background with a few filled rectangles and discs; every class has
its own colour, so a model can learn something in a few iterations on a CPU. Used by
``make demo`` and the integration tests: our machines have no internet and no real data.
"""
from pathlib import Path
from typing import Iterable, Sequence, Tuple

import cv2
import numpy as np


def _scene(rng: np.random.Generator, size: Tuple[int, int], classes: Sequence[int],
           palette: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 BGR image and its (H, W) uint8 label map."""
    height, width = size
    label = np.full((height, width), classes[0], np.uint8)
    for cls in rng.choice(classes[1:], size=rng.integers(2, 5)):
        x0, y0 = rng.integers(0, width - 8), rng.integers(0, height - 8)
        extent = int(rng.integers(8, max(9, min(height, width) // 2)))
        if rng.random() < 0.5:
            cv2.rectangle(label, (int(x0), int(y0)), (int(x0) + extent, int(y0) + extent),
                          int(cls), thickness=-1)
        else:
            cv2.circle(label, (int(x0), int(y0)), extent // 2, int(cls), thickness=-1)
    noise = rng.normal(0, 12, (height, width, 3))
    image = np.clip(palette[label].astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return image, label


def _check(num_train: int, num_val: int, size: Tuple[int, int]) -> None:
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one training and one validation image, got '
                         f'num_train={num_train}, num_val={num_val}')
    if min(size) < 32:
        raise ValueError(f'size={tuple(size)} is too small: use at least 32 pixels a side')


def _write_split(rng: np.random.Generator, palette: np.ndarray, size: Tuple[int, int],
                 classes: Sequence[int], border: int,
                 pairs: Iterable[Tuple[Path, Path]]) -> None:
    """Write one scene per (image path, label path), the label map framed by ``border``."""
    for image_path, label_path in pairs:
        image, label = _scene(rng, size, classes, palette)
        label[:2], label[-2:], label[:, :2], label[:, -2:] = border, border, border, border
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), image)
        cv2.imwrite(str(label_path), label)


def write_ade20k_layout(root: str, num_train: int = 8, num_val: int = 4,
                        size: Tuple[int, int] = (96, 128), seed: int = 0) -> str:
    """Write ``root/images/{training,validation}/*.jpg`` and ``root/annotations/...png``.

    Labels follow ADE20K: 0 is "other" (ignored under ``reduce_zero_label=True``), 1-150
    are the classes; the scenes use classes 1-6 and a thin border of 0.

    Args:
        root: the dataset directory, created if missing (existing files are overwritten).
        num_train, num_val: images per split. Defaults: 8 and 4.
        size: (height, width) in pixels. Default: (96, 128).
        seed: random seed; the same seed writes the same files.

    Returns:
        ``root``.

    Raises:
        ValueError: for an empty split or a side under 32 pixels.
    """
    _check(num_train, num_val, size)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (151, 3))
    for split, count in (('training', num_train), ('validation', num_val)):
        names = [f'ADE_{split[:5]}_{i:08d}' for i in range(count)]
        _write_split(rng, palette, size, range(1, 7), 0,
                     [(Path(root, 'images', split, f'{name}.jpg'),
                       Path(root, 'annotations', split, f'{name}.png')) for name in names])
    return root


def write_cityscapes_layout(root: str, num_train: int = 8, num_val: int = 4,
                            size: Tuple[int, int] = (64, 128), seed: int = 0) -> str:
    """Write ``root/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and the matching
    ``root/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png``.

    Labels are Cityscapes train ids: 0-18 the classes, 255 ignored; the scenes use
    classes 0-5 and a thin border of 255.

    Args and Raises: as :func:`write_ade20k_layout`; default size (64, 128).

    Returns:
        ``root``.
    """
    _check(num_train, num_val, size)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (256, 3))
    for split, count, city in (('train', num_train, 'aachen'), ('val', num_val, 'lindau')):
        stems = [f'{city}_{i:06d}_000019' for i in range(count)]
        _write_split(rng, palette, size, range(0, 6), 255,
                     [(Path(root, 'leftImg8bit', split, city, f'{stem}_leftImg8bit.png'),
                       Path(root, 'gtFine', split, city, f'{stem}_gtFine_labelTrainIds.png'))
                      for stem in stems])
    return root
