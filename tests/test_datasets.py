"""The synthetic data sets are read unchanged by mmseg's own ADE20K and Cityscapes classes."""
import numpy as np
import pytest
from mmseg.datasets import ADE20KDataset, CityscapesDataset

from en_seg.utils.synthetic_data import write_ade20k_layout, write_cityscapes_layout

# Scoped type: without mmseg's default scope the name would resolve to mmcv's transform.
PIPELINE = [dict(type='LoadImageFromFile'), dict(type='mmseg.LoadAnnotations')]


def test_ade20k_layout_reads_with_zero_label_reduced(tmp_path):
    root = write_ade20k_layout(str(tmp_path), num_train=3, num_val=2, size=(40, 48))
    for split, count in (('training', 3), ('validation', 2)):
        dataset = ADE20KDataset(
            data_root=root, pipeline=PIPELINE, reduce_zero_label=True,
            data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'))
        assert len(dataset) == count
        sample = dataset[0]
        assert sample['img'].shape == (40, 48, 3)
        labels = np.unique(sample['gt_seg_map'])
        # The border of label 0 becomes the ignore index 255, classes 1-6 become 0-5.
        assert 255 in labels and set(labels) <= set(range(6)) | {255}


def test_cityscapes_layout_reads_train_ids(tmp_path):
    root = write_cityscapes_layout(str(tmp_path), num_train=2, num_val=2)
    dataset = CityscapesDataset(
        data_root=root, pipeline=PIPELINE,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'))
    assert len(dataset) == 2
    sample = dataset[1]
    assert sample['img'].shape == (64, 128, 3)
    assert set(np.unique(sample['gt_seg_map'])) <= set(range(6)) | {255}


def test_same_seed_writes_the_same_files(tmp_path):
    first = write_ade20k_layout(str(tmp_path / 'a'), num_train=1, num_val=1, seed=3)
    second = write_ade20k_layout(str(tmp_path / 'b'), num_train=1, num_val=1, seed=3)
    name = 'annotations/validation/ADE_valid_00000000.png'
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    assert first != second


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_train=0), 'at least one'), (dict(size=(16, 64)), 'too small')])
def test_bad_arguments_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_ade20k_layout(str(tmp_path), **kwargs)
